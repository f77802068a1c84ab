//! Deterministic per-purpose random streams: every random choice in hondo's data path is a
//! pure function of (seed, purpose, epoch, index), so results do not depend on the number
//! of workers or on where a run was resumed.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// The purpose words of hondo's random streams: each stream is `combine(&[seed, TAG, ...])`,
/// so two purposes never share draws. Changing a value changes every run's random choices.
pub mod tag {
    /// The model's initial weights.
    pub const MODEL_INIT: u64 = 0x1417;
    /// libtorch's generator before each training step (dropout): `[seed, STEP, step, batch]`.
    pub const STEP: u64 = 0x57e9;
    /// Mixup / CutMix draws of a step: `[seed, MIXING, step, batch]`.
    pub const MIXING: u64 = 0x31c5;
    /// The order of an epoch's samples: `[seed, SHUFFLE, epoch]`.
    pub const SHUFFLE: u64 = 0x0541_7f1e;
    /// A sample's augmentation: `[seed, AUGMENT, epoch, index]`.
    pub const AUGMENT: u64 = 0xda7a;
    /// The train/validation split of an image folder: `[seed, SPLIT, label]`.
    pub const SPLIT: u64 = 0x5b17_5eed;
}

/// SplitMix64 finaliser: a cheap, well-mixed hash of one word.
pub fn mix(mut z: u64) -> u64 {
    z = z.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// Hashes several words into one seed.
pub fn combine(words: &[u64]) -> u64 {
    words
        .iter()
        .fold(0x6a09_e667_f3bc_c908, |h, w| mix(h ^ mix(*w)))
}

/// A random stream for the given words.
pub fn rng(words: &[u64]) -> ChaCha8Rng {
    ChaCha8Rng::seed_from_u64(combine(words))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::Rng;

    #[test]
    fn streams_are_deterministic_and_distinct() {
        let a: u64 = rng(&[1, 2, 3]).gen();
        assert_eq!(a, rng(&[1, 2, 3]).gen::<u64>());
        assert_ne!(a, rng(&[1, 2, 4]).gen::<u64>());
        assert_ne!(combine(&[1, 2]), combine(&[2, 1]));
    }
}
