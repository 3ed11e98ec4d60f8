//! The workflow drawn as a graph: steps in layers by their dependencies, coloured by state.
//! It only displays, so it is SVG text (see `crate::html`), part of the workflow page's markup.

use std::collections::HashMap;

use cairn::{StepStatus, WorkflowState};

use crate::html::{escape, push_escaped, push_fmt};

const NODE_W: i64 = 156;
const NODE_H: i64 = 44;
const COL_GAP: i64 = 56;
const ROW_GAP: i64 = 14;
const PAD: i64 = 8;

/// Where each step sits: (layer, row) by step id, and the number of layers and rows.
fn layout(state: &WorkflowState) -> (HashMap<String, (usize, usize)>, usize, usize) {
    let deps: HashMap<&str, &[String]> = state
        .steps
        .iter()
        .map(|s| (s.id.as_str(), s.deps.as_slice()))
        .collect();
    fn layer_of<'a>(
        id: &'a str,
        deps: &HashMap<&'a str, &'a [String]>,
        memo: &mut HashMap<&'a str, usize>,
        depth: usize,
    ) -> usize {
        if let Some(&l) = memo.get(id) {
            return l;
        }
        // Depth guard: a valid spec is acyclic, but never recurse without a bound.
        if depth > deps.len() {
            return 0;
        }
        let l = deps
            .get(id)
            .map(|ds| {
                ds.iter()
                    .map(|d| layer_of(d.as_str(), deps, memo, depth + 1) + 1)
                    .max()
                    .unwrap_or(0)
            })
            .unwrap_or(0);
        memo.insert(id, l);
        l
    }
    let mut memo = HashMap::new();
    let mut rows: Vec<usize> = vec![];
    let mut pos = HashMap::new();
    for s in &state.steps {
        let l = layer_of(s.id.as_str(), &deps, &mut memo, 0);
        if rows.len() <= l {
            rows.resize(l + 1, 0);
        }
        pos.insert(s.id.clone(), (l, rows[l]));
        rows[l] += 1;
    }
    let max_rows = rows.iter().copied().max().unwrap_or(1);
    (pos, rows.len().max(1), max_rows)
}

