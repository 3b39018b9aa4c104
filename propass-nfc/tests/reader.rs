//! propass-nfc through the real libnfc (`pn532_uart` driver) against the
//! emulated PN532 on a pseudo-terminal.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use propass_nfc::emulator::{CardState, Emulator, Field, Tag, TagKind};
use propass_nfc::mifare::{Key, KeyDictionary, KeyType, Layout};
use propass_nfc::{build_block0, BadgeRead, BlankKind, CardFamily, NfcError, Reader, ReaderThread};

const BADGE: [u8; 4] = [0x04, 0xAB, 0x12, 0xCD];
const BLANK: [u8; 4] = [0x01, 0x02, 0x03, 0x04];

fn open(emu: &Emulator) -> Reader {
    Reader::open(Some(&emu.connstring())).expect("libnfc opens the emulated PN532")
}

fn wait(reader: &mut Reader) -> Result<propass_nfc::TagInfo, NfcError> {
    reader.wait_for_tag(Duration::from_secs(3), &AtomicBool::new(false))
}

#[test]
fn reads_each_kind_of_tag() {
    let emu = Emulator::start(Some(Tag::classic(TagKind::Classic1k, BADGE))).unwrap();
    let mut r = open(&emu);
    let t = wait(&mut r).unwrap();
    assert_eq!(t.uid, BADGE);
    assert_eq!(t.uid_hex(), "04AB12CD");
    assert_eq!(
        (t.atqa, t.sak, t.family),
        ([0x00, 0x04], 0x08, CardFamily::MifareClassic1k)
    );

    emu.place(Some(Tag::ultralight([
        0x04, 0xA1, 0xB2, 0xC3, 0xD4, 0xE5, 0xF6,
    ])));
    let t = wait(&mut r).unwrap();
    assert_eq!(t.uid.len(), 7);
    assert_eq!(t.uid_hex(), "04A1B2C3D4E5F6");
    assert_eq!(
        (t.atqa, t.sak, t.family),
        ([0x00, 0x44], 0x00, CardFamily::MifareUltralight)
    );

    emu.place(None);
    let e = r
        .wait_for_tag(Duration::from_millis(500), &AtomicBool::new(false))
        .unwrap_err();
    assert_eq!(e, NfcError::NoTag);
}

/// Reads the badge, then writes its block 0 onto the blank now on the reader.
fn clone_onto(blank: TagKind) -> (Result<BlankKind, NfcError>, Emulator) {
    let emu = Emulator::start(Some(Tag::classic(TagKind::Classic1k, BADGE))).unwrap();
    let mut r = open(&emu);
    let source = wait(&mut r).unwrap();
    let src_block0 = r.read_block0(&source).unwrap();
    let manufacturer: [u8; 8] = src_block0[8..].try_into().unwrap();
    let block0 = build_block0(&source.uid, source.sak, source.atqa, Some(manufacturer)).unwrap();
    assert_eq!(
        block0, src_block0,
        "block 0 rebuilt from the badge equals the badge's"
    );
    r.release();

    emu.place(Some(Tag::classic(blank, BLANK)));
    let target = wait(&mut r).unwrap();
    assert_eq!(target.uid, BLANK);
    let result = r.write_block0(&target, &block0);
    (result, emu)
}

#[test]
fn clones_onto_a_gen1a_blank_and_verifies() {
    let (result, emu) = clone_onto(TagKind::Gen1a);
    assert_eq!(result, Ok(BlankKind::Gen1a));
    assert_eq!(
        emu.tag().unwrap().uid(),
        BADGE,
        "the blank now carries the badge's UID"
    );
}

#[test]
fn clones_onto_a_gen2_blank_and_verifies() {
    let (result, emu) = clone_onto(TagKind::Gen2);
    assert_eq!(result, Ok(BlankKind::Gen2));
    assert_eq!(emu.tag().unwrap().uid(), BADGE);
}

#[test]
fn refuses_a_card_that_is_not_magic() {
    let (result, emu) = clone_onto(TagKind::Classic1k);
    assert!(
        matches!(result, Err(NfcError::NotWritable(_))),
        "{result:?}"
    );
    assert_eq!(emu.tag().unwrap().uid(), BLANK, "nothing was written");
}

