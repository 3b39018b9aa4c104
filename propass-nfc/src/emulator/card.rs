//! One emulated card, with the ISO/IEC 14443-3 type A state machine that
//! real cards follow — strictly, because a reader that works only against a
//! lenient card fails on hardware.
//!
//! ```text
//!            field off (any state) ──────────────► IDLE (Gen1a unlock lost)
//! IDLE ── REQA / WUPA ──► READY ── anticollision + SELECT ──► ACTIVE ── AUTH ok ──► AUTH
//! HALT ── WUPA only ────► READY*                               │                    │
//! ACTIVE / AUTH ── HLTA (or the reader's InDeselect / InRelease) ─────────────► HALT
//! READY / ACTIVE / AUTH ── anything unexpected (a REQA, a failed AUTH, a read
//!                          without AUTH) ──► IDLE, or HALT when woken from HALT (*)
//! Gen1a only: IDLE / HALT ── 0x40 (7 bits) ──► UNLOCK1 ── 0x43 ──► UNLOCKED
//!             UNLOCKED: read any block (0x30), write any block (0xA0 n, then 16 bytes)
//! ```

use crate::iso14443a::{
    bcc, block0, block0_7, CASCADE_TAG, DEFAULT_MANUFACTURER, FACTORY_ACCESS_BITS, FACTORY_KEY,
};
use crate::mifare::{key_b_readable, Key, Layout};

/// What kind of card sits on the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagKind {
    /// A MIFARE Classic 1K badge: block 0 read-only.
    Classic1k,
    /// A Gen1a magic card: answers the 7-bit unlock (0x40, 0x43), then every
    /// block is readable and writable without authentication.
    Gen1a,
    /// A Gen2 / CUID magic card: block 0 writable after a normal authentication.
    Gen2,
    /// A 7-byte-UID MIFARE Ultralight / NTAG (no sectors, no keys).
    Ultralight,
}

/// Where a card is in the ISO/IEC 14443-3 state machine (see the module doc).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CardState {
    /// Powered, waiting for REQA or WUPA.
    Idle,
    /// Woken; in anticollision at cascade `level` (1, or 2 for a 7-byte UID).
    Ready {
        /// The cascade level the reader may select next.
        level: u8,
    },
    /// Selected: answers MIFARE commands.
    Active,
    /// Authenticated to one sector.
    Auth {
        /// The sector.
        sector: u8,
    },
    /// Halted: answers WUPA only (and a Gen1a its backdoor).
    Halt,
    /// Gen1a: the first unlock command was answered.
    Unlock1,
    /// Gen1a: the backdoor is open.
    Unlocked,
    /// Gen1a: the 16 bytes of `block` come next.
    AwaitWrite {
        /// The block.
        block: u8,
    },
}

/// One emulated tag.
#[derive(Debug, Clone)]
pub struct Tag {
    kind: TagKind,
    /// Memory: 64 or 256 blocks of 16 bytes (Classic), or 16 pages of 4
    /// bytes packed in blocks (Ultralight).
    pub(super) blocks: Vec<[u8; 16]>,
    /// An Ultralight's UID (a Classic card's is in its block 0).
    uid7: Option<[u8; 7]>,
    /// A Classic card's UID length: 4, or 7 (block 0 then holds UID, SAK, ATQA).
    uid_len: usize,
    state: CardState,
    /// Woken from HALT (the `*` states): an error sends it back to HALT, not IDLE.
    from_halt: bool,
    /// The sector of `Auth` was opened with key B (access conditions differ).
    auth_b: bool,
}

impl Tag {
    /// A MIFARE Classic 1K card (badge or blank) with a 4-byte UID and factory keys.
    pub fn classic(kind: TagKind, uid: [u8; 4]) -> Self {
        Self::classic_card(kind, &uid, Layout::Classic1k)
    }

