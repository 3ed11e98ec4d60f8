//! The client commands: `run`, `ls`, `status`, `logs`, `resume`, `cancel`, `retry`, `skip`,
//! talking to a server's JSON API and following its SSE stream.
//!
//! Exit status: 0 done (a followed workflow completed), 1 failed (or the server refused),
//! 2 usage or an invalid spec, 3 cancelled, 4 the server cannot be reached.

use std::{
    collections::HashMap,
    io::{IsTerminal, Read},
    time::Duration,
};

use cairn::{
    Event, EventRecord, ParseOptions, SpecText, StepStatus, WorkflowState, WorkflowStatus,
    WorkflowSummary,
};
use chrono::{DateTime, Local, Utc};
use eventsource_stream::Eventsource;
use futures::StreamExt;
use indicatif::{MultiProgress, ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde_json::{Value, json};

use crate::client::{Api, ApiFailure, ControlRequest, describe};

/// The exit statuses.
pub mod exit {
    /// A followed workflow completed, or the command did what it was asked.
    pub const OK: u8 = 0;
    /// A followed workflow failed, or the server refused the request.
    pub const FAILED: u8 = 1;
    /// Bad usage or an invalid spec.
    pub const USAGE: u8 = 2;
    /// A followed workflow was cancelled.
    pub const CANCELLED: u8 = 3;
    /// The server cannot be reached.
    pub const UNREACHABLE: u8 = 4;
}

/// How long `--follow` keeps trying to reconnect before it gives up (exit 4).
const RECONNECT_FOR: Duration = Duration::from_secs(60);

/// Where the server is and how to print, for every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// The cairn server's URL.
    #[arg(long, env = "CAIRN_SERVER", default_value = "http://127.0.0.1:3000")]
    pub server: String,
    /// Print JSON for scripts: one document, or one line per event when following.
    #[arg(long)]
    pub json: bool,
}

/// A command's failure: one sentence and the exit status.
#[derive(Debug)]
pub struct Failure {
    /// The exit status.
    pub exit: u8,
    /// What went wrong.
    pub message: String,
}

impl Failure {
    fn usage(message: impl Into<String>) -> Self {
        Self {
            exit: exit::USAGE,
            message: message.into(),
        }
    }
}

impl From<ApiFailure> for Failure {
    fn from(f: ApiFailure) -> Self {
        let exit = match &f {
            ApiFailure::Unreachable { .. } => exit::UNREACHABLE,
            ApiFailure::Refused(r) if r.status == 422 || r.status == 400 => exit::USAGE,
            _ => exit::FAILED,
        };
        Self {
            exit,
            message: f.to_string(),
        }
    }
}

type Outcome = Result<u8, Failure>;

/// `cairn run`'s arguments.
#[derive(Debug, clap::Args)]
pub struct RunArgs {
    /// The spec: a JSON or YAML file, or `-` for standard input.
    pub spec: String,
    /// A value for `{inputs.NAME}`, as NAME=VALUE (repeatable).
    #[arg(long = "input", short = 'i', value_name = "NAME=VALUE", value_parser = parse_input)]
    pub inputs: Vec<(String, String)>,
    /// Follow the workflow live until it ends; the exit status says how it ended.
    #[arg(long, short = 'f')]
    pub follow: bool,
    /// Start at most one workflow for this key (a repeated run answers the first one).
    #[arg(long)]
    pub idempotency_key: Option<String>,
    #[command(flatten)]
    pub remote: Remote,
}

fn parse_input(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err(format!("expected NAME=VALUE, got {s:?}")),
    }
}

