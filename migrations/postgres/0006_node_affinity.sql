-- Which node keeps an instance in its spool: with separate spools, only that node can analyse it.
-- NULL for instances kept before nodes were told apart (any node may take them, as before).
ALTER TABLE instances ADD COLUMN node TEXT;
