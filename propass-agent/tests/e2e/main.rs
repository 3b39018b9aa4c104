//! End-to-end tests: the real `propass-server` and `propass-agent` binaries as
//! separate processes, a real PostgreSQL (`DATABASE_URL`, provisioned by
//! `cargo xtask test` / `cargo xtask e2e`), and a fault-injecting TCP proxy
//! between them.

// Tests drive real processes in real time.
#![allow(clippy::disallowed_methods)]

mod dashboard;
mod harness;
mod scenarios;
