//! The checks that need every step at once: unique ids, deps that exist, no cycles, and
//! templates that only read inputs that exist and steps upstream through `deps`.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use super::read::{Problems, clip, key_path};
use super::step::RawStep;
use crate::template::TemplateRef;

/// Runs every graph check, recording problems, and returns each step's deps as indices
/// (deduplicated, unknown and self deps left out).
pub(super) fn check(
    p: &mut Problems,
    steps: &[RawStep],
    inputs: &BTreeMap<String, String>,
) -> Vec<Vec<usize>> {
    let index = unique_ids(p, steps);
    let edges = resolve_deps(p, steps, &index);
    for cycle in find_cycles(&edges) {
        let names: Vec<&str> = cycle.iter().map(|&i| steps[i].id.as_str()).collect();
        let first = cycle.first().copied().unwrap_or(0);
        let message = format!(
            "cycle: {} -> {}",
            names.join(" -> "),
            names.first().unwrap_or(&"")
        );
        p.push(key_path(&steps[first].path, "deps"), message);
    }
    for (i, step) in steps.iter().enumerate() {
        check_refs(p, step, &index, &ancestors(&edges, i), inputs);
    }
    edges
}

/// Maps each id to its first step, reporting every later duplicate.
fn unique_ids<'a>(p: &mut Problems, steps: &'a [RawStep]) -> BTreeMap<&'a str, usize> {
    let mut index = BTreeMap::new();
    for (i, step) in steps.iter().enumerate() {
        if let Some(&first) = index.get(step.id.as_str()) {
            let first: &RawStep = &steps[first];
            let note = if step.id_given {
                String::new()
            } else {
                " (a step without an id is named step1, step2, ... by its position)".to_string()
            };
            p.push(
                &step.id_path,
                format!(
                    "duplicate step id '{}': {} has it too{note}",
                    clip(&step.id),
                    first.path
                ),
            );
        } else {
            index.insert(step.id.as_str(), i);
        }
    }
    index
}

fn resolve_deps(
    p: &mut Problems,
    steps: &[RawStep],
    index: &BTreeMap<&str, usize>,
) -> Vec<Vec<usize>> {
    let mut edges = vec![Vec::new(); steps.len()];
    for (i, step) in steps.iter().enumerate() {
        for (dep, path) in &step.deps {
            if *dep == step.id {
                p.push(path, "a step cannot depend on itself");
            } else if let Some(&j) = index.get(dep.as_str()) {
                if !edges[i].contains(&j) {
                    edges[i].push(j);
                }
            } else {
                p.push(path, format!("unknown step '{}'", clip(dep)));
            }
        }
    }
    edges
}

/// Every distinct cycle (as a set of steps), each listed in run order (a step before the
/// ones that depend on it) starting from its earliest step. Iterative depth-first search, so
/// a long chain cannot exhaust the stack.
fn find_cycles(edges: &[Vec<usize>]) -> Vec<Vec<usize>> {
    const WHITE: u8 = 0;
    const GREY: u8 = 1;
    const BLACK: u8 = 2;
    let mut colour = vec![WHITE; edges.len()];
    let mut seen = BTreeSet::new();
    let mut cycles = Vec::new();
    for root in 0..edges.len() {
        if colour[root] != WHITE {
            continue;
        }
        colour[root] = GREY;
        // (step, how many of its deps were visited); the stack is the current dep chain.
        let mut stack = vec![(root, 0usize)];
        while let Some((node, next)) = stack.last().copied() {
            let Some(&to) = edges.get(node).and_then(|e| e.get(next)) else {
                colour[node] = BLACK;
                stack.pop();
                continue;
            };
            if let Some(top) = stack.last_mut() {
                top.1 += 1;
            }
            match colour.get(to).copied() {
                Some(WHITE) => {
                    colour[to] = GREY;
                    stack.push((to, 0));
                }
                Some(GREY) => {
                    let start = stack.iter().position(|&(n, _)| n == to).unwrap_or(0);
                    // The chain runs along deps (each depends on the next); reversed it is
                    // the order the steps would run in.
                    let mut cycle: Vec<usize> =
                        stack[start..].iter().rev().map(|&(n, _)| n).collect();
                    let earliest = cycle
                        .iter()
                        .enumerate()
                        .min_by_key(|&(_, &n)| n)
                        .map_or(0, |(k, _)| k);
                    cycle.rotate_left(earliest);
                    let mut key = cycle.clone();
                    key.sort_unstable();
                    if seen.insert(key) {
                        cycles.push(cycle);
                    }
                }
                _ => {}
            }
        }
    }
    cycles
}

/// Every step `i` depends on, directly or not (cycles tolerated).
fn ancestors(edges: &[Vec<usize>], i: usize) -> BTreeSet<usize> {
    let mut found = BTreeSet::new();
    let mut queue: VecDeque<usize> = edges.get(i).into_iter().flatten().copied().collect();
    while let Some(j) = queue.pop_front() {
        if j != i && found.insert(j) {
            queue.extend(edges.get(j).into_iter().flatten().copied());
        }
    }
    found
}

fn check_refs(
    p: &mut Problems,
    step: &RawStep,
    index: &BTreeMap<&str, usize>,
    upstream: &BTreeSet<usize>,
    inputs: &BTreeMap<String, String>,
) {
    let Some(template) = &step.template else {
        return;
    };
    let path = key_path(&step.path, "task");
    let distinct: BTreeSet<&TemplateRef> = template.refs().collect();
    for r in distinct {
        let problem = match r {
            TemplateRef::Input(name) if !inputs.contains_key(name) => {
                let known = if inputs.is_empty() {
                    "the spec has no inputs".to_string()
                } else {
                    let names: Vec<&str> = inputs.keys().map(String::as_str).collect();
                    format!("inputs are: {}", names.join(", "))
                };
                Some(format!("unknown input '{name}'; {known}"))
            }
            TemplateRef::Input(_) => None,
            TemplateRef::StepOutput(s) | TemplateRef::StepSessionId(s) => {
                match index.get(s.as_str()) {
                    _ if *s == step.id => {
                        Some("a step cannot read its own output or session id".into())
                    }
                    None => Some(format!("unknown step '{s}'")),
                    Some(j) if !upstream.contains(j) => Some(format!(
                        "step '{s}' is not upstream of '{}'; add it to deps (directly or through \
                     another step)",
                        step.id
                    )),
                    Some(_) => None,
                }
            }
        };
        if let Some(problem) = problem {
            p.push(&path, format!("{r}: {problem}"));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cycles_are_found_once_each_in_run_order() {
        // 0 depends on 2, 1 on 0, 2 on 1: runs 0 -> 1 -> 2 -> 0. Plus 3 <-> 4.
        let edges = vec![vec![2], vec![0], vec![1], vec![4], vec![3]];
        assert_eq!(find_cycles(&edges), vec![vec![0, 1, 2], vec![3, 4]]);
    }

    #[test]
    fn a_dag_has_no_cycles_even_when_long() {
        let edges: Vec<Vec<usize>> = (0..100_000)
            .map(|i| if i == 0 { vec![] } else { vec![i - 1] })
            .collect();
        assert!(find_cycles(&edges).is_empty());
        assert_eq!(ancestors(&edges, 10).len(), 10);
    }

    #[test]
    fn ancestors_tolerate_cycles() {
        let edges = vec![vec![1], vec![0]];
        assert_eq!(ancestors(&edges, 0), BTreeSet::from([1]));
    }
}
