//! Reading cairn's records back from JSON, field by field.
//!
//! `#[derive(Deserialize)]` writes, for every struct and every format it is read from, a
//! visitor for maps *and* one for sequences, with a field enum and its own error paths. The
//! browser reads workflow states, summaries and events on every page, and those visitors were
//! a good part of its WASM. The records here are read instead as a JSON object whose fields are
//! taken out by name ([`Fields`]): the fields may come in any order, unknown fields are
//! ignored, a missing or `null` optional field is `None`, and an error names its field.
//! Writing stays derived, so what is written and what is read are the same shapes, which the
//! round-trip tests check.

use std::{collections::BTreeMap, sync::Arc};

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, de::DeserializeOwned, de::Error as _};
use serde_json::{Map, Value};

use crate::{
    retry::RetryPolicy,
    spec::{StepDef, ValidSpec},
    state::{AttemptRecord, LogLine, Progress, StepState, WorkflowState},
    summary::WorkflowSummary,
};

/// The fields of one JSON object, taken out by name.
pub(crate) struct Fields(Map<String, Value>);

impl Fields {
    /// Reads an object from `deserializer` and builds a `T` from its fields.
    pub(crate) fn read<'de, D: Deserializer<'de>, T>(
        deserializer: D,
        build: fn(&mut Fields) -> Result<T, String>,
    ) -> Result<T, D::Error> {
        let mut fields = Fields(Map::deserialize(deserializer)?);
        build(&mut fields).map_err(D::Error::custom)
    }

    /// A field that must be there.
    pub(crate) fn required<T: DeserializeOwned>(&mut self, name: &str) -> Result<T, String> {
        let value = self
            .0
            .remove(name)
            .ok_or_else(|| format!("missing field `{name}`"))?;
        T::deserialize(value).map_err(|e| format!("field `{name}`: {e}"))
    }

    /// A field that may be missing or `null`.
    pub(crate) fn optional<T: DeserializeOwned>(
        &mut self,
        name: &str,
    ) -> Result<Option<T>, String> {
        match self.0.remove(name) {
            None | Some(Value::Null) => Ok(None),
            Some(value) => T::deserialize(value)
                .map(Some)
                .map_err(|e| format!("field `{name}`: {e}")),
        }
    }

    /// A field that may be missing or `null`, then `default`.
    pub(crate) fn or<T: DeserializeOwned>(&mut self, name: &str, default: T) -> Result<T, String> {
        Ok(self.optional(name)?.unwrap_or(default))
    }

    /// A timestamp that must be there, read strictly as RFC 3339 (see [`crate::rfc3339`]).
    pub(crate) fn time(&mut self, name: &str) -> Result<DateTime<Utc>, String> {
        let text: String = self.required(name)?;
        crate::rfc3339::parse(&text).map_err(|e| format!("field `{name}`: {e}"))
    }

    /// A timestamp that may be missing or `null`.
    pub(crate) fn optional_time(&mut self, name: &str) -> Result<Option<DateTime<Utc>>, String> {
        let text: Option<String> = self.optional(name)?;
        text.map(|t| crate::rfc3339::parse(&t).map_err(|e| format!("field `{name}`: {e}")))
            .transpose()
    }
}

/// `impl Deserialize` for a record read by a `fn(&mut Fields) -> Result<Self, String>`.
macro_rules! read_by_fields {
    ($($ty:ty => $build:expr;)*) => {$(
        impl<'de> Deserialize<'de> for $ty {
            fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
                Fields::read(deserializer, $build)
            }
        }
    )*};
}

