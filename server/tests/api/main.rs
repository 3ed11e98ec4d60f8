//! Integration tests: the real server on port 0 against a fresh SQLite file (or a fresh
//! Postgres database), spoken to over HTTP; and the real `cairn` binary for what only a process shows (signals, exit codes).

mod auth;
mod bench;
mod binary;
mod cli;
mod crash;
mod engine;
mod engine_db_failures;
mod engine_slots;
mod hardening;
mod health;
mod helpers;
mod instances;
mod limits;
mod mcp;
mod metrics;
mod pages;
mod pg;
mod retention;
mod secrets;
mod sse;
mod store_postgres;
mod store_suite;
mod tls;
mod workflows;
