//! The spec walk: turns a `serde_json::Value` (YAML is converted to one first) into a
//! [`ValidSpec`], or into the list of *every* problem, each with a JSON path into the
//! document as submitted.
//!
//! It is written by hand rather than with serde derives because serde stops at the first
//! error and knows nothing of the graph; here each reader records a problem and carries on
//! with a placeholder, and the graph checks run over whatever could be read.

mod graph;
mod read;
mod step;

#[cfg(test)]
mod proptests;
#[cfg(test)]
mod tests;

use std::collections::BTreeMap;

use serde_json::{Map, Value};

use self::read::{
    Problems, approx_size, clip, get, index_path, key_path, object, string, unknown_fields, whole,
};
use self::step::{Inherited, RawStep, read_retry, read_step};
use crate::spec::{MAX_TIMEOUT_S, ParseOptions, SpecErrors, StepDef, ValidSpec, is_identifier};

const SPEC_FIELDS: [&str; 4] = ["name", "inputs", "defaults", "steps"];
/// The workflow fields a single-step spec may carry next to the step's own.
const SINGLE_EXTRA_FIELDS: [&str; 3] = ["name", "inputs", "defaults"];
const DEFAULTS_FIELDS: [&str; 2] = ["timeout_s", "retry"];
/// Longest workflow name, in characters.
const MAX_NAME_CHARS: usize = 200;

/// See [`crate::parse_spec_value`].
pub(crate) fn spec_from_value(value: &Value, opts: &ParseOptions) -> Result<ValidSpec, SpecErrors> {
    let limit = opts.limits.max_spec_bytes;
    if approx_size(value, limit) > limit {
        let message = format!("the spec is larger than the limit of {limit} bytes");
        return Err(SpecErrors::single("", message));
    }
    let mut p = Problems::default();
    // Which shape, where its workflow fields are, and where its steps are.
    let (workflow, steps) = match value {
        Value::Array(items) => (None, StepsAt::List("", items)),
        Value::Object(map) if is_single_step(map) => (Some(map), StepsAt::Single(value)),
        Value::Object(map) => {
            unknown_fields(&mut p, "", map, &SPEC_FIELDS);
            let steps = match get(map, "steps") {
                None => {
                    p.push("steps", "missing field 'steps'");
                    StepsAt::Unreadable
                }
                Some(Value::Array(items)) => StepsAt::List("steps", items),
                Some(other) => {
                    read::wrong_type(&mut p, "steps", "an array of steps", other);
                    StepsAt::Unreadable
                }
            };
            (Some(map), steps)
        }
        other => {
            let message = format!(
                "expected a workflow spec (an object), a single step (an object with 'role' and \
                 'task') or an array of steps; found {}",
                read::kind(other)
            );
            return Err(SpecErrors::single("", message));
        }
    };

    let name = workflow.and_then(|map| read_name(&mut p, map));
    let inputs = workflow
        .map(|map| read_inputs(&mut p, map, opts))
        .unwrap_or_default();
    let inherited = read_defaults(&mut p, workflow, opts);
    let raw = read_steps(&mut p, &steps, opts, &inherited);
    let edges = graph::check(&mut p, &raw, &inputs);

    if !p.is_empty() {
        return Err(SpecErrors {
            errors: p.into_vec(),
        });
    }
    // Deps come back as indices; by now every id is unique, so index -> id is exact.
    let ids: Vec<String> = raw.iter().map(|s| s.id.clone()).collect();
    let steps: Vec<StepDef> = raw
        .into_iter()
        .zip(edges)
        .map(|(s, deps)| StepDef {
            deps: deps.iter().filter_map(|&j| ids.get(j).cloned()).collect(),
            id: s.id,
            role: s.role,
            task: s.task,
            retry: s.retry,
            timeout_s: s.timeout_s,
            params: s.params,
        })
        .collect();
    Ok(ValidSpec {
        name: name
            .or_else(|| ids.first().cloned())
            .unwrap_or_else(|| "workflow".into()),
        inputs,
        steps,
    })
}

/// Where the steps of a spec are.
enum StepsAt<'a> {
    /// A list, at this path (`"steps"`, or `""` for a bare array).
    List(&'static str, &'a [Value]),
    /// The document itself is the one step.
    Single(&'a Value),
    /// `steps` is missing or not an array (already reported).
    Unreadable,
}

