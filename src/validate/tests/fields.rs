//! Problems with single fields: unknown, wrong type, missing, malformed, out of range.

use super::*;

#[test]
fn unknown_fields_are_named_at_every_level() {
    let e = problems(json!({
        "nmae": "x", "defaults": {"timeout": 1, "retry": {"max_attempt": 2}},
        "steps": [{"role": "r", "task": "t", "dep": ["x"], "retry": {"jiter": true}}]
    }));
    assert_problem(
        &e,
        "nmae",
        "unknown field 'nmae'; expected one of: name, inputs, defaults, steps",
    );
    assert_problem(&e, "defaults.timeout", "unknown field 'timeout'");
    assert_problem(
        &e,
        "defaults.retry.max_attempt",
        "unknown field 'max_attempt'",
    );
    assert_problem(&e, "steps[0].dep", "unknown field 'dep'");
    assert_problem(&e, "steps[0].retry.jiter", "unknown field 'jiter'");
    assert_eq!(e.errors.len(), 5);
}

#[test]
fn wrong_types_are_reported_at_their_paths() {
    let e = problems(json!({
        "name": 3, "inputs": [], "defaults": {"timeout_s": "10", "retry": "often"},
        "steps": [
            "not a step",
            {"id": 7, "role": ["r"], "task": {}, "deps": "a", "retry": {"jitter": "yes",
             "non_retryable": "x", "backoff_factor": "2"}, "params": [1]},
            {"role": "r", "task": "t", "deps": [1, null], "retry": {"non_retryable": ["ok", 2]}}
        ]
    }));
    assert_problem(&e, "name", "expected a string, found a number");
    assert_problem(&e, "inputs", "expected an object, found an array");
    assert_problem(&e, "defaults.timeout_s", "found a string");
    assert_problem(&e, "defaults.retry", "expected an object, found a string");
    assert_problem(&e, "steps[0]", "expected an object, found a string");
    assert_problem(&e, "steps[1].id", "expected a string, found a number");
    assert_problem(&e, "steps[1].role", "expected a string, found an array");
    assert_problem(&e, "steps[1].task", "expected a string, found an object");
    assert_problem(&e, "steps[1].deps", "expected an array, found a string");
    assert_problem(&e, "steps[1].retry.jitter", "expected true or false");
    assert_problem(&e, "steps[1].retry.non_retryable", "expected an array");
    assert_problem(&e, "steps[1].retry.backoff_factor", "expected a number");
    assert_problem(&e, "steps[1].params", "expected an object, found an array");
    assert_problem(
        &e,
        "steps[2].deps[0]",
        "expected a step id (a string), found a number",
    );
    assert_problem(&e, "steps[2].deps[1]", "found null");
    assert_problem(&e, "steps[2].retry.non_retryable[1]", "expected a string");
    assert_problem(
        &problems(json!({"steps": {"a": 1}})),
        "steps",
        "expected an array of steps",
    );
}

#[test]
fn steps_must_exist_and_not_be_empty() {
    assert_problem(
        &problems(json!({"name": "x"})),
        "steps",
        "missing field 'steps'",
    );
    assert_problem(
        &problems(json!({"steps": []})),
        "steps",
        "at least one step",
    );
    assert_problem(&problems(json!([])), "", "at least one step");
}

#[test]
fn role_and_task_are_required_and_not_blank() {
    let e = problems(json!({"steps": [{"id": "a"}, {"role": " ", "task": "\n\t"}]}));
    assert_problem(&e, "steps[0].role", "missing field 'role'");
    assert_problem(&e, "steps[0].task", "missing field 'task'");
    assert_problem(&e, "steps[1].role", "role must not be empty");
    assert_problem(&e, "steps[1].task", "task must not be empty");
}

#[test]
fn malformed_and_reserved_ids_are_rejected() {
    let long = "x".repeat(65);
    let e = problems(json!({"steps": [
        {"id": "a b", "role": "r", "task": "t"},
        {"id": "1x", "role": "r", "task": "t"},
        {"id": "inputs", "role": "r", "task": "t"},
        {"id": long, "role": "r", "task": "t"},
        {"id": "", "role": "r", "task": "t"},
    ]}));
    assert_problem(&e, "steps[0].id", "'a b' is not a valid step id");
    assert_problem(&e, "steps[1].id", "not a valid step id");
    assert_problem(&e, "steps[2].id", "'inputs' is reserved");
    assert_problem(&e, "steps[3].id", "not a valid step id");
    assert_problem(&e, "steps[4].id", "not a valid step id");
    assert_eq!(e.errors.len(), 5);
}

