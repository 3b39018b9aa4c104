//! A PN532 reader emulated on a pseudo-terminal, speaking the UART frame
//! protocol that libnfc's `pn532_uart` driver uses, written from the PN532
//! user manual's frame and command descriptions. libnfc opens it with the
//! connection string `pn532_uart:/dev/pts/N`, so tests (and the demo) run the
//! real libnfc driver stack, and libnfc's own tools (`nfc-list`,
//! `nfc-mfclassic`, `nfc-mfsetuid`) work against it by hand.
//!
//! It emulates the ISO14443A tags the kiosk meets — MIFARE Classic 1K badges,
//! Gen1a ("backdoor") and Gen2 (CUID) magic blanks, plain cards whose block 0
//! is read-only, 7-byte-UID Ultralight/NTAG tags — an empty field, and a tag
//! pulled away after a given number of commands.

use std::collections::HashMap;
use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;

use nix::pty::{openpty, OpenptyResult};
use nix::sys::termios::{self, SetArg};

use crate::iso14443a::{
    bcc, block0, crc_a, CASCADE_TAG, DEFAULT_MANUFACTURER, FACTORY_ACCESS_BITS, FACTORY_KEY,
};

/// What kind of card sits on the reader.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TagKind {
    /// A MIFARE Classic 1K badge: block 0 read-only.
    Classic1k,
    /// A Gen1a magic card: answers the 7-bit unlock (0x40, 0x43), then block 0
    /// is writable without authentication.
    Gen1a,
    /// A Gen2 / CUID magic card: block 0 writable after a normal authentication.
    Gen2,
    /// A 7-byte-UID MIFARE Ultralight / NTAG (no sectors, no keys).
    Ultralight,
}

/// One emulated tag.
#[derive(Debug, Clone)]
pub struct Tag {
    kind: TagKind,
    /// Memory: 64 blocks of 16 bytes (Classic), or 16 pages of 4 bytes packed in blocks (Ultralight).
    blocks: Vec<[u8; 16]>,
    uid7: Option<[u8; 7]>,
}

impl Tag {
    /// A Classic-family card (badge or blank) with a 4-byte UID and factory keys.
    pub fn classic(kind: TagKind, uid: [u8; 4]) -> Self {
        let mut blocks = vec![[0u8; 16]; 64];
        blocks[0] = block0(uid, 0x08, [0x00, 0x04], DEFAULT_MANUFACTURER);
        for s in 0..16 {
            let t = &mut blocks[s * 4 + 3];
            t[..6].copy_from_slice(&FACTORY_KEY);
            t[6..10].copy_from_slice(&FACTORY_ACCESS_BITS);
            t[10..].copy_from_slice(&FACTORY_KEY);
        }
        Self {
            kind,
            blocks,
            uid7: None,
        }
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
        Self {
            kind: TagKind::Ultralight,
            blocks,
            uid7: Some(uid),
        }
    }

    pub fn kind(&self) -> TagKind {
        self.kind
    }

    /// A copy of one 16-byte block (Classic) or four pages (Ultralight).
    pub fn block(&self, i: usize) -> Option<[u8; 16]> {
        self.blocks.get(i).copied()
    }

    /// A Classic-family card whose block 0 BCC does not match its UID: no
    /// reader can select it any more.
    pub fn bricked(&self) -> bool {
        self.uid7.is_none() && bcc(&self.blocks[0][..4]) != self.blocks[0][4]
    }

    /// The UID as the reader sees it.
    pub fn uid(&self) -> Vec<u8> {
        match self.uid7 {
            Some(u) => u.to_vec(),
            None => self.blocks[0][..4].to_vec(),
        }
    }

    fn atqa(&self) -> [u8; 2] {
        match self.kind {
            TagKind::Ultralight => [0x00, 0x44],
            _ => [self.blocks[0][7], self.blocks[0][6]],
        }
    }

    fn sak(&self) -> u8 {
        match self.kind {
            TagKind::Ultralight => 0x00,
            _ => self.blocks[0][5],
        }
    }

    fn key_ok(&self, block: u8, key_b: bool, key: &[u8]) -> bool {
        let trailer = &self.blocks[(block as usize / 4) * 4 + 3];
        let k = if key_b {
            &trailer[10..16]
        } else {
            &trailer[..6]
        };
        k == key
    }
}

