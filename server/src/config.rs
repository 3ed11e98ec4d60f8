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

    /// Database: `sqlite://PATH` (created if missing), or `postgres://USER@HOST/DATABASE`
    /// (several instances may share it; `?schema=NAME` picks the schema, default `cairn`).
    #[arg(
        long,
        env = "CAIRN_DATABASE_URL",
        hide_env_values = true,
        default_value = "sqlite://cairn.db"
    )]
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
    /// Role name → the runner that executes steps of that role, and how much it may produce.
    pub roles: BTreeMap<String, RoleConfig>,
    /// The server-wide retry policy, under each spec's `defaults.retry` and each step's `retry`.
    pub retry: RetryPolicy,
    /// The step timeout when a spec sets none.
    pub default_timeout_s: u64,
    /// Concurrency and lease timing.
    pub settings: EngineSettings,
    /// Live streams: heartbeat and caps.
    pub sse: SseSettings,
    /// CORS, request timeouts and write limits.
    pub http: HttpSettings,
    /// Deleting old finished workflows (`[retention]`); `None` keeps everything.
    pub retention: Option<crate::retention::Retention>,
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
        let roles = raw
            .roles
            .into_iter()
            .map(|(name, role)| {
                let role = check_role(&name, role)?;
                Ok((name, role))
            })
            .collect::<anyhow::Result<BTreeMap<_, _>>>()?;
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
        if sse.max_age_ms < 100 {
            bail!("sse.max_age_ms must be at least 100");
        }
        let sse = SseSettings {
            heartbeat: std::time::Duration::from_millis(sse.heartbeat_ms),
            max_streams: sse.max_streams,
            max_streams_per_client: sse.max_streams_per_client,
            max_age: std::time::Duration::from_millis(sse.max_age_ms),
        };
        let http = raw.http.check()?;
        let retention = raw.retention.map(|r| r.check()).transpose()?;
        Ok(Self {
            roles,
            retry,
            default_timeout_s: raw.defaults.timeout_s,
            settings,
            sse,
            http,
            retention,
        })
    }

    /// The role names a spec may use.
    pub fn role_names(&self) -> BTreeSet<String> {
        self.roles.keys().cloned().collect()
    }
}

/// Every `${NAME}` in these values must name a variable of the server's environment (its value
/// is read when the runner is built, and never printed: not here either).
fn check_env_refs(place: &str, values: &BTreeMap<String, String>) -> anyhow::Result<()> {
    for (key, value) in values {
        let mut rest = value.as_str();
        while let Some(start) = rest.find("${") {
            let Some(len) = rest[start + 2..].find('}') else {
                bail!("{place}.{key}: an unclosed ${{ (write ${{NAME}})");
            };
            let var = &rest[start + 2..start + 2 + len];
            if var.is_empty() || !var.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
                bail!("{place}.{key}: ${{{var}}} is not a variable name");
            }
            if std::env::var_os(var).is_none() {
                bail!(
                    "{place}.{key} takes ${{{var}}} from the server's environment, \
                     but {var} is not set there"
                );
            }
            rest = &rest[start + 3 + len..];
        }
    }
    Ok(())
}