#[test]
fn refuses_an_ultralight_as_a_blank() {
    let emu = Emulator::start(Some(Tag::ultralight([0x04, 1, 2, 3, 4, 5, 6]))).unwrap();
    let mut r = open(&emu);
    let t = wait(&mut r).unwrap();
    let block0 = build_block0(&BADGE, 0x08, [0x00, 0x04], None).unwrap();
    assert!(matches!(
        r.write_block0(&t, &block0),
        Err(NfcError::NotWritable(_))
    ));
}

#[test]
fn writes_a_uid_from_the_records() {
    let emu = Emulator::start(Some(Tag::classic(TagKind::Gen2, BLANK))).unwrap();
    let mut r = open(&emu);
    let t = wait(&mut r).unwrap();
    let block0 = build_block0(&[0xDE, 0xAD, 0xBE, 0xEF], 0x08, [0x00, 0x04], None).unwrap();
    assert_eq!(r.write_block0(&t, &block0), Ok(BlankKind::Gen2));
    assert_eq!(emu.tag().unwrap().uid(), vec![0xDE, 0xAD, 0xBE, 0xEF]);
}

/// A Gen2 blank's block 0 written under `fault`: the error, and the emulator.
fn gen2_block0_write_under(fault: impl FnOnce(&mut Field)) -> (NfcError, Emulator) {
    let emu = Emulator::start(Some(Tag::classic(TagKind::Gen2, BLANK))).unwrap();
    let mut r = open(&emu);
    let t = wait(&mut r).unwrap();
    let block0 = build_block0(&BADGE, 0x08, [0x00, 0x04], None).unwrap();
    emu.with_field(fault);
    let err = r.write_block0(&t, &block0).unwrap_err();
    (err, emu)
}

/// The write command of block 0 went out and no answer came back: the card
/// may hold it, whether it left or stayed ("nothing happened", or "not a
/// magic card", would be a free copy).
#[test]
fn a_gen2_write_of_block_0_left_unanswered_is_in_doubt() {
    // The card left with the write maybe done.
    let (err, _) = gen2_block0_write_under(|f| f.remove_on_write = Some(0));
    assert!(
        matches!(err, NfcError::SectorFailed { sector: 0, .. }),
        "{err:?}"
    );
    // The card took the write and stays on the reader; its answer is lost.
    let (err, emu) = gen2_block0_write_under(|f| f.lose_ack_of_write = Some(0));
    assert!(
        matches!(err, NfcError::SectorFailed { sector: 0, .. }),
        "{err:?}"
    );
    assert_eq!(emu.tag().unwrap().uid(), BADGE, "the write did happen");
}

#[test]
fn a_card_pulled_during_the_write_is_reported() {
    let emu = Emulator::start(Some(Tag::classic(TagKind::Gen1a, BLANK))).unwrap();
    let mut r = open(&emu);
    let t = wait(&mut r).unwrap();
    let block0 = build_block0(&BADGE, 0x08, [0x00, 0x04], None).unwrap();
    // Gone after the unlock, before block 0 is written.
    emu.with_field(|f| f.remove_after = Some(3));
    assert_eq!(r.write_block0(&t, &block0), Err(NfcError::TagRemoved));
    assert!(emu.tag().is_none());
}

#[tokio::test]
async fn a_wait_can_be_cancelled() {
    let emu = Emulator::start(None).unwrap();
    let reader = ReaderThread::spawn(Some(emu.connstring())).unwrap();
    let r2 = reader.clone();
    let waiting = tokio::spawn(async move {
        r2.run(|r, cancel| r.wait_for_tag(Duration::from_secs(60), cancel))
            .await
    });
    // Once the wait is polling the reader, cancel it.
    let polling = propass_test_support::eventually(Duration::from_secs(20), || async {
        emu.with_field(|f| f.log.contains(&0x4A))
    })
    .await;
    assert!(polling, "the reader never polled");
    reader.cancel();
    let result = tokio::time::timeout(Duration::from_secs(20), waiting)
        .await
        .expect("the wait ends")
        .unwrap();
    assert_eq!(result.unwrap_err(), NfcError::Cancelled);
}

