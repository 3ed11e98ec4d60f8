//! # cairn — the workflow model
//!
//! Everything that says what a workflow *is* and what an event *does* to it, with no IO, no
//! clock and no randomness, so the server and the browser (wasm32) run the very same code:
//! time and random numbers are always passed in.
//!
//! The one idea: **state is a fold over events.** [`WorkflowState::apply`] is the only code
//! that says what an event does. The server derives and checkpoints state with it, the browser
//! folds the SSE stream with it, and replay is the same fold stopped early.
//!
//! # Layout
//!
//! - [`spec`]: the workflow spec types ([`ValidSpec`], [`StepDef`], [`RetryPolicy`], ...) and
//!   the entry points [`parse_spec`] / [`parse_spec_value`]. A [`ValidSpec`] only comes out
//!   of parsing ("parse, don't validate"): code after the parse never re-checks it.
//! - `validate` (private): the hand-written walk over a JSON value that reports *every*
//!   problem of a spec with a JSON path (`steps[1].deps[0]`), and the graph checks (unknown
//!   deps, cycles, templates naming non-ancestors).
//! - [`template`]: the `{inputs.NAME}` / `{STEP.output}` / `{STEP.session_id}` task templates.
//! - [`event`]: the events of the log ([`Event`], [`EventRecord`]) and their wire shape.
//! - [`state`]: [`WorkflowState`] and its fold [`WorkflowState::apply`], plus the derived
//!   queries a scheduler and a UI need (ready steps, next wake-up, progress).
//! - [`summary`]: [`WorkflowSummary`], the list view derived from a state.
//! - [`retry`]: the retry policy ([`RetryPolicy`], [`RetryOverrides`]) and its maths.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod event;
pub mod retry;
pub mod rfc3339;
pub mod spec;
pub mod state;
pub mod summary;
pub mod template;
mod validate;
mod wire;

#[cfg(test)]
mod testkit;

pub use event::{Event, EventRecord, LogStream};

/// The workspace of everything on a server without tokens, and of workflows stored before
/// workspaces existed.
pub const DEFAULT_WORKSPACE: &str = "default";
pub use retry::{ErrorClass, RetryDecision};
pub use spec::{
    Limits, MAX_BACKOFF_FACTOR, MAX_INTERVAL_MS, MAX_PARAMS_DEPTH, MAX_TIMEOUT_S, OnExhausted,
    ParseOptions, RetryOverrides, RetryPolicy, SpecError, SpecErrors, SpecText, StepDef, ValidSpec,
    is_identifier, parse_spec, parse_spec_value, read_spec_text, read_spec_yaml,
};
pub use state::{
    ApplyError, AttemptRecord, LOG_LINE_MAX_BYTES, LOG_TAIL, LogLine, MAX_ATTEMPT_RECORDS,
    OUTPUT_PREVIEW_BYTES, Progress, StepState, StepStatus, WorkflowState, WorkflowStatus, preview,
};
pub use summary::WorkflowSummary;
pub use template::{Template, TemplateContext, TemplateError, TemplateRef};
