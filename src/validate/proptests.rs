//! Property tests: garbage never panics the parser, and generated valid specs parse.

use proptest::prelude::*;
use serde_json::Value;

use crate::spec::{ParseOptions, ValidSpec, parse_spec, parse_spec_value};
use crate::testkit::{arb_dag, arb_dag_json};

/// Words the parser gives meaning to, so random trees reach deep into the walk.
const VOCABULARY: &[&str] = &[
    "name",
    "inputs",
    "defaults",
    "steps",
    "id",
    "role",
    "task",
    "deps",
    "retry",
    "timeout_s",
    "params",
    "max_attempts",
    "initial_interval_ms",
    "backoff_factor",
    "max_interval_ms",
    "jitter",
    "non_retryable",
    "on_exhausted",
    "fail",
    "pause",
    "a",
    "b",
    "step1",
    "step2",
    "inputs",
    "{a.output}",
    "{inputs.a}",
    "{step1.session_id}",
    "{",
    "}}",
    "",
];

fn word() -> impl Strategy<Value = String> {
    prop_oneof![
        4 => prop::sample::select(VOCABULARY).prop_map(String::from),
        1 => "[a-z_]{1,8}",
        1 => ".{0,12}",
    ]
}

fn arb_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        any::<u64>().prop_map(Value::from),
        (0u64..200).prop_map(Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(Value::Null, Value::Number)),
        word().prop_map(Value::String),
    ];
    leaf.prop_recursive(6, 96, 8, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(word(), inner, 0..8)
                .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

fn with_roles() -> ParseOptions {
    ParseOptions {
        known_roles: Some(["dev".to_string()].into()),
        ..ParseOptions::default()
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn arbitrary_text_never_panics(text in ".{0,300}") {
        let _ = parse_spec(&text, &ParseOptions::default());
    }

    #[test]
    fn arbitrary_json_looking_text_never_panics(text in "[\\[\\]{}\":,a-z0-9 .\\-\n]{0,200}") {
        let _ = parse_spec(&text, &with_roles());
    }

    #[test]
    fn arbitrary_json_trees_never_panic_and_errors_have_messages(v in arb_json()) {
        for opts in [ParseOptions::default(), with_roles()] {
            match parse_spec_value(&v, &opts) {
                Ok(spec) => prop_assert!(!spec.steps.is_empty()),
                Err(e) => {
                    prop_assert!(!e.errors.is_empty());
                    prop_assert!(e.errors.iter().all(|e| !e.message.is_empty()));
                }
            }
        }
        // The same tree as text takes the text path (and YAML accepts JSON too).
        let text = serde_json::to_string(&v).unwrap_or_default();
        let _ = parse_spec(&text, &ParseOptions::default());
        let yaml = serde_norway::to_string(&v).unwrap_or_default();
        let _ = parse_spec(&yaml, &ParseOptions::default());
    }

    #[test]
    fn a_valid_spec_with_one_field_broken_never_panics(v in arb_dag_json(), junk in arb_json(), at in 0usize..12) {
        // Replace one field somewhere with junk: the walk must report, not crash.
        let mut v = v;
        let fields = ["name", "inputs", "defaults", "steps"];
        let step_fields = ["id", "role", "task", "deps", "retry", "timeout_s", "params", "x"];
        if at < fields.len() {
            v[fields[at]] = junk;
        } else if let Some(step) = v["steps"].get_mut(0) {
            step[step_fields[at % step_fields.len()]] = junk;
        }
        let _ = parse_spec_value(&v, &with_roles());
    }

    #[test]
    fn generated_dags_parse_and_round_trip(spec in arb_dag()) {
        let text = serde_json::to_string(&spec).unwrap();
        prop_assert_eq!(&serde_json::from_str::<ValidSpec>(&text).unwrap(), &spec);
        for a in &spec.steps {
            for b in spec.descendants(&a.id) {
                prop_assert!(spec.ancestors(&b).contains(&a.id));
            }
        }
    }

    #[test]
    fn generated_dags_parse_the_same_from_yaml(v in arb_dag_json()) {
        let yaml = serde_norway::to_string(&v).unwrap();
        let from_yaml = parse_spec(&yaml, &with_roles());
        let from_value = parse_spec_value(&v, &with_roles());
        prop_assert_eq!(from_yaml, from_value);
    }
}
