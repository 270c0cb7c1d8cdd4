//! The operating system's CSPRNG, as the [`RandomSource`] the core's seal
//! draws serials and nonces from (the core draws none of its own).

use fugo_core::exchange::{RandomFailed, RandomSource};
use ring::rand::{SecureRandom, SystemRandom};

/// `getrandom(2)` through ring's `SystemRandom`.
pub struct SystemRandomness(SystemRandom);

impl SystemRandomness {
    /// The system's generator.
    pub fn new() -> Self {
        SystemRandomness(SystemRandom::new())
    }
}

impl Default for SystemRandomness {
    fn default() -> Self {
        Self::new()
    }
}

impl RandomSource for SystemRandomness {
    fn fill(&self, out: &mut [u8]) -> Result<(), RandomFailed> {
        self.0.fill(out).map_err(|_| RandomFailed)
    }
}
