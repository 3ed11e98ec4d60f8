//! Following a workflow live: its SSE stream read from the first event (reconnecting with
//! `Last-Event-ID`), shown as bars at a terminal, lines in a pipe or JSON lines, and the
//! summary at the end.

use std::{collections::HashMap, io::IsTerminal, time::Duration};

use cairn::{Event, EventRecord, StepStatus, WorkflowState, WorkflowStatus};
use chrono::{DateTime, Local, Utc};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};

use super::{Failure, exit};
use crate::client::{Api, describe};

/// How long `--follow` keeps trying to reconnect before it gives up (exit 4).
const RECONNECT_FOR: Duration = Duration::from_secs(60);

fn is_end(status: WorkflowStatus) -> bool {
    matches!(
        status,
        WorkflowStatus::Completed | WorkflowStatus::Failed | WorkflowStatus::Cancelled
    )
}

/// How a follow prints.
#[derive(Clone, Copy, Debug, PartialEq)]
pub(super) enum Mode {
    /// Bars and spinners for a person at a terminal.
    Terminal,
    /// One line per change, for pipes and files.
    Plain,
    /// One JSON line per event.
    Json,
}

impl Mode {
    pub(super) fn pick(json: bool) -> Self {
        if json {
            Self::Json
        } else if std::io::stdout().is_terminal() {
            Self::Terminal
        } else {
            Self::Plain
        }
    }
}

