-- Audit records (IHE ATNA, DICOM PS3.15 A.5) waiting for an audit repository: one row per record
-- and repository, written in the transaction of what it records where that writes, deleted once
-- the repository has it. A node sends only its own rows (its configuration names the repositories).
CREATE TABLE audit_records (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    node        TEXT NOT NULL,
    repository  TEXT NOT NULL,
    at          BIGINT NOT NULL,
    event       TEXT NOT NULL,
    message     TEXT NOT NULL
);
CREATE INDEX audit_records_waiting ON audit_records (node, repository, id);