/// Checks one `[roles.NAME]` section and resolves its output limit.
fn check_role(name: &str, raw: RawRole) -> anyhow::Result<RoleConfig> {
    let valid_name = name
        .chars()
        .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
        && !name.is_empty();
    if !valid_name {
        bail!("role name {name:?}: use letters, digits, '_' and '-'");
    }
    match &raw.runner {
        RunnerConfig::Simulate => {}
        RunnerConfig::Command { program, env, .. } => {
            if program.trim().is_empty() {
                bail!("roles.{name}.program must not be empty");
            }
            check_env_refs(&format!("roles.{name}.env"), env)?;
        }
        RunnerConfig::Http { url, headers } => {
            if !(url.starts_with("http://") || url.starts_with("https://")) {
                bail!("roles.{name}.url must start with http:// or https://, got {url:?}");
            }
            check_env_refs(&format!("roles.{name}.headers"), headers)?;
        }
    }
    let max_bytes = match raw.max_output_bytes {
        None => DEFAULT_MAX_OUTPUT_BYTES,
        Some(n) => match usize::try_from(n) {
            Ok(n @ 1..=MAX_MAX_OUTPUT_BYTES) => n,
            _ => bail!(
                "roles.{name}.max_output_bytes must be between 1 and {MAX_MAX_OUTPUT_BYTES} \
                 (256 MiB), got {n}"
            ),
        },
    };
    Ok(RoleConfig {
        runner: raw.runner,
        output: OutputLimit {
            max_bytes,
            on_overflow: raw.on_output_overflow.unwrap_or_default(),
        },
    })
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawConfig {
    #[serde(default)]
    engine: RawEngine,
    #[serde(default)]
    sse: RawSse,
    #[serde(default)]
    http: RawHttp,
    #[serde(default)]
    defaults: RawDefaults,
    #[serde(default)]
    roles: BTreeMap<String, RawRole>,
    retention: Option<crate::retention::RawRetention>,
}

/// A `[roles.NAME]` section as written: the runner's keys (tagged by `runner`) beside the
/// output limit's. The limit's keys are taken out first; the rest is the runner's.
#[derive(Debug, Deserialize)]
struct RawRole {
    /// Signed, so that a negative value gets the same clear message as zero.
    max_output_bytes: Option<i64>,
    on_output_overflow: Option<OnOverflow>,
    #[serde(flatten)]
    runner: RunnerConfig,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawSse {
    heartbeat_ms: u64,
    max_streams: usize,
    max_streams_per_client: usize,
    max_age_ms: u64,
}

impl Default for RawSse {
    fn default() -> Self {
        let d = SseSettings::default();
        Self {
            heartbeat_ms: d.heartbeat.as_millis() as u64,
            max_streams: d.max_streams,
            max_streams_per_client: d.max_streams_per_client,
            max_age_ms: d.max_age.as_millis() as u64,
        }
    }
}

/// The `[http]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
struct RawHttp {
    cors_origins: Vec<String>,
    request_timeout_ms: u64,
    writes_per_second: u32,
    write_burst: u32,
}

impl Default for RawHttp {
    fn default() -> Self {
        Self {
            cors_origins: Vec::new(),
            request_timeout_ms: 30_000,
            writes_per_second: 50,
            write_burst: 200,
        }
    }
}

/// How the HTTP side guards itself (the `[http]` table of `cairn.toml`).
#[derive(Debug, Clone)]
pub struct HttpSettings {
    /// Origins whose pages may call the API (CORS); none by default.
    pub cors_origins: Vec<axum::http::HeaderValue>,
    /// How long a non-streaming request may take before it is answered 503.
    pub request_timeout: std::time::Duration,
    /// Writes (POST and the like) per second and burst, per client address; `None` is no limit.
    pub write_limit: Option<(std::num::NonZeroU32, std::num::NonZeroU32)>,
}

impl RawHttp {
    fn check(self) -> anyhow::Result<HttpSettings> {
        let cors_origins = self
            .cors_origins
            .iter()
            .map(|o| {
                let ok = (o.starts_with("http://") || o.starts_with("https://"))
                    && !o
                        .trim_start_matches("https://")
                        .trim_start_matches("http://")
                        .contains('/');
                if !ok {
                    bail!(
                        "http.cors_origins: {o:?} is not an origin like https://dash.example.com"
                    );
                }
                axum::http::HeaderValue::from_str(o).map_err(|_| {
                    anyhow::anyhow!("http.cors_origins: {o:?} is not a valid header value")
                })
            })
            .collect::<anyhow::Result<_>>()?;
        if self.request_timeout_ms < 100 {
            bail!("http.request_timeout_ms must be at least 100");
        }
        let write_limit = match (
            std::num::NonZeroU32::new(self.writes_per_second),
            std::num::NonZeroU32::new(self.write_burst),
        ) {
            (None, _) => None,
            (Some(rate), Some(burst)) => Some((rate, burst)),
            (Some(_), None) => {
                bail!("http.write_burst must be at least 1 (or writes_per_second 0: no limit)")
            }
        };
        Ok(HttpSettings {
            cors_origins,
            request_timeout: std::time::Duration::from_millis(self.request_timeout_ms),
            write_limit,
        })
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

/// What `max_output_bytes` is when a role does not set it: 16 MiB.
pub const DEFAULT_MAX_OUTPUT_BYTES: usize = 16 * 1024 * 1024;

/// The largest `max_output_bytes` a role may set: 256 MiB. An output is held in memory (and
/// stored in the event log), so the limit is what bounds a runaway step's memory.
pub const MAX_MAX_OUTPUT_BYTES: usize = 256 * 1024 * 1024;

/// A `[roles.NAME]` section: the runner, and how much output an attempt may produce.
#[derive(Debug, Clone, PartialEq)]
pub struct RoleConfig {
    /// How the role's steps are executed.
    pub runner: RunnerConfig,
    /// The bound on what one attempt produces (`max_output_bytes`, `on_output_overflow`).
    pub output: OutputLimit,
}

/// How much output one attempt may produce, and what happens past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutputLimit {
    /// The most bytes of output kept (`max_output_bytes`, 1 ..= 256 MiB, default 16 MiB).
    pub max_bytes: usize,
    /// What happens to an attempt that produces more (`on_output_overflow`).
    pub on_overflow: OnOverflow,
}

impl Default for OutputLimit {
    fn default() -> Self {
        Self {
            max_bytes: DEFAULT_MAX_OUTPUT_BYTES,
            on_overflow: OnOverflow::default(),
        }
    }
}

/// What a runner does with an attempt whose output goes past `max_output_bytes`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnOverflow {
    /// The attempt fails at once, for good (a retry would produce as much again); a program
    /// is killed with its process group.
    #[default]
    Fail,
    /// The output is cut at the limit and a marker line says so; a program runs to its end,
    /// what it prints past the limit read and dropped.
    Truncate,
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
                Some(&RoleConfig {
                    runner: RunnerConfig::Simulate,
                    output: OutputLimit::default(),
                }),
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
        } = &config.roles["claude"].runner
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

    #[test]
    fn the_output_limit_defaults_to_16_mib_and_failing() {
        let config = EngineConfig::from_toml("[roles.a]\nrunner = \"simulate\"\n").unwrap();
        let limit = config.roles["a"].output;
        assert_eq!(limit.max_bytes, 16 * 1024 * 1024);
        assert_eq!(limit.on_overflow, OnOverflow::Fail);
    }

    #[test]
    fn a_role_sets_its_output_limit_beside_its_runner_keys() {
        let config = EngineConfig::from_toml(
            r#"
            [roles.claude]
            runner = "command"
            program = "claude"
            args = ["-p"]
            max_output_bytes = 1048576
            on_output_overflow = "truncate"

            [roles.hook]
            on_output_overflow = "fail"
            runner = "http"
            url = "http://127.0.0.1:8080/step"
            max_output_bytes = 268435456
            "#,
        )
        .unwrap();
        let claude = &config.roles["claude"];
        assert_eq!(
            claude.output,
            OutputLimit {
                max_bytes: 1024 * 1024,
                on_overflow: OnOverflow::Truncate
            }
        );
        let RunnerConfig::Command { program, args, .. } = &claude.runner else {
            panic!("not a command runner: {claude:?}");
        };
        assert_eq!(
            (program.as_str(), args.as_slice()),
            ("claude", &["-p".to_string()][..])
        );
        let hook = &config.roles["hook"];
        assert_eq!(hook.output.max_bytes, MAX_MAX_OUTPUT_BYTES);
        assert_eq!(hook.output.on_overflow, OnOverflow::Fail);
        assert!(matches!(hook.runner, RunnerConfig::Http { .. }), "{hook:?}");
    }

    #[test]
    fn an_output_limit_out_of_range_is_refused_naming_the_key() {
        for bad in ["0", "-1", "268435457", "9223372036854775807"] {
            let err = EngineConfig::from_toml(&format!(
                "[roles.dev]\nrunner = \"simulate\"\nmax_output_bytes = {bad}\n"
            ))
            .unwrap_err();
            let err = format!("{err:#}");
            assert!(err.contains("roles.dev.max_output_bytes"), "{bad}: {err}");
            assert!(err.contains(bad), "{bad}: {err}");
        }
        let err = EngineConfig::from_toml(
            "[roles.dev]\nrunner = \"simulate\"\nmax_output_bytes = \"16MiB\"\n",
        )
        .unwrap_err();
        assert!(format!("{err:#}").contains("max_output_bytes"), "{err:#}");
    }

    #[test]
    fn an_unknown_overflow_policy_is_refused() {
        let err = EngineConfig::from_toml(
            "[roles.dev]\nrunner = \"simulate\"\non_output_overflow = \"ignore\"\n",
        )
        .unwrap_err();
        let err = format!("{err:#}");
        assert!(err.contains("on_output_overflow"), "{err}");
        assert!(err.contains("truncate"), "{err}");
    }
}
