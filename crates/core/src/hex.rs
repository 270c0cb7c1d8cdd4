//! Lowercase hexadecimal, for fingerprints and key files.
//!
//! Small enough to own rather than pull in a crate; decoding reports the
//! position of a bad character and never the character itself, because the
//! input may be key material.

/// Writes `bytes` as lowercase hex.
pub fn encode(bytes: &[u8]) -> String {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    let mut out = String::with_capacity(bytes.len() * 2);
    for byte in bytes {
        out.push(char::from(DIGITS[usize::from(byte >> 4)]));
        out.push(char::from(DIGITS[usize::from(byte & 0x0f)]));
    }
    out
}

/// The value of one hex digit (either case), or `None`.
fn nibble(byte: u8) -> Option<u8> {
    match byte {
        b'0'..=b'9' => Some(byte - b'0'),
        b'a'..=b'f' => Some(byte - b'a' + 10),
        b'A'..=b'F' => Some(byte - b'A' + 10),
        _ => None,
    }
}

/// Decodes exactly `2 * N` hex characters into `out`.
///
/// On error returns the 1-based position of the first character that is
/// not a hex digit; the caller checks the length first.
pub fn decode_into(text: &[u8], out: &mut [u8]) -> Result<(), usize> {
    debug_assert_eq!(text.len(), out.len() * 2);
    for (index, slot) in out.iter_mut().enumerate() {
        let high = nibble(text[2 * index]).ok_or(2 * index + 1)?;
        let low = nibble(text[2 * index + 1]).ok_or(2 * index + 2)?;
        *slot = (high << 4) | low;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_and_locates_bad_characters() {
        assert_eq!(encode(&[0x00, 0xab, 0xff]), "00abff");
        let mut out = [0u8; 3];
        decode_into(b"00ABff", &mut out).unwrap();
        assert_eq!(out, [0x00, 0xab, 0xff]);
        assert_eq!(decode_into(b"00ag00", &mut out), Err(4));
    }
}
