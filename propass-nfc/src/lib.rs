//! # propass-nfc
//!
//! The kiosk's badge reader, on the system libnfc (Debian's `libnfc6`)
//! through the `nfc1` crate: list readers, open one, wait for a tag, read its
//! UID / ATQA / SAK / family, and clone a UID onto a magic blank (Gen1a by the
//! unlock backdoor, Gen2/CUID by a direct block-0 write) — always verified by
//! reading back and selecting the card again, never reported as done without.
//!
//! What it is **not**: it records nothing (the agent does, after a verified
//! clone), and it knows nothing about clients or quotas.
//!
//! [`emulator`] is a PN532 emulated on a pseudo-terminal, so that tests and
//! the demo run the real libnfc driver stack without hardware.
#![forbid(unsafe_code)]

pub mod emulator;
mod error;
mod reader;
mod thread;

pub use error::{NfcError, NfcResult};
pub use reader::{
    build_block0, list_readers, validate_block0, BlankKind, CardFamily, Reader, TagInfo,
    FACTORY_KEY,
};
pub use thread::ReaderThread;
