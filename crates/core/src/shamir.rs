//! Shamir's secret sharing (Shamir 1979, "How to share a secret") over
//! GF(2^8), byte by byte: the master key held by `n` custodians so that any
//! `m` of them can rebuild it and fewer learn nothing about it.
//!
//! The field is the one of AES (FIPS 197 §4): bytes as polynomials over
//! GF(2) modulo x^8 + x^4 + x^3 + x + 1 (0x11b). Addition is XOR;
//! multiplication is the "Russian peasant" loop with a masked reduction, so
//! it takes the same steps whatever the bytes (no table lookups indexed by
//! secret bytes, no branches on them). The inverse is a^254 (a^255 = 1).
//!
//! For each byte s of the secret, a polynomial f(x) = s + c1·x + … +
//! c(m-1)·x^(m-1) with random coefficients is evaluated at x = 1 … n; share
//! i holds f(i) for every byte. Any m shares give f(0) = s back by Lagrange
//! interpolation at 0: s = Σ_j y_j · Π_{l≠j} x_l / (x_l + x_j).
//!
//! This module is the arithmetic only: the random coefficients come in from
//! the caller (the core draws no randomness), and share files, their
//! checksums and fingerprints are the `fugo` package's (`custody`).

use std::fmt;

use thiserror::Error;
use zeroize::Zeroizing;

/// The length of the secret shared: a master key.
pub const SECRET_LEN: usize = 32;

/// The product of `a` and `b` in GF(2^8) modulo 0x11b, in constant time.
pub fn gf_mul(a: u8, b: u8) -> u8 {
    let mut a = a;
    let mut b = b;
    let mut product = 0u8;
    for _ in 0..8 {
        // Add `a` when the low bit of `b` is set: the mask is 0xff or 0x00.
        product ^= a & 0u8.wrapping_sub(b & 1);
        // a·x, reduced by 0x11b when the top bit falls out.
        let carry = 0u8.wrapping_sub(a >> 7);
        a = (a << 1) ^ (0x1b & carry);
        b >>= 1;
    }
    product
}

/// The multiplicative inverse of `a` in GF(2^8) (a^254); 0 for 0.
pub fn gf_inv(a: u8) -> u8 {
    // a^254 = a^(2+4+8+16+32+64+128): square and multiply, fixed steps.
    let mut square = a;
    let mut result = 1u8;
    for _ in 0..7 {
        square = gf_mul(square, square);
        result = gf_mul(result, square);
    }
    result
}

/// Why a split or a combination was refused. Holds counts and indexes
/// only, never share values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Error)]
#[non_exhaustive]
pub enum ShamirError {
    /// The threshold is below 2 (one custodian could rebuild the key alone)
    /// or above the number of shares.
    #[error(
        "a threshold of {threshold} with {shares} shares: the threshold must be at least 2 \
         (so no single custodian holds the key) and at most the number of shares"
    )]
    BadThreshold {
        /// Shares asked for.
        shares: u8,
        /// Threshold asked for.
        threshold: u8,
    },
    /// Not as many random coefficient bytes as the split needs.
    #[error("a split needs {needed} random bytes, {given} were given")]
    Coefficients {
        /// Bytes needed: (threshold − 1) · 32.
        needed: usize,
        /// Bytes given.
        given: usize,
    },
    /// Fewer shares than the threshold.
    #[error("{given} shares were given; at least {threshold} are needed")]
    TooFew {
        /// Shares given.
        given: usize,
        /// The threshold.
        threshold: u8,
    },
    /// Index 0 (it would be the secret itself) or one index twice.
    #[error("share index {index} is 0 or appears twice")]
    BadIndex {
        /// The offending index.
        index: u8,
    },
}

/// One custodian's share of a 32-byte secret: its index x (1 ≤ x ≤ 255)
/// and f(x) for every byte. The value lives on the heap, so moving a share
/// (into a list, out of a function) copies no secret bytes, and it is
/// wiped on drop; `Debug` shows the index only.
pub struct SecretShare {
    index: u8,
    value: Box<Zeroizing<[u8; SECRET_LEN]>>,
}

impl SecretShare {
    /// A share from its index and value (read back from a share file:
    /// decode into a boxed buffer, so the value is never copied).
    pub fn new(index: u8, value: Box<Zeroizing<[u8; SECRET_LEN]>>) -> Self {
        SecretShare { index, value }
    }

    /// The share's index x.
    pub fn index(&self) -> u8 {
        self.index
    }

    /// The share's value, for writing it to its custodian's file. Safe to
    /// hand out alone: fewer than the threshold of shares say nothing about
    /// the secret.
    pub fn expose_value(&self) -> &[u8; SECRET_LEN] {
        &self.value
    }
}

impl fmt::Debug for SecretShare {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "SecretShare {{ index: {}, value: [REDACTED] }}",
            self.index
        )
    }
}

