//! MIFARE Classic as the kiosk copies it: the memory layout of 1K and 4K
//! cards, keys and the dictionary tried on a badge, access bits, which
//! sectors a badge gave up (the [`SectorMap`], safe to record), and the
//! [`Dump`] of its contents (never recorded, zeroed when dropped). No I/O.

use std::fmt;

use zeroize::Zeroize;

/// A sector key.
pub type Key = [u8; 6];

/// Key A or key B of a sector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub enum KeyType {
    /// Key A (`0x60` authentication).
    A,
    /// Key B (`0x61` authentication).
    B,
}

/// How a MIFARE Classic card's memory is laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout {
    /// 16 sectors of 4 blocks.
    Classic1k,
    /// 32 sectors of 4 blocks, then 8 sectors of 16 blocks.
    Classic4k,
}

impl Layout {
    /// Sectors on the card.
    pub fn sectors(self) -> u8 {
        match self {
            Self::Classic1k => 16,
            Self::Classic4k => 40,
        }
    }

    /// Blocks on the card.
    pub fn blocks(self) -> usize {
        match self {
            Self::Classic1k => 64,
            Self::Classic4k => 256,
        }
    }

    /// The first block of `sector`.
    pub fn first_block(sector: u8) -> u8 {
        if sector < 32 {
            sector * 4
        } else {
            128 + (sector - 32) * 16
        }
    }

    /// Blocks in `sector`, its trailer last.
    pub fn block_count(sector: u8) -> u8 {
        if sector < 32 {
            4
        } else {
            16
        }
    }

    /// The sector trailer of `sector`: keys and access bits.
    pub fn trailer(sector: u8) -> u8 {
        Self::first_block(sector) + (Self::block_count(sector) - 1)
    }

    /// The sector holding `block`.
    pub fn sector_of(block: u8) -> u8 {
        if block < 128 {
            block / 4
        } else {
            32 + (block - 128) / 16
        }
    }
}

/// Whether the access bits of a trailer (bytes 6..10) let key B be read:
/// then it is data, and a read of the trailer shows it.
pub fn key_b_readable(access: &[u8]) -> bool {
    let (Some(&b7), Some(&b8)) = (access.get(1), access.get(2)) else {
        return false;
    };
    // C1, C2, C3 of the trailer (block 3 of the sector).
    let c = ((b7 >> 7) & 1, (b8 >> 3) & 1, (b8 >> 7) & 1);
    matches!(c, (0, 0, 0) | (0, 1, 0) | (0, 0, 1))
}

/// The keys tried on every sector of a badge, in order. Never printed.
#[derive(Clone, Default)]
pub struct KeyDictionary(Vec<Key>);

impl KeyDictionary {
    /// The keys every kiosk tries: the factory key, the MAD and NFC Forum
    /// keys, and the transport keys that ship on common badges.
    pub fn well_known() -> Self {
        Self(vec![
            [0xFF, 0xFF, 0xFF, 0xFF, 0xFF, 0xFF],
            [0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5],
            [0xD3, 0xF7, 0xD3, 0xF7, 0xD3, 0xF7],
            [0x00, 0x00, 0x00, 0x00, 0x00, 0x00],
            [0xB0, 0xB1, 0xB2, 0xB3, 0xB4, 0xB5],
            [0x4D, 0x3A, 0x99, 0xC3, 0x51, 0xDD],
            [0x1A, 0x98, 0x2C, 0x7E, 0x45, 0x9A],
            [0xAA, 0xBB, 0xCC, 0xDD, 0xEE, 0xFF],
            [0x71, 0x4C, 0x5C, 0x88, 0x6E, 0x97],
            [0x58, 0x7E, 0xE5, 0xF9, 0x35, 0x0F],
            [0xA0, 0x47, 0x8C, 0xC3, 0x90, 0x91],
            [0x53, 0x3C, 0xB6, 0xC7, 0x23, 0xF6],
            [0x8F, 0xD0, 0xA4, 0xF2, 0x56, 0xE9],
        ])
    }

    /// `extra` first (the operator's keys), then the well-known ones.
    pub fn with_extra(extra: &[Key]) -> Self {
        let mut keys = extra.to_vec();
        for &k in Self::well_known().keys() {
            if !keys.contains(&k) {
                keys.push(k);
            }
        }
        Self(keys)
    }

    /// The keys, in the order they are tried.
    pub fn keys(&self) -> &[Key] {
        &self.0
    }
}

impl fmt::Debug for KeyDictionary {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "KeyDictionary({} keys)", self.0.len())
    }
}

impl Drop for KeyDictionary {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

/// Parses a key written as 12 hex digits.
pub fn parse_key(s: &str) -> Result<Key, String> {
    let s = s.trim();
    if s.len() != 12 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err("a MIFARE key is 12 hex digits, e.g. A0A1A2A3A4A5".into());
    }
    let mut k = [0u8; 6];
    for (i, byte) in k.iter_mut().enumerate() {
        *byte = u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|e| e.to_string())?;
    }
    Ok(k)
}

/// Which sectors a badge gave up and with which key: what the kiosk may
/// record about a copy (never the keys, never the data).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct SectorMap {
    /// Per sector: the key that opened it, `None` when it stayed locked.
    pub opened: Vec<Option<KeyType>>,
}

