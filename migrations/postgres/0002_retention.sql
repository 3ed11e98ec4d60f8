-- Retention (see migrations/sqlite/0004_retention.sql): `pruned_through` is the log's last
-- event id when retention last deleted something; a stream resumed at or below it gets a
-- fresh snapshot.
CREATE TABLE retention (
    only_row       BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    pruned_through BIGINT  NOT NULL
);
INSERT INTO retention (only_row, pruned_through) VALUES (TRUE, 0);

CREATE INDEX workflows_by_status_updated ON workflows (status, updated_at);
