//! The reader as the kiosk flow uses it. A trait, so that the flow can be
//! tested with a fake reader; [`crate::Reader`] is the libnfc one.

use std::sync::atomic::AtomicBool;
use std::time::{Duration, Instant};

use crate::error::{NfcError, NfcResult};
use crate::mifare::{BadgeRead, Dump, KeyDictionary};
use crate::reader::{BlankKind, Reader, TagInfo};

/// What the kiosk flow needs of a reader. Blocking: run it on the reader
/// thread ([`crate::ReaderThread`]).
pub trait CardReader {
    /// Waits for a single tag until `timeout`; `cancel` stops the wait.
    fn wait_for_tag(&mut self, timeout: Duration, cancel: &AtomicBool) -> NfcResult<TagInfo>;
    /// Reads block 0 with the factory key (the tag must be selected).
    fn read_block0(&mut self, tag: &TagInfo) -> NfcResult<[u8; 16]>;
    /// Writes `block0` onto the selected blank and verifies it; an error
    /// after the write is always `VerifyFailed`.
    fn write_block0(&mut self, blank: &TagInfo, block0: &[u8; 16]) -> NfcResult<BlankKind>;
    /// Reads every sector of the selected MIFARE Classic badge that `keys` open.
    fn read_badge(&mut self, tag: &TagInfo, keys: &KeyDictionary) -> NfcResult<BadgeRead>;
    /// Writes the read sectors of `dump` (from `source`) onto the selected
    /// blank and verifies each in a fresh field; an error after the first
    /// write names the sector (`SectorFailed`) or is `VerifyFailed`.
    fn write_badge(
        &mut self,
        blank: &TagInfo,
        source: &TagInfo,
        dump: &Dump,
    ) -> NfcResult<BlankKind>;
    /// Releases the selected tag.
    fn release(&mut self);

    /// Waits for a card whose UID differs from `not`: the badge must leave
    /// the reader before the blank is placed.
    // Polls the hardware in real time; the agent's clock is not involved.
    #[allow(clippy::disallowed_methods)]
    fn wait_for_other_tag(
        &mut self,
        not: Option<&[u8]>,
        timeout: Duration,
        cancel: &AtomicBool,
    ) -> NfcResult<TagInfo> {
        let deadline = Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            let tag = self.wait_for_tag(left, cancel)?;
            if not.is_none_or(|uid| tag.uid != uid) {
                return Ok(tag);
            }
            self.release();
            if Instant::now() >= deadline {
                return Err(NfcError::NoTag);
            }
            std::thread::sleep(Duration::from_millis(150));
        }
    }
}

/// The libnfc reader, as the kiosk flow sees it.
impl CardReader for Reader {
    fn wait_for_tag(&mut self, timeout: Duration, cancel: &AtomicBool) -> NfcResult<TagInfo> {
        Reader::wait_for_tag(self, timeout, cancel)
    }

    fn read_block0(&mut self, tag: &TagInfo) -> NfcResult<[u8; 16]> {
        Reader::read_block0(self, tag)
    }

    fn write_block0(&mut self, blank: &TagInfo, block0: &[u8; 16]) -> NfcResult<BlankKind> {
        Reader::write_block0(self, blank, block0)
    }

    fn read_badge(&mut self, tag: &TagInfo, keys: &KeyDictionary) -> NfcResult<BadgeRead> {
        Reader::read_badge(self, tag, keys)
    }

    fn write_badge(
        &mut self,
        blank: &TagInfo,
        source: &TagInfo,
        dump: &Dump,
    ) -> NfcResult<BlankKind> {
        Reader::write_badge(self, blank, source, dump)
    }

    fn release(&mut self) {
        Reader::release(self)
    }
}