    /// A MIFARE Classic card of `layout` with a 4- or 7-byte `uid` and
    /// factory keys (SAK 08 or 18; ATQA 0004 / 0002, or 0044 / 0042 for a
    /// 7-byte UID). Panics on another UID length: a test's mistake.
    pub fn classic_card(kind: TagKind, uid: &[u8], layout: Layout) -> Self {
        let big = layout == Layout::Classic4k;
        let sak = if big { 0x18 } else { 0x08 };
        let mut blocks = vec![[0u8; 16]; layout.blocks()];
        blocks[0] = match *uid {
            [a, b, c, d] => block0(
                [a, b, c, d],
                sak,
                [0x00, if big { 0x02 } else { 0x04 }],
                DEFAULT_MANUFACTURER,
            ),
            [_, _, _, _, _, _, _] => {
                let uid: [u8; 7] = uid.try_into().expect("7 bytes");
                let manufacturer = [0x62, 0x63, 0x64, 0x65, 0x66, 0x67];
                block0_7(
                    uid,
                    sak,
                    [0x00, if big { 0x42 } else { 0x44 }],
                    manufacturer,
                )
            }
            _ => panic!("a MIFARE Classic UID has 4 or 7 bytes"),
        };
        for s in 0..layout.sectors() {
            let t = &mut blocks[Layout::trailer(s) as usize];
            t[..6].copy_from_slice(&FACTORY_KEY);
            t[6..10].copy_from_slice(&FACTORY_ACCESS_BITS);
            t[10..].copy_from_slice(&FACTORY_KEY);
        }
        let mut tag = Self::new(kind, blocks, None);
        tag.uid_len = uid.len();
        tag
    }

    /// Gives sector `sector` its own keys and access bits, and `data` in its
    /// data blocks (a badge whose site code lives behind a key).
    pub fn with_sector(
        mut self,
        sector: u8,
        a: Key,
        access: [u8; 4],
        b: Key,
        data: &[[u8; 16]],
    ) -> Self {
        let first = Layout::first_block(sector) as usize;
        for (i, d) in data
            .iter()
            .enumerate()
            .take(Layout::block_count(sector) as usize - 1)
        {
            if first + i != 0 {
                self.blocks[first + i] = *d;
            }
        }
        let t = &mut self.blocks[Layout::trailer(sector) as usize];
        t[..6].copy_from_slice(&a);
        t[6..10].copy_from_slice(&access);
        t[10..].copy_from_slice(&b);
        self
    }

    /// The whole memory, keys included, as a card dump tool would write it.
    pub fn memory(&self) -> Vec<[u8; 16]> {
        self.blocks.clone()
    }

    /// A 7-byte-UID Ultralight / NTAG.
    pub fn ultralight(uid: [u8; 7]) -> Self {
        let mut blocks = vec![[0u8; 16]; 4];
        let bcc0 = bcc(&[CASCADE_TAG, uid[0], uid[1], uid[2]]);
        let bcc1 = bcc(&uid[3..]);
        blocks[0][..3].copy_from_slice(&uid[..3]);
        blocks[0][3] = bcc0;
        blocks[0][4..8].copy_from_slice(&uid[3..]);
        blocks[0][8] = bcc1;
        Self::new(TagKind::Ultralight, blocks, Some(uid))
    }

    fn new(kind: TagKind, blocks: Vec<[u8; 16]>, uid7: Option<[u8; 7]>) -> Self {
        Self {
            kind,
            blocks,
            uid7,
            uid_len: 4,
            state: CardState::Idle,
            from_halt: false,
            auth_b: false,
        }
    }

    /// Its kind.
    pub fn kind(&self) -> TagKind {
        self.kind
    }

    /// Where it is in the ISO/IEC 14443-3 state machine.
    pub fn state(&self) -> CardState {
        self.state
    }

    /// A copy of one 16-byte block (Classic) or four pages (Ultralight).
    pub fn block(&self, i: usize) -> Option<[u8; 16]> {
        self.blocks.get(i).copied()
    }

