//! The client commands: `run`, `ls`, `status`, `logs`, `resume`, `cancel`, `retry`, `skip`,
//! talking to a server's JSON API and following its SSE stream.
//!
//! Exit status: 0 done (a followed workflow completed), 1 failed (or the server refused),
//! 2 usage or an invalid spec, 3 cancelled, 4 the server cannot be reached.

use std::io::Read;

use cairn::{ParseOptions, SpecText, WorkflowState, WorkflowStatus, WorkflowSummary};
use serde_json::{Value, json};

use crate::client::{Api, ApiFailure, ControlRequest};

mod follow;
use follow::{Mode, View, clock, follow, summary};

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

/// Where the server is and how to print, for every client command.
#[derive(Debug, Clone, clap::Args)]
pub struct Remote {
    /// The cairn server's URL.
    #[arg(long, env = "CAIRN_SERVER", default_value = "http://127.0.0.1:3000")]
    pub server: String,
    /// Print JSON for scripts: one document, or one line per event when following.
    #[arg(long)]
    pub json: bool,
    /// The token to call the server with (`cairn token create` makes one); a server without
    /// tokens needs none.
    #[arg(long, env = "CAIRN_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
}

impl Remote {
    /// The server's API, called with the token if there is one.
    pub fn api(&self) -> Api {
        Api::remote(&self.server).with_token(self.token.as_deref())
    }
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
        let hint = match f.status() {
            Some(401) => " (set CAIRN_TOKEN to a token of this server)",
            _ => "",
        };
        Self {
            exit,
            message: format!("{f}{hint}"),
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
    let api = args.remote.api();
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

/// `cairn ls`.
pub async fn ls(status: Option<String>, limit: u32, remote: Remote) -> Outcome {
    let api = remote.api();
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
    let api = remote.api();
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
    let api = remote.api();
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
    let api = remote.api();
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
