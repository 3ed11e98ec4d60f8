//! The engine: runs workflows to the end, checkpointing every transition.
//!
//! One loop owns everything that changes: the workflows this instance holds a lease on (their
//! [`cairn::WorkflowState`], folded from committed events), the attempts in flight and the
//! lease clock. Each turn of the loop is a [`Engine::tick`]: take over workflows that have no
//! live owner, turn finished attempts into events, start ready steps, and commit all of it in
//! one transaction (the group commit). Attempts are launched only after the `step.started`
//! that announces them is durable, and a result is committed only under the lease epoch it
//! was started with, so a crash can interrupt an attempt but never lose or repeat a completed
//! step.
//!
//! Manual controls reach the loop as [`Command`]s through an [`EngineHandle`], so they are
//! serialised with everything else the loop does. New workflows do too
//! ([`EngineHandle::create`]): an engine with room takes the new workflow's lease, starts it
//! and its first steps in the very checkpoint that creates it, so a three-step chain costs
//! four commits (created and started; each completion with the next start; the last one
//! with the end) instead of five.
//!
//! Several instances may share a database (Postgres). Each engine watches the committed log
//! (the store's live events, which include every instance's checkpoints): a workflow created
//! or made runnable elsewhere is a reason to claim, and a change that another instance made
//! to a workflow this one runs (a control sent there) is taken in before the next decision.

mod control;
pub mod runner;
mod tick;
mod whole;

use std::{
    collections::{HashMap, HashSet},
    sync::Arc,
    time::Duration,
};

use cairn::{WorkflowState, WorkflowStatus};
use chrono::Utc;
use tokio::{
    sync::{broadcast, mpsc, oneshot},
    task::JoinSet,
};
use tokio_util::sync::CancellationToken;

pub use control::{Control, ControlError};
use runner::{LogLine, LogSink, Runner};
use whole::WholeOutputs;

use crate::{
    config::EngineConfig,
    store::{Change, Fence, LiveEvent, Outcome, Rejection, Store},
};

/// How long a stopping engine waits for its last checkpoint (a database that does not answer
/// must not hold a deploy up).
const LAST_CHECKPOINT_WAIT: Duration = Duration::from_secs(5);

/// Tuning knobs of the engine.
#[derive(Debug, Clone)]
pub struct EngineSettings {
    /// Attempts running at once, across all workflows.
    pub max_concurrency: usize,
    /// How long a lease lasts without renewal. Renewed every third of it while the engine
    /// lives: this is the heartbeat that tells other instances the work is not stuck.
    pub lease_ttl: Duration,
    /// How often to look for workflows without a live owner when nothing wakes the engine.
    pub poll_interval: Duration,
    /// Take over leases of other owners at start-up without waiting for them to expire.
    /// Honoured only where the store says it has a single owner ([`Store::single_owner`]:
    /// SQLite, where this process owns the file and any other owner is dead).
    pub steal_on_start: bool,
}

impl Default for EngineSettings {
    fn default() -> Self {
        Self {
            max_concurrency: 64,
            lease_ttl: Duration::from_secs(30),
            poll_interval: Duration::from_millis(500),
            steal_on_start: true,
        }
    }
}

/// A workflow this engine holds.
#[derive(Debug)]
struct Owned {
    state: WorkflowState,
    fence: Fence,
    /// Its attempts in flight, by step: which launch, and how to stop it.
    attempts: HashMap<String, Launched>,
    /// Log lines seen per step: (attempt, count), for the per-attempt cap.
    log_counts: HashMap<String, (u32, u32)>,
    /// The whole outputs of steps whose state carries only a preview, for the templates of
    /// the steps after them.
    whole_outputs: WholeOutputs,
    /// Checkpoints of this workflow the store refused in a row.
    unstorable: u32,
    /// Why the next tick must fail the workflow (its checkpoints keep being refused).
    fail_next: Option<String>,
}

/// An attempt this engine launched and has not taken the result of yet.
#[derive(Debug)]
struct Launched {
    /// Unique within this engine: only the result of a step's current launch counts.
    launch: u64,
    /// The step's attempt it runs.
    attempt: u32,
    cancel: CancellationToken,
}

impl Owned {
    /// The steps its state has running that this engine runs nothing for (a start committed
    /// by a checkpoint whose answer was lost); none unless the workflow is running.
    fn unlaunched(&self) -> impl Iterator<Item = &cairn::StepState> {
        let running = self.state.status == WorkflowStatus::Running;
        self.state.steps.iter().filter(move |s| {
            running && s.status == cairn::StepStatus::Running && !self.attempts.contains_key(&s.id)
        })
    }