/// Splits `secret` into `shares` shares, any `threshold` of which rebuild
/// it. `coefficients` are (threshold − 1) · 32 uniformly random bytes:
/// bytes `(k−1)·32 .. k·32` are the coefficients of x^k, one per secret
/// byte.
pub fn split(
    secret: &[u8; SECRET_LEN],
    shares: u8,
    threshold: u8,
    coefficients: &[u8],
) -> Result<Vec<SecretShare>, ShamirError> {
    if threshold < 2 || threshold > shares {
        return Err(ShamirError::BadThreshold { shares, threshold });
    }
    let needed = (usize::from(threshold) - 1) * SECRET_LEN;
    if coefficients.len() != needed {
        return Err(ShamirError::Coefficients {
            needed,
            given: coefficients.len(),
        });
    }
    let mut out = Vec::with_capacity(usize::from(shares));
    for x in 1..=shares {
        let mut value = Box::new(Zeroizing::new([0u8; SECRET_LEN]));
        for (byte, slot) in value.iter_mut().enumerate() {
            // Horner's rule from the highest coefficient down to the secret.
            let mut y = 0u8;
            for degree in (1..usize::from(threshold)).rev() {
                y = gf_mul(y, x) ^ coefficients[(degree - 1) * SECRET_LEN + byte];
            }
            *slot = gf_mul(y, x) ^ secret[byte];
        }
        out.push(SecretShare { index: x, value });
    }
    Ok(out)
}