/// What the test script controls while libnfc talks to the emulator.
#[derive(Debug, Default)]
pub struct Field {
    /// The tag on the reader, if any.
    pub tag: Option<Tag>,
    /// Remove the tag after this many more tag-level commands (a card pulled away mid-operation).
    pub remove_after: Option<u32>,
    /// The latest commands seen, by PN532 command code (for tests and scripts).
    pub log: Vec<u8>,
    /// Commands seen since the start.
    pub commands: u64,
    /// Bumped by [`Emulator::place`]: a new card starts idle.
    generation: u64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TagState {
    Idle,
    Selected,
    Authenticated(u8),
    Halted,
    Unlock1,
    Unlocked,
    AwaitBlock0,
}

/// A running emulator.
pub struct Emulator {
    path: PathBuf,
    field: Arc<Mutex<Field>>,
    _slave: OwnedFd,
    _thread: JoinHandle<()>,
}

impl Emulator {
    /// Opens a pseudo-terminal and starts answering on it.
    pub fn start(tag: Option<Tag>) -> std::io::Result<Self> {
        let OpenptyResult { master, slave } = openpty(None, None).map_err(std::io::Error::from)?;
        let mut t = termios::tcgetattr(&slave).map_err(std::io::Error::from)?;
        termios::cfmakeraw(&mut t);
        termios::tcsetattr(&slave, SetArg::TCSANOW, &t).map_err(std::io::Error::from)?;
        let path = std::fs::read_link(format!(
            "/proc/self/fd/{}",
            std::os::fd::AsRawFd::as_raw_fd(&slave)
        ))?;
        let field = Arc::new(Mutex::new(Field {
            tag,
            ..Field::default()
        }));
        let f = field.clone();
        let thread = std::thread::Builder::new()
            .name("pn532-emulator".into())
            .spawn(move || serve(std::fs::File::from(master), f))?;
        Ok(Self {
            path,
            field,
            _slave: slave,
            _thread: thread,
        })
    }

    /// The pseudo-terminal's path (`/dev/pts/N`).
    pub fn path(&self) -> &std::path::Path {
        &self.path
    }

    /// The libnfc connection string.
    pub fn connstring(&self) -> String {
        format!("pn532_uart:{}", self.path.display())
    }

    /// Changes what is on the reader.
    pub fn with_field<R>(&self, f: impl FnOnce(&mut Field) -> R) -> R {
        f(&mut self.field.lock().unwrap_or_else(|p| p.into_inner()))
    }

    /// Puts a tag on the reader (or takes it away with `None`).
    pub fn place(&self, tag: Option<Tag>) {
        self.with_field(|f| {
            f.tag = tag;
            f.remove_after = None;
            f.generation += 1;
        });
    }

    /// A copy of the tag on the reader.
    pub fn tag(&self) -> Option<Tag> {
        self.with_field(|f| f.tag.clone())
    }
}

const ACK: [u8; 6] = [0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00];
const ERROR_FRAME: [u8; 8] = [0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00];

// CIU registers libnfc touches.
const REG_CONTROL: u16 = 0x633C;
const REG_BIT_FRAMING: u16 = 0x633D;
const REG_TX_MODE: u16 = 0x6302;
const REG_RX_MODE: u16 = 0x6303;
const REG_MANUAL_RCV: u16 = 0x630D;

fn reset_registers(r: &mut HashMap<u16, u8>) {
    r.clear();
    r.insert(REG_TX_MODE, 0x80);
    r.insert(REG_RX_MODE, 0x80);
    r.insert(REG_MANUAL_RCV, 0x00);
    r.insert(REG_BIT_FRAMING, 0x00);
    r.insert(REG_CONTROL, 0x10);
}

fn frame(payload: &[u8]) -> Vec<u8> {
    let len = payload.len() as u8;
    let mut out = vec![0x00, 0x00, 0xFF, len, len.wrapping_neg()];
    out.extend_from_slice(payload);
    let sum = payload.iter().fold(0u8, |a, b| a.wrapping_add(*b));
    out.push(sum.wrapping_neg());
    out.push(0x00);
    out
}

/// Extracts the next complete host frame from `buf`: `Some(None)` for an ACK.
fn next_frame(buf: &mut Vec<u8>) -> Option<Option<Vec<u8>>> {
    loop {
        let start = buf.windows(2).position(|w| w == [0x00, 0xFF])?;
        if buf.len() < start + 4 {
            return None;
        }
        let (len, lcs) = (buf[start + 2], buf[start + 3]);
        if len == 0 && lcs == 0xFF {
            buf.drain(..start + 4);
            return Some(None);
        }
        if len.wrapping_add(lcs) != 0 {
            buf.drain(..start + 2);
            continue;
        }
        let end = start + 4 + len as usize + 1;
        if buf.len() < end {
            return None;
        }
        let data = buf[start + 4..start + 4 + len as usize].to_vec();
        buf.drain(..end);
        return Some(Some(data));
    }
}

fn serve(mut port: std::fs::File, field: Arc<Mutex<Field>>) {
    let mut regs = HashMap::new();
    reset_registers(&mut regs);
    let mut state = TagState::Idle;
    let mut generation = 0;
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = match port.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if chunk[..n].starts_with(&[0x55, 0x55]) {
            reset_registers(&mut regs);
        }
        buf.extend_from_slice(&chunk[..n]);
        while let Some(f) = next_frame(&mut buf) {
            let Some(data) = f else { continue };
            if data.len() < 2 || data[0] != 0xD4 {
                let _ = port.write_all(&ERROR_FRAME);
                continue;
            }
            let mut field = field.lock().unwrap_or_else(|p| p.into_inner());
            if field.log.len() >= 4096 {
                field.log.drain(..2048);
            }
            if field.generation != generation {
                generation = field.generation;
                state = TagState::Idle;
            }
            field.log.push(data[1]);
            field.commands += 1;
            let answer = command(data[1], &data[2..], &mut regs, &mut state, &mut field);
            drop(field);
            let _ = port.write_all(&ACK);
            match answer {
                Some(body) => {
                    let mut payload = vec![0xD5, data[1].wrapping_add(1)];
                    payload.extend_from_slice(&body);
                    let _ = port.write_all(&frame(&payload));
                }
                None => {
                    let _ = port.write_all(&ERROR_FRAME);
                }
            }
        }
    }
}

