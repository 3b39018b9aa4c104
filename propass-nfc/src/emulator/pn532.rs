//! The PN532 chip: its commands as libnfc's `pn532_uart` driver sends them,
//! acted out on the cards in the field. What the chip does on the air
//! follows the PN532 user manual: InListPassiveTarget sends REQA (WUPA when
//! the host gives a UID, then selects that UID), InDeselect and InRelease
//! send HLTA, RFConfiguration switches the field, InCommunicateThru sends
//! raw frames framed as the CIU registers say.

use std::collections::HashMap;

use super::card::Tag;
use super::Field;
use crate::iso14443a::{bcc, crc_a, CASCADE_TAG};

// CIU registers libnfc touches.
const REG_CONTROL: u16 = 0x633C;
const REG_BIT_FRAMING: u16 = 0x633D;
const REG_TX_MODE: u16 = 0x6302;
const REG_RX_MODE: u16 = 0x6303;
const REG_MANUAL_RCV: u16 = 0x630D;

/// The PN532's error status "no answer from the target".
const TIMEOUT: u8 = 0x01;

/// The chip's own state: its registers and its retry setting.
pub(super) struct Chip {
    regs: HashMap<u16, u8>,
    /// MxRtyPassiveActivation: how often InListPassiveTarget polls again
    /// when no card answered (0xFF: "forever", which the emulator caps).
    passive_retries: u8,
}

impl Chip {
    pub(super) fn new() -> Self {
        let mut chip = Self {
            regs: HashMap::new(),
            passive_retries: 0xFF,
        };
        chip.reset();
        chip
    }

    /// The registers after power-up (the host's wake-up preamble).
    pub(super) fn reset(&mut self) {
        let r = &mut self.regs;
        r.clear();
        r.insert(REG_TX_MODE, 0x80);
        r.insert(REG_RX_MODE, 0x80);
        r.insert(REG_MANUAL_RCV, 0x00);
        r.insert(REG_BIT_FRAMING, 0x00);
        r.insert(REG_CONTROL, 0x10);
        self.passive_retries = 0xFF;
    }

    /// Runs one command; `None` is an error frame (an unknown command).
    pub(super) fn command(&mut self, cmd: u8, args: &[u8], field: &mut Field) -> Option<Vec<u8>> {
        match cmd {
            0x00 => Some(args.to_vec()),                // Diagnose: echo
            0x02 => Some(vec![0x32, 0x01, 0x06, 0x07]), // GetFirmwareVersion: PN532 v1.6
            0x32 => {
                if let [0x05, _, _, retries, ..] = args {
                    self.passive_retries = *retries;
                }
                rf_configuration(args, field);
                Some(vec![])
            }
            0x12 | 0x14 => Some(vec![]), // SetParameters, SAMConfiguration
            0x06 => Some(
                args.chunks(2)
                    .filter(|c| c.len() == 2)
                    .map(|c| {
                        *self
                            .regs
                            .get(&u16::from_be_bytes([c[0], c[1]]))
                            .unwrap_or(&0)
                    })
                    .collect(),
            ),
            0x08 => {
                for t in args.chunks(3).filter(|c| c.len() == 3) {
                    self.regs.insert(u16::from_be_bytes([t[0], t[1]]), t[2]);
                }
                Some(vec![])
            }
            0x16 => Some(vec![0x00]), // PowerDown
            0x44 | 0x52 => {
                // InDeselect / InRelease: HLTA to the card held.
                field.cards().for_each(Tag::halt);
                Some(vec![0x00])
            }
            0x4A => {
                // Polls again while nobody answers: a card that a REQA caught
                // ACTIVE falls back to IDLE and answers the next one.
                let polls = 1 + usize::from(self.passive_retries.min(2));
                let none = vec![0x00];
                Some(
                    (0..polls)
                        .map(|_| in_list_passive_target(args, field))
                        .find(|out| *out != none)
                        .unwrap_or(none),
                )
            }
            0x40 => Some(in_data_exchange(args, field)),
            0x42 => Some(self.in_communicate_thru(args, field)),
            _ => None,
        }
    }

