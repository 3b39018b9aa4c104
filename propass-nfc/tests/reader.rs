//! propass-nfc through the real libnfc (`pn532_uart` driver) against the
//! emulated PN532 on a pseudo-terminal.

use std::sync::atomic::AtomicBool;
use std::time::Duration;

use propass_nfc::emulator::{CardState, Emulator, Tag, TagKind};
use propass_nfc::{build_block0, BlankKind, CardFamily, NfcError, Reader, ReaderThread};

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

/// The libnfc behaviour the reader guards against: after listing (which
/// halts the card), a plain select "succeeds" with no card at all.
#[test]
fn libnfc_reports_success_for_a_select_that_found_nothing() {
    let emu = Emulator::start(Some(Tag::classic(TagKind::Classic1k, BADGE))).unwrap();
    let mut ctx = nfc1::Context::new().unwrap();
    let mut dev = ctx.open_with_connstring(&emu.connstring()).unwrap();
    dev.initiator_init().unwrap();
    let iso = nfc1::Modulation {
        modulation_type: nfc1::ModulationType::Iso14443a,
        baud_rate: nfc1::BaudRate::Baud106,
    };
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
