//! The individual number (個人番号, "My Number"): strict parsing, the
//! ordinance's check digit, and a type that cannot leak.
//!
//! A [`MyNumber`] is the one secret that fugo exists to keep. The type has no
//! `Display`, no `Clone`, no serialisation; its `Debug` prints a redaction and
//! it wipes itself on drop. Parse errors say which rule failed and where, and
//! never contain the input.

use std::fmt;

use thiserror::Error;
use zeroize::{Zeroize, ZeroizeOnDrop};

/// Number of digits in a My Number, check digit included.
pub const DIGITS: usize = 12;

/// One past the largest 12-digit value: every valid number is below this.
pub const LIMIT: u64 = 1_000_000_000_000;

/// Weights of the first eleven digits, leftmost first.
///
/// The ordinance numbers the digits from the right: P_1 is the 11th digit
/// (next to the check digit) with weight Q_1 = 2, ..., P_6 has Q_6 = 7,
/// P_7 has Q_7 = 2, ..., P_11 (the leftmost) has Q_11 = 6. Read left to
/// right that is the table below.
const WEIGHTS: [u32; DIGITS - 1] = [6, 5, 4, 3, 2, 7, 6, 5, 4, 3, 2];

/// Why a string is not a valid My Number. Never contains the input.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ParseError {
    /// The input was empty.
    #[error("empty: expected 12 digits")]
    Empty,
    /// A byte that is not an ASCII digit `0`-`9`, at this 1-based byte
    /// position (spaces, signs, full-width and other Unicode digits included).
    #[error("not a digit at position {position}: expected 12 ASCII digits")]
    NotADigit {
        /// 1-based byte position of the first offending byte.
        position: usize,
    },
    /// All digits, but not twelve of them.
    #[error("wrong length: expected 12 digits, found {length}")]
    WrongLength {
        /// Number of digits found.
        length: usize,
    },
    /// Twelve digits whose last one is not the check digit of the first eleven.
    #[error("check digit does not match")]
    CheckDigit,
}

/// A valid My Number. Holds the secret: redacted in `Debug`, wiped on drop.
///
/// There is no public `zeroize()`: a wiped value would be 000000000000,
/// itself a valid number, so a wiped `MyNumber` must never be usable. The
/// value is wiped only as it is dropped:
///
/// ```compile_fail
/// use zeroize::Zeroize;
/// let mut number = fugo_core::mynumber::MyNumber::parse(b"123456789018").unwrap();
/// number.zeroize(); // no such method: a wiped number would be valid
/// ```
pub struct MyNumber(u64);

impl Drop for MyNumber {
    fn drop(&mut self) {
        self.0.zeroize();
    }
}

impl ZeroizeOnDrop for MyNumber {}

impl MyNumber {
    /// Parses exactly 12 ASCII digits whose last digit is the check digit.
    pub fn parse(input: &[u8]) -> Result<Self, ParseError> {
        parse_value(input).map(MyNumber)
    }

    /// Accepts a 12-digit value whose last decimal digit is its check digit.
    ///
    /// Used when opening a code, where the value comes out of a decryption.
    pub fn from_value(value: u64) -> Result<Self, ParseError> {
        if value >= LIMIT {
            return Err(ParseError::WrongLength { length: 13 });
        }
        let mut digits = [0u8; DIGITS];
        let mut rest = value;
        for slot in digits.iter_mut().rev() {
            *slot = (rest % 10) as u8;
            rest /= 10;
        }
        let ok = check_digit(&digits) == digits[DIGITS - 1];
        digits.zeroize();
        if ok {
            Ok(MyNumber(value))
        } else {
            Err(ParseError::CheckDigit)
        }
    }

    /// A second copy of the number (wiped on drop like the first), for
    /// the tables that keep one (`persons`).
    pub(crate) fn duplicate(&self) -> Self {
        MyNumber(self.0)
    }

    /// The number as an integer below 10^12.
    ///
    /// This exposes the secret: callers feed it to the cipher and nowhere else.
    pub fn expose_value(&self) -> u64 {
        self.0
    }

    /// The twelve ASCII digits, for the one place that must print the number
    /// (re-identification output). The buffer is wiped on drop.
    pub fn expose_digits(&self) -> zeroize::Zeroizing<[u8; DIGITS]> {
        let mut out = zeroize::Zeroizing::new([b'0'; DIGITS]);
        let mut rest = self.0;
        for slot in out.iter_mut().rev() {
            *slot = b'0' + (rest % 10) as u8;
            rest /= 10;
        }
        out
    }
}

impl fmt::Debug for MyNumber {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MyNumber([REDACTED])")
    }
}

/// The check digit of the first eleven of `digits` (values 0-9, not ASCII).
///
/// remainder = Σ P_n·Q_n mod 11; check digit = 0 if remainder ≤ 1, else
/// 11 − remainder.
pub fn check_digit(digits: &[u8; DIGITS]) -> u8 {
    let mut sum = 0u32;
    for (digit, weight) in digits.iter().zip(WEIGHTS) {
        sum += u32::from(*digit) * weight;
    }
    let remainder = sum % 11;
    if remainder <= 1 {
        0
    } else {
        (11 - remainder) as u8
    }
}

