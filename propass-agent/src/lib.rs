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
//! At the reader (`propass-nfc`) it runs the kiosk flow: read the badge,
//! reserve a unit and write the card's intent, write a magic blank, verify
//! it, and record the copy — or, when the write's outcome is uncertain,
//! record it as unverified: a card that may exist is never left out.
//!
//! What it is **not**: it never decides that a recorded copy is invalid —
//! only the server's ledger does — and it never talks to the server's
//! database.
//!
//! Layout (one role per module):
//! - [`agent`]: the context shared by every task ([`agent::Agent`]), its
//!   start-up error, the connectivity state;
//! - [`config`]: the configuration keys, layered file → environment → flags;
//! - [`seams`]: the [`seams::Clock`] and [`seams::Rng`] the logic reads time
//!   and randomness from;
//! - [`store`]: the durable queue and its guarantees — [`store::schema`]
//!   (open checks, migrations), [`store::queue`], [`store::quotas`] (the
//!   quota cache), [`store::intents`] (the write-ahead intent of each card),
//!   [`store::session`] (device id, session, meta values);
//! - [`upstream`]: the typed server client ([`upstream::ServerClient`]);
//! - [`sync`]: push / pull / token refresh and the sync loop, deciding on
//!   wire error codes; [`sync::wire`] is the one wire ↔ store conversion;
//! - [`backoff`]: capped, jittered reconnection waits;
//! - [`ws`]: the WebSocket client (quota updates → cache, events → listeners,
//!   the [`heartbeat`] out);
//! - [`kiosk`]: the flow at the reader, over any [`propass_nfc::CardReader`];
//! - [`write_gate`]: the point of no return shutdown waits for;
//! - [`events`]: what local listeners receive;
//! - [`api`]: the local API (bodies in [`api::types`], codes in [`api::error`]);
//! - [`daemon`]: `run` (systemd notify, watchdog, signals); [`cli`]: the command line.

pub mod agent;
pub mod api;
pub mod backoff;
pub mod cli;
pub mod config;
pub mod daemon;
pub mod events;
pub mod heartbeat;
pub mod kiosk;
pub mod seams;
pub mod store;
pub mod sync;
pub mod tls;
pub mod upstream;
pub mod write_gate;
pub mod ws;

/// The module graph is acyclic: no top-level module reaches, through
/// `crate::` paths, a module that reaches back to it.
#[cfg(test)]
#[test]
fn module_graph_has_no_cycle() {
    propass_test_support::assert_no_module_cycle(env!("CARGO_MANIFEST_DIR"), ("sync", "agent"));
}
