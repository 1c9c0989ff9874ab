-- Shadow versions and radiologists' verdicts (SQLite).

-- What another manifest ([[inference.shadow]]) made of an image production analysed: recorded
-- beside the production result, never turned into objects, deliveries or messages.
CREATE TABLE shadow_results (
    id                  INTEGER PRIMARY KEY AUTOINCREMENT,
    instance_id         BIGINT NOT NULL REFERENCES instances (id),
    -- inference.shadow[].name in the configuration
    shadow              TEXT NOT NULL,
    outcome             TEXT NOT NULL CHECK (outcome IN ('analysed', 'skipped', 'failed')),
    -- why it was skipped or failed
    reason              TEXT,
    decision            TEXT CHECK (decision IN ('positive', 'negative', 'positive_without_mask')),
    priority            TEXT CHECK (priority IN ('urgent', 'review', 'routine')),
    probability         REAL,
    mask_area_px        BIGINT,
    classifier_name     TEXT NOT NULL,
    classifier_version  TEXT NOT NULL,
    classifier_sha256   TEXT NOT NULL,
    segmenter_name      TEXT NOT NULL,
    segmenter_version   TEXT NOT NULL,
    segmenter_sha256    TEXT NOT NULL,
    inference_ms        REAL,
    node                TEXT NOT NULL,
    created_at          BIGINT NOT NULL,
    UNIQUE (instance_id, shadow)
);
CREATE INDEX shadow_results_created ON shadow_results (shadow, created_at);

-- A radiologist's verdict on a result: agree or disagree with the AI finding, by the name of the
-- HTTP token used ([[http.tokens]]). A later verdict on the same result supersedes the earlier.
CREATE TABLE verdicts (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    result_id   BIGINT NOT NULL REFERENCES results (id),
    verdict     TEXT NOT NULL CHECK (verdict IN ('agree', 'disagree')),
    note        TEXT,
    reviewer    TEXT NOT NULL,
    created_at  BIGINT NOT NULL
);
CREATE INDEX verdicts_result ON verdicts (result_id, id);