/// The 12 ASCII digits of the valid number whose first eleven digits are
/// `first_eleven` (taken modulo 10^11): for synthetic test and sample data.
pub fn with_check_digit(first_eleven: u64) -> [u8; DIGITS] {
    let mut digits = [0u8; DIGITS];
    let mut rest = first_eleven % (LIMIT / 10);
    for slot in digits[..DIGITS - 1].iter_mut().rev() {
        *slot = (rest % 10) as u8;
        rest /= 10;
    }
    digits[DIGITS - 1] = check_digit(&digits);
    digits.map(|digit| b'0' + digit)
}

/// Parses and validates, returning the bare value. The hot path of bulk
/// derivation uses this to avoid building a [`MyNumber`] per row; callers
/// must treat the value as the secret it is.
///
/// One pass over the twelve bytes computes the value and the weighted sum
/// together and keeps no copy of the digits; the rules are checked in the
/// order [`ParseError`] lists them only once something is wrong.
pub(crate) fn parse_value(input: &[u8]) -> Result<u64, ParseError> {
    let Ok(bytes) = <&[u8; DIGITS]>::try_from(input) else {
        return Err(explain(input));
    };
    let mut value = 0u64;
    let mut sum = 0u32;
    let mut all_digits = true;
    for (index, &byte) in bytes.iter().enumerate() {
        let digit = byte.wrapping_sub(b'0');
        all_digits &= digit <= 9;
        value = value * 10 + u64::from(digit);
        if let Some(weight) = WEIGHTS.get(index) {
            sum += u32::from(digit) * weight;
        }
    }
    if !all_digits {
        return Err(explain(input));
    }
    let remainder = sum % 11;
    let check = if remainder <= 1 { 0 } else { 11 - remainder };
    if u32::from(bytes[DIGITS - 1] - b'0') == check {
        Ok(value)
    } else {
        value.zeroize();
        Err(ParseError::CheckDigit)
    }
}

/// The error for input that is not twelve ASCII digits.
fn explain(input: &[u8]) -> ParseError {
    if input.is_empty() {
        ParseError::Empty
    } else if let Some(index) = input.iter().position(|b| !b.is_ascii_digit()) {
        ParseError::NotADigit {
            position: index + 1,
        }
    } else {
        ParseError::WrongLength {
            length: input.len(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_the_ordinance_examples() {
        assert_eq!(
            MyNumber::parse(b"123456789018").unwrap().expose_value(),
            123_456_789_018
        );
        assert_eq!(
            MyNumber::parse(b"983205673214").unwrap().expose_value(),
            983_205_673_214
        );
        assert!(MyNumber::parse(b"000000000000").is_ok());
    }

    #[test]
    fn names_the_rule_that_failed() {
        assert_eq!(
            MyNumber::parse(b"123456789012").unwrap_err(),
            ParseError::CheckDigit
        );
        assert_eq!(MyNumber::parse(b"").unwrap_err(), ParseError::Empty);
        assert_eq!(
            MyNumber::parse(b"12345678901").unwrap_err(),
            ParseError::WrongLength { length: 11 }
        );
        assert_eq!(
            MyNumber::parse(b"1234 5678 9018").unwrap_err(),
            ParseError::NotADigit { position: 5 }
        );
        assert_eq!(
            MyNumber::parse(b"+23456789018").unwrap_err(),
            ParseError::NotADigit { position: 1 }
        );
        // Full-width digits are multi-byte UTF-8, never ASCII digits.
        assert_eq!(
            MyNumber::parse("１２３４５６７８９０１８".as_bytes()).unwrap_err(),
            ParseError::NotADigit { position: 1 }
        );
        // Arabic-Indic digits: Unicode digits but not ASCII.
        assert!(MyNumber::parse("١٢٣٤٥٦٧٨٩٠١٨".as_bytes()).is_err());
    }

    #[test]
    fn every_check_digit_but_one_is_refused() {
        for last in b'0'..=b'9' {
            let mut input = *b"12345678901X";
            input[11] = last;
            assert_eq!(MyNumber::parse(&input).is_ok(), last == b'8');
        }
    }

    #[test]
    fn with_check_digit_completes_valid_numbers() {
        assert_eq!(&with_check_digit(12_345_678_901), b"123456789018");
        assert_eq!(&with_check_digit(0), b"000000000000");
        for seed in [1, 98_320_567_321, 123_456_789_012_345] {
            assert!(MyNumber::parse(&with_check_digit(seed)).is_ok());
        }
    }

    #[test]
    fn from_value_checks_the_digit_and_range() {
        assert!(MyNumber::from_value(123_456_789_018).is_ok());
        assert!(MyNumber::from_value(123_456_789_012).is_err());
        assert!(MyNumber::from_value(LIMIT).is_err());
    }

    #[test]
    fn debug_is_redacted_and_errors_do_not_echo() {
        let number = MyNumber::parse(b"123456789018").unwrap();
        assert_eq!(format!("{:?}", number), "MyNumber([REDACTED])");
        let err = MyNumber::parse(b"123456789012").unwrap_err();
        assert!(!err.to_string().contains("1234"));
        assert_eq!(&*number.expose_digits(), b"123456789018");
    }
}