#[test]
fn duplicate_ids_are_reported_at_the_second_one() {
    let e = problems(json!({"steps": [
        {"id": "a", "role": "r", "task": "t"},
        {"id": "a", "role": "r", "task": "t"},
    ]}));
    assert_problem(
        &e,
        "steps[1].id",
        "duplicate step id 'a': steps[0] has it too",
    );
    // A defaulted id can collide with an explicit one too.
    let e = problems(json!({"steps": [
        {"id": "step2", "role": "r", "task": "t"},
        {"role": "r", "task": "t"},
    ]}));
    assert_problem(&e, "steps[1]", "duplicate step id 'step2'");
    assert_problem(&e, "steps[1]", "by its position");
}

#[test]
fn deps_must_name_other_existing_steps() {
    let e = problems(json!({"steps": [
        {"id": "design", "role": "r", "task": "t"},
        {"id": "build", "role": "r", "task": "t", "deps": ["desing", "build", "design"]},
    ]}));
    assert_problem(&e, "steps[1].deps[0]", "unknown step 'desing'");
    assert_problem(&e, "steps[1].deps[1]", "cannot depend on itself");
    assert_eq!(e.errors.len(), 2);
}

#[test]
fn repeated_deps_are_kept_once() {
    let spec = ok(json!({"steps": [
        {"id": "a", "role": "r", "task": "t"},
        {"id": "b", "role": "r", "task": "t", "deps": ["a", "a"]},
    ]}));
    assert_eq!(spec.steps[1].deps, ["a"]);
}

#[test]
fn roles_are_checked_only_when_the_server_knows_them() {
    let spec = one_step(json!({"role": "wizard"}));
    assert!(parse_spec_value(&spec, &opts()).is_ok());
    let e = problems_with(spec.clone(), &with_roles(&["developer", "architect"]));
    assert_problem(
        &e,
        "steps[0].role",
        "unknown role 'wizard'; known roles: architect, developer",
    );
    let e = problems_with(spec, &with_roles(&[]));
    assert_problem(&e, "steps[0].role", "no roles are configured");
}

#[test]
fn absurd_sizes_are_rejected() {
    let limits = Limits {
        max_steps: 2,
        max_task_bytes: 8,
        max_inputs: 1,
        ..Limits::default()
    };
    let small = ParseOptions { limits, ..opts() };
    let step = json!({"role": "r", "task": "t"});
    let e = problems_with(json!({"steps": [step, step, step]}), &small);
    assert_problem(&e, "steps", "3 steps; the limit is 2");
    assert_problem(
        &problems_with(json!([step, step, step]), &small),
        "",
        "3 steps",
    );
    let e = problems_with(
        json!({"inputs": {"a": "1", "b": "123456789"}, "steps": [{"role": "r", "task": "123456789"}]}),
        &small,
    );
    assert_problem(&e, "inputs", "2 inputs; the limit is 1");
    assert_problem(&e, "inputs.b", "9 bytes; the limit is 8");
    assert_problem(&e, "steps[0].task", "task is 9 bytes; the limit is 8");
}

#[test]
fn retry_numbers_out_of_range_are_rejected() {
    let e = problems(json!({"steps": [
        {"role": "r", "task": "t", "retry": {"max_attempts": 0, "initial_interval_ms": 86_400_001,
         "backoff_factor": 0.5, "on_exhausted": "explode"}, "timeout_s": 0},
        {"role": "r", "task": "t", "retry": {"max_attempts": 101, "backoff_factor": 100.5,
         "max_interval_ms": -1}, "timeout_s": 604_801},
        {"role": "r", "task": "t", "retry": {"max_attempts": 2.5, "initial_interval_ms": 1e30},
         "timeout_s": 1.5},
        {"role": "r", "task": "t", "retry": {"max_attempts": -3, "max_interval_ms": 18_446_744_073_709_551_615u64}},
    ]}));
    assert_problem(
        &e,
        "steps[0].retry.max_attempts",
        "between 1 and 100, found 0",
    );
    assert_problem(
        &e,
        "steps[0].retry.initial_interval_ms",
        "between 0 and 86400000",
    );
    assert_problem(
        &e,
        "steps[0].retry.backoff_factor",
        "between 1 and 100, found 0.5",
    );
    assert_problem(
        &e,
        "steps[0].retry.on_exhausted",
        "expected 'fail' or 'pause', found 'explode'",
    );
    assert_problem(&e, "steps[0].timeout_s", "between 1 and 604800, found 0");
    assert_problem(&e, "steps[1].retry.max_attempts", "found 101");
    assert_problem(&e, "steps[1].retry.backoff_factor", "found 100.5");
    assert_problem(&e, "steps[1].retry.max_interval_ms", "found -1");
    assert_problem(&e, "steps[1].timeout_s", "found 604801");
    assert_problem(&e, "steps[2].retry.max_attempts", "found 2.5");
    assert_problem(&e, "steps[2].retry.initial_interval_ms", "found 1e+30");
    assert_problem(&e, "steps[2].timeout_s", "found 1.5");
    assert_problem(&e, "steps[3].retry.max_attempts", "found -3");
    assert_problem(
        &e,
        "steps[3].retry.max_interval_ms",
        "found 18446744073709551615",
    );
    assert_eq!(e.errors.len(), 14);
}

