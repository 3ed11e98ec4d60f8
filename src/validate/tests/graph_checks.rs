//! Problems that need the whole graph: cycles, and templates naming what they may not.

use super::*;

#[test]
fn cycles_are_named_in_run_order() {
    let e = problems(json!({"steps": [
        {"id": "a", "role": "r", "task": "t", "deps": ["c"]},
        {"id": "b", "role": "r", "task": "t", "deps": ["a"]},
        {"id": "c", "role": "r", "task": "t", "deps": ["b"]},
        {"id": "d", "role": "r", "task": "t", "deps": ["e"]},
        {"id": "e", "role": "r", "task": "t", "deps": ["d"]},
    ]}));
    assert_problem(&e, "steps[0].deps", "cycle: a -> b -> c -> a");
    assert_problem(&e, "steps[3].deps", "cycle: d -> e -> d");
    assert_eq!(e.errors.len(), 2);
}

#[test]
fn templates_may_only_name_inputs_and_upstream_steps() {
    let e = problems(json!({
        "inputs": {"feature": "login"},
        "steps": [
            {"id": "a", "role": "r", "task": "{inputs.featur} {a.output}"},
            {"id": "b", "role": "r", "task": "{desing.output} {c.session_id}"},
            {"id": "c", "role": "r", "task": "{a.output} {b.output}", "deps": ["a"]},
            {"id": "d", "role": "r", "task": "oops {a.result}", "deps": ["a"]},
            {"id": "e", "role": "r", "task": "{unclosed", "deps": ["a"]},
        ]
    }));
    assert_problem(
        &e,
        "steps[0].task",
        "{inputs.featur}: unknown input 'featur'; inputs are: feature",
    );
    assert_problem(
        &e,
        "steps[0].task",
        "{a.output}: a step cannot read its own output",
    );
    assert_problem(
        &e,
        "steps[1].task",
        "{desing.output}: unknown step 'desing'",
    );
    assert_problem(
        &e,
        "steps[1].task",
        "{c.session_id}: step 'c' is not upstream of 'b'",
    );
    assert_problem(
        &e,
        "steps[2].task",
        "{b.output}: step 'b' is not upstream of 'c'",
    );
    assert_problem(&e, "steps[3].task", "unknown field 'result'");
    assert_problem(
        &e,
        "steps[4].task",
        "invalid template: '{' at character 1 is never closed",
    );
    assert_eq!(e.errors.len(), 7);
}

#[test]
fn templates_may_name_ancestors_through_other_steps() {
    let spec = ok(json!({"steps": [
        {"id": "a", "role": "r", "task": "t"},
        {"id": "b", "role": "r", "task": "{a.output}", "deps": ["a"]},
        {"id": "c", "role": "r", "task": "{a.output} {a.session_id} {b.output} {{literal}}", "deps": ["b"]},
    ]}));
    assert_eq!(spec.ancestors("c").len(), 2);
}

#[test]
fn an_unknown_input_in_a_spec_without_inputs_says_so() {
    let e = problems(one_step(json!({"task": "{inputs.x}"})));
    assert_problem(&e, "steps[0].task", "the spec has no inputs");
}
