//! Workflow specs: the types a parsed spec is made of, and the parse entry points.
//!
//! A [`ValidSpec`] is only ever produced by [`parse_spec`] / [`parse_spec_value`], which check
//! everything once and report every problem with a JSON path; code that holds a `ValidSpec`
//! does not re-check it. The fields are public so they can be read (and so the type can travel
//! inside `workflow.created` events), but building one by hand bypasses validation.
//!
//! The walk itself lives in the private `validate` module.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::fmt;

use serde::{Deserialize, Serialize};
use serde_json::Value;

use crate::template::{Template, TemplateError};

// The retry policy is part of a spec; its type and maths live in `retry`.
pub use crate::retry::{
    MAX_BACKOFF_FACTOR, MAX_INTERVAL_MS, OnExhausted, RetryOverrides, RetryPolicy,
};
pub(crate) use crate::retry::{factor_message, interval_order_message, range_message};

/// The longest step timeout, in seconds (a week).
pub const MAX_TIMEOUT_S: u64 = 604_800;
/// How deeply a step's `params` may nest. Deeper values are rejected so that cloning and
/// serializing them (both recursive) can never exhaust the stack.
pub const MAX_PARAMS_DEPTH: usize = 32;

/// Size limits that keep one spec from swallowing the server (or the browser).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(default)]
pub struct Limits {
    /// Most steps in one workflow (500).
    pub max_steps: usize,
    /// Largest spec text, in bytes (1 MiB). Checked before parsing.
    pub max_spec_bytes: usize,
    /// Largest task template, and largest input value, in bytes (64 KiB).
    pub max_task_bytes: usize,
    /// Most inputs (100).
    pub max_inputs: usize,
    /// Largest `max_attempts` a spec may ask for (100).
    pub max_attempts: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            max_steps: 500,
            max_spec_bytes: 1024 * 1024,
            max_task_bytes: 64 * 1024,
            max_inputs: 100,
            max_attempts: 100,
        }
    }
}

/// What parsing needs to know about the place it runs in.
#[derive(Clone, Debug, PartialEq)]
pub struct ParseOptions {
    /// The roles the server has runners for. `None` skips the role check (the browser does
    /// not know the server's configuration; the server checks again on submit).
    pub known_roles: Option<BTreeSet<String>>,
    /// Size limits.
    pub limits: Limits,
    /// The retry policy under the spec's own `defaults.retry` (the server's configuration).
    pub base_retry: RetryPolicy,
    /// A step's timeout when neither it nor the spec's `defaults` name one (600 s).
    pub default_timeout_s: u64,
}

impl Default for ParseOptions {
    fn default() -> Self {
        ParseOptions {
            known_roles: None,
            limits: Limits::default(),
            base_retry: RetryPolicy::default(),
            default_timeout_s: 600,
        }
    }
}

/// A workflow spec that passed every check.
///
/// Only parsing builds one; constructing it by hand (or deserializing it from anywhere but
/// our own event log) bypasses validation. The fold stays panic-free on such a spec anyway.
// Read back field by field (`crate::wire`).
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct ValidSpec {
    /// The workflow's display name. Defaults to the first step's id.
    pub name: String,
    /// The values `{inputs.NAME}` refers to.
    pub inputs: BTreeMap<String, String>,
    /// The steps, in the order the spec gave them.
    pub steps: Vec<StepDef>,
}

/// One step of a [`ValidSpec`], with everything resolved.
// Read back field by field (`crate::wire`).
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct StepDef {
    /// Unique within the workflow; matches [`is_identifier`] and is not `inputs`.
    pub id: String,
    /// Which runner runs it (the server's configuration binds roles to runners).
    pub role: String,
    /// The task template text (see [`Template`]).
    pub task: String,
    /// Steps that must be done (completed or skipped) before this one starts.
    pub deps: Vec<String>,
    /// Fully resolved: step `retry` over spec `defaults.retry` over the server's base policy.
    pub retry: RetryPolicy,
    /// How long one attempt may run.
    pub timeout_s: u64,
    /// Free-form runner parameters (e.g. the simulator's `duration_ms`).
    pub params: serde_json::Map<String, Value>,
}

impl StepDef {
    /// The parsed task template. Never fails for a step that came out of parsing.
    pub fn template(&self) -> Result<Template, TemplateError> {
        Template::parse(&self.task)
    }
}

impl ValidSpec {
    /// Parses a spec from JSON or YAML text; the same as [`parse_spec`].
    pub fn parse(text: &str, opts: &ParseOptions) -> Result<ValidSpec, SpecErrors> {
        parse_spec(text, opts)
    }

    /// The step with this id.
    pub fn step(&self, id: &str) -> Option<&StepDef> {
        self.steps.iter().find(|s| s.id == id)
    }

