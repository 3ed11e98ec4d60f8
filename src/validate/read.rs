//! Small typed readers over `serde_json::Value` that record a [`SpecError`] with its JSON path
//! instead of stopping, so one pass reports every problem.

use serde_json::{Map, Value};

use crate::spec::{SpecError, is_identifier};

/// Stop collecting after this many problems: a generated spec gone wrong could otherwise
/// produce a response larger than the spec.
pub(super) const MAX_ERRORS: usize = 200;

/// The problems found so far.
#[derive(Default)]
pub(super) struct Problems {
    pub(super) list: Vec<SpecError>,
    dropped: usize,
}

impl Problems {
    pub(super) fn push(&mut self, path: impl Into<String>, message: impl Into<String>) {
        if self.list.len() < MAX_ERRORS {
            self.list.push(SpecError::new(path, message));
        } else {
            self.dropped += 1;
        }
    }

    pub(super) fn is_empty(&self) -> bool {
        self.list.is_empty()
    }

    pub(super) fn into_vec(mut self) -> Vec<SpecError> {
        if self.dropped > 0 {
            let message = format!("{} more problems not shown", self.dropped);
            self.list.push(SpecError::new("", message));
        }
        self.list
    }
}

/// `base.key`, or `base["odd key"]` when the key is not a plain name.
pub(super) fn key_path(base: &str, key: &str) -> String {
    if is_identifier(key) {
        if base.is_empty() {
            key.to_string()
        } else {
            format!("{base}.{key}")
        }
    } else {
        let quoted = serde_json::to_string(key).unwrap_or_else(|_| format!("{key:?}"));
        format!("{base}[{quoted}]")
    }
}

/// `base[i]`.
pub(super) fn index_path(base: &str, i: usize) -> String {
    format!("{base}[{i}]")
}

/// "a string", "an object", ... for messages.
pub(super) fn kind(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// Records "expected X, found Y".
pub(super) fn wrong_type(p: &mut Problems, path: &str, expected: &str, v: &Value) {
    p.push(path, format!("expected {expected}, found {}", kind(v)));
}

/// `map[key]`, treating an explicit `null` as absent (YAML's `key:` with nothing after it).
pub(super) fn get<'a>(map: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    map.get(key).filter(|v| !v.is_null())
}

pub(super) fn object<'a>(
    p: &mut Problems,
    path: &str,
    v: &'a Value,
) -> Option<&'a Map<String, Value>> {
    match v {
        Value::Object(map) => Some(map),
        other => {
            wrong_type(p, path, "an object", other);
            None
        }
    }
}

pub(super) fn array<'a>(p: &mut Problems, path: &str, v: &'a Value) -> Option<&'a [Value]> {
    match v {
        Value::Array(items) => Some(items),
        other => {
            wrong_type(p, path, "an array", other);
            None
        }
    }
}

pub(super) fn string<'a>(p: &mut Problems, path: &str, v: &'a Value) -> Option<&'a str> {
    match v {
        Value::String(s) => Some(s),
        other => {
            wrong_type(p, path, "a string", other);
            None
        }
    }
}

pub(super) fn boolean(p: &mut Problems, path: &str, v: &Value) -> Option<bool> {
    match v {
        Value::Bool(b) => Some(*b),
        other => {
            wrong_type(p, path, "true or false", other);
            None
        }
    }
}

/// A whole number in `min..=max`. Negative numbers, fractions and numbers too large for any
/// integer all get the same range message.
pub(super) fn whole(p: &mut Problems, path: &str, v: &Value, min: u64, max: u64) -> Option<u64> {
    match v {
        Value::Number(n) => match n.as_u64() {
            Some(u) if (min..=max).contains(&u) => Some(u),
            _ => {
                p.push(path, crate::spec::range_message(min, max, n));
                None
            }
        },
        other => {
            wrong_type(
                p,
                path,
                &format!("a whole number between {min} and {max}"),
                other,
            );
            None
        }
    }
}

/// Any finite number (JSON numbers always are).
pub(super) fn number(p: &mut Problems, path: &str, v: &Value) -> Option<f64> {
    match v.as_f64() {
        Some(f) if f.is_finite() => Some(f),
        _ => {
            wrong_type(p, path, "a number", v);
            None
        }
    }
}