/// Reads and checks a spec before anything is sent: every problem with its path.
fn read_spec(path: &str, inputs: &[(String, String)]) -> Result<Value, Failure> {
    let text = if path == "-" {
        let mut text = String::new();
        std::io::stdin()
            .read_to_string(&mut text)
            .map_err(|e| Failure::usage(format!("cannot read the spec from stdin: {e}")))?;
        text
    } else {
        std::fs::read_to_string(path)
            .map_err(|e| Failure::usage(format!("cannot read {path}: {e}")))?
    };
    let opts = ParseOptions::default();
    let problems = |e: cairn::SpecErrors| {
        let n = e.errors.len();
        let mut message = format!(
            "{path} is not a valid workflow ({n} problem{}):",
            if n == 1 { "" } else { "s" }
        );
        for p in e.errors {
            if p.path.is_empty() {
                message.push_str(&format!("\n  {}", p.message));
            } else {
                message.push_str(&format!("\n  {}: {}", p.path, p.message));
            }
        }
        Failure::usage(message)
    };
    let mut value = match cairn::read_spec_text(&text, &opts).map_err(problems)? {
        SpecText::Json(v) => v,
        SpecText::Yaml { json_error } => {
            cairn::read_spec_yaml(&text, json_error).map_err(problems)?
        }
    };
    if !inputs.is_empty() {
        if let Value::Array(steps) = value {
            value = json!({ "steps": steps });
        }
        let Some(spec) = value.as_object_mut() else {
            return Err(Failure::usage(format!(
                "{path} is not a workflow: not an object or an array"
            )));
        };
        let merged = spec.entry("inputs").or_insert_with(|| json!({}));
        let Some(merged) = merged.as_object_mut() else {
            return Err(Failure::usage(format!("{path}: inputs must be a mapping")));
        };
        for (k, v) in inputs {
            merged.insert(k.clone(), Value::String(v.clone()));
        }
    }
    // Roles are the server's to check; everything else is checked here.
    cairn::parse_spec_value(&value, &opts).map_err(problems)?;
    Ok(value)
}

/// `cairn run SPEC`.
pub async fn run(args: RunArgs) -> Outcome {
    let spec = read_spec(&args.spec, &args.inputs)?;
    let api = Api::remote(&args.remote.server);
    let started = api.start(&spec, args.idempotency_key.as_deref()).await?;
    let id = started["id"].as_str().unwrap_or_default().to_string();
    if !args.follow {
        if args.remote.json {
            println!("{started}");
        } else {
            println!("started {id}");
            println!("  follow it:  cairn logs {id} --follow");
            println!("  its state:  cairn status {id}");
            println!("  in a browser: {}", api.url(&format!("/workflows/{id}")));
        }
        return Ok(exit::OK);
    }
    let mode = Mode::pick(args.remote.json);
    if mode != Mode::Json {
        eprintln!("started {id}: {}", api.url(&format!("/workflows/{id}")));
    }
    let state = follow(&api, &id, mode, None).await?;
    Ok(ended(&state))
}

/// The exit status for how a workflow ended.
fn ended(state: &WorkflowState) -> u8 {
    match state.status {
        WorkflowStatus::Completed => exit::OK,
        WorkflowStatus::Cancelled => exit::CANCELLED,
        _ => exit::FAILED,
    }
}

fn is_end(status: WorkflowStatus) -> bool {
    matches!(
        status,
        WorkflowStatus::Completed | WorkflowStatus::Failed | WorkflowStatus::Cancelled
    )
}

/// How a follow prints.
#[derive(Clone, Copy, Debug, PartialEq)]
enum Mode {
    /// Bars and spinners for a person at a terminal.
    Terminal,
    /// One line per change, for pipes and files.
    Plain,
    /// One JSON line per event.
    Json,
}