    /// Takes in `state` as committed, stopping and forgetting the attempts whose step it no
    /// longer has running under their number: a control took it away, a change committed
    /// elsewhere reset it (a retry of a step before it), or the step has moved on to its next
    /// attempt. Their results belong to nobody, even if the step starts again under the same
    /// number.
    fn take_state(&mut self, state: WorkflowState) {
        self.attempts.retain(|step_id, launched| {
            let running = state.step(step_id).is_some_and(|s| {
                s.status == cairn::StepStatus::Running && s.attempt == launched.attempt
            });
            if !running {
                launched.cancel.cancel();
            }
            running
        });
        self.state = state;
    }
}

/// An attempt that ended, on its way back to the loop.
#[derive(Debug, Clone)]
struct Finished {
    /// The launch it ran as ([`Launched::launch`]).
    launch: u64,
    workflow_id: String,
    step_id: String,
    attempt: u32,
    epoch: i64,
    duration_ms: u64,
    result: Result<Produced, runner::RunError>,
}

/// What a successful attempt produced, shared rather than copied: the output may be
/// megabytes, and the engine holds it in a few places until it is stored (the event's preview
/// is cut from it, templates render from it, and it is kept until its checkpoint is durable).
#[derive(Debug, Clone)]
struct Produced {
    output: Arc<str>,
    session_id: Option<String>,
}

/// A request to the loop, with where to send the answer.
#[derive(Debug)]
pub struct Command {
    /// The workflow.
    pub workflow_id: String,
    /// What to do.
    pub control: Control,
    /// Who asked (recorded in the event).
    pub by: String,
    /// The answer: the workflow after the change.
    pub reply: oneshot::Sender<Result<WorkflowState, ControlError>>,
}

/// What one tick did, for tests and metrics.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct TickOutcome {
    /// Workflows taken over (or picked up for the first time).
    pub claimed: usize,
    /// Attempts launched.
    pub started: usize,
    /// Attempt results committed.
    pub finished: usize,
    /// Events committed.
    pub events: usize,
}

/// What became of a new workflow sent to [`EngineHandle::create`].
#[derive(Debug, Clone)]
pub enum Created {
    /// Durable, with its status after that checkpoint: `running` when this engine started it
    /// there, `pending` when it only created it for whichever instance has room.
    Committed(WorkflowStatus),
    /// Not written, and why (an idempotent replay, a refused value).
    Rejected(Rejection),
}

impl From<&Outcome> for Created {
    /// Only the status: the creator does not need the events and state the engine keeps
    /// (copying them, spec included, cost about 15 µs per new workflow in the engine's turn).
    fn from(outcome: &Outcome) -> Self {
        match outcome {
            Outcome::Committed { state, .. } => Self::Committed(state.status),
            Outcome::Rejected(r) => Self::Rejected(r.clone()),
        }
    }
}

/// A new workflow on its way to the loop's next checkpoint.
#[derive(Debug)]
struct Creation {
    change: Change,
    reply: oneshot::Sender<anyhow::Result<Created>>,
}

/// The cheap, cloneable side of the engine: send it new workflows and controls.
#[derive(Clone, Debug)]
pub struct EngineHandle {
    commands: mpsc::Sender<Command>,
    creations: mpsc::Sender<Creation>,
}

impl EngineHandle {
    /// Commits a new workflow (a [`Change::created`]) with the engine's next checkpoint and
    /// answers once it is durable. With room for it, the engine starts it in that same
    /// checkpoint; otherwise it is only created, for whichever instance has room to claim.
    pub async fn create(&self, change: Change) -> anyhow::Result<Created> {
        let (reply, rx) = oneshot::channel();
        self.creations
            .send(Creation { change, reply })
            .await
            .map_err(|_| anyhow::anyhow!("the engine is not running"))?;
        rx.await
            .map_err(|_| anyhow::anyhow!("the engine stopped before the workflow was saved"))?
    }

    /// Applies a manual control and returns the workflow after it.
    pub async fn control(
        &self,
        workflow_id: &str,
        control: Control,
        by: &str,
    ) -> Result<WorkflowState, ControlError> {
        let (reply, rx) = oneshot::channel();
        self.commands
            .send(Command {
                workflow_id: workflow_id.to_string(),
                control,
                by: by.to_string(),
                reply,
            })
            .await
            .map_err(|_| ControlError::Unavailable)?;
        rx.await.map_err(|_| ControlError::Unavailable)?
    }
}

