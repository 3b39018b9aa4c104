//! A PN532 reader on a pseudo-terminal, for libnfc's tools and for trying the
//! kiosk without hardware. Prints the pseudo-terminal's path on its first line.
//!
//! ```sh
//! cargo run -p propass-nfc --features emulator --example pn532-emulator -- --tag classic-1k --uid 04AB12CD
//! nfc-list -v   # with LIBNFC_DEVICE=pn532_uart:/dev/pts/N LIBNFC_AUTO_SCAN=false
//! ```
//!
//! `--tag`: `classic-1k` (a badge, block 0 read-only), `gen1a`, `gen2` (magic
//! blanks), `ultralight` (7-byte UID), `none` (empty field). `--uid`: 4 bytes
//! of hex (7 for `ultralight`). Runs until interrupted.
//!
//! `--remove-after N` pulls the card away after N tag-level commands (a card
//! removed in the middle of an operation).
//!
//! `--demo-taps N` scripts a kiosk's day for the demo: N times, a customer's
//! badge (a new UID each time) is placed; once the reader has read it, a Gen1a
//! blank replaces it; once the blank carries the badge's UID and the reader
//! has gone idle (verification done), the card is taken away and the next
//! badge comes.

use propass_nfc::emulator::{Emulator, Tag, TagKind};

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if !s.is_ascii() || !s.len().is_multiple_of(2) {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
}

/// Waits until `pred` holds for the field (polling).
fn wait_until(emu: &Emulator, pred: impl Fn(&propass_nfc::emulator::Field) -> bool) {
    while !emu.with_field(|f| pred(f)) {
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
}

fn demo_taps(emu: &Emulator, n: u32) {
    for i in 0..n {
        let badge = [0x04, 0xC0, 0xFF, 0xE0u8.wrapping_add(i as u8)];
        emu.place(Some(Tag::classic(TagKind::Classic1k, badge)));
        emu.with_field(|f| f.log.clear());
        eprintln!(
            "emulator: badge {} placed",
            badge.iter().map(|b| format!("{b:02X}")).collect::<String>()
        );
        // Read: a MIFARE exchange (authentication / block read) happened.
        wait_until(emu, |f| f.log.contains(&0x40));
        std::thread::sleep(std::time::Duration::from_millis(300));
        emu.place(Some(Tag::classic(
            TagKind::Gen1a,
            [0x01, 0x02, 0x03, 0x04u8.wrapping_add(i as u8)],
        )));
        emu.with_field(|f| f.log.clear());
        eprintln!("emulator: Gen1a blank placed");
        // Written, verified, and the reader idle again: the customer takes the card.
        wait_until(emu, |f| f.tag.as_ref().is_some_and(|t| t.uid() == badge));
        loop {
            let before = emu.with_field(|f| f.commands);
            std::thread::sleep(std::time::Duration::from_millis(500));
            if emu.with_field(|f| f.commands) == before {
                break;
            }
        }
        emu.place(None);
        eprintln!("emulator: copy taken away");
        std::thread::sleep(std::time::Duration::from_millis(500));
    }
    emu.place(None);
    eprintln!("emulator: demo taps done");
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let get = |name: &str| {
        args.iter()
            .position(|a| a == name)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let kind = get("--tag").unwrap_or_else(|| "classic-1k".into());
    let uid = get("--uid");
    let usage = "usage: pn532-emulator [--tag classic-1k|gen1a|gen2|ultralight|none] [--uid HEX]";
    let tag = match kind.as_str() {
        "none" => None,
        "ultralight" => {
            let u = parse_hex(uid.as_deref().unwrap_or("04A1B2C3D4E5F6")).filter(|u| u.len() == 7);
            let Some(u) = u else {
                eprintln!("--uid must be 7 bytes of hex for ultralight\n{usage}");
                std::process::exit(2);
            };
            Some(Tag::ultralight(u.try_into().expect("7 bytes")))
        }
        k => {
            let kind = match k {
                "classic-1k" => TagKind::Classic1k,
                "gen1a" => TagKind::Gen1a,
                "gen2" => TagKind::Gen2,
                other => {
                    eprintln!("unknown tag kind {other:?}\n{usage}");
                    std::process::exit(2);
                }
            };
            let u = parse_hex(uid.as_deref().unwrap_or("04AB12CD")).filter(|u| u.len() == 4);
            let Some(u) = u else {
                eprintln!("--uid must be 4 bytes of hex\n{usage}");
                std::process::exit(2);
            };
            Some(Tag::classic(kind, u.try_into().expect("4 bytes")))
        }
    };
    let emu = match Emulator::start(tag) {
        Ok(e) => e,
        Err(e) => {
            eprintln!("cannot open a pseudo-terminal: {e}");
            std::process::exit(1);
        }
    };
    if let Some(n) = get("--remove-after").and_then(|n| n.parse::<u32>().ok()) {
        // The card is pulled away after n more tag-level commands.
        emu.with_field(|f| f.remove_after = Some(n));
    }
    println!("{}", emu.path().display());
    if let Some(n) = get("--demo-taps").and_then(|n| n.parse::<u32>().ok()) {
        demo_taps(&emu, n);
    }
    eprintln!(
        "PN532 emulator on {} (libnfc: {}); Ctrl-C stops it",
        emu.path().display(),
        emu.connstring()
    );
    loop {
        std::thread::park();
    }
}