    fn set_last_bits(&mut self, n: u8) {
        let c = self.regs.get(&REG_CONTROL).copied().unwrap_or(0x10) & !0x07;
        self.regs.insert(REG_CONTROL, c | (n & 0x07));
    }

    /// The 4-bit ACK of a MIFARE card.
    fn ack(&mut self) -> Vec<u8> {
        self.set_last_bits(4);
        vec![0x00, 0x0A]
    }

    /// InCommunicateThru: one raw frame to the cards, with CRC and bit
    /// framing as the registers say; the answer of the card that answers.
    fn in_communicate_thru(&mut self, args: &[u8], field: &mut Field) -> Vec<u8> {
        let framing = Framing::of(&self.regs);
        self.set_last_bits(0);
        if !field.rf_on || !field.tag_present() {
            return vec![TIMEOUT];
        }
        let p = framing.payload(args);
        let frame_ok = framing.frame_ok(args);
        if framing.bits == 7 {
            return self.short_frame(args, field);
        }
        if frame_ok && p == [0x50, 0x00] {
            // HLTA: the card halts and, as the standard says, does not answer.
            field.cards().for_each(Tag::halt);
            return vec![TIMEOUT];
        }
        if args == [0x43] {
            return if field.cards().any(Tag::unlock2) {
                self.ack()
            } else {
                vec![TIMEOUT]
            };
        }
        if frame_ok && p.len() >= 2 && (p[0] == 0x93 || p[0] == 0x95) {
            return anticollision(&p, &framing, field);
        }
        if !frame_ok {
            field.cards().for_each(Tag::unexpected);
            return vec![TIMEOUT];
        }
        if let [0xA0, block] = p[..] {
            if field.leaves_on_write(block) {
                return vec![TIMEOUT];
            }
        }
        let answer = field.cards().find_map(|c| c.backdoor(&p));
        match answer {
            Some(None) => self.ack(),
            Some(Some(data)) => {
                let mut out = vec![0x00];
                out.extend_from_slice(&data);
                framing.answer(out, &data)
            }
            None => {
                // A frame no card understands (a RATS to a MIFARE Classic,
                // say): a selected card falls back, silently.
                field.cards().for_each(Tag::unexpected);
                vec![TIMEOUT]
            }
        }
    }
}

impl Chip {
    /// A 7-bit frame: REQA / WUPA, or the Gen1a backdoor's first command.
    fn short_frame(&mut self, args: &[u8], field: &mut Field) -> Vec<u8> {
        match args {
            [0x26] | [0x52] => {
                let wupa = args == [0x52];
                let atqas: Vec<[u8; 2]> = field.cards().filter_map(|c| c.wake(wupa)).collect();
                // ATQA goes least significant byte first.
                atqas
                    .first()
                    .map_or(vec![TIMEOUT], |a| vec![0x00, a[1], a[0]])
            }
            [0x40] => {
                // Every card hears it: a held one falls back even when a Gen1a opens.
                let opened = field.cards().map(Tag::unlock1).collect::<Vec<_>>();
                if opened.contains(&true) {
                    self.ack()
                } else {
                    vec![TIMEOUT]
                }
            }
            _ => vec![TIMEOUT],
        }
    }
}

/// RFConfiguration: item 0x01 switches the field; off resets every card.
fn rf_configuration(args: &[u8], field: &mut Field) {
    if let [0x01, value, ..] = args {
        field.switch(value & 0x01 != 0);
    }
}