/// The engine loop's state. Build with [`Engine::new`], drive with [`Engine::run`] or, in
/// tests, step by step with [`Engine::tick`].
pub struct Engine {
    store: Store,
    runners: Arc<HashMap<String, Runner>>,
    instance: Arc<str>,
    settings: EngineSettings,
    owned: HashMap<String, Owned>,
    in_flight: JoinSet<Finished>,
    /// Attempts launched so far: the next launch's number.
    launches: u64,
    finished: Vec<Finished>,
    logs_tx: LogSink,
    logs_rx: mpsc::Receiver<LogLine>,
    log_buffer: Vec<LogLine>,
    commands: mpsc::Receiver<Command>,
    creations: mpsc::Receiver<Creation>,
    /// New workflows waiting for the next checkpoint.
    arriving: Vec<Creation>,
    claim_due: bool,
    /// Taking over the leases of an earlier process at once (start-up, on a single-owner
    /// store), until a claim finds no more.
    stealing: bool,
    last_renewal: tokio::time::Instant,
    rng: fastrand::Rng,
    /// The committed log as it grows, whoever writes it.
    log: broadcast::Receiver<Arc<LiveEvent>>,
    /// Workflows this engine holds that someone else changed: reloaded at the next tick.
    changed_elsewhere: HashSet<String>,
    /// Workflows read back with a step running that this engine runs nothing for.
    unlaunched: HashSet<String>,
    /// Stopping: the last checkpoint starts and claims nothing.
    stopping: bool,
}

impl Engine {
    /// An engine for `instance` over `store`, with runners from the configuration.
    pub fn new(
        store: Store,
        config: &EngineConfig,
        instance: Arc<str>,
        settings: EngineSettings,
    ) -> (Self, EngineHandle) {
        let runners = config
            .roles
            .iter()
            .map(|(role, rc)| (role.clone(), Runner::from_config(rc)))
            .collect();
        let (commands_tx, commands) = mpsc::channel(256);
        let (creations_tx, creations) = mpsc::channel(1024);
        let (logs_tx, logs_rx) = LogSink::channel(4096);
        let handle = EngineHandle {
            commands: commands_tx,
            creations: creations_tx,
        };
        let engine = Self {
            store: store.clone(),
            runners: Arc::new(runners),
            instance,
            settings,
            owned: HashMap::new(),
            in_flight: JoinSet::new(),
            launches: 0,
            finished: Vec::new(),
            logs_tx,
            logs_rx,
            log_buffer: Vec::new(),
            commands,
            creations,
            arriving: Vec::new(),
            claim_due: true,
            stealing: true,
            last_renewal: tokio::time::Instant::now(),
            rng: fastrand::Rng::new(),
            log: store.subscribe(),
            changed_elsewhere: HashSet::new(),
            unlaunched: HashSet::new(),
            stopping: false,
        };
        (engine, handle)
    }

    /// Runs until `shutdown`, then stops ([`Engine::stop`]).
    pub async fn run(mut self, shutdown: CancellationToken) {
        loop {
            crate::metrics::engine_tick();
            if let Err(e) = self.tick().await {
                tracing::error!(error = format!("{e:#}"), "engine tick failed; retrying");
                tokio::select! {
                    _ = shutdown.cancelled() => break,
                    _ = tokio::time::sleep(Duration::from_millis(500)) => {}
                }
                continue;
            }
            let deadline = self.next_deadline();
            tokio::select! {
                _ = shutdown.cancelled() => break,
                Some(done) = self.in_flight.join_next(), if !self.in_flight.is_empty() => {
                    match done {
                        Ok(f) => self.finished.push(f),
                        Err(e) => tracing::error!(error = %e, "an attempt task panicked"),
                    }
                }
                Some(cmd) = self.commands.recv() => self.handle_command(cmd).await,
                Some(c) = self.creations.recv() => {
                    // All that arrived together share the next checkpoint.
                    self.arriving.push(c);
                    while let Ok(c) = self.creations.try_recv() {
                        self.arriving.push(c);
                    }
                }
                Some(line) = self.logs_rx.recv() => self.log_buffer.push(line),
                seen = self.log.recv() => {
                    self.observe(seen);
                    self.observe_log();
                }
                _ = tokio::time::sleep_until(deadline) => self.claim_due = true,
            }
        }
        self.stop().await;
    }