    /// A Classic-family card whose block 0 BCC does not match its UID: no
    /// reader can select it any more.
    pub fn bricked(&self) -> bool {
        self.uid7.is_none() && self.uid_len == 4 && bcc(&self.blocks[0][..4]) != self.blocks[0][4]
    }

    /// The UID as the reader sees it.
    pub fn uid(&self) -> Vec<u8> {
        match self.uid7 {
            Some(u) => u.to_vec(),
            None => self.blocks[0][..self.uid_len].to_vec(),
        }
    }

    /// ATQA, most significant byte first.
    pub(super) fn atqa(&self) -> [u8; 2] {
        match (self.kind, self.uid_len) {
            (TagKind::Ultralight, _) => [0x00, 0x44],
            (_, 7) => [self.blocks[0][9], self.blocks[0][8]],
            _ => [self.blocks[0][7], self.blocks[0][6]],
        }
    }

    pub(super) fn sak(&self) -> u8 {
        match (self.kind, self.uid_len) {
            (TagKind::Ultralight, _) => 0x00,
            (_, 7) => self.blocks[0][7],
            _ => self.blocks[0][5],
        }
    }

    /// The field went off (and on again): the card restarts.
    pub(super) fn power_cycle(&mut self) {
        self.state = CardState::Idle;
        self.from_halt = false;
    }

    /// After an unexpected command: back to IDLE, or HALT when woken from HALT.
    pub(super) fn fall_back(&mut self) {
        self.state = if self.from_halt {
            CardState::Halt
        } else {
            CardState::Idle
        };
    }

    /// A frame it does not understand: a card in READY, ACTIVE or AUTH falls back.
    pub(super) fn unexpected(&mut self) {
        if matches!(
            self.state,
            CardState::Ready { .. } | CardState::Active | CardState::Auth { .. }
        ) {
            self.fall_back();
        }
    }

    /// Held by the reader: selected, authenticated, or in the backdoor.
    pub(super) fn is_held(&self) -> bool {
        !matches!(
            self.state,
            CardState::Idle | CardState::Halt | CardState::Ready { .. }
        )
    }

    /// REQA (`wupa = false`) or WUPA: the ATQA when the card wakes.
    pub(super) fn wake(&mut self, wupa: bool) -> Option<[u8; 2]> {
        match self.state {
            CardState::Idle => self.from_halt = false,
            CardState::Halt if wupa => self.from_halt = true,
            CardState::Halt => return None,
            _ => {
                self.fall_back();
                return None;
            }
        }
        self.state = CardState::Ready { level: 1 };
        Some(self.atqa())
    }

    /// The UID bytes of cascade level `level` (1 or 2), with the cascade tag
    /// for the first level of a 7-byte UID.
    fn cascade(&self, level: u8) -> Option<[u8; 4]> {
        let uid = self.uid();
        match (uid.len(), level) {
            (4, 1) => uid.try_into().ok(),
            (7, 1) => Some([CASCADE_TAG, uid[0], uid[1], uid[2]]),
            (7, 2) => uid[3..7].try_into().ok(),
            _ => None,
        }
    }

    /// Anticollision at `level`: the level's UID bytes and BCC. A Classic
    /// card answers the BCC stored in its block 0 (a wrong one is a brick).
    pub(super) fn anticollision(&mut self, level: u8) -> Option<[u8; 5]> {
        if self.state != (CardState::Ready { level }) {
            return None;
        }
        let cl = self.cascade(level)?;
        let check = if self.uid7.is_none() && self.uid_len == 4 {
            self.blocks[0][4]
        } else {
            bcc(&cl)
        };
        Some([cl[0], cl[1], cl[2], cl[3], check])
    }

