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
//! Layout: [`config`] (one struct, file → env → flags), [`error`] (one error
//! type, mapped to the wire error body), [`db`] (pool, schema, migrations and
//! the ledger queries), [`auth`] (passwords, tokens, login throttling),
//! [`routes`] (HTTP handlers), [`ws`] (WebSocket sessions and the broadcast
//! hub), [`startup`] (the [`startup::Application`] used by `main` and the
//! tests) and [`cli`] (the operator commands).

pub mod auth;
pub mod cli;
pub mod config;
pub mod db;
pub mod error;
pub mod routes;
pub mod startup;
pub mod ws;
