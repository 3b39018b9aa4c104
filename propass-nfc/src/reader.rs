//! The reader on libnfc: open, wait for a tag, read it, clone a UID onto a
//! magic blank and prove it. Blocking: run it on its own thread (see
//! [`crate::ReaderThread`]).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use nfc1::target_info::TargetInfo;
use nfc1::{BaudRate, Context, Device, Modulation, ModulationType, Property, Timeout};
use serde_like::Hex;

use crate::error::{NfcError, NfcResult};
use crate::iso14443a::{bcc, block0, with_crc, CASCADE_TAG, DEFAULT_MANUFACTURER, FACTORY_KEY};

mod serde_like {
    /// Upper-case hex of bytes.
    pub struct Hex<'a>(pub &'a [u8]);
    impl std::fmt::Display for Hex<'_> {
        fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
            for b in self.0 {
                write!(f, "{b:02X}")?;
            }
            Ok(())
        }
    }
}

/// The card family, from SAK and ATQA.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardFamily {
    /// MIFARE Classic 1K (SAK 08).
    MifareClassic1k,
    /// MIFARE Classic 4K (SAK 18).
    MifareClassic4k,
    /// MIFARE Ultralight / NTAG (SAK 00, 7-byte UID).
    MifareUltralight,
    /// Any other ISO 14443-A card.
    OtherIso14443a,
}

impl CardFamily {
    fn of(sak: u8, uid_len: usize) -> Self {
        match sak {
            0x08 | 0x88 | 0x28 => Self::MifareClassic1k,
            0x18 | 0x38 => Self::MifareClassic4k,
            0x00 if uid_len == 7 => Self::MifareUltralight,
            _ => Self::OtherIso14443a,
        }
    }

    /// A stable name (`mifare_classic_1k`, …).
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MifareClassic1k => "mifare_classic_1k",
            Self::MifareClassic4k => "mifare_classic_4k",
            Self::MifareUltralight => "mifare_ultralight",
            Self::OtherIso14443a => "iso14443a",
        }
    }

    /// MIFARE Classic 1K or 4K: a badge our blanks can copy.
    pub fn is_classic(self) -> bool {
        matches!(self, Self::MifareClassic1k | Self::MifareClassic4k)
    }
}

/// A tag as read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TagInfo {
    /// 4, 7 or 10 bytes.
    pub uid: Vec<u8>,
    /// ATQA (SENS_RES) as the reader reports it, most significant byte first.
    pub atqa: [u8; 2],
    /// SAK (SEL_RES).
    pub sak: u8,
    pub family: CardFamily,
}

impl TagInfo {
    /// The UID in upper-case hex.
    pub fn uid_hex(&self) -> String {
        Hex(&self.uid).to_string()
    }
}

/// What kind of magic blank took the write; serialized `gen1a` / `gen2`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum BlankKind {
    /// Answered the 7-bit unlock sequence.
    Gen1a,
    /// Took a direct write of block 0 after authentication.
    Gen2,
}

/// Builds block 0 of a MIFARE Classic card and checks it before anything is
/// written: a wrong block 0 bricks a Gen1a card.
pub fn build_block0(
    uid: &[u8],
    sak: u8,
    atqa: [u8; 2],
    manufacturer: Option<[u8; 8]>,
) -> NfcResult<[u8; 16]> {
    if uid.len() != 4 {
        return Err(NfcError::InvalidBlock0(format!(
            "a {}-byte UID cannot go on a MIFARE Classic magic card (4-byte UIDs only)",
            uid.len()
        )));
    }
    let uid: [u8; 4] = uid.try_into().expect("4 bytes, checked");
    let b = block0(uid, sak, atqa, manufacturer.unwrap_or(DEFAULT_MANUFACTURER));
    validate_block0(&b)?;
    Ok(b)
}

/// SAKs of the MIFARE Classic cards our blanks can become.
pub const CLASSIC_SAKS: [u8; 5] = [0x08, 0x18, 0x28, 0x38, 0x88];

