-- "Not analysed" reports (postgres): an image the selection rules chose that the node could not
-- analyse (an input check, a failure, quarantine) is reported as such, never left silent.
--
-- notices: the report of one instance version, with its reason. outputs: an object is made of a
-- result or of a notice (the SR that says "not evaluated"), so result_id becomes optional.
-- messages: priority NULL is the study's "not analysed" message, one per study and destination
-- at most (the index below), made only while the study has no result.

CREATE TABLE notices (
    id            BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id   BIGINT NOT NULL UNIQUE REFERENCES instances (id),
    job_id        BIGINT NOT NULL REFERENCES jobs (id),
    reason        TEXT NOT NULL,
    node          TEXT NOT NULL,
    created_at    BIGINT NOT NULL
);

ALTER TABLE outputs ALTER COLUMN result_id DROP NOT NULL;
ALTER TABLE outputs ADD COLUMN notice_id BIGINT REFERENCES notices (id);
ALTER TABLE outputs ADD CONSTRAINT outputs_one_source CHECK ((result_id IS NULL) <> (notice_id IS NULL));
CREATE INDEX outputs_notice ON outputs (notice_id);

ALTER TABLE messages ALTER COLUMN priority DROP NOT NULL;
CREATE UNIQUE INDEX messages_not_analysed ON messages (study_id, destination) WHERE priority IS NULL;
