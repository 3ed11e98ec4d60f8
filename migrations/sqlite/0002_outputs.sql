-- Step outputs, stored once.
--
-- A step's output can be megabytes (a generated file, a long review). The event log and the
-- `workflows.state` projection, which is rewritten at every checkpoint, carry only its first
-- few KB (cairn::OUTPUT_PREVIEW_BYTES) and its size; the whole text is written here once, in
-- the same transaction as the `step.completed` (or `step.skipped`) event that produced it.
-- The server renders `{STEP.output}` from this table and serves it at
-- GET /api/workflows/{id}/steps/{step}/output.
CREATE TABLE outputs (
    event_id    INTEGER PRIMARY KEY REFERENCES events (id),  -- the event that produced it
    workflow_id TEXT    NOT NULL,
    step_id     TEXT    NOT NULL,
    bytes       INTEGER NOT NULL,
    output      TEXT    NOT NULL
);
-- The newest output of a step is the one its state shows.
CREATE INDEX outputs_by_step ON outputs (workflow_id, step_id, event_id);
