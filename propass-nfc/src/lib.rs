//! # propass-nfc
//!
//! The kiosk's badge reader, on the system libnfc (Debian's `libnfc6`)
//! through the `nfc1` crate: list readers, open one, wait for a tag, read its
//! UID / ATQA / SAK / family, read every sector of a MIFARE Classic badge a
//! key dictionary opens ([`mifare`], [`BadgeRead`]), and copy it onto a magic
//! blank (Gen1a by the unlock backdoor, Gen2/CUID by direct writes) — 1K and
//! 4K, 4- and 7-byte UIDs — always verified sector by sector with the badge's
//! keys in a fresh RF field, never reported as done without. A UID alone
//! (from the records) can be written too.
//!
//! What it is **not**: it records nothing (the agent does, after a verified
//! clone), and it knows nothing about clients or quotas.
//!
//! The kiosk flow sees the reader through [`CardReader`] (a fake one in its
//! unit tests). [`iso14443a`] holds the checksums and block-0 layout shared
//! by the reader and the emulator.
//!
//! `emulator` (feature `emulator`, off in the production agent) is a PN532
//! emulated on a pseudo-terminal, so that tests and the demo run the real
//! libnfc driver stack without hardware.
#![forbid(unsafe_code)]

mod card_reader;
mod clone;
#[cfg(feature = "emulator")]
pub mod emulator;
mod error;
pub mod iso14443a;
pub mod mifare;
mod reader;
mod thread;

pub use card_reader::CardReader;
pub use clone::layout_of;
pub use error::{NfcError, NfcResult};
pub use iso14443a::FACTORY_KEY;
pub use mifare::BadgeRead;
pub use reader::{
    build_block0, list_readers, validate_block0, BlankKind, CardFamily, Reader, TagInfo,
};
pub use thread::ReaderThread;

/// The module graph is acyclic: no top-level module reaches, through
/// `crate::` paths, a module that reaches back to it.
#[cfg(test)]
#[test]
fn module_graph_has_no_cycle() {
    propass_test_support::assert_no_module_cycle(env!("CARGO_MANIFEST_DIR"), ("clone", "reader"));
}