impl Mode {
    fn pick(json: bool) -> Self {
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
async fn follow(
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
        let resp = http
            .get(&url)
            .header("accept", "text/event-stream")
            .header("last-event-id", last.to_string())
            .send()
            .await;
        let resp = match resp {
            Ok(r) if r.status().is_success() => r,
            Ok(r) if r.status().as_u16() == 404 => {
                return Err(Failure {
                    exit: exit::FAILED,
                    message: format!("no workflow {id:?} on {}", api.base()),
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
struct View {
    mode: Mode,
    only_step: Option<String>,
    multi: MultiProgress,
    overall: Option<ProgressBar>,
    steps: HashMap<String, ProgressBar>,
}

impl View {
    fn new(mode: Mode, only_step: Option<&str>) -> Self {
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

    fn show(&mut self, rec: &EventRecord, state: &WorkflowState) {
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

fn clock(at: DateTime<Utc>) -> String {
    at.with_timezone(&Local).format("%H:%M:%S").to_string()
}

/// A workflow's steps and how it ended, as a small table.
fn summary(state: &WorkflowState) -> String {
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

/// `cairn ls`.
pub async fn ls(status: Option<String>, limit: u32, remote: Remote) -> Outcome {
    let api = Api::remote(&remote.server);
    let list: Vec<WorkflowSummary> = api.list(status.as_deref(), limit).await?;
    if remote.json {
        println!("{}", serde_json::to_string(&list).unwrap_or_default());
        return Ok(exit::OK);
    }
    if list.is_empty() {
        println!("no workflows");
        return Ok(exit::OK);
    }
    let name_w = list
        .iter()
        .map(|w| w.name.len())
        .max()
        .unwrap_or(4)
        .clamp(4, 32);
    println!(
        "{:34} {:name_w$} {:10} {:8} UPDATED",
        "ID", "NAME", "STATUS", "STEPS"
    );
    for w in &list {
        let name: String = w.name.chars().take(name_w).collect();
        println!(
            "{:34} {:name_w$} {:10} {:8} {}",
            w.id,
            name,
            w.status.as_str(),
            format!("{}/{}", w.progress.done, w.progress.total),
            w.updated_at.map(clock).unwrap_or_default()
        );
    }
    Ok(exit::OK)
}

/// `cairn status ID`.
pub async fn status(id: String, remote: Remote) -> Outcome {
    let api = Api::remote(&remote.server);
    let state = api.workflow(&id).await?;
    if remote.json {
        println!("{}", serde_json::to_string(&state).unwrap_or_default());
    } else {
        print!("{}", summary(&state));
    }
    Ok(exit::OK)
}

/// `cairn logs ID [STEP] [--follow]`.
pub async fn logs(id: String, step: Option<String>, follow_it: bool, remote: Remote) -> Outcome {
    let api = Api::remote(&remote.server);
    let state = api.workflow(&id).await?;
    if let Some(step) = &step
        && state.step(step).is_none()
    {
        return Err(Failure {
            exit: exit::FAILED,
            message: format!(
                "workflow {id} has no step {step:?}; its steps: {}",
                state
                    .steps
                    .iter()
                    .map(|s| s.id.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        });
    }
    if follow_it {
        let state = follow(&api, &id, Mode::pick(remote.json), step.as_deref()).await?;
        return Ok(ended(&state));
    }
    let events = api.history(&id, 0).await?;
    let mut view = View::new(Mode::pick(remote.json), step.as_deref());
    if view.mode == Mode::Terminal {
        view.mode = Mode::Plain;
    }
    let mut folded = WorkflowState::new(&id);
    for rec in &events {
        let _ = folded.apply(rec);
        view.show(rec, &folded);
    }
    Ok(exit::OK)
}

/// `cairn resume|cancel|retry|skip`.
pub async fn control(id: String, control: ControlRequest, remote: Remote) -> Outcome {
    let api = Api::remote(&remote.server);
    let state = api.control(&id, &control).await?;
    if remote.json {
        println!("{}", serde_json::to_string(&state).unwrap_or_default());
    } else {
        let done = match &control {
            ControlRequest::Resume => "resumed".to_string(),
            ControlRequest::Cancel { .. } => "cancelled".to_string(),
            ControlRequest::Retry { step } => format!("step {step} will run again"),
            ControlRequest::RetryNow { step } => format!("step {step} starts now"),
            ControlRequest::Skip { step, .. } => format!("step {step} skipped"),
        };
        println!("{id}: {done}; the workflow is {}", state.status.as_str());
    }
    Ok(exit::OK)
}
