//! Reading one step object, and the retry settings shared by steps and `defaults`.

use serde_json::{Map, Value};

use super::read::{
    Problems, array, boolean, clip, deeper_than, get, index_path, key_path, number, object, string,
    unknown_fields, whole,
};
use crate::spec::{
    Limits, MAX_BACKOFF_FACTOR, MAX_INTERVAL_MS, MAX_PARAMS_DEPTH, MAX_TIMEOUT_S, OnExhausted,
    ParseOptions, RetryOverrides, RetryPolicy, factor_message, interval_order_message,
    is_identifier,
};
use crate::template::Template;

/// The fields a step object may have.
pub(super) const STEP_FIELDS: [&str; 7] =
    ["id", "role", "task", "deps", "retry", "timeout_s", "params"];
const RETRY_FIELDS: [&str; 7] = [
    "max_attempts",
    "initial_interval_ms",
    "backoff_factor",
    "max_interval_ms",
    "jitter",
    "non_retryable",
    "on_exhausted",
];

/// What a step inherits: the retry policy and timeout after the spec's `defaults`.
pub(super) struct Inherited {
    pub(super) retry: RetryPolicy,
    pub(super) timeout_s: u64,
}

/// A step as read, problems or not; the graph checks run over these.
pub(super) struct RawStep {
    /// Where the step object is (`steps[1]`, `[1]`, or `""` for a single-step spec).
    pub(super) path: String,
    /// The id given (even a malformed one, so deps naming it do not pile up more errors),
    /// or the positional default.
    pub(super) id: String,
    /// Where the id is, or the step's own path when it was defaulted.
    pub(super) id_path: String,
    /// Whether the spec gave the id (as opposed to the positional default).
    pub(super) id_given: bool,
    pub(super) role: String,
    pub(super) task: String,
    /// The parsed task, when it parsed.
    pub(super) template: Option<Template>,
    /// Each dep with its path.
    pub(super) deps: Vec<(String, String)>,
    pub(super) retry: RetryPolicy,
    pub(super) timeout_s: u64,
    pub(super) params: Map<String, Value>,
}

/// Reads step number `index` (from 0) at `path`. `extra` lists further fields allowed next
/// to the step's own (the workflow fields of a single-step spec).
pub(super) fn read_step(
    p: &mut Problems,
    path: &str,
    index: usize,
    value: &Value,
    opts: &ParseOptions,
    inherited: &Inherited,
    extra: &[&str],
) -> RawStep {
    let mut step = RawStep {
        path: path.to_string(),
        id: format!("step{}", index + 1),
        id_path: path.to_string(),
        id_given: false,
        role: String::new(),
        task: String::new(),
        template: None,
        deps: Vec::new(),
        retry: inherited.retry.clone(),
        timeout_s: inherited.timeout_s,
        params: Map::new(),
    };
    let Some(map) = object(p, path, value) else {
        return step;
    };
    let allowed: Vec<&str> = STEP_FIELDS.iter().chain(extra).copied().collect();
    unknown_fields(p, path, map, &allowed);

    if let Some(v) = get(map, "id") {
        let id_path = key_path(path, "id");
        if let Some(id) = string(p, &id_path, v) {
            check_id(p, &id_path, id);
            step.id = id.to_string();
            step.id_path = id_path;
            step.id_given = true;
        }
    }
    step.role = read_role(p, path, map, opts).unwrap_or_default();
    if let Some((task, template)) = read_task(p, path, map, &opts.limits) {
        step.task = task.to_string();
        step.template = template;
    }
    if let Some(v) = get(map, "deps") {
        let deps_path = key_path(path, "deps");
        for (i, dep) in array(p, &deps_path, v)
            .unwrap_or_default()
            .iter()
            .enumerate()
        {
            let dep_path = index_path(&deps_path, i);
            match dep {
                Value::String(d) => step.deps.push((d.clone(), dep_path)),
                other => super::read::wrong_type(p, &dep_path, "a step id (a string)", other),
            }
        }
    }
    if let Some(v) = get(map, "retry") {
        step.retry = read_retry(
            p,
            &key_path(path, "retry"),
            v,
            &inherited.retry,
            &opts.limits,
        );
    }
    if let Some(v) = get(map, "timeout_s") {
        let timeout = whole(p, &key_path(path, "timeout_s"), v, 1, MAX_TIMEOUT_S);
        step.timeout_s = timeout.unwrap_or(step.timeout_s);
    }
    if let Some(v) = get(map, "params") {
        let params_path = key_path(path, "params");
        if let Some(params) = object(p, &params_path, v) {
            if deeper_than(v, MAX_PARAMS_DEPTH) {
                p.push(
                    params_path,
                    format!("nested deeper than {MAX_PARAMS_DEPTH} levels"),
                );
            } else {
                step.params = params.clone();
            }
        }
    }
    step
}

fn check_id(p: &mut Problems, path: &str, id: &str) {
    if id == "inputs" {
        p.push(
            path,
            "'inputs' is reserved (templates use {inputs.NAME}); pick another id",
        );
    } else if !is_identifier(id) {
        p.push(
            path,
            format!(
                "'{}' is not a valid step id: use letters, digits, '_' and '-', starting with \
                 a letter or '_', at most 64 characters",
                clip(id)
            ),
        );
    }
}