/// Takes the tag away if a scripted removal is due.
fn tag_present(field: &mut Field) -> bool {
    if let Some(n) = field.remove_after.as_mut() {
        if *n == 0 {
            field.tag = None;
            field.remove_after = None;
        } else {
            *n -= 1;
        }
    }
    field.tag.is_some()
}

fn command(
    cmd: u8,
    args: &[u8],
    regs: &mut HashMap<u16, u8>,
    state: &mut TagState,
    field: &mut Field,
) -> Option<Vec<u8>> {
    match cmd {
        0x00 => Some(args.to_vec()),                // Diagnose: echo
        0x02 => Some(vec![0x32, 0x01, 0x06, 0x07]), // GetFirmwareVersion: PN532 v1.6
        0x32 => {
            // RFConfiguration: item 01 with the field off powers the tag down.
            if args.first() == Some(&0x01) && args.get(1).is_some_and(|v| v & 0x01 == 0) {
                *state = TagState::Idle;
            }
            Some(vec![])
        }
        0x12 | 0x14 => Some(vec![]), // SetParameters, SAMConfiguration
        0x06 => Some(
            args.chunks(2)
                .filter(|c| c.len() == 2)
                .map(|c| *regs.get(&u16::from_be_bytes([c[0], c[1]])).unwrap_or(&0))
                .collect(),
        ),
        0x08 => {
            for t in args.chunks(3).filter(|c| c.len() == 3) {
                regs.insert(u16::from_be_bytes([t[0], t[1]]), t[2]);
            }
            Some(vec![])
        }
        0x16 => Some(vec![0x00]), // PowerDown
        0x44 | 0x52 => {
            // InDeselect / InRelease
            if *state != TagState::Halted {
                *state = TagState::Idle;
            }
            Some(vec![0x00])
        }
        0x4A => Some(list_passive_target(args, state, field)),
        0x40 => Some(data_exchange(args, state, field)),
        0x42 => Some(communicate_thru(args, regs, state, field)),
        _ => None,
    }
}

