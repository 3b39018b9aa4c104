//! # propass-nfc
//!
//! The kiosk's badge reader, on the system libnfc through the `nfc1` crate,
//! and a PN532 emulator ([`emulator`]) that lets tests and demos run the real
//! libnfc driver stack without hardware.
#![forbid(unsafe_code)]

pub mod emulator;