/// Follows a workflow's SSE stream from its first event until it ends, printing as `mode`
/// says; reconnects with `Last-Event-ID` when the connection drops (a server restart), so no
/// event is missed or shown twice. With `only_step`, prints only that step's lines.
pub(super) async fn follow(
    api: &Api,
    id: &str,
    mode: Mode,
    only_step: Option<&str>,
) -> Result<WorkflowState, Failure> {
    let http = reqwest::Client::new();
    let url = api.url(&format!("/api/workflows/{id}/events"));
    let mut view = View::new(mode, only_step);
    let mut state = WorkflowState::new(id);
    let mut last = 0i64;
    let mut lost_since: Option<tokio::time::Instant> = None;
    let mut ticker = tokio::time::interval(Duration::from_secs(1));
    loop {
        let mut req = http
            .get(&url)
            .header("accept", "text/event-stream")
            .header("last-event-id", last.to_string());
        for (k, v) in api.credentials() {
            req = req.header(k, v);
        }
        let resp = req.send().await;
        let resp = match resp {
            Ok(r) if r.status().is_success() => r,
            Ok(r) if r.status().as_u16() == 404 => {
                return Err(Failure {
                    exit: exit::FAILED,
                    message: format!("no workflow {id:?} on {}", api.base()),
                });
            }
            // A token refused (missing, revoked, expired, too small) stays refused.
            Ok(r) if matches!(r.status().as_u16(), 401 | 403) => {
                let status = r.status();
                let body = r.bytes().await.unwrap_or_default();
                let message = serde_json::from_slice::<serde_json::Value>(&body)
                    .ok()
                    .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
                    .unwrap_or_else(|| status.to_string());
                return Err(Failure {
                    exit: exit::FAILED,
                    message: format!("{message} (set CAIRN_TOKEN)"),
                });
            }
            other => {
                let since = *lost_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() > RECONNECT_FOR {
                    let reason = match other {
                        Ok(r) => format!("it answers {}", r.status()),
                        Err(e) => e.to_string(),
                    };
                    return Err(Failure {
                        exit: exit::UNREACHABLE,
                        message: format!(
                            "lost the cairn server at {} for {} s ({reason}); the workflow \
                             goes on: cairn status {id}",
                            api.base(),
                            RECONNECT_FOR.as_secs()
                        ),
                    });
                }
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        if lost_since.take().is_some() {
            view.note("reconnected");
        }
        let mut events = resp.bytes_stream().eventsource();
        loop {
            let next = tokio::select! {
                next = events.next() => next,
                _ = ticker.tick() => {
                    view.tick(&state);
                    continue;
                }
            };
            let Some(Ok(frame)) = next else { break };
            if frame.event == "snapshot" {
                continue;
            }
            let Ok(rec) = serde_json::from_str::<EventRecord>(&frame.data) else {
                continue;
            };
            if rec.id <= last {
                continue;
            }
            last = rec.id;
            let _ = state.apply(&rec);
            view.show(&rec, &state);
            if is_end(state.status) {
                view.finish(&state);
                return Ok(state);
            }
        }
        // The stream ended (the server stopped or restarted): resume after `last`.
        view.note("connection lost; reconnecting");
        lost_since.get_or_insert_with(tokio::time::Instant::now);
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
}

/// What a follow shows.
pub(super) struct View {
    pub(super) mode: Mode,
    only_step: Option<String>,
    multi: MultiProgress,
    overall: Option<ProgressBar>,
    steps: HashMap<String, ProgressBar>,
}

impl View {
    pub(super) fn new(mode: Mode, only_step: Option<&str>) -> Self {
        let multi = MultiProgress::with_draw_target(match mode {
            Mode::Terminal => ProgressDrawTarget::stderr(),
            _ => ProgressDrawTarget::hidden(),
        });
        Self {
            mode,
            only_step: only_step.map(str::to_string),
            multi,
            overall: None,
            steps: HashMap::new(),
        }
    }

    fn wanted(&self, rec: &EventRecord) -> bool {
        match (&self.only_step, rec.event.step_id()) {
            (Some(only), Some(step)) => only == step,
            (Some(_), None) => false,
            (None, _) => true,
        }
    }

    /// A line above the bars (or on its own).
    fn line(&self, text: String) {
        match self.mode {
            Mode::Terminal => {
                let _ = self.multi.println(text);
            }
            Mode::Plain => println!("{text}"),
            Mode::Json => {}
        }
    }

    fn note(&self, text: &str) {
        match self.mode {
            Mode::Json => {}
            _ => self.line(format!("{} {text}", clock(Utc::now()))),
        }
    }

    pub(super) fn show(&mut self, rec: &EventRecord, state: &WorkflowState) {
        if !self.wanted(rec) && !matches!(rec.event, Event::WorkflowCreated { .. }) {
            return;
        }
        if self.mode == Mode::Json {
            if self.wanted(rec) || self.only_step.is_none() {
                println!("{}", serde_json::to_string(rec).unwrap_or_default());
            }
            return;
        }
        if let Event::StepLog { step_id, line, .. } = &rec.event {
            self.line(format!("  {step_id} │ {line}"));
            return;
        }
        if self.mode == Mode::Terminal {
            self.bars(rec, state);
        }
        if let Some(text) = describe::describe(rec)
            && self.wanted(rec)
        {
            self.line(format!("{} {text}", clock(rec.at)));
        }
    }

    fn bars(&mut self, rec: &EventRecord, state: &WorkflowState) {
        let p = state.progress();
        if self.overall.is_none()
            && let Some(spec) = &state.spec
        {
            let bar = self.multi.add(ProgressBar::new(p.total as u64));
            bar.set_style(
                ProgressStyle::with_template(
                    "{prefix:.bold} [{bar:30.cyan/blue}] {pos}/{len} steps · {elapsed} {msg}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            );
            bar.set_prefix(spec.name.clone());
            self.overall = Some(bar);
        }
        if let Some(bar) = &self.overall {
            bar.set_position(p.done as u64);
            bar.set_message(state.status.as_str().to_string());
        }
        let spinner = || {
            ProgressStyle::with_template("  {spinner} {prefix:.bold} {msg} · {elapsed}")
                .unwrap_or_else(|_| ProgressStyle::default_spinner())
        };
        match &rec.event {
            Event::StepStarted {
                step_id, attempt, ..
            } => {
                let bar = self
                    .steps
                    .remove(step_id)
                    .unwrap_or_else(|| self.multi.add(ProgressBar::new_spinner()));
                bar.reset_elapsed();
                bar.set_style(spinner());
                bar.set_prefix(step_id.clone());
                bar.set_message(format!("running (attempt {attempt})"));
                bar.enable_steady_tick(Duration::from_millis(120));
                self.steps.insert(step_id.clone(), bar);
            }
            Event::StepRetrying { .. } => {
                self.tick(state);
            }
            Event::StepCompleted {
                step_id,
                duration_ms,
                ..
            } => self.end_step(
                step_id,
                format!("✓ completed in {}", describe::duration(*duration_ms)),
            ),
            Event::StepFailed { step_id, error, .. } => {
                self.end_step(step_id, format!("✗ failed: {}", describe::line(error, 120)))
            }
            Event::StepSkipped { step_id, .. } => self.end_step(step_id, "↷ skipped".into()),
            _ => {}
        }
    }

    fn end_step(&mut self, step: &str, message: String) {
        if let Some(bar) = self.steps.remove(step) {
            bar.set_style(
                ProgressStyle::with_template("  {prefix:.bold} {msg}")
                    .unwrap_or_else(|_| ProgressStyle::default_spinner()),
            );
            bar.finish_with_message(message);
        }
    }

    /// Every second: retry countdowns.
    fn tick(&self, state: &WorkflowState) {
        if self.mode != Mode::Terminal {
            return;
        }
        for s in &state.steps {
            if s.status != StepStatus::Retrying {
                continue;
            }
            if let (Some(bar), Some(at)) = (self.steps.get(&s.id), s.next_attempt_at) {
                let left = (at - Utc::now()).num_milliseconds().max(0) as u64;
                bar.set_message(format!(
                    "retrying in {} after: {}",
                    describe::duration(left.div_ceil(1000) * 1000),
                    describe::line(s.error.as_deref().unwrap_or(""), 80)
                ));
            }
        }
    }

    /// Clears the bars and prints the summary.
    fn finish(&mut self, state: &WorkflowState) {
        if self.mode == Mode::Json {
            return;
        }
        for (_, bar) in self.steps.drain() {
            bar.finish_and_clear();
        }
        if let Some(bar) = self.overall.take() {
            bar.finish_and_clear();
        }
        let _ = self.multi.clear();
        // The summary goes to stdout whatever the mode: it is the command's result.
        println!();
        print!("{}", summary(state));
    }
}

pub(super) fn clock(at: DateTime<Utc>) -> String {
    at.with_timezone(&Local).format("%H:%M:%S").to_string()
}

/// A workflow's steps and how it ended, as a small table.
pub(super) fn summary(state: &WorkflowState) -> String {
    let name = state
        .spec
        .as_ref()
        .map_or(state.id.as_str(), |s| s.name.as_str());
    let total = match (state.started_at, state.finished_at) {
        (Some(a), Some(b)) => format!(
            " in {}",
            describe::duration((b - a).num_milliseconds().max(0) as u64)
        ),
        _ => String::new(),
    };
    let mut out = format!("{name} ({}) {}{total}\n", state.id, state.status.as_str());
    let width = state.steps.iter().map(|s| s.id.len()).max().unwrap_or(4);
    for s in &state.steps {
        let mark = match s.status {
            StepStatus::Completed => "✓",
            StepStatus::Failed => "✗",
            StepStatus::Skipped => "↷",
            StepStatus::Cancelled => "■",
            StepStatus::Running | StepStatus::Retrying => "…",
            StepStatus::Pending => "·",
        };
        let took = s.duration_ms.map(describe::duration).unwrap_or_default();
        let attempts = if s.attempt > 1 {
            format!(" ({} attempts)", s.attempt)
        } else {
            String::new()
        };
        let error = match (&s.error, s.status) {
            (Some(e), StepStatus::Failed) => format!("  {}", describe::line(e, 100)),
            _ => String::new(),
        };
        out.push_str(&format!(
            "  {mark} {:width$}  {:9} {took}{attempts}{error}\n",
            s.id,
            s.status.as_str()
        ));
    }
    if let Some(e) = &state.error
        && state.status == WorkflowStatus::Failed
    {
        out.push_str(&format!("error: {}\n", describe::line(e, 300)));
    }
    out
}