    /// SELECT at `level` with the level's UID bytes: the SAK when they are
    /// this card's. After level 1 of a 7-byte UID the card stays READY for
    /// level 2 and answers "UID not complete" (0x04).
    pub(super) fn select(&mut self, level: u8, cl: &[u8]) -> Option<u8> {
        if self.state != (CardState::Ready { level }) {
            return None;
        }
        let mine = self.cascade(level)?;
        if cl != mine {
            return None;
        }
        if self.uid().len() == 7 && level == 1 {
            self.state = CardState::Ready { level: 2 };
            return Some(0x04);
        }
        self.state = CardState::Active;
        Some(self.sak())
    }

    /// HLTA, or the reader's InDeselect / InRelease: a held card halts; one
    /// still in anticollision (READY) takes it as an unexpected frame and
    /// falls back (to IDLE, or HALT when woken from it).
    pub(super) fn halt(&mut self) {
        if self.is_held() {
            self.state = CardState::Halt;
        } else if matches!(self.state, CardState::Ready { .. }) {
            self.fall_back();
        }
    }

    /// The Gen1a backdoor's first command (0x40, 7 bits), answered from IDLE or HALT.
    pub(super) fn unlock1(&mut self) -> bool {
        let open =
            self.kind == TagKind::Gen1a && matches!(self.state, CardState::Idle | CardState::Halt);
        if open {
            self.state = CardState::Unlock1;
        } else if self.is_held() || matches!(self.state, CardState::Ready { .. }) {
            self.fall_back();
        }
        open
    }

    /// The Gen1a backdoor's second command (0x43).
    pub(super) fn unlock2(&mut self) -> bool {
        let open = self.state == CardState::Unlock1;
        if open {
            self.state = CardState::Unlocked;
        }
        open
    }

    /// A raw frame (CRC stripped) to an unlocked Gen1a: `Some(answer)` when
    /// it answers; `Ok(None)` in the answer means a 4-bit ACK.
    pub(super) fn backdoor(&mut self, p: &[u8]) -> Option<Option<[u8; 16]>> {
        let blocks = self.blocks.len();
        match (self.state, p) {
            (CardState::Unlocked, [0xA0, b]) if (*b as usize) < blocks => {
                self.state = CardState::AwaitWrite { block: *b };
                Some(None)
            }
            (CardState::Unlocked, [0x30, b]) if (*b as usize) < blocks => {
                Some(Some(self.blocks[*b as usize]))
            }
            (CardState::AwaitWrite { block }, data) if data.len() == 16 => {
                self.blocks[block as usize].copy_from_slice(data);
                self.state = CardState::Unlocked;
                Some(None)
            }
            _ => None,
        }
    }

    fn key_ok(&self, block: u8, key_b: bool, key: &[u8]) -> bool {
        let trailer = &self.blocks[Layout::trailer(Layout::sector_of(block)) as usize];
        let k = if key_b {
            &trailer[10..16]
        } else {
            &trailer[..6]
        };
        k == key
    }

