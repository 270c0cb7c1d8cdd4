//! The 29-character text form of a v1 agency code.
//!
//! ```text
//!  1  E  D D D D D D D D D D D D D D D D D D D D D D D D D D  C
//!  │  │  └──────────── 26 symbols: the 128 code bits, ─────┘  │
//!  │  │                most significant first, + two 0 bits   │
//!  │  └ epoch 1..=31 as one symbol                            │
//!  └ format version 1                   Luhn mod 32 check ────┘
//! ```
//!
//! Symbols come from Crockford's base32 alphabet
//! `0123456789ABCDEFGHJKMNPQRSTVWXYZ`. Reading is forgiving where people
//! make mistakes (lowercase, `I`/`L` for `1`, `O` for `0`, hyphens anywhere)
//! and strict everywhere else; each failure has its own [`CodeTextError`],
//! checked in the order the variants are listed.

use thiserror::Error;

use crate::agency::Epoch;

/// Crockford's base32 alphabet; a symbol's value is its index.
pub const ALPHABET: &[u8; 32] = b"0123456789ABCDEFGHJKMNPQRSTVWXYZ";

/// Length of the text form, in symbols.
pub const TEXT_LEN: usize = 29;

/// Symbol value of format version 1.
pub const VERSION_1: u8 = 1;

/// Number of data symbols: 128 bits plus 2 padding bits.
const DATA_SYMBOLS: usize = 26;

const SKIP: u8 = 0xfe;
const INVALID: u8 = 0xff;

/// Byte → symbol value, `SKIP` for a hyphen, `INVALID` otherwise.
const DECODE: [u8; 256] = {
    let mut table = [INVALID; 256];
    let mut value = 0;
    while value < 32 {
        let upper = ALPHABET[value];
        table[upper as usize] = value as u8;
        table[upper.to_ascii_lowercase() as usize] = value as u8;
        value += 1;
    }
    table[b'I' as usize] = 1;
    table[b'i' as usize] = 1;
    table[b'L' as usize] = 1;
    table[b'l' as usize] = 1;
    table[b'O' as usize] = 0;
    table[b'o' as usize] = 0;
    table[b'-' as usize] = SKIP;
    table
};

/// Why a text is not a well-formed v1 code. Never contains the text.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum CodeTextError {
    /// A byte outside the alphabet, its aliases and `-` (including `U`).
    #[error("code has a character outside the base32 alphabet at position {position}")]
    InvalidCharacter {
        /// 1-based byte position in the input.
        position: usize,
    },
    /// Not 29 symbols once hyphens are removed.
    #[error("code has {length} symbols; a code has 29 (hyphens not counted)")]
    WrongLength {
        /// Number of symbols found.
        length: usize,
    },
    /// The last symbol is not the Luhn mod 32 check of the others.
    #[error("code check character does not match (mistyped code?)")]
    BadCheckCharacter,
    /// The first symbol is not a known format version.
    #[error("code format version is not supported")]
    UnknownVersion,
    /// The epoch symbol is 0.
    #[error("code epoch is 0; epochs run from 1 to 31")]
    EpochZero,
    /// The two bits after the 128 code bits are not zero.
    #[error("code padding bits are not zero")]
    NonZeroPadding,
}

/// Luhn mod 32 sum over symbol values: from the rightmost moving left,
/// multiply alternately by 2 and 1 (the rightmost by `first_factor`), and
/// add each product's base-32 digits.
fn luhn_sum(symbols: &[u8], first_factor: u32) -> u32 {
    let mut sum = 0;
    let mut factor = first_factor;
    for &symbol in symbols.iter().rev() {
        let product = u32::from(symbol) * factor;
        sum += product / 32 + product % 32;
        factor = 3 - factor;
    }
    sum
}

/// The check symbol of 28 symbol values: the k with (sum + k) mod 32 = 0.
pub fn check_symbol(symbols: &[u8; TEXT_LEN - 1]) -> u8 {
    ((32 - luhn_sum(symbols, 2) % 32) % 32) as u8
}

/// `DOUBLED[v]` = the base-32 digit sum of 2·v: 2v below 16, 2v − 31 above.
const DOUBLED: [u8; 32] = {
    let mut table = [0u8; 32];
    let mut v = 0;
    while v < 32 {
        table[v] = if v < 16 {
            2 * v as u8
        } else {
            2 * v as u8 - 31
        };
        v += 1;
    }
    table
};

