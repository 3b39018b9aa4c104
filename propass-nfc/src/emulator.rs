//! A PN532 reader emulated on a pseudo-terminal, speaking the UART frame
//! protocol that libnfc's `pn532_uart` driver uses, written from the PN532
//! user manual's frame and command descriptions. libnfc opens it with the
//! connection string `pn532_uart:/dev/pts/N`, so tests (and the demo) run the
//! real libnfc driver stack, and libnfc's own tools (`nfc-list`,
//! `nfc-mfclassic`, `nfc-mfsetuid`) work against it by hand.
//!
//! It emulates the ISO14443A tags the kiosk meets — MIFARE Classic 1K badges,
//! Gen1a ("backdoor") and Gen2 (CUID) magic blanks, plain cards whose block 0
//! is read-only, 7-byte-UID Ultralight/NTAG tags — an empty field, two cards
//! at once, and a tag pulled away after a given number of commands.
//!
//! It is strict where real hardware is: each card follows the ISO/IEC
//! 14443-3 state machine ([`card`]), and the chip ([`pn532`]) does on the air
//! what the PN532 does — a halted card stays halted until a WUPA or the field
//! goes off — so a reader that works here does not rely on a lenient card.

pub mod card;
pub mod pn532;

use std::io::{Read, Write};
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::sync::{Arc, Condvar, Mutex};
use std::thread::JoinHandle;

use nix::pty::{openpty, OpenptyResult};
use nix::sys::termios::{self, SetArg};

pub use card::{CardState, Tag, TagKind};
use pn532::Chip;

/// What the test script controls while libnfc talks to the emulator.
#[derive(Debug)]
pub struct Field {
    /// The card on the reader, if any.
    pub tag: Option<Tag>,
    /// A second card in the field at the same time (two-card tests).
    pub other: Option<Tag>,
    /// Remove the tag after this many more tag-level commands (a card pulled away mid-operation).
    pub remove_after: Option<u32>,
    /// Remove the tag when a write to this block reaches it (pulled away mid-copy).
    pub remove_on_write: Option<u8>,
    /// Stop answering when a write to this block reaches it, until
    /// [`Emulator::thaw`]: the host is left mid-write (to kill it there).
    pub freeze_on_write: Option<u8>,
    /// Frozen by `freeze_on_write`: the write was not applied, nothing answers.
    pub frozen: bool,
    /// Apply the write to this block but lose its acknowledgement (the card
    /// stays): the host cannot tell a written block from a refused one.
    pub lose_ack_of_write: Option<u8>,
    /// Answer each command this much later (a slow reader or card: a
    /// write then takes long enough to be interrupted).
    pub slow: Option<std::time::Duration>,
    /// Stop answering (as `freeze_on_write`) when the field is next
    /// switched off after a write reached the card: the host is left at the
    /// start of its verification in a fresh field (to kill it there).
    pub freeze_after_write: bool,
    /// Lift the card when the field is next switched off after a write
    /// reached it: the blank taken away right after a write that went
    /// through, before its verification in a fresh field.
    pub lift_after_write: bool,
    /// The card a scripted removal took away, as it left.
    pub lifted: Option<Tag>,
    /// A write reached the card since the field was last switched on.
    wrote: bool,
    /// The latest commands seen, by PN532 command code (for tests and scripts).
    pub log: Vec<u8>,
    /// Commands seen since the start.
    pub commands: u64,
    /// The RF field is on.
    rf_on: bool,
}

impl Default for Field {
    fn default() -> Self {
        Self {
            tag: None,
            other: None,
            remove_after: None,
            remove_on_write: None,
            freeze_on_write: None,
            frozen: false,
            lose_ack_of_write: None,
            slow: None,
            freeze_after_write: false,
            lift_after_write: false,
            lifted: None,
            wrote: false,
            log: Vec::new(),
            commands: 0,
            rf_on: true,
        }
    }
}

impl Field {
    /// The cards in the field, the main one first.
    fn cards(&mut self) -> impl Iterator<Item = &mut Tag> {
        self.tag.iter_mut().chain(self.other.iter_mut())
    }

