//! Live updates over WebSocket: the [`hub`] (who gets which event; a leaf)
//! and the [`listener`] that turns PostgreSQL notifications into hub events.
//! Each connection's session is HTTP-facing and lives in `routes::ws_session`.

pub mod hub;
pub mod listener;

pub use hub::Hub;