    /// The position of the step with this id in [`ValidSpec::steps`].
    pub fn index_of(&self, id: &str) -> Option<usize> {
        self.steps.iter().position(|s| s.id == id)
    }

    /// Every step that depends on `id`, directly or through other steps (not `id` itself).
    pub fn descendants(&self, id: &str) -> BTreeSet<String> {
        let mut children: BTreeMap<&str, Vec<&str>> = BTreeMap::new();
        for step in &self.steps {
            for dep in &step.deps {
                children.entry(dep.as_str()).or_default().push(&step.id);
            }
        }
        reach(id, |from| children.get(from).into_iter().flatten().copied())
    }

    /// Every step `id` depends on, directly or through other steps (not `id` itself).
    pub fn ancestors(&self, id: &str) -> BTreeSet<String> {
        let deps: BTreeMap<&str, &[String]> = self
            .steps
            .iter()
            .map(|s| (s.id.as_str(), s.deps.as_slice()))
            .collect();
        reach(id, |from| {
            deps.get(from)
                .into_iter()
                .flat_map(|d| d.iter().map(String::as_str))
        })
    }
}

/// The ids reachable from `id` along `next`, without `id` itself. Breadth-first with a
/// visited set, so a hand-made spec with a cycle still terminates.
fn reach<'a, I>(id: &str, next: impl Fn(&str) -> I) -> BTreeSet<String>
where
    I: Iterator<Item = &'a str>,
{
    let mut found = BTreeSet::new();
    let mut queue = VecDeque::from([id.to_string()]);
    while let Some(from) = queue.pop_front() {
        for to in next(&from) {
            if to != id && found.insert(to.to_string()) {
                queue.push_back(to.to_string());
            }
        }
    }
    found
}

/// Whether `s` is a valid step id or input name: `^[A-Za-z_][A-Za-z0-9_-]{0,63}$`.
pub fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    let first_ok = chars
        .next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == '_');
    first_ok && s.len() <= 64 && chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// One problem with a spec.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{}", display_error(path, message))]
pub struct SpecError {
    /// Where: a JSON path into the document as submitted (`steps[1].deps[0]`, `inputs.feature`,
    /// `name`); `""` for the whole document (size, syntax errors).
    pub path: String,
    /// What is wrong, for a person.
    pub message: String,
}

fn display_error(path: &str, message: &str) -> String {
    if path.is_empty() {
        message.to_string()
    } else {
        format!("{path}: {message}")
    }
}

impl SpecError {
    /// A problem at `path`.
    pub fn new(path: impl Into<String>, message: impl Into<String>) -> Self {
        SpecError {
            path: path.into(),
            message: message.into(),
        }
    }
}

/// Every problem found in a spec (never empty when returned as an error).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub struct SpecErrors {
    /// The problems, roughly in document order.
    pub errors: Vec<SpecError>,
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid workflow spec")?;
        for (i, e) in self.errors.iter().enumerate() {
            write!(f, "{} {e}", if i == 0 { ":" } else { ";" })?;
        }
        Ok(())
    }
}

impl SpecErrors {
    /// A single problem.
    pub fn single(path: impl Into<String>, message: impl Into<String>) -> Self {
        SpecErrors {
            errors: vec![SpecError::new(path, message)],
        }
    }

    /// Whether any problem sits at exactly `path`.
    pub fn has_path(&self, path: &str) -> bool {
        self.errors.iter().any(|e| e.path == path)
    }
}

/// Parses a spec from text, JSON or YAML.
///
/// Text longer than `limits.max_spec_bytes` is rejected before parsing. Text whose first
/// non-blank character is `{` or `[` is read as JSON; if that fails it is tried as YAML (a
/// flow-style YAML document looks the same), and when both fail the JSON error is reported.
/// Anything else is read as YAML. Then see [`parse_spec_value`].
///
/// The two halves are public for callers that load the YAML reader only when it is needed
/// (the browser): [`read_spec_text`], then [`read_spec_yaml`] when it says so.
pub fn parse_spec(text: &str, opts: &ParseOptions) -> Result<ValidSpec, SpecErrors> {
    let value = match read_spec_text(text, opts)? {
        SpecText::Json(value) => value,
        SpecText::Yaml { json_error } => read_spec_yaml(text, json_error)?,
    };
    parse_spec_value(&value, opts)
}

/// What [`read_spec_text`] made of a spec's text.
#[derive(Clone, Debug, PartialEq)]
pub enum SpecText {
    /// It is JSON, parsed.
    Json(Value),
    /// It has to be read as YAML (with [`read_spec_yaml`]); `json_error` is set when the text
    /// looked like JSON but was not, and is the error to report if YAML fails too.
    Yaml {
        /// The JSON parser's complaint, for text that starts like JSON.
        json_error: Option<String>,
    },
}