/// Checks a block 0 before it is written: a wrong one bricks a Gen1a card.
/// The UID must not start with the cascade tag, the BCC must match, the SAK
/// must be a MIFARE Classic one, and the ATQA a single-size-UID one.
pub fn validate_block0(b: &[u8; 16]) -> NfcResult<()> {
    if b[0] == CASCADE_TAG {
        return Err(NfcError::InvalidBlock0(
            "UID starts with the cascade tag 0x88".into(),
        ));
    }
    let bcc = bcc(&b[..4]);
    if bcc != b[4] {
        return Err(NfcError::InvalidBlock0(format!(
            "BCC {:02X} does not match the UID (expected {bcc:02X})",
            b[4]
        )));
    }
    if !CLASSIC_SAKS.contains(&b[5]) {
        return Err(NfcError::InvalidBlock0(format!(
            "SAK {:02X} is not a MIFARE Classic SAK",
            b[5]
        )));
    }
    // ATQA little-endian in block 0; bits 7-6 of its low byte: UID size (00 = single).
    if b[6] & 0xC0 != 0 || b[6] & 0x1F == 0 {
        return Err(NfcError::InvalidBlock0(format!(
            "ATQA {:02X}{:02X} is not a single-size-UID MIFARE Classic ATQA",
            b[7], b[6]
        )));
    }
    Ok(())
}

const ISO14443A: Modulation = Modulation {
    modulation_type: ModulationType::Iso14443a,
    baud_rate: BaudRate::Baud106,
};

/// Lists the readers libnfc can see (connection strings).
pub fn list_readers() -> NfcResult<Vec<String>> {
    let mut ctx = Context::new().map_err(|e| NfcError::NoReader(format!(" (libnfc: {e:?})")))?;
    ctx.list_devices(8)
        .map_err(|e| NfcError::NoReader(format!(" ({e:?})")))
}

/// The UID bytes a MIFARE Classic authentication carries: the last four.
pub(crate) fn auth_uid(uid: &[u8]) -> &[u8] {
    &uid[uid.len().saturating_sub(4)..]
}

/// How long the field stays off to reset every card in it.
const FIELD_RESET: Duration = Duration::from_millis(10);

/// How long cards get to power up after the field comes back.
const FIELD_POWER_UP: Duration = Duration::from_millis(5);

/// A target libnfc reported, if it really is one: a poll that found nothing
/// still "succeeds", with an empty UID.
fn tag_info(t: nfc1::Target) -> Option<TagInfo> {
    match t.target_info {
        TargetInfo::Iso14443a(a) if a.uid_len > 0 => Some(TagInfo {
            uid: a.uid[..a.uid_len.min(10)].to_vec(),
            atqa: a.atqa,
            sak: a.sak,
            family: CardFamily::of(a.sak, a.uid_len),
        }),
        _ => None,
    }
}

/// A failed poll: the reader is gone, or there was simply no card.
fn none_or_unplugged<T>(e: nfc1::Error) -> NfcResult<Option<T>> {
    match e {
        nfc1::Error::Io | nfc1::Error::NoSuchDeviceFound => {
            Err(NfcError::ReaderUnplugged(format!("{e:?}")))
        }
        _ => Ok(None),
    }
}

/// An open reader.
pub struct Reader {
    // Declared before the context: dropped (closed) first.
    device: Device,
    _context: Context,
    connstring: String,
}

impl Reader {
    /// Opens the reader named by a libnfc connection string, or the first one.
    pub fn open(connstring: Option<&str>) -> NfcResult<Self> {
        let mut context =
            Context::new().map_err(|e| NfcError::NoReader(format!(" (libnfc: {e:?})")))?;
        let which = connstring.map(|c| format!(" at {c}")).unwrap_or_default();
        let mut device = match connstring {
            Some(c) => context.open_with_connstring(c),
            None => context.open(),
        }
        .map_err(|_| NfcError::NoReader(which.clone()))?;
        device
            .initiator_init()
            .map_err(|e| NfcError::ReaderUnplugged(format!("{e:?}")))?;
        let _ = device.set_property_bool(Property::InfiniteSelect, false);
        let connstring = device.connstring().to_owned();
        Ok(Self {
            device,
            _context: context,
            connstring,
        })
    }

    pub(crate) fn device_mut(&mut self) -> &mut Device {
        &mut self.device
    }

    /// The reader's connection string.
    pub fn connstring(&self) -> &str {
        &self.connstring
    }

