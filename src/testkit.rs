//! Test helpers shared by the unit tests of several modules: random valid specs.

use proptest::prelude::*;
use serde_json::{Value, json};

use crate::spec::{ParseOptions, ValidSpec, parse_spec_value};

/// A random valid DAG spec as JSON: up to 7 steps `s0`, `s1`, ..., each depending on a
/// random subset of the earlier ones, with templates reading some of their deps, and random
/// retry budgets and `on_exhausted` policies.
pub(crate) fn arb_dag_json() -> impl Strategy<Value = Value> {
    prop::collection::vec((any::<u8>(), 1u32..=3, any::<bool>(), any::<u8>()), 1..=7).prop_map(
        |raw| {
            let steps: Vec<Value> = raw
                .iter()
                .enumerate()
                .map(|(i, &(dep_mask, max_attempts, pause, ref_mask))| {
                    let deps: Vec<String> = (0..i)
                        .filter(|j| dep_mask & (1 << j) != 0)
                        .map(|j| format!("s{j}"))
                        .collect();
                    let mut task = format!("step {i} for {{inputs.x}}");
                    for (k, d) in deps.iter().enumerate() {
                        if ref_mask & (1 << k) != 0 {
                            task.push_str(&format!(" [{{{d}.output}}|{{{d}.session_id}}]"));
                        }
                    }
                    json!({
                        "id": format!("s{i}"), "role": "dev", "task": task, "deps": deps,
                        "retry": {"max_attempts": max_attempts,
                                  "on_exhausted": if pause { "pause" } else { "fail" }}
                    })
                })
                .collect();
            json!({"name": "prop", "inputs": {"x": "X"}, "steps": steps})
        },
    )
}

/// [`arb_dag_json`], parsed.
pub(crate) fn arb_dag() -> impl Strategy<Value = ValidSpec> {
    arb_dag_json().prop_map(|v| match parse_spec_value(&v, &ParseOptions::default()) {
        Ok(spec) => spec,
        Err(e) => panic!("the generator made an invalid spec: {e}\n{v}"),
    })
}
