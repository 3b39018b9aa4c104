//! # propass-server
//!
//! The central PROPASS server: it authenticates kiosks (JWT bound to a
//! device), records every copy a kiosk made in an exactly-once ledger in
//! PostgreSQL, keeps each client's quota, and pushes live updates over a
//! WebSocket. It is wire-compatible with the existing Electron kiosk client.
//!
//! What it is **not**: it never talks to an NFC reader and never refuses a
//! copy for lack of quota — a copy is a card that already exists; an
//! overdraft is recorded and flagged, not rejected.
//!
//! Layout, from the leaves to the composition root (a module uses only
//! modules before it in this list; docs/architecture.md draws the layers):
//! the leaves [`clock`] (time, behind a trait), [`error`] (one error type,
//! mapped to the wire error body), [`ws`] (the kiosks' hub), [`live`] (the
//! dashboards' stream), [`metrics`] (counters and their text format),
//! [`announce`] and [`heartbeats`] (what waits to be written together);
//! [`rng`] (chance, behind a trait), [`device`] (what a device's standing
//! allows), [`ledger`] (the ledger's vocabulary and its store trait),
//! [`push`] (the push use case), [`db`] (PostgreSQL, by table, the login
//! throttle included), [`auth`] (passwords, tokens, secrets, standing
//! checks), [`config`] (one struct, file → env → flags), [`admin`]
//! (operators' changes, each audited), [`state`] (what handlers share),
//! [`changes`] (PostgreSQL notifications to hub and dashboards), [`routes`]
//! (HTTP handlers), [`startup`] (the [`startup::Application`] used by `main`
//! and the tests) and [`cli`] (the operator commands).

pub mod admin;
pub mod announce;
pub mod auth;
pub mod changes;
pub mod cli;
pub mod clock;
pub mod config;
pub mod db;
pub mod device;
pub mod error;
pub mod heartbeats;
pub mod ledger;
pub mod live;
pub mod metrics;
pub mod push;
pub mod rng;
pub mod routes;
pub mod startup;
pub mod state;
pub mod ws;

/// The module graph is acyclic: no top-level module reaches, through
/// `crate::` paths, a module that reaches back to it.
#[cfg(test)]
#[test]
fn module_graph_has_no_cycle() {
    propass_test_support::assert_no_module_cycle(env!("CARGO_MANIFEST_DIR"), ("state", "auth"));
}
