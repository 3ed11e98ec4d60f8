//! Typed configuration, loaded once at start-up and passed down.
//!
//! Two sources: the command line (every flag also reads a `CAIRN_*` environment variable) for
//! where things are, and `cairn.toml` for what the engine does: which runner each role is bound
//! to, and the default retry policy. Clients never choose what program runs: a role name in a
//! spec is only a key into this file, which is the operator's.

use std::{
    collections::{BTreeMap, BTreeSet},
    net::SocketAddr,
    path::{Path, PathBuf},
};

use anyhow::{Context, bail};
use cairn::{RetryOverrides, RetryPolicy};
use serde::Deserialize;

use crate::{engine::EngineSettings, http::events::SseSettings};

/// The configuration a fresh checkout uses when no `cairn.toml` is found: the file shipped at
/// the repository root, compiled in so a lone binary still has its seed roles.
pub const DEFAULT_CONFIG_TOML: &str = include_str!("../../cairn.toml");

/// Where the server listens, where it stores, where it finds its files.
#[derive(clap::Args, Debug, Clone)]
pub struct ServeArgs {
    /// Address to listen on.
    #[arg(long, env = "CAIRN_ADDR", default_value = "127.0.0.1:3000")]
    pub addr: SocketAddr,

    /// Database: `sqlite://PATH` (created if missing).
    #[arg(long, env = "CAIRN_DATABASE_URL", default_value = "sqlite://cairn.db")]
    pub database_url: String,

    /// The TOML file binding roles to runners. Default: `cairn.toml` in the working directory
    /// if there is one, else the built-in seed configuration.
    #[arg(long, env = "CAIRN_CONFIG")]
    pub config: Option<PathBuf>,

    /// The folder with the built web assets (`pkg/`, favicon, ...).
    #[arg(long, env = "CAIRN_SITE_ROOT", default_value = "target/site")]
    pub site_root: PathBuf,

    /// Log filter, in `tracing`'s `EnvFilter` syntax.
    #[arg(long, env = "CAIRN_LOG", default_value = "info")]
    pub log: String,
}

/// Everything the server needs, resolved and checked.
#[derive(Debug, Clone)]
pub struct Config {
    /// Address to listen on (port 0 picks a free one).
    pub addr: SocketAddr,
    /// The database URL.
    pub database_url: String,
    /// The folder with the built web assets.
    pub site_root: PathBuf,
    /// The engine's part of `cairn.toml`.
    pub engine: EngineConfig,
}

impl Config {
    /// Resolves the flags and reads the TOML file they name (or the default one).
    pub fn load(args: &ServeArgs) -> anyhow::Result<Self> {
        let engine = match &args.config {
            Some(path) => EngineConfig::from_file(path)?,
            None if Path::new("cairn.toml").exists() => {
                EngineConfig::from_file(Path::new("cairn.toml"))?
            }
            None => EngineConfig::from_toml(DEFAULT_CONFIG_TOML)
                .context("the built-in configuration is invalid")?,
        };
        Ok(Self {
            addr: args.addr,
            database_url: args.database_url.clone(),
            site_root: args.site_root.clone(),
            engine,
        })
    }
}

/// The contents of `cairn.toml`.
#[derive(Debug, Clone)]
pub struct EngineConfig {
    /// Role name → the runner that executes steps of that role.
    pub roles: BTreeMap<String, RunnerConfig>,
    /// The server-wide retry policy, under each spec's `defaults.retry` and each step's `retry`.
    pub retry: RetryPolicy,
    /// The step timeout when a spec sets none.
    pub default_timeout_s: u64,
    /// Concurrency and lease timing.
    pub settings: EngineSettings,
    /// Live streams: heartbeat and caps.
    pub sse: SseSettings,
}

