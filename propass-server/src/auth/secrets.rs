//! The device secrets: one-time enrollment codes an operator types on a
//! kiosk, and the refresh credentials the server hands an enrolled device.
//! Both are high-entropy random values, so the database keeps only their
//! SHA-256 digest (a slow hash adds nothing against guessing 100+ bits, and
//! a stolen table of digests opens no kiosk). A leaf: it is handed the bytes.

use sha2::{Digest, Sha256};

/// Crockford's base-32 alphabet: no I, L, O or U to misread.
const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";
/// Symbols in an enrollment code: 20 × 5 = 100 bits.
const CODE_SYMBOLS: usize = 20;
/// Prefix of a refresh credential, so that one is recognised in a leak scan.
const CREDENTIAL_PREFIX: &str = "pdc_";

/// A new enrollment code from `bytes`, grouped for reading aloud:
/// `XXXXX-XXXXX-XXXXX-XXXXX`.
pub fn enrollment_code(bytes: [u8; 32]) -> String {
    let mut out = String::with_capacity(CODE_SYMBOLS + 3);
    // 256 is a multiple of 32: every symbol is equally likely.
    for (i, b) in bytes.iter().take(CODE_SYMBOLS).enumerate() {
        if i > 0 && i % 5 == 0 {
            out.push('-');
        }
        out.push(char::from(ALPHABET[usize::from(*b % 32)]));
    }
    out
}

/// A code as typed, in its canonical form: separators and spaces dropped,
/// upper case, the letters people confuse with digits read as those digits.
/// `None` when it cannot be a code.
pub fn normalize_code(typed: &str) -> Option<String> {
    let mut out = String::with_capacity(CODE_SYMBOLS);
    for c in typed.chars() {
        let c = match c.to_ascii_uppercase() {
            '-' | ' ' => continue,
            'O' => '0',
            'I' | 'L' => '1',
            c => c,
        };
        if !c.is_ascii() || !ALPHABET.contains(&(c as u8)) {
            return None;
        }
        out.push(c);
    }
    (out.len() == CODE_SYMBOLS).then_some(out)
}

/// A new refresh credential from `bytes`.
pub fn credential(bytes: [u8; 32]) -> String {
    let mut out = String::from(CREDENTIAL_PREFIX);
    for b in bytes {
        out.push_str(&format!("{b:02x}"));
    }
    out
}

/// Whether `s` has the shape of a credential (checked before any lookup).
pub fn looks_like_credential(s: &str) -> bool {
    s.strip_prefix(CREDENTIAL_PREFIX)
        .is_some_and(|h| h.len() == 64 && h.bytes().all(|b| b.is_ascii_hexdigit()))
}

/// The digest the database keeps of a code (canonical form) or a credential.
pub fn digest(secret: &str) -> String {
    let d = Sha256::digest(secret.as_bytes());
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// A new operator session id (the cookie's value) or CSRF token from `bytes`:
/// 64 hex digits, which a cookie and a header carry unescaped.
pub fn session_token(bytes: [u8; 32]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Whether `s` has the shape of [`session_token`] (checked before any lookup).
pub fn looks_like_session_token(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|b| b.is_ascii_hexdigit())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_code_reads_back_however_it_is_typed() {
        let code = enrollment_code([0xA7; 32]);
        assert_eq!(code.len(), 23);
        let canonical = normalize_code(&code).unwrap();
        assert_eq!(
            normalize_code(&code.to_lowercase().replace('-', " ")),
            Some(canonical.clone())
        );
        assert_eq!(normalize_code("0o1Il").map(|c| c.len()), None, "too short");
        assert_eq!(
            normalize_code("OOOOO-IIIII-LLLLL-00000"),
            Some("00000111111111100000".into())
        );
        assert_eq!(
            normalize_code("UUUUU-00000-00000-00000"),
            None,
            "U is not in the alphabet"
        );
        assert_ne!(
            digest(&canonical),
            digest(&normalize_code(&enrollment_code([1; 32])).unwrap())
        );
    }

    #[test]
    fn credentials_have_a_recognisable_shape() {
        let c = credential([0xFF; 32]);
        assert!(looks_like_credential(&c));
        assert!(!looks_like_credential(&c[..c.len() - 1]));
        assert!(!looks_like_credential("pdc_zz"));
        assert_eq!(digest(&c).len(), 64);
    }
}