/// The SVG of `state`'s graph: steps in layers by their dependencies, edges between them,
/// each node a link to the step's card (`#step-ID`).
pub fn svg(state: &WorkflowState) -> String {
    let (pos, layers, rows) = layout(state);
    let width = PAD * 2 + layers as i64 * NODE_W + (layers.saturating_sub(1)) as i64 * COL_GAP;
    let height = PAD * 2 + rows as i64 * NODE_H + (rows.saturating_sub(1)) as i64 * ROW_GAP;
    let xy = |id: &str| {
        let (l, r) = pos.get(id).copied().unwrap_or((0, 0));
        (
            PAD + l as i64 * (NODE_W + COL_GAP),
            PAD + r as i64 * (NODE_H + ROW_GAP),
        )
    };
    let mut out = String::with_capacity(256 + state.steps.len() * 400);
    push_fmt(
        &mut out,
        format_args!(
            r#"<svg class="dag" role="img" aria-label="Workflow graph" viewBox="0 0 {width} {height}" width="{width}" height="{height}"><g class="dag-edges">"#
        ),
    );
    for s in &state.steps {
        let (x2, y2) = xy(&s.id);
        let on = if s.status.is_done() || s.status == StepStatus::Running {
            " dag-edge-on"
        } else {
            ""
        };
        for d in &s.deps {
            let (x1, y1) = xy(d);
            let (x1, y1, y2) = (x1 + NODE_W, y1 + NODE_H / 2, y2 + NODE_H / 2);
            let c = COL_GAP / 2;
            push_fmt(
                &mut out,
                format_args!(
                    r#"<path class="dag-edge{on}" d="M{x1},{y1} C{},{y1} {},{y2} {x2},{y2}"></path>"#,
                    x1 + c,
                    x2 - c
                ),
            );
        }
    }
    out.push_str(r#"</g><g class="dag-nodes">"#);
    for s in &state.steps {
        let (x, y) = xy(&s.id);
        let status = s.status.as_str();
        let label = if s.id.chars().count() > 18 {
            format!("{}…", s.id.chars().take(17).collect::<String>())
        } else {
            s.id.clone()
        };
        let id = escape(&s.id);
        push_fmt(
            &mut out,
            format_args!(
                r##"<a class="dag-node dag-{status}" href="#step-{id}" transform="translate({x},{y})"><title>{id}: {status}</title><rect width="{NODE_W}" height="{NODE_H}" rx="8"></rect><circle class="dag-dot" cx="14" cy="{}" r="4"></circle><text class="dag-label" x="26" y="19">"##,
                NODE_H / 2
            ),
        );
        push_escaped(&mut out, &label);
        out.push_str(r#"</text><text class="dag-sub" x="26" y="34">"#);
        out.push_str(status);
        if s.attempt > 1 {
            push_fmt(&mut out, format_args!(" · try {}", s.attempt));
        }
        out.push_str("</text></a>");
    }
    out.push_str("</g></svg>");
    out
}

#[cfg(test)]
mod tests {
    use cairn::{Event, EventRecord, ParseOptions, StepStatus, parse_spec};

    use super::*;

    fn state() -> WorkflowState {
        let spec = parse_spec(
            r#"{"name": "fan", "steps": [
                {"id": "plan", "role": "r", "task": "p"},
                {"id": "api", "role": "r", "task": "a", "deps": ["plan"]},
                {"id": "ui", "role": "r", "task": "u", "deps": ["plan"]},
                {"id": "join", "role": "r", "task": "j", "deps": ["api", "ui"]}]}"#,
            &ParseOptions::default(),
        )
        .unwrap();
        let at = "2026-01-01T00:00:00Z".parse().unwrap();
        let created = EventRecord::new(
            1,
            "wf_1",
            at,
            Event::WorkflowCreated {
                spec,
                by: None,
                workspace: None,
            },
        );
        let mut state = WorkflowState::new("wf_1");
        state.apply(&created).unwrap();
        state
    }

    #[test]
    fn every_step_is_a_node_linking_to_its_card_and_every_dep_an_edge() {
        let mut s = state();
        s.steps[0].status = StepStatus::Completed;
        s.steps[1].status = StepStatus::Retrying;
        s.steps[1].attempt = 2;
        let svg = svg(&s);
        assert!(svg.starts_with("<svg class=\"dag\"") && svg.ends_with("</svg>"));
        for id in ["plan", "api", "ui", "join"] {
            assert!(
                svg.contains(&format!(r##"href="#step-{id}""##)),
                "{id} in {svg}"
            );
        }
        assert_eq!(svg.matches("<path class=\"dag-edge").count(), 4);
        assert!(svg.contains(r#"class="dag-node dag-completed""#));
        assert!(svg.contains("retrying · try 2"));
        // Three layers: plan, then api and ui, then join.
        let x = |id: &str| {
            let at = svg.find(&format!("#step-{id}")).unwrap();
            let t = &svg[at..];
            let start = t.find("translate(").unwrap() + "translate(".len();
            t[start..]
                .split(',')
                .next()
                .unwrap()
                .parse::<i64>()
                .unwrap()
        };
        assert!(x("plan") < x("api") && x("api") == x("ui") && x("ui") < x("join"));
    }

    #[test]
    fn step_ids_are_escaped() {
        let mut s = state();
        s.steps[0].id = r#"<img src=x onerror="alert(1)">"#.into();
        let svg = svg(&s);
        assert!(!svg.contains("<img"), "{svg}");
        assert!(svg.contains("&lt;img src=x onerror=&quot;alert(1)&quot;&gt;"));
    }
}