impl EngineConfig {
    /// Reads and checks a TOML file.
    pub fn from_file(path: &Path) -> anyhow::Result<Self> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("reading the configuration file {}", path.display()))?;
        Self::from_toml(&text).with_context(|| format!("in {}", path.display()))
    }

    /// Parses and checks TOML text.
    pub fn from_toml(text: &str) -> anyhow::Result<Self> {
        let raw: RawConfig = toml::from_str(text).context("parsing the configuration")?;
        let retry = RetryPolicy::default().overlay(&raw.defaults.retry);
        if raw.roles.is_empty() {
            bail!("no [roles.NAME] section: bind at least one role to a runner");
        }
        for (name, runner) in &raw.roles {
            check_role(name, runner)?;
        }
        if raw.defaults.timeout_s == 0 {
            bail!("defaults.timeout_s must be at least 1");
        }
        let e = raw.engine;
        if e.max_concurrency == 0 {
            bail!("engine.max_concurrency must be at least 1");
        }
        if e.lease_ttl_ms < 300 {
            bail!("engine.lease_ttl_ms must be at least 300");
        }
        if e.poll_interval_ms == 0 {
            bail!("engine.poll_interval_ms must be at least 1");
        }
        let settings = EngineSettings {
            max_concurrency: e.max_concurrency,
            lease_ttl: std::time::Duration::from_millis(e.lease_ttl_ms),
            poll_interval: std::time::Duration::from_millis(e.poll_interval_ms),
            ..EngineSettings::default()
        };
        let sse = &raw.sse;
        if sse.heartbeat_ms < 100 || sse.max_streams == 0 || sse.max_streams_per_client == 0 {
            bail!("sse: heartbeat_ms must be at least 100 and the stream caps at least 1");
        }
        let sse = SseSettings {
            heartbeat: std::time::Duration::from_millis(sse.heartbeat_ms),
            max_streams: sse.max_streams,
            max_streams_per_client: sse.max_streams_per_client,
        };
        Ok(Self {
            roles: raw.roles,
            retry,
            default_timeout_s: raw.defaults.timeout_s,
            settings,
            sse,
        })
    }

    /// The role names a spec may use.
    pub fn role_names(&self) -> BTreeSet<String> {
        self.roles.keys().cloned().collect()
    }
}

fn check_role(name: &str, runner: &RunnerConfig) -> anyhow::Result<()> {
    let valid_name = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !name.is_empty();
    if !valid_name {
        bail!("role name {name:?}: use letters, digits, '_' and '-'");
    }
    match runner {
        RunnerConfig::Simulate => {}
        RunnerConfig::Command { program, .. } => {
            if program.trim().is_empty() {
                bail!("roles.{name}.program must not be empty");
            }
        }
        RunnerConfig::Http { url, .. } => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("roles.{name}.url must start with http:// or https://, got {url:?}");
            }
        }
    }
    Ok(())
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    engine: RawEngine,
    #[serde(default)]
    sse: RawSse,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    roles: BTreeMap<String, RunnerConfig>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSse {
    heartbeat_ms: u64,
    max_streams: usize,
    max_streams_per_client: usize,
}