fn read_role(
    p: &mut Problems,
    path: &str,
    map: &Map<String, Value>,
    opts: &ParseOptions,
) -> Option<String> {
    let role_path = key_path(path, "role");
    let Some(v) = get(map, "role") else {
        p.push(role_path, "missing field 'role'");
        return None;
    };
    let role = string(p, &role_path, v)?;
    if role.trim().is_empty() {
        p.push(role_path, "role must not be empty");
        return None;
    }
    if let Some(known) = opts.known_roles.as_ref().filter(|k| !k.contains(role)) {
        let hint = if known.is_empty() {
            "no roles are configured".to_string()
        } else {
            let list: Vec<&str> = known.iter().map(String::as_str).collect();
            format!("known roles: {}", list.join(", "))
        };
        p.push(role_path, format!("unknown role '{}'; {hint}", clip(role)));
        return None;
    }
    Some(role.to_string())
}

fn read_task<'a>(
    p: &mut Problems,
    path: &str,
    map: &'a Map<String, Value>,
    limits: &Limits,
) -> Option<(&'a str, Option<Template>)> {
    let task_path = key_path(path, "task");
    let Some(v) = get(map, "task") else {
        p.push(task_path, "missing field 'task'");
        return None;
    };
    let task = string(p, &task_path, v)?;
    if task.trim().is_empty() {
        p.push(task_path, "task must not be empty");
        return None;
    }
    if task.len() > limits.max_task_bytes {
        let message = format!(
            "task is {} bytes; the limit is {}",
            task.len(),
            limits.max_task_bytes
        );
        p.push(task_path, message);
        return None;
    }
    match Template::parse(task) {
        Ok(t) => Some((task, Some(t))),
        Err(e) => {
            p.push(task_path, format!("invalid template: {e}"));
            Some((task, None))
        }
    }
}

/// Reads a `retry` object at `path` and lays it over `under`.
pub(super) fn read_retry(
    p: &mut Problems,
    path: &str,
    value: &Value,
    under: &RetryPolicy,
    limits: &Limits,
) -> RetryPolicy {
    let Some(map) = object(p, path, value) else {
        return under.clone();
    };
    let o = read_overrides(p, path, map, limits);
    let resolved = under.overlay(&o);
    // Checked after the overlay: each bound can come from a different level. Reported where
    // this level set one of the two, so a bad pair is reported once, where it was made.
    let touched = o.initial_interval_ms.is_some() || o.max_interval_ms.is_some();
    if touched && resolved.max_interval_ms < resolved.initial_interval_ms {
        let field = if o.max_interval_ms.is_some() {
            "max_interval_ms"
        } else {
            "initial_interval_ms"
        };
        p.push(key_path(path, field), interval_order_message(&resolved));
    }
    resolved
}

fn read_overrides(
    p: &mut Problems,
    path: &str,
    map: &Map<String, Value>,
    limits: &Limits,
) -> RetryOverrides {
    unknown_fields(p, path, map, &RETRY_FIELDS);
    let at = |field: &str| key_path(path, field);
    let mut o = RetryOverrides::default();
    if let Some(v) = get(map, "max_attempts") {
        let n = whole(p, &at("max_attempts"), v, 1, u64::from(limits.max_attempts));
        o.max_attempts = n.and_then(|n| u32::try_from(n).ok());
    }
    if let Some(v) = get(map, "initial_interval_ms") {
        o.initial_interval_ms = whole(p, &at("initial_interval_ms"), v, 0, MAX_INTERVAL_MS);
    }
    if let Some(v) = get(map, "backoff_factor") {
        let field = at("backoff_factor");
        o.backoff_factor = number(p, &field, v).and_then(|f| {
            let ok = (1.0..=MAX_BACKOFF_FACTOR).contains(&f);
            if !ok {
                p.push(field, factor_message(f));
            }
            ok.then_some(f)
        });
    }
    if let Some(v) = get(map, "max_interval_ms") {
        o.max_interval_ms = whole(p, &at("max_interval_ms"), v, 0, MAX_INTERVAL_MS);
    }
    if let Some(v) = get(map, "jitter") {
        o.jitter = boolean(p, &at("jitter"), v);
    }
    if let Some(v) = get(map, "non_retryable") {
        let list_path = at("non_retryable");
        let items = array(p, &list_path, v).map(|items| {
            let strings: Vec<Option<String>> = items
                .iter()
                .enumerate()
                .map(|(i, item)| string(p, &index_path(&list_path, i), item).map(String::from))
                .collect();
            strings.into_iter().collect::<Option<Vec<String>>>()
        });
        o.non_retryable = items.flatten();
    }
    if let Some(v) = get(map, "on_exhausted") {
        let field = at("on_exhausted");
        o.on_exhausted = match string(p, &field, v) {
            Some("fail") => Some(OnExhausted::Fail),
            Some("pause") => Some(OnExhausted::Pause),
            Some(other) => {
                p.push(
                    field,
                    format!("expected 'fail' or 'pause', found '{}'", clip(other)),
                );
                None
            }
            None => None,
        };
    }
    o
}
