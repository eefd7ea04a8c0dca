//! Hash seeds for tables keyed by ids that senders choose.
//!
//! Why random seeds: trace ids and job ids are picked by whoever sends spans. With a fixed,
//! public seed a sender can compute offline a set of trace ids that all land in one shard, one
//! hash-map bucket chain or one decision-cache bucket, and so turn every lookup into a scan or
//! evict the decisions of other traces. Every such table here hashes with [`id_state`]: a
//! process-wide shared seed plus a per-table seed, both drawn from the operating system's
//! randomness (through the standard library's `RandomState`, which is keyed from it), so the
//! layout cannot be predicted from outside.
//!
//! The probabilistic policy is the exception on purpose: instances must agree on which traces a
//! percentage keeps, so it hashes the trace id with its configured salt, deterministically.

use std::hash::{BuildHasher, RandomState};
use std::sync::OnceLock;

use foldhash::fast::SeedableRandomState;
use foldhash::SharedSeed;

/// The hasher of every table keyed by sender-chosen ids.
pub(crate) type IdState = SeedableRandomState;

/// 64 random bits. The standard library keys each `RandomState` from the operating system's
/// random source (once per thread, then a fresh key per call), so hashing a constant with a new
/// one yields bits nobody outside the process can predict.
fn os_random_u64() -> u64 {
    RandomState::new().hash_one(0x7472_6163_6571_u64)
}

/// A hasher with a fresh random per-table seed over the process-wide random shared seed.
pub(crate) fn id_state() -> IdState {
    static SHARED: OnceLock<SharedSeed> = OnceLock::new();
    let shared = SHARED.get_or_init(|| SharedSeed::from_u64(os_random_u64()));
    SeedableRandomState::with_seed(os_random_u64(), shared)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_table_should_get_its_own_seed() {
        let (a, b) = (id_state(), id_state());
        // Equal by chance with probability about 2^-64 per value.
        let same = (0..8u128)
            .filter(|v| a.hash_one(v) == b.hash_one(v))
            .count();
        assert_eq!(same, 0);
        assert_eq!(a.hash_one(7u128), a.hash_one(7u128));
    }

    #[test]
    fn random_bits_should_differ_between_draws() {
        assert_ne!(os_random_u64(), os_random_u64());
    }
}
