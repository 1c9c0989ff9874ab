-- Notifications of a study's priority to RIS/EHR worklists (HL7 v2, FHIR, webhook): one row per
-- study, messaging destination and priority, made in the transaction that sets or raises the
-- study's priority, then claimed and sent like the deliveries of DICOM objects (postgres).

-- Which node keeps an output's file (under its data_dir): with separate data directories only
-- that node can send it. NULL for outputs made before (any node may send them, as before).
ALTER TABLE outputs ADD COLUMN node TEXT;

-- The patient attributes the messages carry (PID, FHIR Patient), as the first image gave them.
ALTER TABLE studies ADD COLUMN issuer_of_patient_id TEXT;
ALTER TABLE studies ADD COLUMN patient_birth_date TEXT;
ALTER TABLE studies ADD COLUMN patient_sex TEXT;

CREATE TABLE messages (
    id                BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    study_id          BIGINT NOT NULL REFERENCES studies (id),
    -- destinations[].name in the configuration
    destination       TEXT NOT NULL,
    kind              TEXT NOT NULL CHECK (kind IN ('hl7', 'fhir', 'webhook')),
    priority          TEXT NOT NULL CHECK (priority IN ('urgent', 'review', 'routine')),
    -- stable for (destination, study, priority): MSH-10, the Bundle's ids, the webhook's id
    control_id        TEXT NOT NULL UNIQUE,
    state             TEXT NOT NULL CHECK (state IN ('pending', 'sending', 'delivered', 'failed')),
    attempts          BIGINT NOT NULL DEFAULT 0,
    -- not sent before this time: backoff, or the settling wait below urgent
    next_attempt_at   BIGINT NOT NULL,
    last_error        TEXT,
    claimed_by        TEXT,
    lease_expires_at  BIGINT,
    created_at        BIGINT NOT NULL,
    updated_at        BIGINT NOT NULL,
    delivered_at      BIGINT,
    UNIQUE (study_id, destination, priority)
);
CREATE INDEX messages_due ON messages (state, next_attempt_at);