/// InListPassiveTarget (106 kbps type A, one target): REQA and a full
/// select of the first card that answers; with a UID as initiator data,
/// WUPA and a select of that card (a halted one too).
fn in_list_passive_target(args: &[u8], field: &mut Field) -> Vec<u8> {
    const NONE: [u8; 1] = [0x00];
    if args.len() < 2 || args[1] != 0x00 {
        return NONE.to_vec();
    }
    // The chip switches the field on for a poll.
    field.rf_on = true;
    if !field.tag_present() {
        return NONE.to_vec();
    }
    let wanted = match &args[2..] {
        [] => None,
        init => match uid_of_initiator_data(init) {
            Some(uid) => Some(uid),
            None => return NONE.to_vec(),
        },
    };
    let mut answered: Vec<&mut Tag> = field
        .cards()
        .filter(|c| match &wanted {
            Some(uid) => c.uid() == *uid,
            None => true,
        })
        .filter_map(|c| c.wake(wanted.is_some()).map(|_| c))
        .collect();
    if answered.is_empty() {
        return NONE.to_vec();
    }
    // Anticollision singles out one card; the others go back to sleep.
    let chosen = answered.remove(0);
    answered.into_iter().for_each(Tag::fall_back);
    match full_select(chosen) {
        Some(sak) => {
            let (atqa, uid) = (chosen.atqa(), chosen.uid());
            let mut out = vec![0x01, 0x01, atqa[0], atqa[1], sak, uid.len() as u8];
            out.extend_from_slice(&uid);
            out
        }
        None => NONE.to_vec(),
    }
}

/// The UID libnfc puts in InListPassiveTarget's initiator data: 4 bytes, or
/// a 7-byte UID behind the cascade tag.
fn uid_of_initiator_data(init: &[u8]) -> Option<Vec<u8>> {
    match init {
        [a, b, c, d] => Some(vec![*a, *b, *c, *d]),
        [CASCADE_TAG, rest @ ..] if rest.len() == 7 => Some(rest.to_vec()),
        _ => None,
    }
}

/// Anticollision and SELECT through the cascade levels, as the chip runs
/// them; the chip checks each level's BCC (a card with a wrong one — a
/// bricked magic card — is never selected). The final SAK.
fn full_select(card: &mut Tag) -> Option<u8> {
    for level in 1..=2 {
        let Some(cl) = card.anticollision(level) else {
            card.fall_back();
            return None;
        };
        if bcc(&cl[..4]) != cl[4] {
            card.fall_back();
            return None;
        }
        let sak = card.select(level, &cl[..4])?;
        if sak & 0x04 == 0 {
            return Some(sak);
        }
    }
    None
}

/// InDataExchange: a MIFARE command, CRC handled by the chip, to the card held.
fn in_data_exchange(args: &[u8], field: &mut Field) -> Vec<u8> {
    if args.len() < 2 || !field.rf_on || !field.tag_present() {
        return vec![TIMEOUT];
    }
    let (op, rest) = (args[1], &args[2..]);
    if op == 0xA0 && rest.first().is_some_and(|b| field.leaves_on_write(*b)) {
        return vec![TIMEOUT];
    }
    let lose_ack =
        op == 0xA0 && !rest.is_empty() && field.lose_ack_of_write == rest.first().copied();
    if lose_ack {
        field.lose_ack_of_write = None;
    }
    match field.cards().find(|c| c.is_held()) {
        None => vec![TIMEOUT],
        Some(card) => match card.mifare(op, rest) {
            Ok(_) if lose_ack => vec![TIMEOUT],
            Ok(data) => {
                let mut out = vec![0x00];
                out.extend_from_slice(&data);
                out
            }
            Err(status) => vec![status],
        },
    }
}

