//! Operational metrics through the `metrics` facade, exported in Prometheus' text format at
//! `/metrics`.
//!
//! Durations are histograms with fixed buckets (not summaries), so the series of several
//! instances can be summed. Workflow and step outcomes are counted by the instance that
//! commits them, from the events each checkpoint writes: every event counts once across all
//! instances.

use std::{sync::OnceLock, time::Duration};

use cairn::{Event, EventRecord, WorkflowState};
use metrics::{counter, gauge, histogram};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};

use crate::store::{Outcome, Rejection};

/// Buckets for durations in seconds: 1 ms to 1 h.
const SECONDS: &[f64] = &[
    0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
    300.0, 900.0, 3600.0,
];
/// Buckets for checkpoint sizes, in changes.
const SIZES: &[f64] = &[1.0, 2.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0];

static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();

/// Installs the process's recorder (once; later calls return the same handle) and keeps its
/// histograms drained.
pub fn install() -> PrometheusHandle {
    HANDLE
        .get_or_init(|| {
            let builder = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), SECONDS)
                .and_then(|b| {
                    b.set_buckets_for_metric(
                        Matcher::Full("cairn_checkpoint_changes".into()),
                        SIZES,
                    )
                })
                .expect("the buckets are not empty");
            let handle = match builder.install_recorder() {
                Ok(handle) => handle,
                // Another recorder is installed (a test harness): keep one of our own.
                Err(_) => PrometheusBuilder::new().build_recorder().handle(),
            };
            let upkeep = handle.clone();
            tokio::spawn(async move {
                let mut every = tokio::time::interval(Duration::from_secs(5));
                loop {
                    every.tick().await;
                    upkeep.run_upkeep();
                }
            });
            handle
        })
        .clone()
}

/// One group commit: how long it took, how many changes, and what each change did.
pub fn checkpoint(elapsed: Duration, changes: usize, outcomes: &[Outcome]) {
    histogram!("cairn_checkpoint_commit_seconds").record(elapsed.as_secs_f64());
    histogram!("cairn_checkpoint_changes").record(changes as f64);
    for outcome in outcomes {
        match outcome {
            Outcome::Committed { records, state } => {
                for rec in records {
                    event(rec, state);
                }
            }
            Outcome::Rejected(Rejection::LeaseLost) => {
                counter!("cairn_fenced_results_discarded_total").increment(1);
            }
            Outcome::Rejected(_) => {}
        }
    }
}

/// A checkpoint that failed as a whole (the database refused or was unreachable).
pub fn checkpoint_failed() {
    counter!("cairn_checkpoint_failures_total").increment(1);
}

fn event(rec: &EventRecord, state: &WorkflowState) {
    match &rec.event {
        Event::StepStarted {
            step_id,
            attempt: 1,
            ..
        } => {
            // Schedule to start: from when the step could first run (its dependencies done,
            // or the workflow started) to its first attempt. Retries wait their backoff on
            // purpose and are not counted.
            if let Some(step) = state.step(step_id) {
                let ready = step
                    .deps
                    .iter()
                    .filter_map(|d| state.step(d).and_then(|s| s.finished_at))
                    .max()
                    .or(state.started_at);
                if let Some(ready) = ready {
                    let waited = (rec.at - ready).num_milliseconds().max(0) as f64 / 1000.0;
                    histogram!("cairn_step_schedule_latency_seconds").record(waited);
                }
            }
        }
        Event::StepCompleted { duration_ms, .. } => {
            counter!("cairn_steps_total", "outcome" => "completed").increment(1);
            histogram!("cairn_step_duration_seconds", "outcome" => "completed")
                .record(*duration_ms as f64 / 1000.0);
        }
        Event::StepFailed { duration_ms, .. } => {
            counter!("cairn_steps_total", "outcome" => "failed").increment(1);
            histogram!("cairn_step_duration_seconds", "outcome" => "failed")
                .record(*duration_ms as f64 / 1000.0);
        }
        Event::StepRetrying { by: None, .. } => {
            counter!("cairn_steps_total", "outcome" => "retried").increment(1);
        }
        Event::StepSkipped { .. } => {
            counter!("cairn_steps_total", "outcome" => "skipped").increment(1);
        }
        Event::WorkflowCreated { .. } => {
            counter!("cairn_workflows_total", "outcome" => "created").increment(1);
        }
        Event::WorkflowCompleted {} => {
            counter!("cairn_workflows_total", "outcome" => "completed").increment(1);
        }
        Event::WorkflowFailed { .. } => {
            counter!("cairn_workflows_total", "outcome" => "failed").increment(1);
        }
        Event::WorkflowCancelled { .. } => {
            counter!("cairn_workflows_total", "outcome" => "cancelled").increment(1);
        }
        Event::WorkflowStalled { .. } => {
            counter!("cairn_workflows_stalled_total").increment(1);
        }
        _ => {}
    }
}

/// Leases this instance asked to renew and no longer held.
pub fn leases_lost(n: usize) {
    if n > 0 {
        counter!("cairn_leases_lost_total").increment(n as u64);
    }
}

/// One turn of the engine loop. A count that climbs while nothing happens is a loop that
/// spins (each turn may query the database).
pub fn engine_tick() {
    counter!("cairn_engine_ticks_total").increment(1);
}

/// Open SSE streams on this instance.
pub fn sse_clients(open: usize) {
    gauge!("cairn_sse_clients").set(open as f64);
}

/// One HTTP request: its route (the pattern, not the path), method and status.
pub fn http_request(route: &str, method: &str, status: u16, elapsed: Duration) {
    let labels = [
        ("route", route.to_string()),
        ("method", method.to_string()),
        ("status", status.to_string()),
    ];
    counter!("cairn_http_requests_total", &labels).increment(1);
    histogram!("cairn_http_request_duration_seconds", &labels[..2]).record(elapsed.as_secs_f64());
}