/// Writes the text form of a v1 code with epoch `epoch` and bytes `code`.
///
/// This is the hot path of bulk derivation, so it works in fixed 5-byte
/// groups (5 bytes = 8 symbols exactly) and computes the Luhn sum with a
/// table; `check_symbol` and `decode` are the plain reference.
pub fn encode(epoch: Epoch, code: &[u8; 16]) -> [u8; TEXT_LEN] {
    let mut symbols = [0u8; TEXT_LEN];
    symbols[0] = VERSION_1;
    symbols[1] = epoch.get();
    // Bytes 0..15 in three groups of five: 40 bits → 8 symbols each.
    for group in 0..3 {
        let mut bits = 0u64;
        for &byte in &code[5 * group..5 * group + 5] {
            bits = (bits << 8) | u64::from(byte);
        }
        for k in 0..8 {
            symbols[2 + 8 * group + k] = ((bits >> (35 - 5 * k)) & 31) as u8;
        }
    }
    // Byte 15 and the two zero padding bits: 10 bits → 2 symbols.
    symbols[26] = code[15] >> 3;
    symbols[27] = (code[15] & 0b111) << 2;
    // Symbol 28 (index 27) is the rightmost of the body: factor 2 on odd
    // indices, 1 on even ones.
    let mut sum = 0u32;
    for (index, &symbol) in symbols[..TEXT_LEN - 1].iter().enumerate() {
        sum += u32::from(if index % 2 == 1 {
            DOUBLED[usize::from(symbol)]
        } else {
            symbol
        });
    }
    symbols[TEXT_LEN - 1] = ((32 - sum % 32) % 32) as u8;
    symbols.map(|symbol| ALPHABET[usize::from(symbol)])
}

/// Reads a text code into its epoch and 16 code bytes.
pub fn decode(text: &[u8]) -> Result<(Epoch, [u8; 16]), CodeTextError> {
    let mut symbols = [0u8; TEXT_LEN];
    let mut length = 0;
    for (index, &byte) in text.iter().enumerate() {
        match DECODE[usize::from(byte)] {
            SKIP => continue,
            INVALID => {
                return Err(CodeTextError::InvalidCharacter {
                    position: index + 1,
                });
            }
            value => {
                if let Some(slot) = symbols.get_mut(length) {
                    *slot = value;
                }
                length += 1;
            }
        }
    }
    if length != TEXT_LEN {
        return Err(CodeTextError::WrongLength { length });
    }
    if luhn_sum(&symbols, 1) % 32 != 0 {
        return Err(CodeTextError::BadCheckCharacter);
    }
    if symbols[0] != VERSION_1 {
        return Err(CodeTextError::UnknownVersion);
    }
    let epoch = Epoch::new(symbols[1]).map_err(|_| CodeTextError::EpochZero)?;
    let last = symbols[2 + DATA_SYMBOLS - 1];
    if last & 0b11 != 0 {
        return Err(CodeTextError::NonZeroPadding);
    }
    // 25 full symbols carry the first 125 bits; the last symbol's top three
    // bits are the remaining 3.
    let mut value = 0u128;
    for &symbol in &symbols[2..2 + DATA_SYMBOLS - 1] {
        value = (value << 5) | u128::from(symbol);
    }
    let code = (value << 3) | u128::from(last >> 2);
    Ok((epoch, code.to_be_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_all_zero_and_all_one_bits() {
        let epoch = Epoch::new(31).unwrap();
        for code in [[0u8; 16], [0xff; 16], [0x80; 16], [0x01; 16]] {
            let text = encode(epoch, &code);
            assert_eq!(decode(&text).unwrap(), (epoch, code));
        }
    }

    #[test]
    fn fast_encoding_agrees_with_the_reference_check() {
        let mut state = 0x1234_5678_9abc_def0_u128;
        for epoch in 1..=31 {
            for _ in 0..200 {
                state = state
                    .wrapping_mul(0x2360_ed05_1fc6_5da4_4385_df64_9fcc_f645)
                    .wrapping_add(1);
                let code = state.to_be_bytes();
                let text = encode(Epoch::new(epoch).unwrap(), &code);
                let values: Vec<u8> = text
                    .iter()
                    .map(|c| ALPHABET.iter().position(|a| a == c).unwrap() as u8)
                    .collect();
                let body: [u8; TEXT_LEN - 1] = values[..TEXT_LEN - 1].try_into().unwrap();
                assert_eq!(check_symbol(&body), values[TEXT_LEN - 1]);
                assert_eq!(decode(&text).unwrap(), (Epoch::new(epoch).unwrap(), code));
            }
        }
    }

    #[test]
    fn forgiving_reading() {
        let text = encode(Epoch::new(1).unwrap(), &[0x5a; 16]);
        let plain = std::str::from_utf8(&text).unwrap();
        let expected = decode(&text).unwrap();
        assert_eq!(decode(plain.to_lowercase().as_bytes()).unwrap(), expected);
        let hyphenated = format!("-{}-{}-", &plain[..5], &plain[5..]);
        assert_eq!(decode(hyphenated.as_bytes()).unwrap(), expected);
        assert_eq!(
            decode(b"U").unwrap_err(),
            CodeTextError::InvalidCharacter { position: 1 }
        );
        assert_eq!(
            decode(b"12-3").unwrap_err(),
            CodeTextError::WrongLength { length: 3 }
        );
    }
}
