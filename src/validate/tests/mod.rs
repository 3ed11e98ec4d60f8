//! Spec parsing and validation: every shape, every problem with its path. Helpers here,
//! the tests split by theme.

mod fields;
mod graph_checks;
mod shapes;

use std::collections::BTreeSet;

use serde_json::{Value, json};

use crate::spec::{
    Limits, OnExhausted, ParseOptions, RetryPolicy, SpecErrors, ValidSpec, parse_spec,
    parse_spec_value,
};

fn opts() -> ParseOptions {
    ParseOptions::default()
}

fn with_roles(roles: &[&str]) -> ParseOptions {
    ParseOptions {
        known_roles: Some(roles.iter().map(|r| r.to_string()).collect::<BTreeSet<_>>()),
        ..opts()
    }
}

fn ok(v: Value) -> ValidSpec {
    match parse_spec_value(&v, &opts()) {
        Ok(spec) => spec,
        Err(e) => panic!("{v} should parse: {e}"),
    }
}

fn problems_with(v: Value, opts: &ParseOptions) -> SpecErrors {
    match parse_spec_value(&v, opts) {
        Ok(_) => panic!("{v} should not parse"),
        Err(e) => e,
    }
}

fn problems(v: Value) -> SpecErrors {
    problems_with(v, &opts())
}

/// Asserts one problem sits at `path` with `fragment` in its message.
#[track_caller]
fn assert_problem(errors: &SpecErrors, path: &str, fragment: &str) {
    assert!(
        errors
            .errors
            .iter()
            .any(|e| e.path == path && e.message.contains(fragment)),
        "no problem at {path:?} containing {fragment:?} in {errors:#?}"
    );
}

/// A one-step spec with `step` merged into a valid step.
fn one_step(extra: Value) -> Value {
    let mut step = json!({"id": "a", "role": "dev", "task": "do it"});
    if let (Some(step), Value::Object(extra)) = (step.as_object_mut(), extra) {
        step.extend(extra);
    }
    json!({"steps": [step]})
}

const DESIGN_EXAMPLE: &str = r#"{
  "name": "ship-login",
  "inputs": { "feature": "login" },
  "defaults": { "timeout_s": 600, "retry": { "max_attempts": 3 } },
  "steps": [
    { "id": "design",    "role": "architect", "task": "Design {inputs.feature}" },
    { "id": "implement", "role": "developer", "task": "Build {design.output}", "deps": ["design"] },
    { "id": "test",      "role": "tester",    "task": "Test {implement.output}", "deps": ["implement"],
      "retry": { "max_attempts": 5 }, "params": { } }
  ]
}"#;

const DESIGN_EXAMPLE_YAML: &str = "
name: ship-login
inputs:
  feature: login
defaults:
  timeout_s: 600
  retry:
    max_attempts: 3
steps:
  - id: design
    role: architect
    task: Design {inputs.feature}
  - id: implement
    role: developer
    task: Build {design.output}
    deps: [design]
  - id: test
    role: tester
    task: Test {implement.output}
    deps:
      - implement
    retry:
      max_attempts: 5
    params: {}
";