    /// Stops the engine ([`Engine::run`] ends so). A last checkpoint commits what has
    /// finished (a result that came back just before the stop does not run again elsewhere)
    /// and the new workflows already sent, created for whoever has room; it starts and claims
    /// nothing. Then the attempts still running are stopped (their processes killed) and
    /// their workflows handed over: their leases end at once, so the next claim, another
    /// instance's or the next start's, runs those attempts again without waiting for the
    /// leases to expire.
    pub async fn stop(mut self) {
        self.stopping = true;
        // Those sent from now on are refused; those already sent go in the last checkpoint.
        self.creations.close();
        match tokio::time::timeout(LAST_CHECKPOINT_WAIT, self.tick()).await {
            Ok(Ok(_)) => {}
            Ok(Err(e)) => tracing::warn!(
                error = format!("{e:#}"),
                "the last checkpoint failed; the attempts it carried will run again"
            ),
            Err(_) => tracing::warn!("the last checkpoint took too long; stopping without it"),
        }
        for owned in self.owned.values() {
            for launched in owned.attempts.values() {
                launched.cancel.cancel();
            }
        }
        // Creations never committed are answered (dropping them says the engine stopped).
        self.arriving.clear();
        self.in_flight.shutdown().await;
        // Only now that nothing of theirs runs here.
        let ids: Vec<String> = self.owned.keys().cloned().collect();
        if !ids.is_empty() {
            match self.store.hand_over(&self.instance, &ids).await {
                Ok(held) => tracing::info!(workflows = held.len(), "handed over"),
                Err(e) => tracing::warn!(
                    error = format!("{e:#}"),
                    "handing workflows over; their leases will expire instead"
                ),
            }
        }
        tracing::info!("engine stopped");
    }

    /// When the loop must look again even if nothing happens: the earliest retry, the next
    /// lease renewal, the next poll. A retry is no reason while every slot is taken: it could
    /// not start, and an overdue one would wake the loop again at once, turn after turn, until
    /// a slot frees (which wakes the loop anyway).
    fn next_deadline(&self) -> tokio::time::Instant {
        let now_tokio = tokio::time::Instant::now();
        let now = Utc::now();
        let mut deadline = now_tokio + self.settings.poll_interval;
        let renew_at = self.last_renewal + self.settings.lease_ttl / 3;
        deadline = deadline.min(renew_at);
        if self.free_slots() == 0 {
            return deadline;
        }
        for o in self.owned.values() {
            if o.state.status == WorkflowStatus::Running
                && let Some(at) = o.state.next_wake()
            {
                let wait = (at - now).to_std().unwrap_or(Duration::ZERO);
                deadline = deadline.min(now_tokio + wait);
            }
        }
        deadline
    }

    /// Takes in what the log has committed since last time, without waiting.
    fn observe_log(&mut self) {
        loop {
            match self.log.try_recv() {
                Ok(e) => self.observe(Ok(e)),
                Err(broadcast::error::TryRecvError::Lagged(n)) => {
                    self.observe(Err(broadcast::error::RecvError::Lagged(n)))
                }
                Err(_) => break,
            }
        }
    }

    /// One committed event (or a gap in what this engine saw of the log).
    fn observe(&mut self, seen: Result<Arc<LiveEvent>, broadcast::error::RecvError>) {
        match seen {
            Ok(e) => match self.owned.get(&e.workflow_id) {
                // Newer than what this engine folded: someone else wrote it.
                Some(o) if e.id > o.state.last_event_id => {
                    self.changed_elsewhere.insert(e.workflow_id.clone());
                }
                Some(_) => {}
                None => {
                    use cairn::Event;
                    if matches!(
                        e.event,
                        Event::WorkflowCreated { .. }
                            | Event::WorkflowResumed { .. }
                            | Event::StepRetrying { .. }
                            | Event::StepSkipped { .. }
                    ) {
                        self.claim_due = true;
                    }
                }
            },
            Err(broadcast::error::RecvError::Lagged(_)) => {
                // Events were missed: anything may have changed.
                self.changed_elsewhere.extend(self.owned.keys().cloned());
                self.claim_due = true;
            }
            Err(broadcast::error::RecvError::Closed) => {}
        }
    }

    /// Attempts this engine may still launch: none while it stops.
    fn free_slots(&self) -> usize {
        if self.stopping {
            return 0;
        }
        self.settings
            .max_concurrency
            .saturating_sub(self.in_flight.len())
    }

    /// Workflows this engine holds now (for tests).
    pub fn owned_count(&self) -> usize {
        self.owned.len()
    }

    /// Attempts in flight (for tests).
    pub fn in_flight_count(&self) -> usize {
        self.in_flight.len()
    }

    /// Waits for the next attempt to finish and queues its result for the next tick; `false`
    /// when none is in flight. Tests use it with [`Engine::tick`] to drive the engine
    /// without sleeping.
    pub async fn wait_for_attempt(&mut self) -> bool {
        match self.in_flight.join_next().await {
            Some(Ok(f)) => {
                self.finished.push(f);
                true
            }
            Some(Err(e)) => {
                tracing::error!(error = %e, "an attempt task panicked");
                true
            }
            None => false,
        }
    }
}