/// Anticollision (`NVB 0x20`) and SELECT (`NVB 0x70`) in raw mode.
fn anticollision(p: &[u8], framing: &Framing, field: &mut Field) -> Vec<u8> {
    let level = if p[0] == 0x93 { 1 } else { 2 };
    if p[1] == 0x20 {
        return match field.cards().find_map(|c| c.anticollision(level)) {
            Some(cl) => {
                let mut out = vec![0x00];
                out.extend_from_slice(&cl);
                out
            }
            None => vec![TIMEOUT],
        };
    }
    if p[1] == 0x70 && p.len() >= 7 {
        if let Some(sak) = field.cards().find_map(|c| c.select(level, &p[2..6])) {
            return framing.answer(vec![0x00, sak], &[sak]);
        }
    }
    vec![TIMEOUT]
}

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

    /// `data`, with its CRC when the card must send one.
    fn answer(&self, mut data: Vec<u8>, crc_of: &[u8]) -> Vec<u8> {
        if !self.crc_on {
            data.extend_from_slice(&crc_a(crc_of));
        }
        data
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::emulator::{CardState, TagKind};

    const A: [u8; 4] = [0x04, 0xAB, 0x12, 0xCD];
    const B: [u8; 4] = [0x01, 0x02, 0x03, 0x04];

    fn field_with(kind: TagKind) -> Field {
        Field {
            tag: Some(Tag::classic(kind, A)),
            ..Field::default()
        }
    }

    /// InListPassiveTarget, optionally with a UID; the UID found.
    fn list(chip: &mut Chip, field: &mut Field, uid: &[u8]) -> Option<Vec<u8>> {
        let mut args = vec![0x01, 0x00];
        args.extend_from_slice(uid);
        let out = chip.command(0x4A, &args, field)?;
        (out[0] == 1).then(|| out[6..6 + out[5] as usize].to_vec())
    }

    fn state(field: &Field) -> CardState {
        field.tag.as_ref().unwrap().state()
    }

    /// Raw frames as libnfc sends them with the CRC and easy framing off.
    fn raw(chip: &mut Chip, field: &mut Field, bits: u8, frame: &[u8]) -> Vec<u8> {
        chip.command(0x08, &[0x63, 0x02, 0x00, 0x63, 0x3D, bits], field);
        chip.command(0x42, frame, field).unwrap()
    }

    /// InListPassiveTarget: REQA, the chip's retries, and a frame a MIFARE
    /// Classic does not understand.
    #[test]
    fn a_poll_wakes_idle_cards_and_a_stray_frame_drops_a_selected_one() {
        let (mut chip, mut field) = (Chip::new(), field_with(TagKind::Classic1k));
        assert_eq!(
            list(&mut chip, &mut field, &[]),
            Some(A.to_vec()),
            "REQA finds an IDLE card"
        );
        assert_eq!(state(&field), CardState::Active);
        assert_eq!(
            list(&mut chip, &mut field, &[]),
            Some(A.to_vec()),
            "a selected card ignores REQA, falls back to IDLE, and answers the chip's retry"
        );
        chip.command(0x32, &[0x05, 0x00, 0x00, 0x00], &mut field);
        assert_eq!(
            list(&mut chip, &mut field, &[]),
            None,
            "without retries, nothing"
        );
        assert_eq!(state(&field), CardState::Idle);
        list(&mut chip, &mut field, &[]);
        assert_eq!(
            raw(&mut chip, &mut field, 0, &[0xE0, 0x50, 0xBC, 0xA5]),
            vec![TIMEOUT]
        );
        assert_eq!(
            state(&field),
            CardState::Idle,
            "a RATS to a MIFARE Classic: back to IDLE"
        );
        list(&mut chip, &mut field, &[]);
    }

    /// InDeselect / InRelease halt; only a WUPA (a UID in the poll) wakes HALT.
    #[test]
    fn deselect_and_release_halt_and_only_wupa_wakes_halt() {
        let (mut chip, mut field) = (Chip::new(), field_with(TagKind::Classic1k));
        list(&mut chip, &mut field, &[]);
        chip.command(0x44, &[0x01], &mut field);
        assert_eq!(
            state(&field),
            CardState::Halt,
            "InDeselect halts the card held"
        );
        assert_eq!(
            list(&mut chip, &mut field, &[]),
            None,
            "REQA does not wake HALT"
        );
        assert_eq!(
            list(&mut chip, &mut field, &A),
            Some(A.to_vec()),
            "a UID means WUPA"
        );
        chip.command(0x52, &[0x01], &mut field);
        assert_eq!(state(&field), CardState::Halt, "InRelease halts too");
    }

    /// The field off resets every card; raw HLTA, REQA and WUPA act as the standard says.
    #[test]
    fn the_field_resets_cards_and_raw_frames_follow_the_standard() {
        let (mut chip, mut field) = (Chip::new(), field_with(TagKind::Classic1k));
        list(&mut chip, &mut field, &[]);
        chip.command(0x44, &[0x01], &mut field);
        chip.command(0x32, &[0x01, 0x00], &mut field);
        assert_eq!(
            state(&field),
            CardState::Idle,
            "the field off resets the card"
        );
        assert_eq!(
            raw(&mut chip, &mut field, 7, &[0x26]),
            vec![TIMEOUT],
            "no field, no answer"
        );
        chip.command(0x32, &[0x01, 0x01], &mut field);
        assert_eq!(list(&mut chip, &mut field, &[]), Some(A.to_vec()));

        assert_eq!(
            raw(&mut chip, &mut field, 0, &[0x50, 0x00, 0x57, 0xCD]),
            vec![TIMEOUT]
        );
        assert_eq!(
            state(&field),
            CardState::Halt,
            "a raw HLTA halts it, unanswered"
        );
        assert_eq!(
            raw(&mut chip, &mut field, 7, &[0x26]),
            vec![TIMEOUT],
            "raw REQA: no answer"
        );
        assert_eq!(
            raw(&mut chip, &mut field, 7, &[0x52]),
            vec![0x00, 0x04, 0x00],
            "raw WUPA: ATQA"
        );
        assert_eq!(state(&field), CardState::Ready { level: 1 });
    }

    #[test]
    fn the_gen1a_backdoor_opens_from_halt_and_closes_with_the_field() {
        let (mut chip, mut field) = (Chip::new(), field_with(TagKind::Gen1a));
        list(&mut chip, &mut field, &[]);
        assert_eq!(
            raw(&mut chip, &mut field, 7, &[0x40]),
            vec![TIMEOUT],
            "not while selected"
        );
        list(&mut chip, &mut field, &[]);
        raw(&mut chip, &mut field, 0, &[0x50, 0x00, 0x57, 0xCD]);
        assert_eq!(
            raw(&mut chip, &mut field, 7, &[0x40]),
            vec![0x00, 0x0A],
            "from HALT"
        );
        assert_eq!(raw(&mut chip, &mut field, 0, &[0x43]), vec![0x00, 0x0A]);
        assert_eq!(state(&field), CardState::Unlocked);
        chip.command(0x32, &[0x01, 0x00], &mut field);
        chip.command(0x32, &[0x01, 0x01], &mut field);
        assert_eq!(
            raw(
                &mut chip,
                &mut field,
                0,
                &crate::iso14443a::with_crc(&[0x30, 0x00])
            ),
            vec![TIMEOUT]
        );
        assert_eq!(
            state(&field),
            CardState::Idle,
            "the unlock died with the field"
        );
    }

    #[test]
    fn two_cards_are_listed_one_after_the_other_and_a_brick_never() {
        let (mut chip, mut field) = (Chip::new(), field_with(TagKind::Classic1k));
        field.other = Some(Tag::classic(TagKind::Classic1k, B));
        assert_eq!(list(&mut chip, &mut field, &[]), Some(A.to_vec()));
        chip.command(0x44, &[0x01], &mut field);
        assert_eq!(
            list(&mut chip, &mut field, &[]),
            Some(B.to_vec()),
            "the other card answers"
        );
        chip.command(0x44, &[0x01], &mut field);
        assert_eq!(list(&mut chip, &mut field, &[]), None, "both halted");

        let mut brick = Tag::classic(TagKind::Gen1a, A);
        brick.blocks[0][4] ^= 0xFF;
        let mut field = Field {
            tag: Some(brick),
            ..Field::default()
        };
        assert_eq!(
            list(&mut chip, &mut field, &[]),
            None,
            "a wrong BCC is no card"
        );
    }
}
