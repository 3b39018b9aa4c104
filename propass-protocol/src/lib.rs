//! # propass-protocol
//!
//! The wire types every PROPASS program speaks: the HTTP request and response
//! bodies of the sync server, the WebSocket messages, the error body and its
//! stable error codes, and the domain newtypes (`DeviceId`, `ClientId`,
//! `BadgeUid`, `OpId`, `SectorMap`, `ReaderKey`) that parse once at the edge.
//!
//! What this crate is **not**: it does no I/O, and depends on no web framework,
//! database driver or NFC library. Database rows and local queue rows are
//! separate types converted by hand in the crates that own them.
//!
//! Compatibility: the existing Electron kiosk client (the "seed" client) reads
//! and writes these shapes. Every field it uses keeps its name, JSON type and
//! meaning; what our own agent needs more is added as optional fields that the
//! seed client never sends and ignores when it receives them. The golden
//! fixtures in `tests/fixtures/` pin every shape.
#![deny(missing_docs)]

mod domain;
mod error;
mod messages;

pub use domain::{BadgeUid, ClientId, DeviceId, OpId, ParseError, ReaderKey, SectorMap};
pub use error::{ErrorBody, ErrorCode, ErrorDetail};
pub use messages::*;
