//! Domain newtypes: each parses its input once and is valid from then on.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// Why a value taken from outside is not a valid domain value.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseError {
    /// A device id must be 1 to 128 printable ASCII characters, no spaces.
    #[error("device id must be 1 to 128 printable ASCII characters without spaces")]
    DeviceId,
    /// A badge UID must be 4 to 10 bytes written in hexadecimal.
    #[error("badge uid must be 4 to 10 bytes of hexadecimal (e.g. 04AB12CD), got {0:?}")]
    BadgeUid(String),
    /// A client id is a positive integer.
    #[error("client id must be a positive integer")]
    ClientId,
    /// A MIFARE key is 6 bytes, 12 hexadecimal digits.
    #[error("a MIFARE key is 12 hexadecimal digits, e.g. A0A1A2A3A4A5")]
    ReaderKey,
    /// A sector map is one of `A`, `B` or `-` per sector, 16 or 40 sectors.
    #[error("sectors must be 16 or 40 characters, each A, B or - (one per sector), got {0:?}")]
    Sectors(String),
}

/// A kiosk's identity, chosen by the kiosk (the seed client derives it from
/// its hostname and a timestamp, e.g. `KIOSK-7_LQ3K9Z2A`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct DeviceId(String);

impl DeviceId {
    /// Longest accepted device id, in bytes.
    pub const MAX_LEN: usize = 128;

    /// Parses a device id.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let ok =
            !s.is_empty() && s.len() <= Self::MAX_LEN && s.bytes().all(|b| b.is_ascii_graphic());
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ParseError::DeviceId)
        }
    }

    /// The id as sent on the wire.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

impl fmt::Display for DeviceId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl FromStr for DeviceId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for DeviceId {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for DeviceId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A customer of the kiosk fleet, as numbered by the server (a JSON integer).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(transparent)]
pub struct ClientId(i64);

impl ClientId {
    /// Wraps a positive id.
    pub fn new(id: i64) -> Result<Self, ParseError> {
        if id > 0 {
            Ok(Self(id))
        } else {
            Err(ParseError::ClientId)
        }
    }

    /// The numeric id.
    pub fn get(self) -> i64 {
        self.0
    }
}

impl fmt::Display for ClientId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.0)
    }
}

impl FromStr for ClientId {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        s.trim()
            .parse::<i64>()
            .map_err(|_| ParseError::ClientId)
            .and_then(Self::new)
    }
}

impl<'de> Deserialize<'de> for ClientId {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let n = i64::deserialize(d)?;
        Self::new(n).map_err(serde::de::Error::custom)
    }
}

/// A badge's UID: 4 to 10 bytes, kept as bytes, written as upper-case hex
/// without separators (`04AB12CD`). Parsing accepts either case and `:` or
/// space separators between bytes.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct BadgeUid(Vec<u8>);

impl BadgeUid {
    /// Shortest UID accepted, in bytes.
    pub const MIN_BYTES: usize = 4;
    /// Longest UID accepted, in bytes (ISO 14443-3 triple-size UID).
    pub const MAX_BYTES: usize = 10;

    /// Parses a hexadecimal UID.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let err = || ParseError::BadgeUid(s.chars().take(40).collect());
        let digits: Vec<u8> = s
            .bytes()
            .filter(|b| !matches!(b, b':' | b' '))
            .map(|b| (b as char).to_digit(16).map(|d| d as u8))
            .collect::<Option<_>>()
            .ok_or_else(err)?;
        if !digits.len().is_multiple_of(2) {
            return Err(err());
        }
        let bytes: Vec<u8> = digits.chunks(2).map(|p| p[0] << 4 | p[1]).collect();
        Self::from_bytes(&bytes).map_err(|_| err())
    }

    /// Wraps raw UID bytes.
    pub fn from_bytes(bytes: &[u8]) -> Result<Self, ParseError> {
        if (Self::MIN_BYTES..=Self::MAX_BYTES).contains(&bytes.len()) {
            Ok(Self(bytes.to_vec()))
        } else {
            Err(ParseError::BadgeUid(hex(bytes)))
        }
    }

    /// The UID's bytes.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    /// Upper-case hex, no separators.
    pub fn to_hex(&self) -> String {
        hex(&self.0)
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02X}")).collect()
}

impl fmt::Display for BadgeUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.to_hex())
    }
}

impl fmt::Debug for BadgeUid {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "BadgeUid({})", self.to_hex())
    }
}