    pub(crate) fn reset_framing(&mut self) -> NfcResult<()> {
        let d = &mut self.device;
        for (p, v) in [
            (Property::HandleCrc, true),
            (Property::HandleParity, true),
            (Property::EasyFraming, true),
        ] {
            d.set_property_bool(p, v)
                .map_err(|e| NfcError::ReaderUnplugged(format!("{e:?}")))?;
        }
        Ok(())
    }

    /// Switches the RF field off and on: every card in it restarts IDLE (a
    /// halted one is seen again; a Gen1a loses its unlock). The defined way
    /// back to a known state, as libnfc's own tools do between operations.
    fn cycle_field(&mut self) -> NfcResult<()> {
        let d = &mut self.device;
        let fail = |e: nfc1::Error| NfcError::ReaderUnplugged(format!("{e:?}"));
        d.set_property_bool(Property::ActivateField, false)
            .map_err(fail)?;
        // A card keeps its state through a short gap (its capacitor holds
        // it): only a field off long enough resets it (ISO/IEC 14443-3's
        // reset time, 5 to 10 ms).
        std::thread::sleep(FIELD_RESET);
        d.set_property_bool(Property::ActivateField, true)
            .map_err(fail)?;
        // Cards need a moment to power up once the field is back
        // (ISO/IEC 14443-3 gives them up to 5 ms before the first REQA).
        std::thread::sleep(FIELD_POWER_UP);
        Ok(())
    }

    /// Selects the card in the field, if any; `TwoTags` when there are
    /// several. Never trusts a select blindly: libnfc answers "success" for
    /// a poll that found no card, so every answer is checked for a UID.
    pub fn select(&mut self) -> NfcResult<Option<TagInfo>> {
        self.reset_framing()?;
        self.cycle_field()?;
        // Listing selects each card and halts it (InDeselect) before the next
        // poll, so that the next card answers: a single card ends HALTed.
        let targets = match self.device.initiator_list_passive_targets(&ISO14443A, 2) {
            Ok(t) => t,
            Err(e) => return none_or_unplugged(e),
        };
        let mut found: Vec<TagInfo> = targets.into_iter().filter_map(tag_info).collect();
        found.dedup_by(|a, b| a.uid == b.uid);
        match found.len() {
            0 => Ok(None),
            1 => self.select_uid(&found[0].uid),
            _ => Err(NfcError::TwoTags),
        }
    }

    /// Selects the card with `uid` whatever its state: InListPassiveTarget
    /// with the UID sends WUPA, which wakes a halted card, then selects that
    /// UID only. `None` when no such card answered.
    pub(crate) fn select_uid(&mut self, uid: &[u8]) -> NfcResult<Option<TagInfo>> {
        match self
            .device
            .initiator_select_passive_target_with_init_data(&ISO14443A, uid)
        {
            Ok(t) => Ok(tag_info(t).filter(|t| t.uid == uid)),
            Err(e) => none_or_unplugged(e),
        }
    }

