//! Whole-badge copies: read every sector of a MIFARE Classic badge the key
//! dictionary opens, write them onto a magic blank (Gen1a: every block
//! through the backdoor; Gen2: block 0, then each sector with the blank's
//! keys, data first and trailer last), and verify every written sector in a
//! fresh field with the badge's own keys.

use crate::error::{NfcError, NfcResult};
use crate::iso14443a::{block0_7, with_crc, FACTORY_KEY};
use crate::mifare::{
    key_b_readable, BadgeRead, Dump, Key, KeyDictionary, KeyType, Layout, SectorKeys,
};
use crate::reader::{
    auth_uid, build_block0, validate_block0, BlankKind, Reader, TagInfo, CLASSIC_SAKS,
};

/// The MIFARE Classic layout of a card, if it is one.
pub fn layout_of(tag: &TagInfo) -> Option<Layout> {
    match tag.family {
        crate::CardFamily::MifareClassic1k => Some(Layout::Classic1k),
        crate::CardFamily::MifareClassic4k => Some(Layout::Classic4k),
        _ => None,
    }
}

/// One sector as read: both keys, its blocks (the trailer last, as a read
/// shows it), and the key that read its data.
struct SectorRead {
    keys: SectorKeys,
    blocks: Vec<[u8; 16]>,
    opened: KeyType,
}

/// Badge contents are zeroed once copied into the dump, as the dump is.
impl Drop for SectorRead {
    fn drop(&mut self) {
        use zeroize::Zeroize;
        self.blocks.zeroize();
        self.keys.a.zeroize();
        self.keys.b.zeroize();
    }
}

impl Reader {
    /// Authenticates to `block` with `key`; `false` when the card refused it
    /// (it is then selected again, since a refusal drops it out of ACTIVE).
    fn try_auth(&mut self, tag: &TagInfo, block: u8, kind: KeyType, key: &Key) -> NfcResult<bool> {
        let mut cmd = vec![if kind == KeyType::A { 0x60 } else { 0x61 }, block];
        cmd.extend_from_slice(key);
        cmd.extend_from_slice(auth_uid(&tag.uid));
        if self.exchange(&cmd, 0).is_ok() {
            return Ok(true);
        }
        match self.select_uid(&tag.uid)? {
            Some(_) => Ok(false),
            None => Err(NfcError::TagRemoved),
        }
    }

    /// Reads one block of the authenticated sector.
    fn read_block(&mut self, block: u8) -> Option<[u8; 16]> {
        match self.exchange(&[0x30, block], 16) {
            Ok(d) if d.len() >= 16 => d[..16].try_into().ok(),
            _ => None,
        }
    }

    /// The first key of `keys` the sector takes as `kind`.
    fn find_key(
        &mut self,
        tag: &TagInfo,
        sector: u8,
        kind: KeyType,
        keys: &[Key],
    ) -> NfcResult<Option<Key>> {
        let block = Layout::first_block(sector);
        for key in keys {
            if self.try_auth(tag, block, kind, key)? {
                return Ok(Some(*key));
            }
        }
        Ok(None)
    }

    /// Every block of `sector` as `key` (of `kind`) may read it: `None`
    /// when the card refuses the key, else one entry per block, `None` for
    /// a block its access conditions keep from this key (the refusal drops
    /// the card out of its authentication: it is selected and authenticated
    /// again for the blocks after it).
    fn read_with(
        &mut self,
        tag: &TagInfo,
        sector: u8,
        kind: KeyType,
        key: &Key,
    ) -> NfcResult<Option<Vec<Option<[u8; 16]>>>> {
        let first = Layout::first_block(sector);
        if !self.try_auth(tag, first, kind, key)? {
            return Ok(None);
        }
        let mut blocks = Vec::new();
        for block in first..=Layout::trailer(sector) {
            let got = self.read_block(block);
            if got.is_none() {
                self.select_uid(&tag.uid)?.ok_or(NfcError::TagRemoved)?;
                if block < Layout::trailer(sector) && !self.try_auth(tag, first, kind, key)? {
                    return Err(NfcError::TagRemoved);
                }
            }
            blocks.push(got);
        }
        Ok(Some(blocks))
    }