/// Rebuilds the secret from the first `threshold` of `shares` (Lagrange
/// interpolation at 0). Shares from different splits give a wrong secret,
/// not an error: the caller checks the result (fugo compares the key's
/// fingerprint).
pub fn combine(
    shares: &[SecretShare],
    threshold: u8,
) -> Result<Zeroizing<[u8; SECRET_LEN]>, ShamirError> {
    if threshold < 2 {
        return Err(ShamirError::BadThreshold {
            shares: u8::try_from(shares.len()).unwrap_or(u8::MAX),
            threshold,
        });
    }
    let used = shares
        .get(..usize::from(threshold))
        .ok_or(ShamirError::TooFew {
            given: shares.len(),
            threshold,
        })?;
    for (position, share) in used.iter().enumerate() {
        if share.index == 0 || used[..position].iter().any(|s| s.index == share.index) {
            return Err(ShamirError::BadIndex { index: share.index });
        }
    }
    let mut secret = Zeroizing::new([0u8; SECRET_LEN]);
    for (j, share) in used.iter().enumerate() {
        // L_j(0) = Π_{l≠j} x_l / (x_l + x_j); public, from the indexes.
        let mut numerator = 1u8;
        let mut denominator = 1u8;
        for (l, other) in used.iter().enumerate() {
            if l != j {
                numerator = gf_mul(numerator, other.index);
                denominator = gf_mul(denominator, other.index ^ share.index);
            }
        }
        let weight = gf_mul(numerator, gf_inv(denominator));
        for (out, &y) in secret.iter_mut().zip(share.value.iter()) {
            *out ^= gf_mul(y, weight);
        }
    }
    Ok(secret)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// FIPS 197 §4.2: {57}·{83} = {c1}; §4.2.1: {57}·{13} = {fe}.
    #[test]
    fn multiplication_matches_the_aes_standard() {
        assert_eq!(gf_mul(0x57, 0x83), 0xc1);
        assert_eq!(gf_mul(0x83, 0x57), 0xc1);
        assert_eq!(gf_mul(0x57, 0x13), 0xfe);
        // §4.2.1's xtime steps: {57}·{02} = {ae}, ·{04} = {47}, ·{08} = {8e}, ·{10} = {07}.
        assert_eq!(gf_mul(0x57, 0x02), 0xae);
        assert_eq!(gf_mul(0x57, 0x04), 0x47);
        assert_eq!(gf_mul(0x57, 0x08), 0x8e);
        assert_eq!(gf_mul(0x57, 0x10), 0x07);
    }

    /// The inverse used to build the AES S-box: {53}^-1 = {ca} (FIPS 197
    /// §5.1.1 construction; the S-box entry for 53 is ed). Every non-zero
    /// byte times its inverse is 1.
    #[test]
    fn inverses_are_inverses() {
        assert_eq!(gf_inv(0x53), 0xca);
        assert_eq!(gf_inv(0x01), 0x01);
        assert_eq!(gf_inv(0x00), 0x00);
        for a in 1..=255u8 {
            assert_eq!(gf_mul(a, gf_inv(a)), 1, "{a:#04x}");
        }
    }

    /// Worked by hand: f(x) = 57 + 83·x. f(1) = 57⊕83 = d4; f(2) = 57 ⊕
    /// xtime(83) = 57 ⊕ 1d = 4a; f(3) = 57 ⊕ (1d⊕83) = 57 ⊕ 9e = c9. From
    /// (1, d4) and (2, 4a): s = (d4·2 ⊕ 4a)/3 = (b3 ⊕ 4a)/3 = f9/3 = 57,
    /// since 57·3 = ae ⊕ 57 = f9.
    #[test]
    fn a_split_worked_by_hand() {
        let shares = split(&[0x57; SECRET_LEN], 3, 2, &[0x83; SECRET_LEN]).unwrap();
        let values: Vec<u8> = shares.iter().map(|s| s.expose_value()[0]).collect();
        assert_eq!(values, [0xd4, 0x4a, 0xc9]);
        assert!(
            shares
                .iter()
                .all(|s| s.expose_value().iter().all(|&b| b == s.expose_value()[0]))
        );
        let rebuilt = combine(&shares[..2], 2).unwrap();
        assert_eq!(*rebuilt, [0x57; SECRET_LEN]);
        let rebuilt = combine(&[copy(&shares[2]), copy(&shares[0])], 2).unwrap();
        assert_eq!(*rebuilt, [0x57; SECRET_LEN]);
    }

    fn copy(share: &SecretShare) -> SecretShare {
        SecretShare::new(
            share.index(),
            Box::new(Zeroizing::new(*share.expose_value())),
        )
    }

    fn pseudo_random(seed: u8, len: usize) -> Vec<u8> {
        let mut state = u32::from(seed) | 0x100;
        (0..len)
            .map(|_| {
                state = state.wrapping_mul(1_103_515_245).wrapping_add(12_345);
                (state >> 16) as u8
            })
            .collect()
    }

    /// Every subset of `threshold` shares rebuilds the secret; one fewer
    /// share, or one altered share, does not.
    #[test]
    fn every_threshold_subset_rebuilds_the_secret() {
        let secret: [u8; SECRET_LEN] = std::array::from_fn(|i| (i as u8).wrapping_mul(37));
        for (n, m) in [(2u8, 2u8), (3, 2), (5, 3), (5, 5), (7, 4)] {
            let coefficients = pseudo_random(n ^ m, (usize::from(m) - 1) * SECRET_LEN);
            let shares = split(&secret, n, m, &coefficients).unwrap();
            for mask in 0u32..(1 << n) {
                if mask.count_ones() != u32::from(m) {
                    continue;
                }
                let chosen: Vec<SecretShare> = shares
                    .iter()
                    .filter(|s| mask & (1 << (s.index() - 1)) != 0)
                    .map(copy)
                    .collect();
                assert_eq!(
                    *combine(&chosen, m).unwrap(),
                    secret,
                    "n={n} m={m} {mask:b}"
                );
                let mut altered = chosen;
                let mut value = Box::new(Zeroizing::new(*altered[0].expose_value()));
                value[5] ^= 1;
                altered[0] = SecretShare::new(altered[0].index(), value);
                assert_ne!(*combine(&altered, m).unwrap(), secret);
            }
            assert_eq!(
                combine(&shares[..usize::from(m) - 1], m).unwrap_err(),
                ShamirError::TooFew {
                    given: usize::from(m) - 1,
                    threshold: m
                }
            );
        }
    }

    #[test]
    fn bad_parameters_are_refused() {
        let secret = [1u8; SECRET_LEN];
        assert!(matches!(
            split(&secret, 3, 1, &[]),
            Err(ShamirError::BadThreshold { .. })
        ));
        assert!(matches!(
            split(&secret, 2, 3, &[0; 64]),
            Err(ShamirError::BadThreshold { .. })
        ));
        assert_eq!(
            split(&secret, 3, 2, &[0; 31]).unwrap_err(),
            ShamirError::Coefficients {
                needed: 32,
                given: 31
            }
        );
        let shares = split(&secret, 3, 2, &[9; SECRET_LEN]).unwrap();
        let twice = [copy(&shares[1]), copy(&shares[1])];
        assert_eq!(
            combine(&twice, 2).unwrap_err(),
            ShamirError::BadIndex { index: 2 }
        );
        let zero = [
            SecretShare::new(0, Box::new(Zeroizing::new([0; SECRET_LEN]))),
            copy(&shares[0]),
        ];
        assert_eq!(
            combine(&zero, 2).unwrap_err(),
            ShamirError::BadIndex { index: 0 }
        );
    }

    #[test]
    fn debug_shows_the_index_only() {
        let share = SecretShare::new(3, Box::new(Zeroizing::new([0xab; SECRET_LEN])));
        let shown = format!("{share:?}");
        assert_eq!(shown, "SecretShare { index: 3, value: [REDACTED] }");
        assert!(!shown.to_lowercase().contains("ab"));
    }
}
