-- The DICOM objects made of a result (SEG, SR, secondary capture), written under
-- <data_dir>/outputs and recorded in the same transaction as their result (SQLite).

CREATE TABLE outputs (
    id                INTEGER PRIMARY KEY AUTOINCREMENT,
    result_id         BIGINT NOT NULL REFERENCES results (id),
    kind              TEXT NOT NULL CHECK (kind IN ('seg', 'sr', 'overlay')),
    sop_class_uid     TEXT NOT NULL,
    sop_instance_uid  TEXT NOT NULL UNIQUE,
    -- relative to <data_dir>/outputs
    path              TEXT NOT NULL,
    size_bytes        BIGINT NOT NULL,
    created_at        BIGINT NOT NULL
);
CREATE INDEX outputs_result ON outputs (result_id);
