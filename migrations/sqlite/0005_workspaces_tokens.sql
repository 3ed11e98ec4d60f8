-- Workspaces and tokens.
--
-- A workflow belongs to the workspace of the token that started it (`default` on a server
-- without tokens, and for every workflow stored before this migration). The log holds it too,
-- in `workflow.created`; the column lets lists and streams filter without reading states.
ALTER TABLE workflows ADD COLUMN workspace TEXT NOT NULL DEFAULT 'default';
CREATE INDEX workflows_by_workspace ON workflows (workspace, created_at);

-- API tokens. Only a SHA-256 of each token is kept: the token itself is shown once, when it
-- is created. `id` is the token's public part (it is inside the token, and `cairn token
-- list` and `revoke` name it). As soon as this table has a row, the server asks every
-- request for a token; a revoked or expired row still counts, so revoking the last token
-- does not open the server again.
CREATE TABLE tokens (
    id         TEXT PRIMARY KEY,
    hash       TEXT NOT NULL,
    workspace  TEXT NOT NULL,
    label      TEXT NOT NULL,
    scope      TEXT NOT NULL CHECK (scope IN ('read', 'run', 'admin')),
    created_at TEXT NOT NULL,  -- RFC 3339, UTC
    expires_at TEXT,
    revoked_at TEXT
);
