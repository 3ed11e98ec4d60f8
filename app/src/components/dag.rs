//! The workflow drawn as a graph: steps in layers by their dependencies, coloured by state.

use std::collections::HashMap;

use cairn::WorkflowState;
use leptos::prelude::*;

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

/// The graph of a workflow; each node links to its step below.
#[component]
pub fn Dag(#[prop(into)] state: Signal<WorkflowState>) -> impl IntoView {
    let drawing = move || {
        state.with(|state| {
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
            let edges = state
                .steps
                .iter()
                .flat_map(|s| {
                    let (x2, y2) = xy(&s.id);
                    let done = s.status.is_done() || s.status == cairn::StepStatus::Running;
                    s.deps
                        .iter()
                        .map(|d| {
                            let (x1, y1) = xy(d);
                            let (x1, y1, x2, y2) = (x1 + NODE_W, y1 + NODE_H / 2, x2, y2 + NODE_H / 2);
                            let c = COL_GAP / 2;
                            let path = format!(
                                "M{x1},{y1} C{},{y1} {},{y2} {x2},{y2}",
                                x1 + c,
                                x2 - c
                            );
                            view! { <path class=if done { "dag-edge dag-edge-on" } else { "dag-edge" } d=path></path> }
                        })
                        .collect::<Vec<_>>()
                })
                .collect_view();
            let nodes = state
                .steps
                .iter()
                .map(|s| {
                    let (x, y) = xy(&s.id);
                    let status = s.status.as_str();
                    let label = if s.id.chars().count() > 18 {
                        format!("{}…", s.id.chars().take(17).collect::<String>())
                    } else {
                        s.id.clone()
                    };
                    let sub = if s.attempt > 1 {
                        format!("{status} · try {}", s.attempt)
                    } else {
                        status.to_string()
                    };
                    let anchor = format!("step-{}", s.id);
                    // An SVG node, not an HTML link (which would not render inside <svg>):
                    // a click scrolls to the step's card.
                    let jump = move |_| {
                        #[cfg(feature = "hydrate")]
                        if let Some(w) = web_sys::window() {
                            let _ = w.location().set_hash(&anchor);
                        }
                        #[cfg(not(feature = "hydrate"))]
                        let _ = &anchor;
                    };
                    view! {
                        <g class=format!("dag-node dag-{status}") transform=format!("translate({x},{y})") on:click=jump>
                            <title>{format!("{}: {status}", s.id)}</title>
                            <rect width=NODE_W height=NODE_H rx="8"></rect>
                            <circle class="dag-dot" cx="14" cy=NODE_H / 2 r="4"></circle>
                            <text class="dag-label" x="26" y="19">{label}</text>
                            <text class="dag-sub" x="26" y="34">{sub}</text>
                        </g>
                    }
                })
                .collect_view();
            view! {
                <svg
                    class="dag"
                    role="img"
                    aria-label="Workflow graph"
                    viewBox=format!("0 0 {width} {height}")
                    width=width.to_string()
                    height=height.to_string()
                >
                    <g class="dag-edges">{edges}</g>
                    <g class="dag-nodes">{nodes}</g>
                </svg>
            }
        })
    };
    view! { <div class="dag-wrap">{drawing}</div> }
}
