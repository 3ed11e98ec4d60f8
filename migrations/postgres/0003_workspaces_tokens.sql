-- Workspaces and tokens (see migrations/sqlite/0005_workspaces_tokens.sql).
ALTER TABLE workflows ADD COLUMN workspace TEXT NOT NULL DEFAULT 'default';
CREATE INDEX workflows_by_workspace ON workflows (workspace, created_at, id);

CREATE TABLE tokens (
    id         TEXT        PRIMARY KEY,
    hash       TEXT        NOT NULL,
    workspace  TEXT        NOT NULL,
    label      TEXT        NOT NULL,
    scope      TEXT        NOT NULL CHECK (scope IN ('read', 'run', 'admin')),
    created_at TIMESTAMPTZ NOT NULL,
    expires_at TIMESTAMPTZ,
    revoked_at TIMESTAMPTZ
);
