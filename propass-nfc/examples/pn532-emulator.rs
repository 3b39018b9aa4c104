//! A PN532 reader on a pseudo-terminal, for libnfc's tools and for trying the
//! kiosk without hardware. Prints the pseudo-terminal's path on its first line.
//!
//! ```sh
//! cargo run -p propass-nfc --example pn532-emulator -- --tag classic-1k --uid 04AB12CD
//! nfc-list -v   # with LIBNFC_DEVICE=pn532_uart:/dev/pts/N LIBNFC_AUTO_SCAN=false
//! ```
//!
//! `--tag`: `classic-1k` (a badge, block 0 read-only), `gen1a`, `gen2` (magic
//! blanks), `ultralight` (7-byte UID), `none` (empty field). `--uid`: 4 bytes
//! of hex (7 for `ultralight`). Runs until interrupted.

use propass_nfc::emulator::{Emulator, Tag, TagKind};

fn parse_hex(s: &str) -> Option<Vec<u8>> {
    if s.len() % 2 != 0 {
        return None;
    }
    (0..s.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&s[i..i + 2], 16).ok())
        .collect()
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
    println!("{}", emu.path().display());
    eprintln!(
        "PN532 emulator on {} (libnfc: {}); Ctrl-C stops it",
        emu.path().display(),
        emu.connstring()
    );
    loop {
        std::thread::park();
    }
}