/// The first half of [`parse_spec`]: size and emptiness checks, and JSON.
pub fn read_spec_text(text: &str, opts: &ParseOptions) -> Result<SpecText, SpecErrors> {
    let limit = opts.limits.max_spec_bytes;
    if text.len() > limit {
        return Err(SpecErrors::single(
            "",
            format!("the spec is {} bytes; the limit is {limit}", text.len()),
        ));
    }
    let trimmed = text.trim_start();
    if trimmed.is_empty() {
        return Err(SpecErrors::single("", "the spec is empty"));
    }
    if !trimmed.starts_with(['{', '[']) {
        return Ok(SpecText::Yaml { json_error: None });
    }
    Ok(match serde_json::from_str::<Value>(text) {
        Ok(v) => SpecText::Json(v),
        Err(e) => SpecText::Yaml {
            json_error: Some(e.to_string()),
        },
    })
}

/// The second half of [`parse_spec`]: the text read as YAML. When it fails, the error is
/// `json_error` (the text looked like JSON) or the YAML parser's.
pub fn read_spec_yaml(text: &str, json_error: Option<String>) -> Result<Value, SpecErrors> {
    parse_yaml(text).map_err(|yaml| match json_error {
        Some(json) => SpecErrors::single("", format!("invalid JSON: {json}")),
        None => SpecErrors::single("", format!("invalid YAML: {yaml}")),
    })
}

/// Deepest nesting of `[`/`{` the YAML parser is given. The YAML parser takes time
/// quadratic in flow nesting (a quarter of a megabyte of `{"a":` took seconds), so deeper
/// text is refused before it gets there; serde would refuse it anyway past 128 levels.
/// Brackets inside strings count too, which only matters for absurd strings.
const MAX_YAML_FLOW_DEPTH: usize = 256;