impl SectorMap {
    /// The sectors no key in the dictionary opened.
    pub fn locked(&self) -> Vec<u8> {
        (0u8..)
            .zip(&self.opened)
            .filter(|(_, k)| k.is_none())
            .map(|(s, _)| s)
            .collect()
    }

    /// Every sector was read.
    pub fn is_complete(&self) -> bool {
        self.opened.iter().all(Option::is_some)
    }

    /// One character a sector: `A`, `B`, or `-` for locked (`AAAB-A…`).
    pub fn summary(&self) -> String {
        self.opened
            .iter()
            .map(|k| match k {
                Some(KeyType::A) => 'A',
                Some(KeyType::B) => 'B',
                None => '-',
            })
            .collect()
    }
}

/// The keys of one sector that was read completely.
#[derive(Clone, Copy, PartialEq, Eq)]
pub struct SectorKeys {
    /// Key A.
    pub a: Key,
    /// Key B.
    pub b: Key,
}

/// A badge's contents, for the length of one copy: the blocks of every
/// sector that was read (trailers with both keys filled in) and their keys.
/// Zeroed when dropped; its `Debug` shows no data.
pub struct Dump {
    /// The card's layout.
    pub layout: Layout,
    /// Every block; those of locked sectors are zeros.
    blocks: Vec<[u8; 16]>,
    /// Per sector, its keys when it was read.
    keys: Vec<Option<SectorKeys>>,
}

impl Dump {
    /// An empty dump of a `layout` card.
    pub fn new(layout: Layout) -> Self {
        Self {
            layout,
            blocks: vec![[0; 16]; layout.blocks()],
            keys: vec![None; layout.sectors() as usize],
        }
    }

    /// Stores a sector read with `keys`; `blocks` are its blocks in order.
    pub fn put_sector(&mut self, sector: u8, keys: SectorKeys, blocks: &[[u8; 16]]) {
        let first = Layout::first_block(sector) as usize;
        for (i, b) in blocks.iter().enumerate() {
            self.blocks[first + i] = *b;
        }
        let t = Layout::trailer(sector) as usize;
        self.blocks[t][..6].copy_from_slice(&keys.a);
        self.blocks[t][10..].copy_from_slice(&keys.b);
        self.keys[sector as usize] = Some(keys);
    }

    /// One block.
    pub fn block(&self, i: u8) -> [u8; 16] {
        self.blocks[i as usize]
    }

    /// The keys of a sector that was read.
    pub fn keys(&self, sector: u8) -> Option<SectorKeys> {
        self.keys.get(sector as usize).copied().flatten()
    }

    /// The sectors that were read, in order.
    pub fn read_sectors(&self) -> Vec<u8> {
        (0..self.layout.sectors())
            .filter(|s| self.keys(*s).is_some())
            .collect()
    }

    /// What may be recorded about it.
    pub fn map(&self, opened: &[Option<KeyType>]) -> SectorMap {
        SectorMap {
            opened: opened.to_vec(),
        }
    }
}

/// A badge as read: its contents and what may be recorded about them.
#[derive(Debug)]
pub struct BadgeRead {
    /// The contents, for the copy only.
    pub dump: Dump,
    /// Which sectors opened, with which key.
    pub map: SectorMap,
}

impl fmt::Debug for Dump {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "Dump({:?}, {} sectors read)",
            self.layout,
            self.read_sectors().len()
        )
    }
}

impl Drop for Dump {
    fn drop(&mut self) {
        self.blocks.zeroize();
        for k in self.keys.iter_mut().flatten() {
            k.a.zeroize();
            k.b.zeroize();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layouts_of_1k_and_4k() {
        assert_eq!((Layout::first_block(15), Layout::trailer(15)), (60, 63));
        assert_eq!((Layout::first_block(32), Layout::trailer(32)), (128, 143));
        assert_eq!((Layout::first_block(39), Layout::trailer(39)), (240, 255));
        assert_eq!((Layout::sector_of(143), Layout::sector_of(144)), (32, 33));
        assert_eq!(Layout::Classic4k.blocks(), 256);
    }

    #[test]
    fn access_bits_say_whether_key_b_is_data() {
        assert!(
            key_b_readable(&[0xFF, 0x07, 0x80, 0x69]),
            "transport configuration"
        );
        assert!(
            !key_b_readable(&[0x7F, 0x07, 0x88, 0x69]),
            "key B secret (C = 011)"
        );
    }

    #[test]
    fn keys_parse_and_the_dictionary_never_prints_them() {
        assert_eq!(
            parse_key("a0a1A2A3A4A5"),
            Ok([0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5])
        );
        assert!(parse_key("A0A1A2").is_err());
        let d = KeyDictionary::with_extra(&[[1, 2, 3, 4, 5, 6], [0xFF; 6]]);
        assert_eq!(d.keys()[0], [1, 2, 3, 4, 5, 6]);
        assert_eq!(d.keys().iter().filter(|k| **k == [0xFF; 6]).count(), 1);
        assert!(!format!("{d:?}").contains("01"));
    }

    #[test]
    fn a_sector_map_records_no_key() {
        let m = SectorMap {
            opened: vec![Some(KeyType::A), None, Some(KeyType::B)],
        };
        assert_eq!(
            (m.summary(), m.locked(), m.is_complete()),
            ("A-B".into(), vec![1], false)
        );
    }
}
