-- Analysis results, one per analysed instance version, and retry scheduling for jobs (PostgreSQL).

-- A job put back after a transient error is not claimed again before this time (ms since epoch).
ALTER TABLE jobs ADD COLUMN not_before BIGINT;

CREATE TABLE results (
    id                  BIGINT GENERATED ALWAYS AS IDENTITY PRIMARY KEY,
    instance_id         BIGINT NOT NULL UNIQUE REFERENCES instances (id),
    job_id              BIGINT NOT NULL REFERENCES jobs (id),
    policy              TEXT NOT NULL CHECK (policy IN ('cascade', 'segmentation')),
    decision            TEXT NOT NULL CHECK (decision IN ('positive', 'negative', 'positive_without_mask')),
    priority            TEXT NOT NULL CHECK (priority IN ('urgent', 'review', 'routine')),
    -- the classifier's probability (cascade) or the highest pixel's (segmentation)
    probability         DOUBLE PRECISION NOT NULL,
    width               BIGINT NOT NULL,
    height              BIGINT NOT NULL,
    -- the mask at the source image's size, SIIM-ACR run-length encoding ('-1' when empty)
    mask_rle            TEXT NOT NULL,
    mask_area_px        BIGINT NOT NULL,
    -- NULL when the pixel spacing is unknown
    mask_area_mm2       DOUBLE PRECISION,
    classifier_name     TEXT NOT NULL,
    classifier_version  TEXT NOT NULL,
    classifier_sha256   TEXT NOT NULL,
    segmenter_name      TEXT NOT NULL,
    segmenter_version   TEXT NOT NULL,
    segmenter_sha256    TEXT NOT NULL,
    execution_provider  TEXT NOT NULL,
    decode_ms           DOUBLE PRECISION NOT NULL,
    preprocess_ms       DOUBLE PRECISION NOT NULL,
    inference_ms        DOUBLE PRECISION NOT NULL,
    postprocess_ms      DOUBLE PRECISION NOT NULL,
    node                TEXT NOT NULL,
    created_at          BIGINT NOT NULL
);
CREATE INDEX results_priority ON results (priority, created_at);
