-- The worklist lists the studies received most recently: read in this index's order, a page
-- costs what it shows rather than a sort of every study ever received.
CREATE INDEX studies_received ON studies (last_received_at, id);
-- A study's deliveries in a state are found from its outputs, never among every delivery in
-- that state (which is most of them, once delivered).
CREATE INDEX deliveries_output_state ON deliveries (output_id, state);