read_by_fields! {
    // A spec as `workflow.created` events and states carry it (already validated: specs
    // people write are read and checked by `spec::parse_spec`).
    ValidSpec => |f| Ok(ValidSpec {
        name: f.required("name")?,
        inputs: f.or("inputs", BTreeMap::new())?,
        steps: f.required("steps")?,
    });
    StepDef => |f| Ok(StepDef {
        id: f.required("id")?,
        role: f.required("role")?,
        task: f.required("task")?,
        deps: f.or("deps", vec![])?,
        retry: f.or("retry", RetryPolicy::default())?,
        timeout_s: f.required("timeout_s")?,
        params: f.or("params", Map::new())?,
    });
    // Every field defaults to the base policy's.
    RetryPolicy => |f| {
        let base = RetryPolicy::default();
        Ok(RetryPolicy {
            max_attempts: f.or("max_attempts", base.max_attempts)?,
            initial_interval_ms: f.or("initial_interval_ms", base.initial_interval_ms)?,
            backoff_factor: f.or("backoff_factor", base.backoff_factor)?,
            max_interval_ms: f.or("max_interval_ms", base.max_interval_ms)?,
            jitter: f.or("jitter", base.jitter)?,
            non_retryable: f.or("non_retryable", base.non_retryable)?,
            on_exhausted: f.or("on_exhausted", base.on_exhausted)?,
        })
    };
    AttemptRecord => |f| Ok(AttemptRecord {
        attempt: f.required("attempt")?,
        started_at: f.time("started_at")?,
        finished_at: f.optional_time("finished_at")?,
        error: f.optional("error")?,
        duration_ms: f.optional("duration_ms")?,
    });
    LogLine => |f| Ok(LogLine {
        attempt: f.required("attempt")?,
        stream: f.required("stream")?,
        line: f.required("line")?,
        at: f.time("at")?,
    });
    StepState => |f| Ok(StepState {
        id: f.required("id")?,
        role: f.required("role")?,
        deps: f.required("deps")?,
        status: f.required("status")?,
        attempt: f.required("attempt")?,
        max_attempts: f.required("max_attempts")?,
        task: f.optional("task")?,
        task_bytes: f.optional("task_bytes")?,
        session_id: f.optional("session_id")?,
        output: f.optional("output")?,
        output_bytes: f.optional("output_bytes")?,
        error: f.optional("error")?,
        started_at: f.optional_time("started_at")?,
        finished_at: f.optional_time("finished_at")?,
        duration_ms: f.optional("duration_ms")?,
        next_attempt_at: f.optional_time("next_attempt_at")?,
        attempts: f.required("attempts")?,
        logs: f.required("logs")?,
    });
    Progress => |f| Ok(Progress {
        done: f.required("done")?,
        total: f.required("total")?,
        running: f.required("running")?,
        failed: f.required("failed")?,
    });
    WorkflowState => |f| Ok(WorkflowState {
        id: f.required("id")?,
        name: f.required("name")?,
        // States stored before workspaces existed belong to the default one.
        workspace: f.or("workspace", crate::DEFAULT_WORKSPACE.to_string())?,
        status: f.required("status")?,
        spec: f.optional::<ValidSpec>("spec")?.map(Arc::new),
        inputs: f.required::<BTreeMap<String, String>>("inputs")?,
        steps: f.required("steps")?,
        created_at: f.optional_time("created_at")?,
        started_at: f.optional_time("started_at")?,
        finished_at: f.optional_time("finished_at")?,
        error: f.optional("error")?,
        last_event_id: f.required("last_event_id")?,
        updated_at: f.optional_time("updated_at")?,
    });
    WorkflowSummary => |f| Ok(WorkflowSummary {
        id: f.required("id")?,
        name: f.required("name")?,
        status: f.required("status")?,
        progress: f.required("progress")?,
        current_steps: f.required("current_steps")?,
        next_attempt_at: f.optional_time("next_attempt_at")?,
        error: f.optional("error")?,
        created_at: f.optional_time("created_at")?,
        started_at: f.optional_time("started_at")?,
        finished_at: f.optional_time("finished_at")?,
        updated_at: f.optional_time("updated_at")?,
        last_event_id: f.required("last_event_id")?,
    });
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn fields_come_in_any_order_and_unknown_ones_are_ignored() {
        let p: Progress = serde_json::from_value(
            json!({"failed": 1, "extra": [1, 2], "running": 0, "total": 4, "done": 2}),
        )
        .unwrap();
        assert_eq!(
            p,
            Progress {
                done: 2,
                total: 4,
                running: 0,
                failed: 1
            }
        );
    }

    #[test]
    fn optional_fields_may_be_missing_or_null_and_errors_name_their_field() {
        let a: AttemptRecord = serde_json::from_value(
            json!({"attempt": 2, "started_at": "2026-01-01T12:00:00Z", "error": null}),
        )
        .unwrap();
        assert_eq!((a.attempt, a.finished_at, a.error), (2, None, None));

        let missing = serde_json::from_value::<AttemptRecord>(json!({"attempt": 2})).unwrap_err();
        assert!(
            missing.to_string().contains("missing field `started_at`"),
            "{missing}"
        );
        let bad_time = serde_json::from_value::<LogLine>(
            json!({"attempt": 1, "stream": "stdout", "line": "x", "at": "noon"}),
        )
        .unwrap_err();
        assert!(bad_time.to_string().contains("field `at`"), "{bad_time}");
        let bad_type =
            serde_json::from_str::<Progress>(r#"{"done":"two","total":4,"running":0,"failed":0}"#)
                .unwrap_err();
        assert!(bad_type.to_string().contains("field `done`"), "{bad_type}");
        assert!(serde_json::from_str::<Progress>("[1,2,3,4]").is_err());
    }

    #[test]
    fn a_spec_reads_back_as_written_and_a_retry_policy_fills_in_the_base_policy() {
        let spec = crate::spec::parse_spec(
            r#"{"name": "ship", "inputs": {"f": "login"},
                "steps": [{"id": "a", "role": "architect", "task": "Design {inputs.f}",
                           "retry": {"max_attempts": 5, "on_exhausted": "pause"},
                           "params": {"duration_ms": 10}},
                          {"id": "b", "role": "developer", "task": "{a.output}", "deps": ["a"]}]}"#,
            &Default::default(),
        )
        .unwrap();
        let text = serde_json::to_string(&spec).unwrap();
        assert_eq!(serde_json::from_str::<ValidSpec>(&text).unwrap(), spec);

        let policy: RetryPolicy =
            serde_json::from_value(json!({"max_attempts": 7, "jitter": false})).unwrap();
        assert_eq!(
            policy,
            RetryPolicy {
                max_attempts: 7,
                jitter: false,
                ..RetryPolicy::default()
            }
        );
        let step: StepDef = serde_json::from_value(
            json!({"id": "a", "role": "r", "task": "t", "timeout_s": 60, "deps": null}),
        )
        .unwrap();
        assert_eq!(
            (step.deps, step.retry, step.params),
            (vec![], RetryPolicy::default(), Map::new())
        );
        let bad = serde_json::from_value::<StepDef>(json!({"id": "a", "role": "r", "task": "t"}))
            .unwrap_err();
        assert!(
            bad.to_string().contains("missing field `timeout_s`"),
            "{bad}"
        );
        let bad =
            serde_json::from_value::<RetryPolicy>(json!({"on_exhausted": "explode"})).unwrap_err();
        assert!(bad.to_string().contains("field `on_exhausted`"), "{bad}");
    }
}
