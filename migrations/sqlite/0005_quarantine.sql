-- The crash-loop breaker: how often the node stopped (died, or lost the lease) while a job was
-- being analysed, and when the job was quarantined for it (failed, never taken again).
ALTER TABLE jobs ADD COLUMN interruptions BIGINT NOT NULL DEFAULT 0;
ALTER TABLE jobs ADD COLUMN quarantined_at BIGINT;