    /// One sector: its blocks, both keys and the key that read it — key A,
    /// or key B where the access conditions keep data from key A — or
    /// `None` when it stays locked (no key A, a block neither key reads, or
    /// a secret key B not found).
    fn read_sector(
        &mut self,
        tag: &TagInfo,
        sector: u8,
        keys: &KeyDictionary,
    ) -> NfcResult<Option<SectorRead>> {
        let Some(a) = self.find_key(tag, sector, KeyType::A, keys.keys())? else {
            return Ok(None);
        };
        let Some(mut blocks) = self.read_with(tag, sector, KeyType::A, &a)? else {
            return Ok(None);
        };
        // Key A always reads the trailer's access bits (and key B when it is data).
        let Some(trailer) = blocks.last().copied().flatten() else {
            return Ok(None);
        };
        let b_readable = key_b_readable(&trailer[6..10]);
        let b = if b_readable {
            trailer[10..].try_into().expect("6 bytes")
        } else {
            match self.find_key(tag, sector, KeyType::B, keys.keys())? {
                Some(b) => b,
                None => return Ok(None),
            }
        };
        let mut opened = KeyType::A;
        if blocks.iter().any(Option::is_none) {
            // A key B that reads as data opens nothing.
            if b_readable {
                return Ok(None);
            }
            let Some(with_b) = self.read_with(tag, sector, KeyType::B, &b)? else {
                return Ok(None);
            };
            for (slot, got) in blocks.iter_mut().zip(with_b) {
                if slot.is_none() {
                    *slot = got;
                }
            }
            opened = KeyType::B;
        }
        let blocks: Option<Vec<[u8; 16]>> = blocks.into_iter().collect();
        Ok(blocks.map(|blocks| SectorRead {
            keys: SectorKeys { a, b },
            blocks,
            opened,
        }))
    }

    /// Reads every sector of the selected badge the dictionary opens.
    pub fn read_badge(&mut self, tag: &TagInfo, keys: &KeyDictionary) -> NfcResult<BadgeRead> {
        let layout = layout_of(tag).ok_or_else(|| {
            NfcError::NotCopyable(format!(
                "a {} card, not MIFARE Classic",
                tag.family.as_str()
            ))
        })?;
        let mut dump = Dump::new(layout);
        let mut opened = vec![None; layout.sectors() as usize];
        for sector in 0..layout.sectors() {
            if let Some(read) = self.read_sector(tag, sector, keys)? {
                dump.put_sector(sector, read.keys, &read.blocks);
                opened[sector as usize] = Some(read.opened);
            }
        }
        let map = dump.map(&opened);
        Ok(BadgeRead { dump, map })
    }

    /// Writes the read sectors of `dump` (the badge `source`) onto the blank
    /// selected on the reader, then verifies every one in a fresh field. An
    /// error once anything was written names the sector: the blank is spoiled.
    pub fn write_badge(
        &mut self,
        blank: &TagInfo,
        source: &TagInfo,
        dump: &Dump,
    ) -> NfcResult<BlankKind> {
        check_blank(blank, source, dump)?;
        let block0 = block0_of(source, dump)?;
        check_block0(&block0, source)?;
        let kind = if self.gen1a_unlock()? {
            self.gen1a_write_all(&block0, dump)?;
            BlankKind::Gen1a
        } else {
            self.gen2_write_block0(blank, &block0)?;
            self.gen2_write_sectors(source, dump)
                .map_err(|e| spoiled(e, 0))?;
            BlankKind::Gen2
        };
        // The blank was written: a failure now is never "nothing happened".
        self.verify_dump(source, &block0, dump)
            .map_err(|e| spoiled(e, 0))?;
        Ok(kind)
    }

    /// One block through the open Gen1a backdoor: `Err(false)` when the
    /// card refused the command (nothing written), `Err(true)` when the data
    /// went unacknowledged (the block may be written).
    fn gen1a_write(&mut self, block: u8, data: &[u8; 16]) -> Result<(), bool> {
        let ok = |r: nfc1::Result<Vec<u8>>| matches!(r, Ok(ack) if ack.first().is_some_and(|a| a & 0x0F == 0x0A));
        let d = self.device_mut();
        if !ok(d.initiator_transceive_bytes(&with_crc(&[0xA0, block]), 1, nfc1::Timeout::Default)) {
            return Err(false);
        }
        if !ok(d.initiator_transceive_bytes(&with_crc(data), 1, nfc1::Timeout::Default)) {
            return Err(true);
        }
        Ok(())
    }