/// InDataExchange: MIFARE commands with CRC handled by the chip.
fn data_exchange(args: &[u8], state: &mut TagState, field: &mut Field) -> Vec<u8> {
    const TIMEOUT: u8 = 0x01;
    const AUTH_ERROR: u8 = 0x14;
    if args.len() < 2 || !tag_present(field) {
        *state = TagState::Idle;
        return vec![TIMEOUT];
    }
    if matches!(state, TagState::Idle | TagState::Halted) {
        return vec![TIMEOUT];
    }
    let tag = field.tag.as_mut().expect("present");
    let (op, rest) = (args[1], &args[2..]);
    match (op, tag.kind) {
        (0x60 | 0x61, TagKind::Ultralight) => vec![TIMEOUT],
        (0x60 | 0x61, _) if rest.len() >= 11 && (rest[0] as usize) < 64 => {
            if tag.key_ok(rest[0], op == 0x61, &rest[1..7]) && rest[7..11] == tag.uid()[..4] {
                *state = TagState::Authenticated(rest[0] / 4);
                vec![0x00]
            } else {
                *state = TagState::Idle;
                vec![AUTH_ERROR]
            }
        }
        (0x30, TagKind::Ultralight) if !rest.is_empty() => {
            let page = rest[0] as usize;
            let mem: Vec<u8> = tag.blocks.iter().flatten().copied().collect();
            let mut out = vec![0x00];
            out.extend((0..16).map(|i| mem.get(page * 4 + i).copied().unwrap_or(0)));
            out
        }
        (0x30, _) if !rest.is_empty() && (rest[0] as usize) < 64 => match *state {
            TagState::Authenticated(s) if s == rest[0] / 4 => {
                let mut out = vec![0x00];
                out.extend_from_slice(&tag.blocks[rest[0] as usize]);
                out
            }
            _ => {
                *state = TagState::Idle;
                vec![AUTH_ERROR]
            }
        },
        (0xA0, TagKind::Classic1k | TagKind::Gen1a | TagKind::Gen2)
            if rest.len() >= 17 && (rest[0] as usize) < 64 =>
        {
            let blk = rest[0] as usize;
            match *state {
                TagState::Authenticated(s) if s as usize == blk / 4 => {
                    if blk == 0 && tag.kind != TagKind::Gen2 {
                        return vec![TIMEOUT]; // block 0 is read-only: the tag NAKs
                    }
                    tag.blocks[blk].copy_from_slice(&rest[1..17]);
                    vec![0x00]
                }
                _ => vec![AUTH_ERROR],
            }
        }
        _ => vec![TIMEOUT],
    }
}

/// InListPassiveTarget (106 kbps type A only): one target, or none.
fn list_passive_target(args: &[u8], state: &mut TagState, field: &mut Field) -> Vec<u8> {
    if args.len() < 2 || args[1] != 0x00 || !tag_present(field) {
        return vec![0x00];
    }
    let Some(tag) = field.tag.as_ref() else {
        return vec![0x00];
    };
    if tag.bricked() {
        // Its anticollision answer fails the BCC check: the reader sees nothing.
        return vec![0x00];
    }
    let uid = tag.uid();
    *state = TagState::Selected;
    let mut out = vec![0x01, 0x01];
    out.extend_from_slice(&tag.atqa());
    out.push(tag.sak());
    out.push(uid.len() as u8);
    out.extend_from_slice(&uid);
    out
}

/// Answer when no tag answers in raw mode.
const RAW_TIMEOUT: u8 = 0x01;

/// How the CIU registers frame raw traffic.
struct Framing {
    /// Valid bits of the last byte sent (0 = 8).
    bits: u8,
    /// The PN532 adds and checks the CRC itself.
    crc_on: bool,
}

impl Framing {
    fn of(regs: &HashMap<u16, u8>) -> Self {
        Self {
            bits: regs.get(&REG_BIT_FRAMING).copied().unwrap_or(0) & 0x07,
            crc_on: regs.get(&REG_TX_MODE).copied().unwrap_or(0x80) & 0x80 != 0,
        }
    }

    /// The frame's CRC is right (or the PN532 checks it).
    fn frame_ok(&self, d: &[u8]) -> bool {
        self.crc_on || (d.len() >= 2 && crc_a(&d[..d.len() - 2]) == d[d.len() - 2..])
    }

    /// The frame without its CRC.
    fn payload(&self, d: &[u8]) -> Vec<u8> {
        if self.crc_on {
            d.to_vec()
        } else {
            d[..d.len().saturating_sub(2)].to_vec()
        }
    }

    /// `data`, with its CRC when the tag must send one.
    fn answer(&self, mut data: Vec<u8>, crc_of: &[u8]) -> Vec<u8> {
        if !self.crc_on {
            data.extend_from_slice(&crc_a(crc_of));
        }
        data
    }
}

fn set_last_bits(regs: &mut HashMap<u16, u8>, n: u8) {
    let c = regs.get(&REG_CONTROL).copied().unwrap_or(0x10) & !0x07;
    regs.insert(REG_CONTROL, c | (n & 0x07));
}

/// The 4-bit ACK of a MIFARE tag.
fn ack(regs: &mut HashMap<u16, u8>) -> Vec<u8> {
    set_last_bits(regs, 4);
    vec![0x00, 0x0A]
}