#[test]
fn a_missing_reader_is_a_clear_error() {
    let e = Reader::open(Some("pn532_uart:/dev/propass-no-such-reader"))
        .err()
        .unwrap();
    assert!(matches!(e, NfcError::NoReader(_)), "{e:?}");
    assert!(e.to_string().contains("plugged"));
}

/// Two cards at once are reported (a swap in progress only when it lasts),
/// and the one left is found — although listing them halted both.
#[test]
fn two_cards_are_reported_and_the_one_left_is_found() {
    let emu = Emulator::start(Some(Tag::classic(TagKind::Classic1k, BADGE))).unwrap();
    emu.place_other(Some(Tag::classic(TagKind::Gen1a, BLANK)));
    let mut r = open(&emu);
    let e = r
        .wait_for_tag(Duration::from_millis(400), &AtomicBool::new(false))
        .unwrap_err();
    assert_eq!(e, NfcError::TwoTags);
    emu.place_other(None);
    assert_eq!(wait(&mut r).unwrap().uid, BADGE);
}

/// A card the reader released (halted) is found again by the next wait, and
/// is selected for real: its block 0 reads.
#[test]
fn a_released_card_is_found_and_selected_again() {
    let emu = Emulator::start(Some(Tag::classic(TagKind::Classic1k, BADGE))).unwrap();
    let mut r = open(&emu);
    let t = wait(&mut r).unwrap();
    r.release();
    assert_eq!(emu.tag().unwrap().state(), CardState::Halt);
    let again = wait(&mut r).unwrap();
    assert_eq!(again, t);
    assert_eq!(r.read_block0(&again).unwrap()[..4], BADGE);
}

/// Type A at 106 kbps, as the reader polls.
const ISO14443A: nfc1::Modulation = nfc1::Modulation {
    modulation_type: nfc1::ModulationType::Iso14443a,
    baud_rate: nfc1::BaudRate::Baud106,
};

/// libnfc's own device on the emulated PN532, set up as an initiator.
fn libnfc_initiator(ctx: &mut nfc1::Context, emu: &Emulator) -> nfc1::Device {
    let mut dev = ctx.open_with_connstring(&emu.connstring()).unwrap();
    dev.initiator_init().unwrap();
    dev
}

/// The libnfc behaviour the reader guards against: after listing (which
/// halts the card), a plain select "succeeds" with no card at all.
#[test]
fn libnfc_reports_success_for_a_select_that_found_nothing() {
    let emu = Emulator::start(Some(Tag::classic(TagKind::Classic1k, BADGE))).unwrap();
    let mut ctx = nfc1::Context::new().unwrap();
    let mut dev = libnfc_initiator(&mut ctx, &emu);
    let iso = ISO14443A;
    let listed = dev.initiator_list_passive_targets(&iso, 2).unwrap();
    assert!(listed.iter().any(
        |t| matches!(&t.target_info, nfc1::target_info::TargetInfo::Iso14443a(a) if a.uid_len == 4)
    ));
    assert_eq!(emu.tag().unwrap().state(), CardState::Halt);
    let t = dev
        .initiator_select_passive_target(&iso)
        .expect("libnfc says: success");
    let nfc1::target_info::TargetInfo::Iso14443a(a) = t.target_info else {
        panic!("a type A target");
    };
    assert_eq!(a.uid_len, 0, "…with no card selected");
}

