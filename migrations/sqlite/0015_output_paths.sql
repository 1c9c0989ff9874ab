-- The sweep asks which output files have rows, by path, every interval: without an index each
-- question read the whole table, which grows for as long as results are kept.
CREATE INDEX outputs_path ON outputs (path);
