-- Counts kept as rows change (postgres): /metrics and `status` read the jobs, results,
-- deliveries and messages by state from here, at the cost of a few rows, not of a scan of a
-- year of history. Triggers append each change to tally_changes (an insert never waits for
-- another transaction, where updating one counter row would make every writer queue on it);
-- retention folds them into tallies every round. A count is tallies plus changes.

CREATE TABLE tallies (
    subject  TEXT NOT NULL,
    kind     TEXT NOT NULL,
    state    TEXT NOT NULL,
    n        BIGINT NOT NULL,
    PRIMARY KEY (subject, kind, state)
);

CREATE TABLE tally_changes (
    id       BIGSERIAL PRIMARY KEY,
    subject  TEXT NOT NULL,
    kind     TEXT NOT NULL,
    state    TEXT NOT NULL,
    n        BIGINT NOT NULL
);

INSERT INTO tallies (subject, kind, state, n) SELECT 'jobs', '', state, COUNT(*) FROM jobs GROUP BY state;
INSERT INTO tallies (subject, kind, state, n) SELECT 'results', '', priority, COUNT(*) FROM results GROUP BY priority;
INSERT INTO tallies (subject, kind, state, n) SELECT 'deliveries', '', state, COUNT(*) FROM deliveries GROUP BY state;
INSERT INTO tallies (subject, kind, state, n) SELECT 'messages', kind, state, COUNT(*) FROM messages GROUP BY kind, state;

-- TG_ARGV: the column that says the kind ('' for none), then the one that says the state.
CREATE FUNCTION tally() RETURNS trigger LANGUAGE plpgsql AS $tally$
DECLARE
    kind_column text := TG_ARGV[0];
    state_column text := TG_ARGV[1];
BEGIN
    IF TG_OP IN ('UPDATE', 'DELETE') THEN
        INSERT INTO tally_changes (subject, kind, state, n)
            VALUES (TG_TABLE_NAME, COALESCE(to_jsonb(OLD) ->> kind_column, ''), to_jsonb(OLD) ->> state_column, -1);
    END IF;
    IF TG_OP IN ('INSERT', 'UPDATE') THEN
        INSERT INTO tally_changes (subject, kind, state, n)
            VALUES (TG_TABLE_NAME, COALESCE(to_jsonb(NEW) ->> kind_column, ''), to_jsonb(NEW) ->> state_column, 1);
    END IF;
    RETURN NULL;
END;
$tally$;

CREATE TRIGGER jobs_tally AFTER INSERT OR DELETE ON jobs FOR EACH ROW EXECUTE FUNCTION tally('', 'state');
CREATE TRIGGER jobs_tally_update AFTER UPDATE OF state ON jobs
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION tally('', 'state');
CREATE TRIGGER results_tally AFTER INSERT OR DELETE ON results FOR EACH ROW EXECUTE FUNCTION tally('', 'priority');
CREATE TRIGGER results_tally_update AFTER UPDATE OF priority ON results
    FOR EACH ROW WHEN (OLD.priority IS DISTINCT FROM NEW.priority) EXECUTE FUNCTION tally('', 'priority');
CREATE TRIGGER deliveries_tally AFTER INSERT OR DELETE ON deliveries FOR EACH ROW EXECUTE FUNCTION tally('', 'state');
CREATE TRIGGER deliveries_tally_update AFTER UPDATE OF state ON deliveries
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state) EXECUTE FUNCTION tally('', 'state');
CREATE TRIGGER messages_tally AFTER INSERT OR DELETE ON messages FOR EACH ROW EXECUTE FUNCTION tally('kind', 'state');
CREATE TRIGGER messages_tally_update AFTER UPDATE OF kind, state ON messages
    FOR EACH ROW WHEN (OLD.state IS DISTINCT FROM NEW.state OR OLD.kind IS DISTINCT FROM NEW.kind)
    EXECUTE FUNCTION tally('kind', 'state');