/// The ISO/IEC 14443-3 type A transitions walked through the real libnfc,
/// as a PN532 and a card make them: REQA wakes IDLE only; InDeselect halts a
/// held card; a poll with the UID (WUPA) wakes HALT and selects it; the
/// field off resets every card to IDLE; the Gen1a backdoor answers from HALT
/// and loses its unlock with the field.
#[test]
fn the_card_model_walked_through_libnfc() {
    use nfc1::target_info::TargetInfo;
    let emu = Emulator::start(Some(Tag::classic(TagKind::Gen1a, BLANK))).unwrap();
    let state = || emu.tag().unwrap().state();
    let mut ctx = nfc1::Context::new().unwrap();
    let mut dev = libnfc_initiator(&mut ctx, &emu);
    let iso = ISO14443A;
    let found = |t: nfc1::Target| match t.target_info {
        TargetInfo::Iso14443a(a) => a.uid_len,
        _ => 0,
    };

    assert_eq!(
        found(dev.initiator_select_passive_target(&iso).unwrap()),
        4,
        "REQA wakes IDLE"
    );
    assert_eq!(state(), CardState::Active);
    dev.initiator_deselect_target().unwrap();
    assert_eq!(state(), CardState::Halt, "InDeselect halts the held card");
    assert_eq!(
        found(dev.initiator_select_passive_target(&iso).unwrap()),
        0,
        "REQA does not wake HALT"
    );
    let by_uid = dev
        .initiator_select_passive_target_with_init_data(&iso, &BLANK)
        .unwrap();
    assert_eq!(found(by_uid), 4, "a poll with the UID (WUPA) wakes HALT");
    assert_eq!(state(), CardState::Active);

    dev.initiator_deselect_target().unwrap();
    dev.set_property_bool(nfc1::Property::ActivateField, false)
        .unwrap();
    assert_eq!(state(), CardState::Idle, "the field off resets the card");
    dev.set_property_bool(nfc1::Property::ActivateField, true)
        .unwrap();
    assert_eq!(found(dev.initiator_select_passive_target(&iso).unwrap()), 4);

    // The Gen1a backdoor, from HALT: HLTA, then 40 (7 bits) and 43.
    dev.initiator_deselect_target().unwrap();
    assert_eq!(state(), CardState::Halt);
    dev.set_property_bool(nfc1::Property::HandleCrc, false)
        .unwrap();
    dev.set_property_bool(nfc1::Property::EasyFraming, false)
        .unwrap();
    let ack = dev.initiator_transceive_bits(&[0x40], 7, 1).unwrap();
    assert_eq!(ack.first(), Some(&0x0A), "the backdoor answers from HALT");
    let ack = dev
        .initiator_transceive_bytes(&[0x43], 1, nfc1::Timeout::Default)
        .unwrap();
    assert_eq!(ack.first(), Some(&0x0A));
    assert_eq!(state(), CardState::Unlocked);
    dev.set_property_bool(nfc1::Property::ActivateField, false)
        .unwrap();
    assert_eq!(
        state(),
        CardState::Idle,
        "the field off closes the backdoor"
    );
    dev.set_property_bool(nfc1::Property::ActivateField, true)
        .unwrap();
    assert!(
        dev.initiator_transceive_bytes(&[0x43], 1, nfc1::Timeout::Default)
            .is_err(),
        "no second command without the first"
    );
}

// --- whole-badge copies -----------------------------------------------------

const SITE_KEY_A: Key = [0x12, 0x34, 0x56, 0x78, 0x9A, 0xBC];
const SITE_KEY_B: Key = [0xCB, 0xA9, 0x87, 0x65, 0x43, 0x21];
const UNKNOWN_KEY: Key = [0x5A, 0x5A, 0x5A, 0x5A, 0x5A, 0x5A];
/// Key B secret (C1C2C3 = 011 for the trailer): a read shows zeros for it.
const SECRET_B: [u8; 4] = [0x7F, 0x07, 0x88, 0x69];
const TRANSPORT: [u8; 4] = [0xFF, 0x07, 0x80, 0x69];

fn data(seed: u8) -> [[u8; 16]; 3] {
    [
        [seed; 16],
        [seed.wrapping_add(1); 16],
        [seed.wrapping_add(2); 16],
    ]
}

/// A badge like a site's: a MAD-keyed sector 0 left factory, a credential in
/// sector 1 under the site's keys (key B secret), data in sector 5 under
/// the MAD key A with a readable key B.
fn site_badge(kind: TagKind, uid: &[u8], layout: Layout) -> Tag {
    Tag::classic_card(kind, uid, layout)
        .with_sector(1, SITE_KEY_A, SECRET_B, SITE_KEY_B, &data(0x10))
        .with_sector(
            5,
            [0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5],
            TRANSPORT,
            [0xB0, 0xB1, 0xB2, 0xB3, 0xB4, 0xB5],
            &data(0x50),
        )
}

fn site_keys() -> KeyDictionary {
    KeyDictionary::with_extra(&[SITE_KEY_A, SITE_KEY_B])
}

