//! Integration tests: the real server on port 0 against a fresh SQLite file, spoken to over
//! HTTP; and the real `cairn` binary for what only a process shows (signals, exit codes).

mod binary;
mod crash;
mod engine;
mod health;
mod helpers;
mod limits;
mod pages;
mod sse;
mod workflows;