    /// A MIFARE command through the reader's InDataExchange (`op`, then its
    /// arguments). `Err(status)` is the PN532's error status.
    pub(super) fn mifare(&mut self, op: u8, rest: &[u8]) -> Result<Vec<u8>, u8> {
        const TIMEOUT: u8 = 0x01;
        const AUTH_ERROR: u8 = 0x14;
        if !matches!(self.state, CardState::Active | CardState::Auth { .. }) {
            return Err(TIMEOUT);
        }
        let blocks = self.blocks.len();
        match (op, self.kind) {
            (0x30, TagKind::Ultralight) if !rest.is_empty() => {
                let page = rest[0] as usize;
                let mem: Vec<u8> = self.blocks.iter().flatten().copied().collect();
                Ok((0..16)
                    .map(|i| mem.get(page * 4 + i).copied().unwrap_or(0))
                    .collect())
            }
            (_, TagKind::Ultralight) => Err(TIMEOUT),
            (0x60 | 0x61, _) if rest.len() >= 11 && (rest[0] as usize) < blocks => {
                // The UID bytes of an authentication are the last four.
                let uid = self.uid();
                if self.key_ok(rest[0], op == 0x61, &rest[1..7])
                    && rest[7..11] == uid[uid.len() - 4..]
                {
                    self.state = CardState::Auth {
                        sector: Layout::sector_of(rest[0]),
                    };
                    self.auth_b = op == 0x61;
                    Ok(Vec::new())
                } else {
                    self.fall_back();
                    Err(AUTH_ERROR)
                }
            }
            (0x30, _) if !rest.is_empty() && (rest[0] as usize) < blocks => match self.state {
                CardState::Auth { sector }
                    if sector == Layout::sector_of(rest[0]) && self.may(rest[0], false) =>
                {
                    Ok(self.read_block(rest[0]).to_vec())
                }
                _ => {
                    self.fall_back();
                    Err(AUTH_ERROR)
                }
            },
            (0xA0, _) if rest.len() >= 17 && (rest[0] as usize) < blocks => {
                let blk = rest[0] as usize;
                match self.state {
                    CardState::Auth { sector } if sector == Layout::sector_of(rest[0]) => {
                        if blk == 0 && self.kind != TagKind::Gen2 {
                            // Block 0 is read-only: the card NAKs.
                            return Err(TIMEOUT);
                        }
                        if !self.may(rest[0], true) {
                            // Its access conditions keep this key from writing.
                            self.fall_back();
                            return Err(TIMEOUT);
                        }
                        self.blocks[blk].copy_from_slice(&rest[1..17]);
                        Ok(Vec::new())
                    }
                    _ => {
                        self.fall_back();
                        Err(AUTH_ERROR)
                    }
                }
            }
            _ => Err(TIMEOUT),
        }
    }

    /// C1, C2, C3 of `block`'s access condition, from its sector trailer
    /// (a 16-block sector of a 4K card has them per group of five blocks).
    fn access_of(&self, block: u8) -> (u8, u8, u8) {
        let sector = Layout::sector_of(block);
        let trailer = Layout::trailer(sector);
        let t = &self.blocks[trailer as usize];
        let index = block - Layout::first_block(sector);
        let j = if block == trailer {
            3
        } else if Layout::block_count(sector) == 4 {
            index
        } else {
            index / 5
        };
        (
            (t[7] >> (4 + j)) & 1,
            (t[8] >> j) & 1,
            (t[8] >> (4 + j)) & 1,
        )
    }

    /// Whether the key the sector was opened with may read (or write)
    /// `block`, by MIFARE Classic's access conditions. A key B that the
    /// trailer shows as data grants nothing; a trailer is written whole, so
    /// a write needs the key that may write all of it (001: key A, 011: key B).
    fn may(&self, block: u8, write: bool) -> bool {
        let trailer = Layout::trailer(Layout::sector_of(block));
        if self.auth_b && key_b_readable(&self.blocks[trailer as usize][6..10]) {
            return false;
        }
        let c = self.access_of(block);
        if block == trailer {
            return !write || matches!((c, self.auth_b), ((0, 0, 1), false) | ((0, 1, 1), true));
        }
        let (a, b) = match (write, c) {
            (false, (0, 0, 0) | (0, 1, 0) | (1, 0, 0) | (1, 1, 0) | (0, 0, 1)) => (true, true),
            (false, (0, 1, 1) | (1, 0, 1)) => (false, true),
            (true, (0, 0, 0)) => (true, true),
            (true, (1, 0, 0) | (1, 1, 0) | (0, 1, 1)) => (false, true),
            _ => (false, false),
        };
        if self.auth_b {
            b
        } else {
            a
        }
    }

    /// A block as a read shows it: a trailer never shows key A, and shows
    /// key B only when its access bits make it data.
    fn read_block(&self, block: u8) -> [u8; 16] {
        let mut b = self.blocks[block as usize];
        if block == Layout::trailer(Layout::sector_of(block)) {
            b[..6].fill(0);
            if !key_b_readable(&b[6..10]) {
                b[10..].fill(0);
            }
        }
        b
    }