/// Reports every key of `map` not in `allowed`, at the key's own path.
pub(super) fn unknown_fields(
    p: &mut Problems,
    path: &str,
    map: &Map<String, Value>,
    allowed: &[&str],
) {
    for key in map.keys().filter(|k| !allowed.contains(&k.as_str())) {
        p.push(
            key_path(path, key),
            format!(
                "unknown field '{}'; expected one of: {}",
                clip(key),
                allowed.join(", ")
            ),
        );
    }
}

/// A user-supplied string shortened for a message.
pub(super) fn clip(s: &str) -> String {
    const MAX: usize = 80;
    match s.char_indices().nth(MAX) {
        Some((cut, _)) => format!("{}…", &s[..cut]),
        None => s.to_string(),
    }
}

/// The size a value would roughly take as JSON, counted without recursion and without
/// serializing; stops early once past `cap`.
pub(super) fn approx_size(v: &Value, cap: usize) -> usize {
    let mut total = 0usize;
    let mut stack = vec![v];
    while let Some(v) = stack.pop() {
        total = total.saturating_add(match v {
            Value::Null | Value::Bool(_) => 5,
            Value::Number(_) => 8,
            Value::String(s) => s.len() + 2,
            Value::Array(items) => {
                stack.extend(items);
                items.len() + 2
            }
            Value::Object(map) => {
                for (k, v) in map {
                    total = total.saturating_add(k.len() + 4);
                    stack.push(v);
                }
                2
            }
        });
        if total > cap {
            break;
        }
    }
    total
}

/// Whether a value nests deeper than `max` arrays/objects, checked without recursion.
pub(super) fn deeper_than(v: &Value, max: usize) -> bool {
    let mut stack = vec![(v, 0usize)];
    while let Some((v, depth)) = stack.pop() {
        let children: Box<dyn Iterator<Item = &Value>> = match v {
            Value::Array(items) => Box::new(items.iter()),
            Value::Object(map) => Box::new(map.values()),
            _ => continue,
        };
        if depth + 1 > max {
            return true;
        }
        stack.extend(children.map(|c| (c, depth + 1)));
    }
    false
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    #[test]
    fn paths_use_dots_for_plain_keys_and_brackets_otherwise() {
        assert_eq!(key_path("", "name"), "name");
        assert_eq!(key_path("inputs", "feature"), "inputs.feature");
        assert_eq!(key_path("inputs", "two words"), "inputs[\"two words\"]");
        assert_eq!(key_path("", "\"q\""), "[\"\\\"q\\\"\"]");
        assert_eq!(index_path("steps", 3), "steps[3]");
        assert_eq!(index_path("", 0), "[0]");
    }

    #[test]
    fn whole_numbers_reject_negatives_fractions_and_huge_values() {
        let mut p = Problems::default();
        assert_eq!(whole(&mut p, "x", &json!(5), 1, 10), Some(5));
        for bad in [
            json!(0),
            json!(11),
            json!(-1),
            json!(2.5),
            json!(1e300),
            json!(u64::MAX),
            json!("5"),
        ] {
            assert_eq!(whole(&mut p, "x", &bad, 1, 10), None, "{bad}");
        }
        assert_eq!(p.list.len(), 7);
        assert_eq!(
            p.list[3].message,
            "expected a whole number between 1 and 10, found 2.5"
        );
    }

    #[test]
    fn sizes_and_depths_are_measured_without_recursion() {
        let mut deep = json!(1);
        for _ in 0..100_000 {
            deep = Value::Array(vec![deep]);
        }
        assert!(deeper_than(&deep, 32));
        assert!(approx_size(&deep, 1000) > 1000);
        assert!(!deeper_than(&json!({"a": [1, {"b": 2}]}), 3));
        assert!(deeper_than(&json!({"a": [1, {"b": [2]}]}), 3));
        // Dropping a deep value recurses too; leak it so the test thread's stack is spared.
        std::mem::forget(deep);
    }

    #[test]
    fn problems_beyond_the_cap_are_counted_not_kept() {
        let mut p = Problems::default();
        for i in 0..MAX_ERRORS + 5 {
            p.push(index_path("", i), "bad");
        }
        let list = p.into_vec();
        assert_eq!(list.len(), MAX_ERRORS + 1);
        assert_eq!(list[MAX_ERRORS].message, "5 more problems not shown");
    }
}