/// InCommunicateThru: raw frames, with CRC and bit framing as the registers say.
fn communicate_thru(
    args: &[u8],
    regs: &mut HashMap<u16, u8>,
    state: &mut TagState,
    field: &mut Field,
) -> Vec<u8> {
    let framing = Framing::of(regs);
    set_last_bits(regs, 0);
    if !tag_present(field) {
        *state = TagState::Idle;
        return vec![RAW_TIMEOUT];
    }
    let tag = field.tag.as_mut().expect("present");
    // HLTA
    if args.len() >= 2 && args[0] == 0x50 && args[1] == 0x00 {
        *state = TagState::Halted;
        return vec![RAW_TIMEOUT];
    }
    // REQA / WUPA (7 bits): a halted tag answers only WUPA. ATQA goes LSB first.
    if framing.bits == 7 && (args == [0x26] || args == [0x52]) {
        if args == [0x26] && *state == TagState::Halted {
            return vec![RAW_TIMEOUT];
        }
        *state = TagState::Selected;
        let atqa = tag.atqa();
        return vec![0x00, atqa[1], atqa[0]];
    }
    let p = framing.payload(args);
    if framing.frame_ok(args) && p.len() >= 2 && (p[0] == 0x93 || p[0] == 0x95) {
        return anticollision(tag, &p, &framing, state);
    }
    gen1a_backdoor(tag, args, &framing, regs, state)
}

/// Anticollision (`NVB 0x20`) and select (`0x70`), cascade levels 1 and 2.
fn anticollision(tag: &Tag, p: &[u8], framing: &Framing, state: &mut TagState) -> Vec<u8> {
    let uid = tag.uid();
    let cl: Vec<u8> = match (uid.len(), p[0]) {
        (4, 0x93) => uid.clone(),
        (7, 0x93) => vec![CASCADE_TAG, uid[0], uid[1], uid[2]],
        (7, 0x95) => uid[3..7].to_vec(),
        _ => return vec![RAW_TIMEOUT],
    };
    // A Classic card answers the BCC stored in its block 0 (a wrong one is a brick).
    let bcc = if uid.len() == 4 {
        tag.blocks[0][4]
    } else {
        bcc(&cl)
    };
    if p[1] == 0x20 {
        let mut out = vec![0x00];
        out.extend_from_slice(&cl);
        out.push(bcc);
        return out;
    }
    if p[1] == 0x70 && p.len() >= 7 && p[2..6] == cl[..] {
        // Cascade level 1 of a 7-byte UID: "UID not complete".
        let sak = if uid.len() == 7 && p[0] == 0x93 {
            0x04
        } else {
            tag.sak()
        };
        *state = TagState::Selected;
        return framing.answer(vec![0x00, sak], &[sak]);
    }
    vec![RAW_TIMEOUT]
}

/// The Gen1a backdoor, a state machine: `0x40` (7 bits) → `Unlock1`, `0x43`
/// → `Unlocked`; then `0xA0 00` → `AwaitBlock0`, whose 16 bytes are written
/// without authentication (back to `Unlocked`), and `0x30 n` reads block n.
/// Anything else is not answered.
fn gen1a_backdoor(
    tag: &mut Tag,
    args: &[u8],
    framing: &Framing,
    regs: &mut HashMap<u16, u8>,
    state: &mut TagState,
) -> Vec<u8> {
    if framing.bits == 7 && args == [0x40] {
        if tag.kind == TagKind::Gen1a {
            *state = TagState::Unlock1;
            return ack(regs);
        }
        return vec![RAW_TIMEOUT];
    }
    let ok = framing.frame_ok(args);
    let p = framing.payload(args);
    match *state {
        TagState::Unlock1 if args == [0x43] => {
            *state = TagState::Unlocked;
            ack(regs)
        }
        TagState::Unlocked if ok && p.first() == Some(&0xA0) && p.len() == 2 => {
            if p[1] == 0 {
                *state = TagState::AwaitBlock0;
                return ack(regs);
            }
            vec![RAW_TIMEOUT]
        }
        TagState::AwaitBlock0 if ok && p.len() == 16 => {
            tag.blocks[0].copy_from_slice(&p);
            *state = TagState::Unlocked;
            ack(regs)
        }
        TagState::Unlocked if ok && p.first() == Some(&0x30) && p.len() == 2 => {
            let data = tag.blocks.get(p[1] as usize).copied().unwrap_or([0; 16]);
            let mut out = vec![0x00];
            out.extend_from_slice(&data);
            framing.answer(out, &data)
        }
        _ => vec![RAW_TIMEOUT],
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip() {
        let f = frame(&[0xD4, 0x02]);
        assert_eq!(
            f,
            vec![0x00, 0x00, 0xFF, 0x02, 0xFE, 0xD4, 0x02, 0x2A, 0x00]
        );
        let mut buf = vec![0x55, 0x55, 0x00, 0x00];
        buf.extend_from_slice(&f);
        assert_eq!(next_frame(&mut buf), Some(Some(vec![0xD4, 0x02])));
        assert!(buf.iter().all(|&b| b == 0), "only the postamble is left");
    }
}
