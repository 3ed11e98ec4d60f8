//! The accepted shapes and formats, and documents that are not specs at all.

use super::*;

#[test]
fn the_design_example_parses_with_everything_resolved() {
    let spec = parse_spec(
        DESIGN_EXAMPLE,
        &with_roles(&["architect", "developer", "tester"]),
    )
    .unwrap();
    assert_eq!(spec.name, "ship-login");
    assert_eq!(spec.inputs["feature"], "login");
    let ids: Vec<_> = spec.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["design", "implement", "test"]);
    assert_eq!(spec.steps[1].deps, ["design"]);
    assert_eq!(spec.steps[0].retry.max_attempts, 3);
    assert_eq!(spec.steps[2].retry.max_attempts, 5);
    assert_eq!(spec.steps[2].retry.initial_interval_ms, 1000);
    assert_eq!(spec.steps[0].timeout_s, 600);
}

#[test]
fn yaml_reads_the_same_as_json() {
    let json = parse_spec(DESIGN_EXAMPLE, &opts()).unwrap();
    let yaml = parse_spec(DESIGN_EXAMPLE_YAML, &opts()).unwrap();
    assert_eq!(json, yaml);
}

#[test]
fn flow_style_yaml_that_is_not_json_still_parses() {
    let spec = parse_spec("{role: dev, task: hello}", &opts()).unwrap();
    assert_eq!(spec.steps[0].task, "hello");
    let spec = parse_spec(
        "[{role: dev, task: a}, {role: dev, task: b, deps: [step1]}]",
        &opts(),
    )
    .unwrap();
    assert_eq!(spec.steps[1].deps, ["step1"]);
}

#[test]
fn a_single_step_object_is_a_one_step_workflow() {
    let spec = ok(json!({"role": "dev", "task": "hello"}));
    assert_eq!(spec.steps.len(), 1);
    assert_eq!(spec.steps[0].id, "step1");
    assert_eq!(spec.name, "step1");
    assert!(spec.steps[0].deps.is_empty());
    assert_eq!(spec.steps[0].timeout_s, 600);
    assert_eq!(spec.steps[0].retry, RetryPolicy::default());
}

#[test]
fn a_single_step_object_may_carry_name_inputs_and_defaults() {
    let spec = ok(json!({
        "name": "quick", "inputs": {"x": "1"}, "defaults": {"timeout_s": 5},
        "id": "only", "role": "dev", "task": "use {inputs.x}"
    }));
    assert_eq!(spec.name, "quick");
    assert_eq!(spec.steps[0].id, "only");
    assert_eq!(spec.steps[0].timeout_s, 5);
    let e = problems(json!({"role": "dev", "task": "x", "dep": []}));
    assert_problem(&e, "dep", "unknown field 'dep'");
}

#[test]
fn a_single_step_object_reports_paths_from_the_root() {
    let e = problems(json!({"role": "", "task": "{x}", "retry": {"max_attempts": 0}}));
    assert_problem(&e, "role", "must not be empty");
    assert_problem(&e, "task", "not a reference");
    assert_problem(&e, "retry.max_attempts", "between 1 and 100");
}

#[test]
fn a_bare_array_is_the_list_of_steps() {
    let spec = ok(json!([
        {"role": "dev", "task": "one"},
        {"role": "dev", "task": "two {step1.output}", "deps": ["step1"]},
        {"id": "last", "role": "dev", "task": "three", "deps": ["step2", "step1"]}
    ]));
    let ids: Vec<_> = spec.steps.iter().map(|s| s.id.as_str()).collect();
    assert_eq!(ids, ["step1", "step2", "last"]);
    assert_eq!(spec.name, "step1");
    assert_eq!(spec.steps[2].deps, ["step2", "step1"]);
    let e = problems(json!([{"role": "dev", "task": "x", "deps": ["nope"]}]));
    assert_problem(&e, "[0].deps[0]", "unknown step 'nope'");
}

#[test]
fn a_yaml_bare_list_parses() {
    let spec = parse_spec(
        "- role: dev\n  task: one\n- role: dev\n  task: two\n  deps: [step1]\n",
        &opts(),
    )
    .unwrap();
    assert_eq!(spec.steps[1].deps, ["step1"]);
}

#[test]
fn the_name_defaults_to_the_first_step_id() {
    assert_eq!(ok(one_step(json!({}))).name, "a");
    assert_eq!(
        ok(json!({"name": "n", "steps": [{"role": "r", "task": "t"}]})).name,
        "n"
    );
}