fn parse_yaml(text: &str) -> Result<Value, String> {
    let mut depth = 0usize;
    for b in text.bytes() {
        match b {
            b'[' | b'{' => {
                depth += 1;
                if depth > MAX_YAML_FLOW_DEPTH {
                    return Err(format!("nested deeper than {MAX_YAML_FLOW_DEPTH} levels"));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    serde_norway::from_str::<Value>(text).map_err(|e| e.to_string())
}

/// Checks an already parsed JSON value and builds the [`ValidSpec`], or lists every problem.
///
/// Accepted shapes: a full spec `{"name", "inputs", "defaults", "steps": [...]}`; a single
/// step object (it has `task` or `role` and no `steps`; it may also carry `name`, `inputs` and
/// `defaults`) for a one-step workflow; or a bare array of steps. Paths in errors point into
/// the document as given (`steps[0].role`, `role`, `[0].role` for the three shapes).
///
/// Defaults: step `id` is `step1`, `step2`, ... by position; `deps` is empty; `name` is the
/// first step's id. Input values must be strings; numbers and booleans are accepted and
/// turned into their JSON text (`3`, `true`). `null` for an optional field means "absent"
/// (YAML's `deps:` with nothing after it). A value given directly (not from text) is measured
/// against `limits.max_spec_bytes` by its approximate JSON size.
pub fn parse_spec_value(value: &Value, opts: &ParseOptions) -> Result<ValidSpec, SpecErrors> {
    crate::validate::spec_from_value(value, opts)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_two_halves_tell_json_from_yaml_and_keep_the_json_error() {
        let opts = ParseOptions::default();
        let json = r#"{"steps": [{"id": "a", "role": "r", "task": "t"}]}"#;
        assert!(matches!(read_spec_text(json, &opts), Ok(SpecText::Json(_))));
        let yaml = "steps:\n  - {id: a, role: r, task: t}\n";
        assert_eq!(
            read_spec_text(yaml, &opts),
            Ok(SpecText::Yaml { json_error: None })
        );
        let v = read_spec_yaml(yaml, None).unwrap();
        assert_eq!(v["steps"][0]["id"], "a");
        // Flow-style YAML starts like JSON: JSON fails, YAML reads it.
        let flow = "{steps: [{id: a, role: r, task: t}]}";
        let SpecText::Yaml {
            json_error: Some(_),
        } = read_spec_text(flow, &opts).unwrap()
        else {
            panic!("flow YAML is not JSON")
        };
        assert!(parse_spec(flow, &opts).is_ok());
        // Broken JSON that is not YAML either reports the JSON error.
        let broken = r#"{"steps": [}"#;
        let SpecText::Yaml { json_error } = read_spec_text(broken, &opts).unwrap() else {
            panic!("broken JSON is not JSON")
        };
        let err = read_spec_yaml(broken, json_error).unwrap_err();
        assert!(err.errors[0].message.starts_with("invalid JSON"), "{err:?}");
        assert_eq!(parse_spec(broken, &opts).unwrap_err(), err);
        assert!(read_spec_text("  \n", &opts).is_err());
    }

    fn spec(edges: &[(&str, &[&str])]) -> ValidSpec {
        ValidSpec {
            name: "t".into(),
            inputs: BTreeMap::new(),
            steps: edges
                .iter()
                .map(|(id, deps)| StepDef {
                    id: id.to_string(),
                    role: "r".into(),
                    task: "t".into(),
                    deps: deps.iter().map(|d| d.to_string()).collect(),
                    retry: RetryPolicy::default(),
                    timeout_s: 1,
                    params: serde_json::Map::new(),
                })
                .collect(),
        }
    }

    fn set(items: &[&str]) -> BTreeSet<String> {
        items.iter().map(|s| s.to_string()).collect()
    }

    #[test]
    fn the_default_retry_policy_matches_the_original_system() {
        let p = RetryPolicy::default();
        assert_eq!(p.max_attempts, 3);
        assert_eq!(p.initial_interval_ms, 1000);
        assert_eq!(p.backoff_factor, 2.0);
        assert_eq!(p.max_interval_ms, 30_000);
        assert!(p.jitter);
        assert_eq!(p.non_retryable.len(), 4);
        assert_eq!(p.on_exhausted, OnExhausted::Fail);
        assert!(p.problems(&Limits::default()).is_empty());
    }

    #[test]
    fn overlay_replaces_only_the_fields_that_are_set() {
        let o = RetryOverrides {
            max_attempts: Some(7),
            non_retryable: Some(vec![]),
            on_exhausted: Some(OnExhausted::Pause),
            ..Default::default()
        };
        let p = RetryPolicy::default().overlay(&o);
        assert_eq!(p.max_attempts, 7);
        assert!(p.non_retryable.is_empty());
        assert_eq!(p.on_exhausted, OnExhausted::Pause);
        assert_eq!(p.initial_interval_ms, 1000);
        assert_eq!(
            RetryPolicy::default().overlay(&RetryOverrides::default()),
            RetryPolicy::default()
        );
    }

    #[test]
    fn retry_overrides_deserialize_strictly_and_partially() {
        let o: RetryOverrides =
            serde_json::from_str(r#"{"max_attempts": 2, "on_exhausted": "pause"}"#).unwrap();
        assert_eq!(o.max_attempts, Some(2));
        assert_eq!(o.on_exhausted, Some(OnExhausted::Pause));
        assert!(serde_json::from_str::<RetryOverrides>(r#"{"max_attempt": 2}"#).is_err());
    }

    #[test]
    fn policy_problems_name_each_bad_field() {
        let p = RetryPolicy {
            max_attempts: 0,
            initial_interval_ms: 5000,
            backoff_factor: f64::NAN,
            max_interval_ms: 10,
            ..Default::default()
        };
        let fields: Vec<_> = p
            .problems(&Limits::default())
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(
            fields,
            ["max_attempts", "backoff_factor", "max_interval_ms"]
        );
    }

    #[test]
    fn descendants_and_ancestors_follow_deps_transitively() {
        let s = spec(&[
            ("a", &[]),
            ("b", &["a"]),
            ("c", &["b"]),
            ("d", &["a", "c"]),
            ("e", &[]),
        ]);
        assert_eq!(s.descendants("a"), set(&["b", "c", "d"]));
        assert_eq!(s.descendants("c"), set(&["d"]));
        assert_eq!(s.descendants("e"), set(&[]));
        assert_eq!(s.ancestors("d"), set(&["a", "b", "c"]));
        assert_eq!(s.ancestors("a"), set(&[]));
        assert_eq!(s.index_of("c"), Some(2));
        assert_eq!(s.step("zz"), None);
    }

    #[test]
    fn graph_queries_terminate_on_a_hand_made_cycle() {
        let s = spec(&[("a", &["c"]), ("b", &["a"]), ("c", &["b"])]);
        assert_eq!(s.descendants("a"), set(&["b", "c"]));
        assert_eq!(s.ancestors("a"), set(&["b", "c"]));
    }

    #[test]
    fn identifiers_follow_the_documented_pattern() {
        for ok in ["a", "_x", "design", "build-app", "s_1", &"a".repeat(64)] {
            assert!(is_identifier(ok), "{ok}");
        }
        for bad in ["", "1a", "-a", "a b", "a.b", "é", &"a".repeat(65)] {
            assert!(!is_identifier(bad), "{bad}");
        }
    }

    #[test]
    fn spec_errors_display_every_problem_with_its_path() {
        let e = SpecErrors {
            errors: vec![SpecError::new("name", "bad"), SpecError::new("", "worse")],
        };
        assert_eq!(e.to_string(), "invalid workflow spec: name: bad; worse");
        assert!(e.has_path("name"));
    }
}
