-- cairn's tables on SQLite. Migrations are append-only: change the schema with a new file.
--
-- The event log is the source of truth; `workflows` and `steps` are projections of it
-- (cairn::WorkflowState folded over the log) kept in the same transaction as each append, so
-- that a read never needs a replay and a crash never leaves the two apart.

-- Every event of every workflow, in the order it was committed. `id` is the workspace-wide
-- position that SSE clients resume from (Last-Event-ID).
CREATE TABLE events (
    id          INTEGER PRIMARY KEY AUTOINCREMENT,
    workflow_id TEXT    NOT NULL,
    type        TEXT    NOT NULL,
    at          TEXT    NOT NULL,  -- RFC 3339, UTC
    data        TEXT    NOT NULL   -- the event as JSON (cairn::Event)
);
CREATE INDEX events_by_workflow ON events (workflow_id, id);

-- One row per workflow: its summary for listings and the folded state for snapshots.
CREATE TABLE workflows (
    id            TEXT    PRIMARY KEY,
    name          TEXT    NOT NULL,
    status        TEXT    NOT NULL,
    state         TEXT    NOT NULL,  -- cairn::WorkflowState as JSON
    created_at    TEXT    NOT NULL,
    updated_at    TEXT    NOT NULL,
    last_event_id INTEGER NOT NULL,
    next_wake_at  TEXT               -- earliest backoff expiry, for the scheduler
);
CREATE INDEX workflows_by_status ON workflows (status, created_at);
CREATE INDEX workflows_by_created ON workflows (created_at);

-- One row per step, for queries that should not parse the whole state.
CREATE TABLE steps (
    workflow_id     TEXT    NOT NULL REFERENCES workflows (id),
    step_id         TEXT    NOT NULL,
    status          TEXT    NOT NULL,
    attempt         INTEGER NOT NULL,
    session_id      TEXT,
    next_attempt_at TEXT,
    updated_at      TEXT    NOT NULL,
    PRIMARY KEY (workflow_id, step_id)
);

-- Which engine instance runs a workflow. `epoch` grows at every takeover; a step attempt
-- carries the epoch it started under, and its result is committed only if it still matches.
CREATE TABLE leases (
    workflow_id TEXT    PRIMARY KEY REFERENCES workflows (id),
    owner       TEXT    NOT NULL,
    epoch       INTEGER NOT NULL,
    expires_at  TEXT    NOT NULL
);

-- `Idempotency-Key` of a start request → the workflow it created, and a hash of the request
-- so the same key with a different body is refused instead of silently answered.
CREATE TABLE idempotency_keys (
    key          TEXT PRIMARY KEY,
    request_hash TEXT NOT NULL,
    workflow_id  TEXT NOT NULL,
    created_at   TEXT NOT NULL
);
