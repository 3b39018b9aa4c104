//! # propass-agent
//!
//! The headless daemon on each kiosk. It records every badge operation in a
//! local SQLite queue first — durable before it says "recorded" — and syncs
//! it to the PROPASS server whenever it can, exactly once (every item carries
//! a UUIDv7 `op_id` the server deduplicates on). It keeps a local cache of
//! quotas that never forgets work not yet synced, listens on the server's
//! WebSocket for live updates, and serves a local API (Unix socket) for the
//! kiosk's screen and the `propass-agent` CLI.
//!
//! What it is **not**: it does not talk to the NFC reader yet (that comes
//! with `propass-nfc`), and it never decides that a recorded copy is invalid
//! — only the server's ledger does.
//!
//! Layout: [`config`], [`store`] (the queue and its guarantees), [`sync`]
//! (push/pull/token/backoff), [`ws`] (WebSocket client), [`events`], [`api`]
//! (local API), [`daemon`] (`run`), [`cli`].

pub mod agent;
pub mod api;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod events;
pub mod kiosk;
pub mod seams;
pub mod store;
pub mod sync;
pub mod upstream;
pub mod ws;