    /// Puts a card that enters the field in its first state.
    pub(super) fn entering_field(mut self) -> Self {
        self.power_cycle();
        self
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const UID: [u8; 4] = [0x04, 0xAB, 0x12, 0xCD];

    fn select(t: &mut Tag) -> Option<u8> {
        let cl = t.anticollision(1)?;
        t.select(1, &cl[..4])
    }

    /// Opens `block`'s sector with key B (`key_b`) or A, in a fresh field.
    fn open(t: &mut Tag, block: u8, key_b: bool, key: &Key) -> Result<Vec<u8>, u8> {
        t.power_cycle();
        t.wake(false);
        select(t);
        let mut auth = vec![block];
        auth.extend_from_slice(key);
        auth.extend_from_slice(&UID);
        t.mifare(if key_b { 0x61 } else { 0x60 }, &auth)
    }

    /// MIFARE Classic's access conditions: what each key may read and write.
    #[test]
    fn access_conditions_decide_what_each_key_may_do() {
        const A: Key = [0xA1; 6];
        const B: Key = [0xB1; 6];
        // Sector 1: data read and written with key B only (011), the trailer
        // written with key B (011); sector 2: transport (key B readable).
        let b_only = [0x0F, 0x00, 0xFF, 0x69];
        let transport = [0xFF, 0x07, 0x80, 0x69];
        let mut t = Tag::classic(TagKind::Classic1k, UID)
            .with_sector(1, A, b_only, B, &[[0x11; 16], [0x12; 16], [0x13; 16]])
            .with_sector(2, A, transport, B, &[[0x21; 16]]);

        assert_eq!(open(&mut t, 4, false, &A), Ok(vec![]));
        assert!(
            t.mifare(0x30, &[4]).is_err(),
            "key A may not read B-only data"
        );
        assert_eq!(t.state(), CardState::Idle, "a refused read drops the card");
        open(&mut t, 4, false, &A).unwrap();
        let trailer = t.mifare(0x30, &[7]).expect("key A reads the access bits");
        assert_eq!(&trailer[6..10], &b_only);
        assert_eq!(&trailer[..6], &[0; 6], "key A never shows");
        let mut write = vec![5];
        write.extend_from_slice(&[0x99; 16]);
        assert!(
            t.mifare(0xA0, &write).is_err(),
            "key A may not write it either"
        );

        assert_eq!(open(&mut t, 4, true, &B), Ok(vec![]));
        assert_eq!(t.mifare(0x30, &[4]), Ok(vec![0x11; 16]));
        assert_eq!(t.mifare(0xA0, &write), Ok(vec![]), "key B writes");
        assert_eq!(t.mifare(0x30, &[5]), Ok(vec![0x99; 16]));

        // A key B that reads as data (transport) opens nothing.
        assert_eq!(open(&mut t, 8, true, &B), Ok(vec![]));
        assert!(t.mifare(0x30, &[8]).is_err());
        open(&mut t, 8, false, &A).unwrap();
        assert_eq!(t.mifare(0x30, &[8]), Ok(vec![0x21; 16]));
        // Transport: key A writes the whole trailer (001).
        let mut trailer = vec![11];
        trailer.extend_from_slice(&[0xA2; 6]);
        trailer.extend_from_slice(&transport);
        trailer.extend_from_slice(&[0xB2; 6]);
        assert_eq!(t.mifare(0xA0, &trailer), Ok(vec![]));
    }

    /// The ISO/IEC 14443-3 transitions, one by one.
    #[test]
    fn walks_the_type_a_state_machine() {
        let mut t = Tag::classic(TagKind::Classic1k, UID);
        assert_eq!(t.state(), CardState::Idle);
        assert_eq!(
            t.anticollision(1),
            None,
            "IDLE does not answer anticollision"
        );
        assert_eq!(t.wake(false), Some([0x00, 0x04]), "REQA wakes IDLE");
        assert_eq!(t.state(), CardState::Ready { level: 1 });
        assert_eq!(select(&mut t), Some(0x08));
        assert_eq!(t.state(), CardState::Active);

        t.halt();
        assert_eq!(t.state(), CardState::Halt, "HLTA halts a selected card");
        assert_eq!(t.wake(false), None, "REQA does not wake HALT");
        assert_eq!(t.state(), CardState::Halt);
        assert!(t.wake(true).is_some(), "WUPA wakes HALT");
        t.halt();
        assert_eq!(
            t.state(),
            CardState::Halt,
            "HLTA in anticollision (READY*): back where it was woken from"
        );
        t.power_cycle();
        t.wake(false);
        t.halt();
        assert_eq!(t.state(), CardState::Idle, "HLTA in READY: back to IDLE");
        t.wake(false);
        select(&mut t);
        t.halt();
        assert!(t.wake(true).is_some());
        assert_eq!(select(&mut t), Some(0x08));

        // A read without authentication: back to HALT, where it was woken from.
        assert_eq!(t.mifare(0x30, &[4]), Err(0x14));
        assert_eq!(t.state(), CardState::Halt);
        t.wake(true);
        select(&mut t);
        let mut auth = vec![4];
        auth.extend_from_slice(&FACTORY_KEY);
        auth.extend_from_slice(&UID);
        assert_eq!(t.mifare(0x60, &auth), Ok(vec![]));
        assert_eq!(t.state(), CardState::Auth { sector: 1 });
        assert_eq!(t.mifare(0x30, &[4]).map(|b| b.len()), Ok(16));
        assert_eq!(
            t.mifare(0x30, &[8]),
            Err(0x14),
            "another sector needs its own AUTH"
        );

        t.power_cycle();
        assert_eq!(t.state(), CardState::Idle, "the field off resets a card");
        t.wake(false);
        select(&mut t);
        assert_eq!(
            t.wake(false),
            None,
            "a REQA to a selected card is unexpected"
        );
        assert_eq!(t.state(), CardState::Idle);
    }

    #[test]
    fn the_gen1a_backdoor_answers_from_idle_or_halt_and_dies_with_the_field() {
        let mut t = Tag::classic(TagKind::Gen1a, UID);
        assert!(t.unlock1(), "from IDLE");
        assert!(t.unlock2());
        assert_eq!(
            t.backdoor(&[0x30, 63]).map(|b| b.is_some()),
            Some(true),
            "any block, no key"
        );
        assert_eq!(t.backdoor(&[0xA0, 7]), Some(None));
        assert_eq!(t.backdoor(&[0x11; 16]), Some(None));
        assert_eq!(t.block(7), Some([0x11; 16]), "a trailer too");
        t.power_cycle();
        assert_eq!(
            t.backdoor(&[0x30, 0]),
            None,
            "the unlock is lost with the field"
        );

        t.wake(false);
        select(&mut t);
        assert!(!t.unlock1(), "not from ACTIVE");
        t.wake(false);
        select(&mut t);
        t.halt();
        assert!(t.unlock1(), "from HALT");
        assert!(
            !Tag::classic(TagKind::Gen2, UID).unlock1(),
            "a Gen2 has no backdoor"
        );
    }

    #[test]
    fn a_seven_byte_uid_is_selected_in_two_cascade_levels() {
        let uid = [0x04, 0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6];
        let mut t = Tag::ultralight(uid);
        t.wake(false);
        let cl1 = t.anticollision(1).unwrap();
        assert_eq!(cl1[..4], [CASCADE_TAG, 0x04, 0xA1, 0xB2]);
        assert_eq!(t.select(1, &cl1[..4]), Some(0x04), "UID not complete");
        let cl2 = t.anticollision(2).unwrap();
        assert_eq!(t.select(2, &cl2[..4]), Some(0x00));
        assert_eq!(t.state(), CardState::Active);
    }
}