    /// Block 0, then every block of every read sector, trailers included,
    /// through the backdoor.
    fn gen1a_write_all(&mut self, block0: &[u8; 16], dump: &Dump) -> NfcResult<()> {
        match self.gen1a_write(0, block0) {
            Ok(()) => {}
            Err(false) => {
                return Err(self.lost_or(NfcError::NotWritable(
                    "the Gen1a card refused the write".into(),
                )))
            }
            Err(true) => {
                return Err(NfcError::SectorFailed {
                    sector: 0,
                    what: "block 0 was not acknowledged".into(),
                })
            }
        }
        for sector in dump.read_sectors() {
            for block in (Layout::first_block(sector)..=Layout::trailer(sector)).filter(|b| *b != 0)
            {
                if self.gen1a_write(block, &dump.block(block)).is_err() {
                    return Err(NfcError::SectorFailed {
                        sector,
                        what: format!("block {block} was not acknowledged"),
                    });
                }
            }
        }
        Ok(())
    }

    /// Block 0 of a Gen2 blank, after a fresh select and the factory key:
    /// the blank's UID becomes the badge's. Nothing is written before the
    /// write itself, so errors before it mean "nothing happened"; a write
    /// left unanswered by a card that then left may have happened.
    fn gen2_write_block0(&mut self, blank: &TagInfo, block0: &[u8; 16]) -> NfcResult<()> {
        let tag = self.select()?.ok_or(NfcError::TagRemoved)?;
        if tag.uid != blank.uid {
            return Err(NfcError::TagRemoved);
        }
        if !self.try_auth(&tag, 0, KeyType::A, &FACTORY_KEY)? {
            return Err(NfcError::AuthFailed);
        }
        let mut cmd = vec![0xA0, 0x00];
        cmd.extend_from_slice(block0);
        if self.exchange(&cmd, 0).is_err() {
            return Err(self.block0_write_failed(
                &blank.uid,
                block0,
                NfcError::NotWritable("block 0 is read-only: not a magic card".into()),
            ));
        }
        Ok(())
    }

    /// Then, in a fresh field, each read sector with the blank's factory
    /// key, data blocks first and the trailer last, so that a failure never
    /// leaves a sector locked under a key not yet written.
    fn gen2_write_sectors(&mut self, source: &TagInfo, dump: &Dump) -> NfcResult<()> {
        let fail = |sector, what: String| NfcError::SectorFailed { sector, what };
        let copy = self
            .select()?
            .ok_or_else(|| fail(0, "the card left after block 0".into()))?;
        if copy.uid != source.uid {
            return Err(fail(
                0,
                "the card answers with another UID after block 0".into(),
            ));
        }
        for sector in dump.read_sectors() {
            let opened = self
                .try_auth(&copy, Layout::first_block(sector), KeyType::A, &FACTORY_KEY)
                .map_err(|e| fail(sector, e.to_string()))?;
            if !opened {
                return Err(fail(sector, "the blank refused its factory key".into()));
            }
            let trailer = Layout::trailer(sector);
            for block in (Layout::first_block(sector)..=trailer).filter(|b| *b != 0) {
                let mut cmd = vec![0xA0, block];
                cmd.extend_from_slice(&dump.block(block));
                if self.exchange(&cmd, 0).is_err() {
                    return Err(fail(sector, format!("block {block} was not written")));
                }
            }
        }
        Ok(())
    }

