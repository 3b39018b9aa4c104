//! ISO/IEC 14443-A and MIFARE Classic facts that the reader and the
//! emulator must agree on, written once: the CRC_A, the BCC, the cascade
//! tag, the factory key and the layout of block 0.

/// The factory key of MIFARE Classic sectors (and of magic blanks).
pub const FACTORY_KEY: [u8; 6] = [0xFF; 6];

/// Access bits of a factory sector trailer (bytes 6..10).
pub const FACTORY_ACCESS_BITS: [u8; 4] = [0xFF, 0x07, 0x80, 0x69];

/// First byte of a cascade level announcing more UID bytes; a 4-byte UID
/// must not start with it.
pub const CASCADE_TAG: u8 = 0x88;

/// Bytes 8..16 of block 0 when the badge's own are unknown (those of the
/// blanks we buy).
pub const DEFAULT_MANUFACTURER: [u8; 8] = [0x62, 0x63, 0x64, 0x65, 0x66, 0x67, 0x68, 0x69];

/// The ISO 14443-A CRC (CRC_A), least significant byte first.
pub fn crc_a(data: &[u8]) -> [u8; 2] {
    let mut crc: u16 = 0x6363;
    for &x in data {
        let mut b = x ^ (crc as u8);
        b ^= b << 4;
        crc = (crc >> 8) ^ ((b as u16) << 8) ^ ((b as u16) << 3) ^ ((b as u16) >> 4);
    }
    [crc as u8, (crc >> 8) as u8]
}

/// `data` followed by its CRC_A.
pub fn with_crc(data: &[u8]) -> Vec<u8> {
    let mut v = data.to_vec();
    v.extend_from_slice(&crc_a(data));
    v
}

/// The block check character: the XOR of the bytes.
pub fn bcc(bytes: &[u8]) -> u8 {
    bytes.iter().fold(0, |a, x| a ^ x)
}

/// Block 0 of a MIFARE Classic card with a 4-byte UID: UID, BCC, SAK, ATQA
/// (least significant byte first), manufacturer bytes. Not checked: see
/// [`crate::validate_block0`].
pub fn block0(uid: [u8; 4], sak: u8, atqa: [u8; 2], manufacturer: [u8; 8]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..4].copy_from_slice(&uid);
    b[4] = bcc(&uid);
    b[5] = sak;
    b[6] = atqa[1];
    b[7] = atqa[0];
    b[8..].copy_from_slice(&manufacturer);
    b
}

/// Block 0 of a MIFARE Classic card with a 7-byte UID: UID, SAK, ATQA
/// (least significant byte first), manufacturer bytes. Not checked.
pub fn block0_7(uid: [u8; 7], sak: u8, atqa: [u8; 2], manufacturer: [u8; 6]) -> [u8; 16] {
    let mut b = [0u8; 16];
    b[..7].copy_from_slice(&uid);
    b[7] = sak;
    b[8] = atqa[1];
    b[9] = atqa[0];
    b[10..].copy_from_slice(&manufacturer);
    b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn crc_a_known_values() {
        assert_eq!(crc_a(&[0x50, 0x00]), [0x57, 0xCD]);
        assert_eq!(crc_a(&[0xA0, 0x00]), [0x5F, 0xB1]);
    }

    #[test]
    fn block0_layout() {
        let b = block0(
            [0x04, 0xAB, 0x12, 0xCD],
            0x08,
            [0x00, 0x04],
            DEFAULT_MANUFACTURER,
        );
        assert_eq!(b[4], 0x04 ^ 0xAB ^ 0x12 ^ 0xCD);
        assert_eq!((b[5], b[6], b[7]), (0x08, 0x04, 0x00));
        assert_eq!(b[8..], DEFAULT_MANUFACTURER);
    }
}