impl FromStr for BadgeUid {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for BadgeUid {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for BadgeUid {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A globally unique id of one physical operation, chosen by our agent when
/// the operation is recorded (a UUIDv7). The server's idempotency key.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct OpId(pub uuid::Uuid);

impl OpId {
    /// A new time-ordered id. A provider of fresh ids: the agent reaches it
    /// only through its Rng seam.
    #[allow(clippy::disallowed_methods)]
    pub fn new_v7() -> Self {
        Self(uuid::Uuid::now_v7())
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.0.fmt(f)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn uid_parses_and_normalises() {
        assert_eq!(BadgeUid::parse("04ab12cd").unwrap().to_hex(), "04AB12CD");
        assert_eq!(
            BadgeUid::parse("04:AB:12:CD:34:56:78")
                .unwrap()
                .as_bytes()
                .len(),
            7
        );
        // The seed guide's own example is five bytes.
        assert_eq!(
            BadgeUid::parse("04AB12CD34").unwrap().to_hex(),
            "04AB12CD34"
        );
        for bad in [
            "",
            "04AB12",
            "04AB12C",
            "ZZAB12CD",
            "00112233445566778899AA",
        ] {
            assert!(BadgeUid::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn device_id_rules() {
        assert!(DeviceId::parse("KIOSK-7_LQ3K9Z2A").is_ok());
        assert!(DeviceId::parse("host.example.com_ABC").is_ok());
        assert!(DeviceId::parse("").is_err());
        assert!(DeviceId::parse("has space").is_err());
        assert!(DeviceId::parse(&"x".repeat(129)).is_err());
    }

    #[test]
    fn client_id_is_positive() {
        assert!(ClientId::new(0).is_err());
        assert!(ClientId::new(-3).is_err());
        assert_eq!("42".parse::<ClientId>().unwrap().get(), 42);
    }

    #[test]
    fn reader_keys_parse_print_as_hex_and_never_debug_print() {
        let k = ReaderKey::parse("a0a1A2a3a4a5").unwrap();
        assert_eq!(k.to_hex(), "A0A1A2A3A4A5");
        assert_eq!(k.bytes(), [0xA0, 0xA1, 0xA2, 0xA3, 0xA4, 0xA5]);
        assert_eq!(serde_json::to_string(&k).unwrap(), "\"A0A1A2A3A4A5\"");
        assert_eq!(format!("{k:?}"), "ReaderKey(..)");
        for bad in [
            "",
            "A0A1A2A3A4",
            "A0A1A2A3A4A5A6",
            "G0A1A2A3A4A5",
            "A0 A1A2A3A4A",
        ] {
            assert_eq!(ReaderKey::parse(bad), Err(ParseError::ReaderKey), "{bad:?}");
        }
        assert!(serde_json::from_str::<ReaderKey>("\"xyz\"").is_err());
    }
}

/// Which sectors of a MIFARE Classic badge a whole-badge copy carries: one
/// character per sector, `A` or `B` for the key that opened it, `-` for a
/// sector the kiosk could not read and left out. 16 sectors (1K) or 40 (4K).
/// It never holds a key or a byte of data.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct SectorMap(String);

impl SectorMap {
    /// Parses `AAAA-AB…`.
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let ok = matches!(s.len(), 16 | 40) && s.bytes().all(|b| matches!(b, b'A' | b'B' | b'-'));
        if ok {
            Ok(Self(s.to_owned()))
        } else {
            Err(ParseError::Sectors(s.chars().take(48).collect()))
        }
    }

    /// The map as text.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// Sectors left out of the copy.
    pub fn locked(&self) -> usize {
        self.0.bytes().filter(|b| *b == b'-').count()
    }
}

impl fmt::Display for SectorMap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

impl Serialize for SectorMap {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.0)
    }
}

impl<'de> Deserialize<'de> for SectorMap {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}

/// A MIFARE Classic key (6 bytes) that opens sectors of a client's badges:
/// 12 hexadecimal digits on the wire. A secret: it prints as
/// `ReaderKey(..)`, and only a kiosk serving the client is ever sent it.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ReaderKey([u8; 6]);

impl ReaderKey {
    /// Parses 12 hexadecimal digits (either case).
    pub fn parse(s: &str) -> Result<Self, ParseError> {
        let s = s.trim();
        if s.len() != 12 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(ParseError::ReaderKey);
        }
        let mut key = [0u8; 6];
        for (i, byte) in key.iter_mut().enumerate() {
            *byte =
                u8::from_str_radix(&s[2 * i..2 * i + 2], 16).map_err(|_| ParseError::ReaderKey)?;
        }
        Ok(Self(key))
    }

    /// Parses every key of `items`, or says which one (from 0) is not a
    /// key — by position only: a caller must not repeat a secret.
    pub fn parse_all<'a>(items: impl IntoIterator<Item = &'a str>) -> Result<Vec<Self>, usize> {
        items
            .into_iter()
            .enumerate()
            .map(|(i, k)| Self::parse(k).map_err(|_| i))
            .collect()
    }

    /// The key's bytes.
    pub fn bytes(&self) -> [u8; 6] {
        self.0
    }

    /// Upper-case hexadecimal, as sent.
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02X}")).collect()
    }
}

impl fmt::Debug for ReaderKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("ReaderKey(..)")
    }
}

impl FromStr for ReaderKey {
    type Err = ParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Self::parse(s)
    }
}

impl Serialize for ReaderKey {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_hex())
    }
}

impl<'de> Deserialize<'de> for ReaderKey {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Self::parse(&s).map_err(serde::de::Error::custom)
    }
}