    /// Reads every written sector back in a fresh field with the badge's
    /// keys and compares byte for byte (a trailer: access bits, and key B
    /// when it is readable; both keys are proven by authenticating with them).
    fn verify_dump(&mut self, source: &TagInfo, block0: &[u8; 16], dump: &Dump) -> NfcResult<()> {
        let fail = |sector, what: String| NfcError::SectorFailed { sector, what };
        let tag = self
            .select()?
            .ok_or_else(|| fail(0, "the card is gone".into()))?;
        if tag.uid != source.uid {
            return Err(fail(0, "the card answers with another UID".into()));
        }
        if dump.keys(0).is_none() {
            // Sector 0 kept the blank's factory keys: block 0 reads with them.
            if !self.try_auth(&tag, 0, KeyType::A, &FACTORY_KEY)?
                || self.read_block(0) != Some(*block0)
            {
                return Err(fail(0, "block 0 reads back different".into()));
            }
        }
        for sector in dump.read_sectors() {
            let keys = dump.keys(sector).expect("a read sector has keys");
            let first = Layout::first_block(sector);
            let trailer = Layout::trailer(sector);
            let Some(mut read) = self.read_with(&tag, sector, KeyType::A, &keys.a)? else {
                return Err(fail(sector, "key A does not open the copy".into()));
            };
            // Blocks the access conditions keep from key A read with key B,
            // as on the badge.
            if read.iter().any(Option::is_none) && !key_b_readable(&dump.block(trailer)[6..10]) {
                if let Some(with_b) = self.read_with(&tag, sector, KeyType::B, &keys.b)? {
                    for (slot, got) in read.iter_mut().zip(with_b) {
                        if slot.is_none() {
                            *slot = got;
                        }
                    }
                }
            }
            for (block, got) in (first..=trailer).zip(read) {
                let got =
                    got.ok_or_else(|| fail(sector, format!("block {block} does not read")))?;
                let want = dump.block(block);
                let same = if block == trailer {
                    got[6..10] == want[6..10]
                        && (!key_b_readable(&want[6..10]) || got[10..] == want[10..])
                } else {
                    got == want
                };
                if !same {
                    return Err(fail(sector, format!("block {block} reads back different")));
                }
            }
            if !key_b_readable(&dump.block(trailer)[6..10])
                && !self.try_auth(&tag, first, KeyType::B, &keys.b)?
            {
                return Err(fail(sector, "key B does not open the copy".into()));
            }
        }
        Ok(())
    }
}

/// An error once the blank was written: it is spoiled, whatever went wrong.
fn spoiled(e: NfcError, sector: u8) -> NfcError {
    match e {
        e @ (NfcError::SectorFailed { .. } | NfcError::VerifyFailed { .. }) => e,
        other => NfcError::SectorFailed {
            sector,
            what: format!("not verified: {other}"),
        },
    }
}

/// Block 0 to write: the badge's own when sector 0 was read, else one built
/// from its UID, SAK and ATQA.
fn block0_of(source: &TagInfo, dump: &Dump) -> NfcResult<[u8; 16]> {
    if dump.keys(0).is_some() {
        return Ok(dump.block(0));
    }
    match source.uid.len() {
        4 => build_block0(&source.uid, source.sak, source.atqa, None),
        7 => {
            let uid: [u8; 7] = source.uid[..].try_into().expect("7 bytes");
            Ok(block0_7(
                uid,
                source.sak,
                source.atqa,
                [0x62, 0x63, 0x64, 0x65, 0x66, 0x67],
            ))
        }
        n => Err(NfcError::NotCopyable(format!("a {n}-byte UID"))),
    }
}

/// The blank can take the badge: MIFARE Classic, the same UID length, at least its size.
fn check_blank(blank: &TagInfo, source: &TagInfo, dump: &Dump) -> NfcResult<()> {
    let layout = layout_of(blank).ok_or_else(|| {
        NfcError::NotWritable(format!(
            "{} card, not a MIFARE Classic blank",
            blank.family.as_str()
        ))
    })?;
    if blank.uid.len() != source.uid.len() {
        return Err(NfcError::NotWritable(format!(
            "this badge has a {}-byte UID and this blank a {}-byte one: use a {}-byte blank",
            source.uid.len(),
            blank.uid.len(),
            source.uid.len()
        )));
    }
    if layout.blocks() < dump.layout.blocks() {
        return Err(NfcError::NotWritable(
            "this badge is a 4K card: use a 4K blank".into(),
        ));
    }
    Ok(())
}

/// Block 0 carries the badge's UID and a MIFARE Classic SAK, checked before
/// anything is written (a wrong block 0 bricks a Gen1a card).
fn check_block0(b: &[u8; 16], source: &TagInfo) -> NfcResult<()> {
    if source.uid.len() == 4 {
        validate_block0(b)?;
    } else if !CLASSIC_SAKS.contains(&b[7]) {
        return Err(NfcError::InvalidBlock0(format!(
            "SAK {:02X} is not a MIFARE Classic SAK",
            b[7]
        )));
    }
    if b[..source.uid.len()] != source.uid[..] {
        return Err(NfcError::InvalidBlock0(
            "block 0 does not hold the badge's UID".into(),
        ));
    }
    Ok(())
}