#[test]
fn the_attempt_limit_comes_from_the_options() {
    let strict = ParseOptions {
        limits: Limits {
            max_attempts: 4,
            ..Limits::default()
        },
        ..opts()
    };
    let e = problems_with(one_step(json!({"retry": {"max_attempts": 5}})), &strict);
    assert_problem(&e, "steps[0].retry.max_attempts", "between 1 and 4");
}

#[test]
fn max_interval_is_checked_against_initial_after_the_overlay() {
    // The step sets the cap below the initial wait the defaults chose.
    let e = problems(json!({"defaults": {"retry": {"initial_interval_ms": 5000}},
                            "steps": [{"role": "r", "task": "t", "retry": {"max_interval_ms": 2000}}]}));
    assert_problem(
        &e,
        "steps[0].retry.max_interval_ms",
        "max_interval_ms (2000) is smaller than initial_interval_ms (5000)",
    );
    assert_eq!(e.errors.len(), 1);
    // The defaults set a cap below the server's initial wait: reported once, at the defaults.
    let e = problems(json!({"defaults": {"retry": {"max_interval_ms": 500}},
                            "steps": [{"role": "r", "task": "t"}, {"role": "r", "task": "t"}]}));
    assert_problem(
        &e,
        "defaults.retry.max_interval_ms",
        "smaller than initial_interval_ms (1000)",
    );
    assert_eq!(e.errors.len(), 1);
    // A step raising the initial wait above the inherited cap is reported at initial.
    let e = problems(one_step(json!({"retry": {"initial_interval_ms": 40_000}})));
    assert_problem(&e, "steps[0].retry.initial_interval_ms", "smaller than");
}

#[test]
fn retry_policies_resolve_step_over_defaults_over_base() {
    let base = RetryPolicy {
        max_attempts: 9,
        jitter: false,
        ..RetryPolicy::default()
    };
    let opts = ParseOptions {
        base_retry: base,
        default_timeout_s: 42,
        ..opts()
    };
    let v = json!({"defaults": {"timeout_s": 60, "retry": {"max_attempts": 4, "backoff_factor": 3,
                 "non_retryable": ["nope"]}},
    "steps": [
        {"id": "a", "role": "r", "task": "t"},
        {"id": "b", "role": "r", "task": "t", "timeout_s": 7,
         "retry": {"max_attempts": 1, "on_exhausted": "pause", "non_retryable": []}}
    ]});
    let spec = parse_spec_value(&v, &opts).unwrap();
    let (a, b) = (&spec.steps[0], &spec.steps[1]);
    assert_eq!(
        (a.retry.max_attempts, a.retry.backoff_factor, a.retry.jitter),
        (4, 3.0, false)
    );
    assert_eq!(a.retry.non_retryable, ["nope"]);
    assert_eq!(a.timeout_s, 60);
    assert_eq!(
        (b.retry.max_attempts, b.retry.on_exhausted),
        (1, OnExhausted::Pause)
    );
    assert!(b.retry.non_retryable.is_empty());
    assert_eq!(b.timeout_s, 7);
    let spec = parse_spec_value(&json!({"role": "r", "task": "t"}), &opts).unwrap();
    assert_eq!(spec.steps[0].timeout_s, 42);
    assert_eq!(spec.steps[0].retry.max_attempts, 9);
}

#[test]
fn params_are_kept_as_given_but_not_too_deep() {
    let spec = ok(one_step(
        json!({"params": {"duration_ms": 5, "nested": {"a": [1, "x", null]}}}),
    ));
    assert_eq!(spec.steps[0].params["nested"]["a"][1], "x");
    let mut deep = json!(1);
    for _ in 0..40 {
        deep = json!([deep]);
    }
    let e = problems(one_step(json!({"params": {"deep": deep}})));
    assert_problem(&e, "steps[0].params", "nested deeper than 32 levels");
}

#[test]
fn many_problems_are_reported_at_once() {
    let e = problems(json!({
        "name": "",
        "inputs": {"x": null},
        "steps": [
            {"id": "a", "role": "r", "task": "{inputs.y}"},
            {"id": "a", "task": "t", "deps": ["zz"]},
            {"id": "c", "role": "r", "task": "t", "retry": {"max_attempts": 0}, "extra": 1}
        ]
    }));
    let paths: BTreeSet<&str> = e.errors.iter().map(|e| e.path.as_str()).collect();
    let expected = [
        "name",
        "inputs.x",
        "steps[0].task",
        "steps[1].id",
        "steps[1].role",
        "steps[1].deps[0]",
        "steps[2].retry.max_attempts",
        "steps[2].extra",
    ];
    assert_eq!(paths, expected.into_iter().collect());
    assert_eq!(e.errors.len(), expected.len());
}
