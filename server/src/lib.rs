//! The cairn server: the HTTP API, the web monitor, the store and the command line.
//!
//! # Layout
//! - [`auth`]: tokens, scopes and workspaces.
//! - [`cli`]: the `cairn` command line (`serve`, `run`, `ls`, `mcp`, ...).
//! - [`client`]: a client of the JSON API (the command line's and the MCP tools').
//! - [`config`]: typed configuration from flags, environment and `cairn.toml`, loaded once.
//! - [`store`]: the database (SQLite by default): checkpoints, reads, leases.
//! - [`engine`]: the scheduler, runners, retries, leases and recovery.
//! - [`http`]: the axum router: REST API, SSE, the replaced system's endpoints, the Leptos
//!   pages and static files.
//! - [`live`]: the gap-free event feed behind every stream, and the caps on open streams.
//! - [`mcp`]: the MCP tools, at `/mcp` and over stdio (`cairn mcp`).
//! - [`metrics`]: counters and histograms, exported at `/metrics`.
//! - [`retention`]: deleting old finished workflows, in the background and by hand.
//! - [`startup`]: builds an [`startup::Application`] from a config and runs it until shutdown.
//! - [`telemetry`]: tracing set-up.

pub mod auth;
pub mod cli;
pub mod client;
pub mod config;
pub mod engine;
pub mod http;
pub mod live;
pub mod mcp;
pub mod metrics;
pub mod retention;
pub mod startup;
pub mod store;
pub mod telemetry;
