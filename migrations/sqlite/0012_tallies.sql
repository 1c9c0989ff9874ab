-- Counts kept as rows change (sqlite): /metrics and `status` read the jobs, results, deliveries
-- and messages by state from here, at the cost of a few rows, not of a scan of a year of
-- history. Triggers append each change to tally_changes (appending never waits on another
-- writer); retention folds them into tallies every round. A count is tallies plus changes.

CREATE TABLE tallies (
    subject  TEXT NOT NULL,
    kind     TEXT NOT NULL,
    state    TEXT NOT NULL,
    n        BIGINT NOT NULL,
    PRIMARY KEY (subject, kind, state)
);

CREATE TABLE tally_changes (
    id       INTEGER PRIMARY KEY AUTOINCREMENT,
    subject  TEXT NOT NULL,
    kind     TEXT NOT NULL,
    state    TEXT NOT NULL,
    n        BIGINT NOT NULL
);

INSERT INTO tallies (subject, kind, state, n) SELECT 'jobs', '', state, COUNT(*) FROM jobs GROUP BY state;
INSERT INTO tallies (subject, kind, state, n) SELECT 'results', '', priority, COUNT(*) FROM results GROUP BY priority;
INSERT INTO tallies (subject, kind, state, n) SELECT 'deliveries', '', state, COUNT(*) FROM deliveries GROUP BY state;
INSERT INTO tallies (subject, kind, state, n) SELECT 'messages', kind, state, COUNT(*) FROM messages GROUP BY kind, state;

CREATE TRIGGER jobs_tally_insert AFTER INSERT ON jobs BEGIN
    INSERT INTO tally_changes (subject, kind, state, n) VALUES ('jobs', '', NEW.state, 1);
END;
CREATE TRIGGER jobs_tally_update AFTER UPDATE OF state ON jobs WHEN OLD.state <> NEW.state BEGIN
    INSERT INTO tally_changes (subject, kind, state, n) VALUES ('jobs', '', OLD.state, -1), ('jobs', '', NEW.state, 1);
END;
CREATE TRIGGER jobs_tally_delete AFTER DELETE ON jobs BEGIN
    INSERT INTO tally_changes (subject, kind, state, n) VALUES ('jobs', '', OLD.state, -1);
END;

CREATE TRIGGER results_tally_insert AFTER INSERT ON results BEGIN
    INSERT INTO tally_changes (subject, kind, state, n) VALUES ('results', '', NEW.priority, 1);
END;
CREATE TRIGGER results_tally_update AFTER UPDATE OF priority ON results WHEN OLD.priority <> NEW.priority BEGIN
    INSERT INTO tally_changes (subject, kind, state, n)
        VALUES ('results', '', OLD.priority, -1), ('results', '', NEW.priority, 1);
END;
CREATE TRIGGER results_tally_delete AFTER DELETE ON results BEGIN
    INSERT INTO tally_changes (subject, kind, state, n) VALUES ('results', '', OLD.priority, -1);
END;

CREATE TRIGGER deliveries_tally_insert AFTER INSERT ON deliveries BEGIN
    INSERT INTO tally_changes (subject, kind, state, n) VALUES ('deliveries', '', NEW.state, 1);
END;
CREATE TRIGGER deliveries_tally_update AFTER UPDATE OF state ON deliveries WHEN OLD.state <> NEW.state BEGIN
    INSERT INTO tally_changes (subject, kind, state, n)
        VALUES ('deliveries', '', OLD.state, -1), ('deliveries', '', NEW.state, 1);
END;
CREATE TRIGGER deliveries_tally_delete AFTER DELETE ON deliveries BEGIN
    INSERT INTO tally_changes (subject, kind, state, n) VALUES ('deliveries', '', OLD.state, -1);
END;

CREATE TRIGGER messages_tally_insert AFTER INSERT ON messages BEGIN
    INSERT INTO tally_changes (subject, kind, state, n) VALUES ('messages', NEW.kind, NEW.state, 1);
END;
CREATE TRIGGER messages_tally_update AFTER UPDATE OF kind, state ON messages
    WHEN OLD.state <> NEW.state OR OLD.kind <> NEW.kind BEGIN
    INSERT INTO tally_changes (subject, kind, state, n)
        VALUES ('messages', OLD.kind, OLD.state, -1), ('messages', NEW.kind, NEW.state, 1);
END;
CREATE TRIGGER messages_tally_delete AFTER DELETE ON messages BEGIN
    INSERT INTO tally_changes (subject, kind, state, n) VALUES ('messages', OLD.kind, OLD.state, -1);
END;