/// A step object rather than a whole spec: it has a step's own fields and no `steps`.
fn is_single_step(map: &Map<String, Value>) -> bool {
    !map.contains_key("steps") && (map.contains_key("task") || map.contains_key("role"))
}

fn read_name(p: &mut Problems, map: &Map<String, Value>) -> Option<String> {
    let name = string(p, "name", get(map, "name")?)?;
    if name.trim().is_empty() {
        p.push("name", "name must not be empty");
        return None;
    }
    if name.chars().count() > MAX_NAME_CHARS {
        p.push(
            "name",
            format!("name is longer than {MAX_NAME_CHARS} characters"),
        );
        return None;
    }
    Some(name.to_string())
}

fn read_inputs(
    p: &mut Problems,
    map: &Map<String, Value>,
    opts: &ParseOptions,
) -> BTreeMap<String, String> {
    let mut inputs = BTreeMap::new();
    let Some(v) = get(map, "inputs") else {
        return inputs;
    };
    let Some(given) = object(p, "inputs", v) else {
        return inputs;
    };
    let limits = &opts.limits;
    if given.len() > limits.max_inputs {
        p.push(
            "inputs",
            format!("{} inputs; the limit is {}", given.len(), limits.max_inputs),
        );
    }
    for (name, value) in given {
        let path = key_path("inputs", name);
        if !is_identifier(name) {
            p.push(
                &path,
                format!(
                    "'{}' is not a valid input name: use letters, digits, '_' and '-', starting \
                     with a letter or '_', at most 64 characters",
                    clip(name)
                ),
            );
        }
        // Numbers and booleans are accepted as their JSON text: YAML turns `port: 8080`
        // into a number and the person meant the text.
        let text = match value {
            Value::String(s) => s.clone(),
            Value::Number(n) => n.to_string(),
            Value::Bool(b) => b.to_string(),
            other => {
                read::wrong_type(p, &path, "a string", other);
                continue;
            }
        };
        if text.len() > limits.max_task_bytes {
            let message = format!(
                "{} bytes; the limit is {}",
                text.len(),
                limits.max_task_bytes
            );
            p.push(&path, message);
        }
        inputs.insert(name.clone(), text);
    }
    inputs
}

fn read_defaults(
    p: &mut Problems,
    workflow: Option<&Map<String, Value>>,
    opts: &ParseOptions,
) -> Inherited {
    let mut inherited = Inherited {
        retry: opts.base_retry.clone(),
        timeout_s: opts.default_timeout_s,
    };
    let Some(v) = workflow.and_then(|map| get(map, "defaults")) else {
        return inherited;
    };
    let Some(map) = object(p, "defaults", v) else {
        return inherited;
    };
    unknown_fields(p, "defaults", map, &DEFAULTS_FIELDS);
    if let Some(v) = get(map, "timeout_s") {
        let timeout = whole(p, "defaults.timeout_s", v, 1, MAX_TIMEOUT_S);
        inherited.timeout_s = timeout.unwrap_or(inherited.timeout_s);
    }
    if let Some(v) = get(map, "retry") {
        inherited.retry = read_retry(p, "defaults.retry", v, &opts.base_retry, &opts.limits);
    }
    inherited
}

fn read_steps(
    p: &mut Problems,
    steps: &StepsAt<'_>,
    opts: &ParseOptions,
    inherited: &Inherited,
) -> Vec<RawStep> {
    match *steps {
        StepsAt::Single(value) => {
            vec![read_step(
                p,
                "",
                0,
                value,
                opts,
                inherited,
                &SINGLE_EXTRA_FIELDS,
            )]
        }
        StepsAt::Unreadable => Vec::new(),
        StepsAt::List(path, items) => {
            let max = opts.limits.max_steps;
            if items.len() > max {
                // Reading them all would only bury this under more messages.
                p.push(path, format!("{} steps; the limit is {max}", items.len()));
                return Vec::new();
            }
            if items.is_empty() {
                p.push(path, "a workflow needs at least one step");
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| read_step(p, &index_path(path, i), i, item, opts, inherited, &[]))
                .collect()
        }
    }
}
