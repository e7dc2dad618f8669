//! The run's random streams. Each is seeded from `train.seed`, the position
//! in the run (epoch, step, sample) and a salt of its own, so no two streams
//! ever share numbers and `--resume` can re-derive any of them exactly.

use rand::SeedableRng;
use rand_chacha::ChaCha8Rng;

/// A random stream; its value is the salt mixed in last. The values are
/// part of the checkpoint format (a resumed run re-derives its streams), so
/// they never change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Stream {
    /// The order of the training set in an epoch: `[seed, epoch]`.
    EpochOrder = 1,
    /// One sample's augmentation: `[seed, epoch, index]`.
    Augment = 2,
    /// A pretraining micro-batch's masks: `[seed, step, micro]`.
    Masks = 3,
    /// Pretraining weight initialisation: `[seed]`.
    PretrainInit = 4,
    /// The masks of the reconstruction grid a run saves: `[seed]`.
    ReconMasks = 5,
    /// A classifier micro-batch's mixup/cutmix and drop path: `[seed, step, micro]`.
    ClassifyStep = 6,
    /// A classifier's new head (and from-scratch weights): `[seed]`.
    ClassifyInit = 7,
    /// The robustness tests' removed and shuffled patches: `[seed]`.
    Robustness = 8,
}

/// Mixes several numbers into one seed (SplitMix64 steps).
pub fn mix_seed(parts: &[u64]) -> u64 {
    let mut z = 0x9E37_79B9_7F4A_7C15u64;
    for &p in parts {
        z = z.wrapping_add(p).wrapping_add(0x9E37_79B9_7F4A_7C15);
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^= z >> 31;
    }
    z
}

/// The generator of `stream` at `position` (`[seed, …]` as the stream documents).
pub fn stream_rng(stream: Stream, position: &[u64]) -> ChaCha8Rng {
    let mut parts = position.to_vec();
    parts.push(stream as u64);
    ChaCha8Rng::seed_from_u64(mix_seed(&parts))
}