/// Reads `badge`, then writes it onto `blank`; the emulator for a look at the copy.
fn copy_badge(
    badge: Tag,
    blank: Tag,
    keys: &KeyDictionary,
) -> (Result<BlankKind, NfcError>, BadgeRead, Emulator) {
    let emu = Emulator::start(Some(badge)).unwrap();
    let mut r = open(&emu);
    let source = wait(&mut r).unwrap();
    let read = r.read_badge(&source, keys).unwrap();
    r.release();
    emu.place(Some(blank));
    let target = wait(&mut r).unwrap();
    let result = r.write_badge(&target, &source, &read.dump);
    (result, read, emu)
}

#[test]
fn a_badge_with_data_under_its_own_keys_is_copied_whole_onto_gen1a_and_gen2() {
    for kind in [TagKind::Gen1a, TagKind::Gen2] {
        let badge = site_badge(TagKind::Classic1k, &BADGE, Layout::Classic1k);
        let (result, read, emu) =
            copy_badge(badge.clone(), Tag::classic(kind, BLANK), &site_keys());
        assert!(read.map.is_complete(), "{kind:?}: {}", read.map.summary());
        assert_eq!(
            result,
            Ok(if kind == TagKind::Gen1a {
                BlankKind::Gen1a
            } else {
                BlankKind::Gen2
            })
        );
        assert_eq!(
            emu.tag().unwrap().memory(),
            badge.memory(),
            "{kind:?}: the copy's memory is the badge's"
        );
    }
}

/// Data only key B may read (access 011): read with key B, recorded as
/// such in the sector map, written and verified the same way — not left out
/// as "protected".
#[test]
fn a_sector_only_key_b_reads_is_read_with_it_and_copied() {
    let b_only = [0x0F, 0x00, 0xFF, 0x69];
    for kind in [TagKind::Gen1a, TagKind::Gen2] {
        let badge = site_badge(TagKind::Classic1k, &BADGE, Layout::Classic1k).with_sector(
            2,
            SITE_KEY_A,
            b_only,
            SITE_KEY_B,
            &data(0x20),
        );
        let (result, read, emu) =
            copy_badge(badge.clone(), Tag::classic(kind, BLANK), &site_keys());
        assert!(read.map.is_complete(), "{kind:?}: {}", read.map.summary());
        assert_eq!(read.map.opened[2], Some(KeyType::B), "{kind:?}");
        assert_eq!(read.map.opened[1], Some(KeyType::A), "{kind:?}");
        assert!(result.is_ok(), "{kind:?}: {result:?}");
        assert_eq!(
            emu.tag().unwrap().memory(),
            badge.memory(),
            "{kind:?}: the copy's memory is the badge's"
        );
    }
}

#[test]
fn a_sector_under_an_unknown_key_is_reported_and_a_partial_copy_leaves_it_blank() {
    let badge = site_badge(TagKind::Classic1k, &BADGE, Layout::Classic1k).with_sector(
        3,
        UNKNOWN_KEY,
        SECRET_B,
        UNKNOWN_KEY,
        &data(0x30),
    );
    let (result, read, emu) = copy_badge(
        badge.clone(),
        Tag::classic(TagKind::Gen1a, BLANK),
        &site_keys(),
    );
    assert_eq!(read.map.locked(), vec![3]);
    assert_eq!(read.map.summary(), "AAA-AAAAAAAAAAAA");
    assert_eq!(result, Ok(BlankKind::Gen1a));
    let copy = emu.tag().unwrap();
    for block in 0..64u8 {
        let expected = if Layout::sector_of(block) == 3 {
            Tag::classic(TagKind::Gen1a, BLANK)
                .block(block as usize)
                .unwrap()
        } else {
            badge.block(block as usize).unwrap()
        };
        assert_eq!(
            copy.block(block as usize).unwrap(),
            expected,
            "block {block}"
        );
    }
    assert!(
        !format!("{:?}", read.dump).contains("5A"),
        "a dump prints no data"
    );
}

