-- Retention: finished workflows older than `[retention] finished_after` (or `cairn prune
-- --older-than`) are deleted with their events, steps, outputs, leases and keys.
--
-- `pruned_through` is the log's last event id when retention last deleted something. A
-- client whose stream position is not past it may still show deleted workflows, and their
-- events are gone, so the workspace stream sends it a fresh snapshot instead of a replay.
CREATE TABLE retention (
    only_row       INTEGER PRIMARY KEY CHECK (only_row = 1),
    pruned_through INTEGER NOT NULL
);
INSERT INTO retention (only_row, pruned_through) VALUES (1, 0);

-- The pruner's question: which finished workflows last changed before a time.
CREATE INDEX workflows_by_status_updated ON workflows (status, updated_at);
