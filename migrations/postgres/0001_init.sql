-- cairn's tables on Postgres. Migrations are append-only: change the schema with a new file.
--
-- They live in a schema of their own (`cairn` unless the database URL names another with
-- `?schema=`): every connection's search_path names it, so these statements need no prefix.
-- Several instances may start at once; sqlx's migrator serialises them on an advisory lock.
--
-- As on SQLite, the event log is the source of truth and `workflows` / `steps` are its
-- projections, written in the same transaction as each append.

-- The log's high-water mark: the id of the newest committed event. A checkpoint takes its
-- event ids by adding to this one row, so the row lock makes checkpoints that append take
-- their ids one after another, and each releases the lock only once its commit is visible.
-- Ids therefore become visible as a contiguous prefix (never 42 before 41), which is what an
-- SSE client resuming with `id > Last-Event-ID` relies on; a rolled-back checkpoint undoes
-- its addition too, so the log has no gaps.
CREATE TABLE log_head (
    only_row BOOLEAN PRIMARY KEY DEFAULT TRUE CHECK (only_row),
    last_id  BIGINT  NOT NULL
);
INSERT INTO log_head (only_row, last_id) VALUES (TRUE, 0);

-- Every event of every workflow, in log order. `id` comes from `log_head`, not a sequence.
CREATE TABLE events (
    id          BIGINT      PRIMARY KEY,
    workflow_id TEXT        NOT NULL,
    type        TEXT        NOT NULL,
    at          TIMESTAMPTZ NOT NULL,
    data        TEXT        NOT NULL   -- the event as JSON (cairn::Event); text keeps it as written
);
CREATE INDEX events_by_workflow ON events (workflow_id, id);

-- One row per workflow: its summary for listings and the folded state for snapshots. A
-- checkpoint locks the rows of the workflows it changes (in id order), and so does a claim
-- (skipping locked ones): a takeover can never commit between a checkpoint's lease check
-- and its commit.
CREATE TABLE workflows (
    id            TEXT        PRIMARY KEY,
    name          TEXT        NOT NULL,
    status        TEXT        NOT NULL,
    state         TEXT        NOT NULL,  -- cairn::WorkflowState as JSON, without its spec
    spec          TEXT,                  -- its spec as JSON, written once at creation
    created_at    TIMESTAMPTZ NOT NULL,
    updated_at    TIMESTAMPTZ NOT NULL,
    last_event_id BIGINT      NOT NULL,
    next_wake_at  TIMESTAMPTZ            -- earliest backoff expiry, for the scheduler
);
CREATE INDEX workflows_by_status ON workflows (status, created_at);
CREATE INDEX workflows_by_created ON workflows (created_at, id);

-- One row per step, for queries that should not parse the whole state.
CREATE TABLE steps (
    workflow_id     TEXT        NOT NULL REFERENCES workflows (id),
    step_id         TEXT        NOT NULL,
    status          TEXT        NOT NULL,
    attempt         BIGINT      NOT NULL,
    session_id      TEXT,
    next_attempt_at TIMESTAMPTZ,
    updated_at      TIMESTAMPTZ NOT NULL,
    PRIMARY KEY (workflow_id, step_id)
);

-- Which instance runs a workflow. Expiries are compared with the database's clock, never an
-- instance's. `epoch` grows at every takeover; a result is committed only under the epoch its
-- attempt started with.
CREATE TABLE leases (
    workflow_id TEXT        PRIMARY KEY REFERENCES workflows (id),
    owner       TEXT        NOT NULL,
    epoch       BIGINT      NOT NULL,
    expires_at  TIMESTAMPTZ NOT NULL
);
CREATE INDEX leases_by_owner ON leases (owner);

-- `Idempotency-Key` of a start request → the workflow it created, and a hash of the request.
CREATE TABLE idempotency_keys (
    key          TEXT        PRIMARY KEY,
    request_hash TEXT        NOT NULL,
    workflow_id  TEXT        NOT NULL,
    created_at   TIMESTAMPTZ NOT NULL
);

-- Step outputs, stored once (see migrations/sqlite/0002_outputs.sql). Bytes, not text: a
-- program may print a NUL, which Postgres text cannot hold; the server reads them as UTF-8.
CREATE TABLE outputs (
    event_id    BIGINT PRIMARY KEY REFERENCES events (id),
    workflow_id TEXT   NOT NULL,
    step_id     TEXT   NOT NULL,
    bytes       BIGINT NOT NULL,
    output      BYTEA  NOT NULL
);
CREATE INDEX outputs_by_step ON outputs (workflow_id, step_id, event_id);