#[test]
fn seven_byte_uid_and_4k_badges_are_copied() {
    let uid7 = [0x04, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66];
    let blank7 = [0x04, 0x99, 0x88, 0x77, 0x66, 0x55, 0x44];
    for (kind, uid, blank_uid, layout) in [
        (TagKind::Gen2, &uid7[..], &blank7[..], Layout::Classic1k),
        (TagKind::Gen1a, &BADGE[..], &BLANK[..], Layout::Classic4k),
    ] {
        let badge = site_badge(TagKind::Classic1k, uid, layout).with_sector(
            if layout == Layout::Classic4k { 35 } else { 9 },
            SITE_KEY_A,
            TRANSPORT,
            SITE_KEY_B,
            &data(0x90),
        );
        let blank = Tag::classic_card(kind, blank_uid, layout);
        let (result, read, emu) = copy_badge(badge.clone(), blank, &site_keys());
        assert!(read.map.is_complete(), "{layout:?}: {}", read.map.summary());
        assert!(result.is_ok(), "{layout:?} onto {kind:?}: {result:?}");
        assert_eq!(emu.tag().unwrap().uid(), uid);
        assert_eq!(emu.tag().unwrap().memory(), badge.memory(), "{layout:?}");
    }
}

#[test]
fn a_blank_that_cannot_take_the_badge_is_refused_before_any_write() {
    let uid7 = [0x04, 0x11, 0x22, 0x33, 0x44, 0x55, 0x66];
    let badge = Tag::classic_card(TagKind::Classic1k, &uid7, Layout::Classic1k);
    let (result, _, emu) = copy_badge(badge, Tag::classic(TagKind::Gen1a, BLANK), &site_keys());
    assert!(
        matches!(&result, Err(NfcError::NotWritable(m)) if m.contains("7-byte")),
        "{result:?}"
    );
    assert_eq!(emu.tag().unwrap().uid(), BLANK, "nothing written");
}

#[test]
fn a_blank_pulled_away_mid_copy_fails_naming_the_sector() {
    for kind in [TagKind::Gen1a, TagKind::Gen2] {
        let emu = Emulator::start(Some(site_badge(
            TagKind::Classic1k,
            &BADGE,
            Layout::Classic1k,
        )))
        .unwrap();
        let mut r = open(&emu);
        let source = wait(&mut r).unwrap();
        let read = r.read_badge(&source, &site_keys()).unwrap();
        r.release();
        emu.place(Some(Tag::classic(kind, BLANK)));
        let target = wait(&mut r).unwrap();
        emu.with_field(|f| f.remove_on_write = Some(Layout::first_block(5) + 1));
        let result = r.write_badge(&target, &source, &read.dump);
        assert!(
            matches!(result, Err(NfcError::SectorFailed { sector: 5, .. })),
            "{kind:?}: {result:?}"
        );
        assert!(result
            .unwrap_err()
            .to_string()
            .contains("may hold part of the badge"));
    }
}

/// Debian's `nfc-mfclassic`, given the badge's keys, reads the copy and
/// finds the badge's contents.
#[test]
fn nfc_mfclassic_reads_the_copy_as_the_badge() {
    let badge = site_badge(TagKind::Classic1k, &BADGE, Layout::Classic1k);
    let (result, _, emu) = copy_badge(
        badge.clone(),
        Tag::classic(TagKind::Gen1a, BLANK),
        &site_keys(),
    );
    assert_eq!(result, Ok(BlankKind::Gen1a));
    let dir = propass_test_support::TempDir::new("propass-mfclassic").unwrap();
    let keys = dir.path().join("keys.mfd");
    let out = dir.path().join("copy.mfd");
    std::fs::write(&keys, badge.memory().concat()).unwrap();
    let run = std::process::Command::new("nfc-mfclassic")
        .args(["r", "a", "u"])
        .arg(&out)
        .arg(&keys)
        .env("LIBNFC_AUTO_SCAN", "false")
        .env("LIBNFC_DEVICE", emu.connstring())
        .output()
        .expect("nfc-mfclassic from Debian's libnfc-bin (cargo xtask test installs it)");
    let said = String::from_utf8_lossy(&run.stdout);
    assert!(run.status.success(), "nfc-mfclassic failed: {said}");
    let dump = std::fs::read(&out).unwrap();
    let memory = badge.memory().concat();
    for block in 0..64usize {
        let (got, want) = (&dump[block * 16..][..16], &memory[block * 16..][..16]);
        if block % 4 == 3 {
            // nfc-mfclassic fills in the keys from the key file, and shows
            // the access bits the card returned.
            assert_eq!(got[6..10], want[6..10], "access bits of block {block}");
        } else {
            assert_eq!(got, want, "block {block}");
        }
    }
}