    /// Waits for a tag until `timeout`, polling; `cancel` stops the wait.
    // Polls the hardware in real time; the agent's clock is not involved.
    #[allow(clippy::disallowed_methods)]
    pub fn wait_for_tag(&mut self, timeout: Duration, cancel: &AtomicBool) -> NfcResult<TagInfo> {
        let deadline = Instant::now() + timeout;
        // Two cards seen at once may be one card being swapped for another:
        // an error only if it lasts until the deadline.
        loop {
            if cancel.load(Ordering::SeqCst) {
                return Err(NfcError::Cancelled);
            }
            let two = match self.select() {
                Ok(Some(tag)) => return Ok(tag),
                Ok(None) => false,
                Err(NfcError::TwoTags) => true,
                Err(e) => return Err(e),
            };
            if Instant::now() >= deadline {
                return Err(if two {
                    NfcError::TwoTags
                } else {
                    NfcError::NoTag
                });
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    pub(crate) fn exchange(&mut self, tx: &[u8], rx: usize) -> nfc1::Result<Vec<u8>> {
        self.device
            .initiator_transceive_bytes(tx, rx, Timeout::Default)
    }

    fn authenticate(&mut self, block: u8, uid: &[u8]) -> NfcResult<()> {
        let mut cmd = vec![0x60, block];
        cmd.extend_from_slice(&FACTORY_KEY);
        cmd.extend_from_slice(auth_uid(uid));
        match self.exchange(&cmd, 0) {
            Ok(_) => Ok(()),
            Err(nfc1::Error::MifareAuthFailed) => Err(NfcError::AuthFailed),
            Err(_) => Err(self.lost_or(NfcError::AuthFailed)),
        }
    }

    /// After a write of block 0 failed: a MIFARE write is two exchanges
    /// with the card (the command, then the data), so the failure may be the
    /// card refusing the command (nothing written: `refused`) or the data's
    /// acknowledgement lost (written). The card says which, in a fresh
    /// field: still the blank's UID — refused; gone, another UID, or a
    /// failing reader — it may hold the badge's block 0, never "nothing
    /// happened".
    pub(crate) fn block0_write_failed(
        &mut self,
        blank_uid: &[u8],
        block0: &[u8; 16],
        refused: NfcError,
    ) -> NfcError {
        let fail = |what: String| NfcError::SectorFailed { sector: 0, what };
        match self.select() {
            Ok(Some(tag)) if tag.uid == blank_uid && tag.uid != block0[..4] => refused,
            Ok(Some(_)) => {
                fail("the write of block 0 was not acknowledged, yet the card changed".into())
            }
            Ok(None) => fail("the card left the field during the write of block 0".into()),
            Err(e) => fail(format!(
                "the reader failed during the write of block 0: {e}"
            )),
        }
    }

    /// After a failed exchange: `TagRemoved` when the card is gone, else `other`.
    pub(crate) fn lost_or(&mut self, other: NfcError) -> NfcError {
        match self.select() {
            Ok(Some(_)) => other,
            Ok(None) => NfcError::TagRemoved,
            Err(e) => e,
        }
    }

    /// Reads block 0 with the factory key (the tag must be selected).
    pub fn read_block0(&mut self, tag: &TagInfo) -> NfcResult<[u8; 16]> {
        if !tag.family.is_classic() || tag.uid.len() != 4 {
            return Err(NfcError::NotWritable(format!(
                "{} card",
                tag.family.as_str()
            )));
        }
        self.authenticate(0, &tag.uid)?;
        match self.exchange(&[0x30, 0x00], 16) {
            Ok(d) if d.len() >= 16 => Ok(d[..16].try_into().expect("16 bytes")),
            _ => Err(self.lost_or(NfcError::ReaderUnplugged("short read".into()))),
        }
    }

    /// Tries the Gen1a backdoor; `Ok(true)` when the card answered the unlock.
    pub(crate) fn gen1a_unlock(&mut self) -> NfcResult<bool> {
        let d = &mut self.device;
        let fail = |e: nfc1::Error| NfcError::ReaderUnplugged(format!("{e:?}"));
        d.set_property_bool(Property::HandleCrc, false)
            .map_err(fail)?;
        d.set_property_bool(Property::EasyFraming, false)
            .map_err(fail)?;
        // HLTA: a halted card answers nothing, which libnfc reports as an error.
        let _ = d.initiator_transceive_bytes(&[0x50, 0x00, 0x57, 0xCD], 0, Timeout::Default);
        let a = d.initiator_transceive_bits(&[0x40], 7, 1);
        if !matches!(a.as_deref(), Ok([0x0A, ..])) {
            return Ok(false);
        }
        let b = d.initiator_transceive_bytes(&[0x43], 1, Timeout::Default);
        Ok(matches!(b.as_deref(), Ok([0x0A, ..])))
    }

    fn gen1a_write_block0(&mut self, block0: &[u8; 16]) -> NfcResult<()> {
        let ok = |r: nfc1::Result<Vec<u8>>| matches!(r, Ok(ack) if ack.first().is_some_and(|a| a & 0x0F == 0x0A));
        let start =
            self.device
                .initiator_transceive_bytes(&with_crc(&[0xA0, 0x00]), 1, Timeout::Default);
        if !ok(start) {
            return Err(self.lost_or(NfcError::NotWritable(
                "the Gen1a card refused the write".into(),
            )));
        }
        // From here the card may hold the new block 0: a failure is not "nothing happened".
        let data = self
            .device
            .initiator_transceive_bytes(&with_crc(block0), 1, Timeout::Default);
        if !ok(data) {
            return Err(NfcError::VerifyFailed {
                what: "no acknowledgement of the write".into(),
            });
        }
        Ok(())
    }

    /// Writes `block0` onto the blank selected on the reader (Gen1a if it
    /// answers the unlock, else a direct Gen2 write), then verifies: reads
    /// block 0 back, releases, selects the card again and compares the UID.
    pub fn write_block0(&mut self, blank: &TagInfo, block0: &[u8; 16]) -> NfcResult<BlankKind> {
        validate_block0(block0)?;
        if !blank.family.is_classic() || blank.uid.len() != 4 {
            return Err(NfcError::NotWritable(format!(
                "{} card, not a MIFARE Classic blank",
                blank.family.as_str()
            )));
        }
        let kind = if self.gen1a_unlock()? {
            self.gen1a_write_block0(block0)?;
            BlankKind::Gen1a
        } else {
            // Not Gen1a: the unlock attempt left it halted; a fresh field and
            // a select with normal framing, then a Gen2 write.
            let tag = self.select()?.ok_or(NfcError::TagRemoved)?;
            if tag.uid != blank.uid {
                // Another card than the blank that was checked: it was swapped.
                return Err(NfcError::TagRemoved);
            }
            self.authenticate(0, &tag.uid)?;
            let mut cmd = vec![0xA0, 0x00];
            cmd.extend_from_slice(block0);
            if self.exchange(&cmd, 0).is_err() {
                return Err(self.block0_write_failed(
                    &blank.uid,
                    block0,
                    NfcError::NotWritable("block 0 is read-only: not a magic card".into()),
                ));
            }
            BlankKind::Gen2
        };
        // The card was written: any failure now means "not verified", never "nothing happened".
        self.verify(block0).map_err(|e| match e {
            e @ NfcError::VerifyFailed { .. } => e,
            other => NfcError::VerifyFailed {
                what: format!("the card is unreadable ({other})"),
            },
        })?;
        Ok(kind)
    }

    /// Proves a write the way a door reader will meet the card: in a fresh
    /// field (no Gen1a unlock, no state left from the write), selected by
    /// REQA, block 0 read with the factory key; then once more in another
    /// fresh field, the UID alone.
    fn verify(&mut self, block0: &[u8; 16]) -> NfcResult<()> {
        let expected_uid = &block0[..4];
        let tag = self.select()?.ok_or(NfcError::TagRemoved)?;
        if tag.uid != expected_uid {
            return Err(NfcError::VerifyFailed {
                what: "the card answers with another UID".into(),
            });
        }
        let back = self.read_block0(&tag)?;
        if &back != block0 {
            return Err(NfcError::VerifyFailed {
                what: "block 0 reads back different bytes".into(),
            });
        }
        let again = self.select()?.ok_or(NfcError::TagRemoved)?;
        if again.uid != expected_uid {
            return Err(NfcError::VerifyFailed {
                what: "the card answers with another UID in a fresh field".into(),
            });
        }
        Ok(())
    }

    /// Releases the selected tag.
    pub fn release(&mut self) {
        let _ = self.device.initiator_deselect_target();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn block0_is_built_and_checked() {
        let b = build_block0(&[0x04, 0xAB, 0x12, 0xCD], 0x08, [0x00, 0x04], None).unwrap();
        assert_eq!(b[4], 0x04 ^ 0xAB ^ 0x12 ^ 0xCD);
        assert_eq!((b[5], b[6], b[7]), (0x08, 0x04, 0x00));
        assert!(build_block0(&[1, 2, 3, 4, 5, 6, 7], 0x08, [0, 4], None).is_err());
        assert!(build_block0(&[0x88, 2, 3, 4], 0x08, [0, 4], None).is_err());
        assert!(build_block0(&[1, 2, 3, 4], 0x04, [0, 4], None).is_err());
        assert!(
            build_block0(&[1, 2, 3, 4], 0x20, [0, 4], None).is_err(),
            "ISO-DEP SAK refused"
        );
        assert!(
            build_block0(&[1, 2, 3, 4], 0x08, [0, 0x44], None).is_err(),
            "double-size ATQA refused"
        );
        let mut bad = b;
        bad[4] ^= 1;
        assert!(validate_block0(&bad).is_err());
    }
}