    /// Takes the tag away if it is scripted to leave when `block` is written;
    /// whether it left.
    fn leaves_on_write(&mut self, block: u8) -> bool {
        if self.freeze_on_write == Some(block) {
            self.freeze_on_write = None;
            self.frozen = true;
            return true;
        }
        if self.remove_on_write == Some(block) {
            self.lifted = self.tag.take();
            self.remove_on_write = None;
            return true;
        }
        self.wrote = true;
        false
    }

    /// The field goes off or on: off resets every card (and lifts one
    /// scripted to leave after its write).
    fn switch(&mut self, on: bool) {
        if !on && self.freeze_after_write && self.wrote {
            self.freeze_after_write = false;
            self.frozen = true;
            return;
        }
        self.rf_on = on;
        if on {
            return;
        }
        if self.lift_after_write && self.wrote {
            self.lift_after_write = false;
            self.lifted = self.tag.take();
        }
        self.wrote = false;
        self.cards().for_each(Tag::power_cycle);
    }

    /// Takes the tag away if a scripted removal is due; whether any card is left.
    fn tag_present(&mut self) -> bool {
        if let Some(n) = self.remove_after.as_mut() {
            if *n == 0 {
                self.lifted = self.tag.take();
                self.remove_after = None;
            } else {
                *n -= 1;
            }
        }
        self.tag.is_some() || self.other.is_some()
    }
}

/// A running emulator.
pub struct Emulator {
    path: PathBuf,
    field: Arc<Mutex<Field>>,
    thawed: Arc<Condvar>,
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
            tag: tag.map(Tag::entering_field),
            ..Field::default()
        }));
        let f = field.clone();
        let thawed = Arc::new(Condvar::new());
        let t = thawed.clone();
        let thread = std::thread::Builder::new()
            .name("pn532-emulator".into())
            .spawn(move || serve(std::fs::File::from(master), f, &t))?;
        Ok(Self {
            path,
            field,
            thawed,
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

    /// Puts a tag on the reader (or takes it away with `None`). A card that
    /// enters the field starts powered up and IDLE.
    pub fn place(&self, tag: Option<Tag>) {
        self.with_field(|f| {
            f.tag = tag.map(Tag::entering_field);
            f.remove_after = None;
        });
    }

    /// Puts a second card in the field beside the first (or takes it away).
    pub fn place_other(&self, tag: Option<Tag>) {
        self.with_field(|f| f.other = tag.map(Tag::entering_field));
    }

    /// Answers again after a `freeze_on_write`; the frozen command and any
    /// bytes that arrived meanwhile are dropped (a new host starts afresh).
    pub fn thaw(&self) {
        self.with_field(|f| f.frozen = false);
        self.thawed.notify_all();
    }

    /// A copy of the tag on the reader.
    pub fn tag(&self) -> Option<Tag> {
        self.with_field(|f| f.tag.clone())
    }
}

const ACK: [u8; 6] = [0x00, 0x00, 0xFF, 0x00, 0xFF, 0x00];
const ERROR_FRAME: [u8; 8] = [0x00, 0x00, 0xFF, 0x01, 0xFF, 0x7F, 0x81, 0x00];

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

fn serve(mut port: std::fs::File, field: Arc<Mutex<Field>>, thawed: &Condvar) {
    let mut chip = Chip::new();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 512];
    loop {
        let n = match port.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if chunk[..n].starts_with(&[0x55, 0x55]) {
            chip.reset();
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
            field.log.push(data[1]);
            field.commands += 1;
            let answer = chip.command(data[1], &data[2..], &mut field);
            if field.frozen {
                let field = thawed
                    .wait_while(field, |f| f.frozen)
                    .unwrap_or_else(|p| p.into_inner());
                drop(field);
                // What the host sent before and while frozen is stale.
                buf.clear();
                continue;
            }
            let slow = field.slow;
            drop(field);
            if let Some(delay) = slow {
                std::thread::sleep(delay);
            }
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
