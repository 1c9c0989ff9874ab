-- Retention: received images and the objects made of them are deleted once they are no longer
-- needed; their rows stay, as the record of what the node received and said. released_at is
-- when the file was let go (NULL while it is kept): set in the transaction that decides the
-- deletion, before the file is removed, so that a crash in between leaves a row that says
-- released beside a file the next sweep removes, never a row pointing at a file gone missing.
ALTER TABLE instances ADD COLUMN released_at BIGINT;
ALTER TABLE outputs ADD COLUMN released_at BIGINT;
-- When the patient attributes of a study (name, ID, issuer, birth date, sex) were removed, after
-- retention.patient_data_days; the study UID, accession number, results and deliveries stay.
ALTER TABLE studies ADD COLUMN patient_data_removed_at BIGINT;

-- Pruning walks what is still kept, oldest first; what was released is never read again.
CREATE INDEX instances_kept ON instances (received_at) WHERE released_at IS NULL;
CREATE INDEX outputs_kept ON outputs (created_at) WHERE released_at IS NULL;
CREATE INDEX studies_patient_data ON studies (last_received_at) WHERE patient_data_removed_at IS NULL;
-- A study's messages, to tell whether any is still to be sent.
CREATE INDEX messages_study ON messages (study_id, state);