impl Default for RawSse {
    fn default() -> Self {
        let d = SseSettings::default();
        Self {
            heartbeat_ms: d.heartbeat.as_millis() as u64,
            max_streams: d.max_streams,
            max_streams_per_client: d.max_streams_per_client,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawEngine {
    max_concurrency: usize,
    lease_ttl_ms: u64,
    poll_interval_ms: u64,
}

impl Default for RawEngine {
    fn default() -> Self {
        let d = EngineSettings::default();
        Self {
            max_concurrency: d.max_concurrency,
            lease_ttl_ms: d.lease_ttl.as_millis() as u64,
            poll_interval_ms: d.poll_interval.as_millis() as u64,
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawDefaults {
    #[serde(default = "default_timeout_s")]
    timeout_s: u64,
    #[serde(default)]
    retry: RetryOverrides,
}

impl Default for RawDefaults {
    fn default() -> Self {
        Self {
            timeout_s: default_timeout_s(),
            retry: RetryOverrides::default(),
        }
    }
}

fn default_timeout_s() -> u64 {
    600
}

/// How a role's steps are executed (DESIGN §3).
#[derive(Debug, Clone, PartialEq, Deserialize)]
#[serde(tag = "runner", rename_all = "snake_case")]
pub enum RunnerConfig {
    /// The built-in stand-in agent: waits, answers with the rendered task, can fail on purpose.
    Simulate,
    /// Runs a program directly (never through a shell).
    Command {
        /// The program to run.
        program: String,
        /// Arguments; `{task}` and `{session_id}` are replaced.
        #[serde(default)]
        args: Vec<String>,
        /// Extra arguments when the step has a session id from an earlier attempt.
        #[serde(default)]
        resume_args: Vec<String>,
        /// Whether the task goes on stdin (default) or only through `{task}` in `args`.
        #[serde(default)]
        task_via: TaskVia,
        /// Extra environment variables for the program.
        #[serde(default)]
        env: BTreeMap<String, String>,
    },
    /// POSTs the step to a URL.
    Http {
        /// The endpoint.
        url: String,
        /// Extra request headers (e.g. authorization).
        #[serde(default)]
        headers: BTreeMap<String, String>,
    },
}

/// Where a command runner passes the rendered task.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TaskVia {
    /// On the program's standard input.
    #[default]
    Stdin,
    /// Only on the command line, through `{task}` in `args`.
    Argv,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_shipped_configuration_binds_the_seed_roles_to_simulate() {
        let config = EngineConfig::from_toml(DEFAULT_CONFIG_TOML).expect("shipped config");
        for role in ["architect", "developer", "tester", "reviewer"] {
            assert_eq!(
                config.roles.get(role),
                Some(&RunnerConfig::Simulate),
                "{role}"
            );
        }
        assert_eq!(config.retry.max_attempts, 3);
    }

    #[test]
    fn a_command_role_reads_its_program_and_arguments() {
        let config = EngineConfig::from_toml(
            r#"
            [roles.claude]
            runner = "command"
            program = "claude"
            args = ["-p", "--output-format", "json"]
            resume_args = ["--resume", "{session_id}"]
            "#,
        )
        .unwrap();
        let RunnerConfig::Command {
            program,
            resume_args,
            task_via,
            ..
        } = &config.roles["claude"]
        else {
            panic!("not a command runner: {:?}", config.roles["claude"]);
        };
        assert_eq!(program, "claude");
        assert_eq!(resume_args, &["--resume", "{session_id}"]);
        assert_eq!(*task_via, TaskVia::Stdin);
    }

    #[test]
    fn a_configuration_without_roles_is_refused_with_a_hint() {
        let err = EngineConfig::from_toml("").unwrap_err();
        assert!(format!("{err:#}").contains("[roles.NAME]"), "{err:#}");
    }

    #[test]
    fn an_unknown_runner_or_field_is_refused() {
        assert!(EngineConfig::from_toml("[roles.a]\nrunner = \"shell\"\n").is_err());
        assert!(EngineConfig::from_toml("[rolez.a]\nrunner = \"simulate\"\n").is_err());
    }

    #[test]
    fn an_http_role_needs_an_http_url() {
        let err = EngineConfig::from_toml("[roles.hook]\nrunner = \"http\"\nurl = \"ftp://x\"\n")
            .unwrap_err();
        assert!(format!("{err:#}").contains("http://"), "{err:#}");
    }

    #[test]
    fn the_retry_defaults_can_be_changed_in_the_file() {
        let config = EngineConfig::from_toml(
            "[defaults.retry]\nmax_attempts = 7\n[roles.a]\nrunner = \"simulate\"\n",
        )
        .unwrap();
        assert_eq!(config.retry.max_attempts, 7);
        assert_eq!(config.retry.initial_interval_ms, 1000);
    }
}
