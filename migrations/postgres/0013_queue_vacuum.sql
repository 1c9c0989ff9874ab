-- The queues (jobs, deliveries, messages) and the tallies' change log: a row changes state a few
-- times and is then left alone for good (or, in tally_changes, deleted at the next fold), and
-- each change leaves a dead entry in the index a claim walks until VACUUM removes it.
-- Autovacuum's default waits until a fifth of a table has changed, which after a year of
-- records is hundreds of thousands of dead entries that every claim steps over (a 120-day
-- simulation found 134,688 in deliveries_due beside 631 live rows). These tables are vacuumed
-- after a fixed number of changes instead, as queue tables are; each vacuum then has little to do.
ALTER TABLE jobs SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000);
ALTER TABLE deliveries SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000);
ALTER TABLE messages SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000);
ALTER TABLE tally_changes SET (autovacuum_vacuum_scale_factor = 0, autovacuum_vacuum_threshold = 5000);