#[test]
fn numbers_and_booleans_are_accepted_as_input_text() {
    let spec = ok(
        json!({"inputs": {"port": 8080, "debug": true, "ratio": 0.5, "s": "x"},
                         "steps": [{"role": "r", "task": "{inputs.port}"}]}),
    );
    assert_eq!(spec.inputs["port"], "8080");
    assert_eq!(spec.inputs["debug"], "true");
    assert_eq!(spec.inputs["ratio"], "0.5");
    let e = problems(
        json!({"inputs": {"a": [1], "b": {"c": 1}, "bad name": "x"}, "steps": [{"role": "r", "task": "t"}]}),
    );
    assert_problem(&e, "inputs.a", "expected a string, found an array");
    assert_problem(&e, "inputs.b", "found an object");
    assert_problem(&e, "inputs[\"bad name\"]", "not a valid input name");
}

#[test]
fn nulls_mean_absent_for_optional_fields_and_missing_for_required_ones() {
    let spec = ok(json!({"name": null, "inputs": null, "defaults": null,
                         "steps": [{"id": null, "role": "r", "task": "t", "deps": null, "retry": null,
                                    "timeout_s": null, "params": null}]}));
    assert_eq!(spec.steps[0].id, "step1");
    let e = problems(json!({"steps": [{"role": null, "task": null}]}));
    assert_problem(&e, "steps[0].role", "missing field 'role'");
    assert_problem(&e, "steps[0].task", "missing field 'task'");
}

#[test]
fn syntax_errors_are_reported_at_the_root_with_a_position() {
    let e = parse_spec("{\"steps\": [\n  {\"role\": \"r\",, }]}", &opts()).unwrap_err();
    assert_eq!(e.errors.len(), 1);
    assert_eq!(e.errors[0].path, "");
    assert!(e.errors[0].message.starts_with("invalid JSON"), "{e}");
    assert!(e.errors[0].message.contains("line 2"), "{e}");
    let e = parse_spec("steps:\n  - role: r\n   task: t\n", &opts()).unwrap_err();
    assert!(e.errors[0].message.starts_with("invalid YAML"), "{e}");
    assert!(e.errors[0].message.contains("line"), "{e}");
}

#[test]
fn empty_oversized_and_shapeless_documents_are_rejected() {
    assert_problem(&parse_spec("  \n ", &opts()).unwrap_err(), "", "empty");
    let small = ParseOptions {
        limits: Limits {
            max_spec_bytes: 10,
            ..Limits::default()
        },
        ..opts()
    };
    assert_problem(
        &parse_spec(r#"{"role":"r","task":"t"}"#, &small).unwrap_err(),
        "",
        "the limit is 10",
    );
    assert_problem(
        &problems_with(json!({"role": "r", "task": "a long task"}), &small),
        "",
        "larger than",
    );
    for v in [json!("text"), json!(3), json!(null), json!(true)] {
        assert_problem(&problems(v), "", "expected a workflow spec");
    }
    assert_problem(
        &parse_spec("just words", &opts()).unwrap_err(),
        "",
        "found a string",
    );
}

#[test]
fn problems_are_capped_with_a_count_of_the_rest() {
    let steps: Vec<Value> = (0..300).map(|_| json!({"role": "", "task": ""})).collect();
    let e = problems(json!({"steps": steps}));
    assert_eq!(e.errors.len(), 201);
    assert!(e.errors[200].message.ends_with("more problems not shown"));
}

#[test]
fn deep_nesting_is_an_error_not_a_stack_overflow() {
    for text in [
        "[".repeat(100_000),
        "{\"a\":".repeat(50_000),
        "- ".repeat(50_000) + "x",
    ] {
        let e = parse_spec(&text, &opts()).unwrap_err();
        assert_eq!(e.errors.len(), 1, "{e}");
        assert_eq!(e.errors[0].path, "");
    }
    // Deep flow nesting is refused before the YAML parser, which is slow on it.
    let flow = format!("a: {}1{}", "[".repeat(10_000), "]".repeat(10_000));
    assert_problem(
        &parse_spec(&flow, &opts()).unwrap_err(),
        "",
        "nested deeper than 256 levels",
    );
}

#[test]
fn yaml_alias_bombs_are_refused() {
    let mut bomb = String::from(
        "a: &a [\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\",\"lol\"]\n",
    );
    for (i, name) in ["b", "c", "d", "e", "f", "g", "h", "i"].iter().enumerate() {
        let prev = ["a", "b", "c", "d", "e", "f", "g", "h"][i];
        let refs = vec![format!("*{prev}"); 9].join(",");
        bomb.push_str(&format!("{name}: &{name} [{refs}]\n"));
    }
    assert!(parse_spec(&bomb, &opts()).is_err());
}

#[test]
fn a_valid_spec_round_trips_through_json() {
    let spec = parse_spec(DESIGN_EXAMPLE, &opts()).unwrap();
    let text = serde_json::to_string(&spec).unwrap();
    assert_eq!(serde_json::from_str::<ValidSpec>(&text).unwrap(), spec);
}
