//! Live updates over WebSocket: the [`hub`] (who gets which event; a leaf).
//! PostgreSQL notifications become hub events in `changes`.
//! Each connection's session is HTTP-facing and lives in `routes::ws_session`.

pub mod hub;

pub use hub::Hub;
