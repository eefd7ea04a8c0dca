//! The consistent-hashing ring that maps trace ids to backends.
//!
//! Each backend is placed on a ring of 64-bit positions at [`POINTS_PER_BACKEND`] points,
//! each the hash of its endpoint and the point's number; a trace id goes to the backend of
//! the first point at or after its own position, wrapping around. With many points per
//! backend every backend owns about 1/N of the ring, and adding or removing one backend moves
//! only the trace ids of the arcs it gains or loses: about 1/N of them.
//!
//! Why our own hash, not the standard library's or a crate's: every router instance, on any
//! version and platform, must place the same endpoint at the same points, or two routers send
//! one trace's spans to two samplers. FNV-1a and a SplitMix64 finaliser are specified to the
//! bit and never change.

/// Points each backend gets on the ring.
pub const POINTS_PER_BACKEND: usize = 512;

/// FNV-1a, 64-bit.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// SplitMix64's finaliser: spreads the bits of `x`.
fn mix(mut x: u64) -> u64 {
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

/// Where a trace id sits on the ring: every byte counts, so ids that share their random half
/// (or are not random at all) still spread.
pub(crate) fn trace_position(trace_id: &[u8; 16]) -> u64 {
    let hi = u64::from_be_bytes(trace_id[..8].try_into().unwrap_or([0; 8]));
    let lo = u64::from_be_bytes(trace_id[8..].try_into().unwrap_or([0; 8]));
    mix(hi ^ mix(lo))
}

/// A ring of backends (endpoints as configured or resolved, e.g. `10.0.0.7:4317`).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Ring {
    /// Positions, sorted, with the index of their backend in `backends`.
    points: Vec<(u64, u32)>,
    backends: Vec<String>,
}

impl Ring {
    /// A ring of `backends` (duplicates removed; the order given does not matter).
    #[must_use]
    pub fn new(backends: &[String]) -> Self {
        let mut backends: Vec<String> = backends.to_vec();
        backends.sort();
        backends.dedup();
        let mut points = Vec::with_capacity(backends.len() * POINTS_PER_BACKEND);
        for (i, backend) in backends.iter().enumerate() {
            let base = fnv1a(backend.as_bytes());
            for point in 0..POINTS_PER_BACKEND as u64 {
                points.push((mix(base ^ mix(point)), i as u32));
            }
        }
        points.sort_unstable();
        Self { points, backends }
    }

    /// The backends, sorted.
    #[must_use]
    pub fn backends(&self) -> &[String] {
        &self.backends
    }

    /// The index (into [`Self::backends`]) of the backend owning `trace_id`; `None` for an
    /// empty ring.
    #[must_use]
    pub fn backend_of(&self, trace_id: &[u8; 16]) -> Option<usize> {
        let position = trace_position(trace_id);
        let i = self.points.partition_point(|&(p, _)| p < position);
        let (_, backend) = self.points.get(i).or_else(|| self.points.first())?;
        Some(*backend as usize)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ids(n: usize, seed: u64) -> Vec<[u8; 16]> {
        (0..n as u64)
            .map(|i| {
                let a = mix(seed ^ mix(i));
                let b = mix(a);
                let mut id = [0; 16];
                id[..8].copy_from_slice(&a.to_be_bytes());
                id[8..].copy_from_slice(&b.to_be_bytes());
                id
            })
            .collect()
    }

    fn names(n: usize) -> Vec<String> {
        (0..n).map(|i| format!("10.0.0.{}:4317", i + 1)).collect()
    }

    #[test]
    fn traces_should_spread_evenly_over_the_backends() {
        for n in [2, 3, 5, 8] {
            let ring = Ring::new(&names(n));
            let mut counts = vec![0usize; n];
            let ids = ids(100_000, n as u64);
            for id in &ids {
                counts[ring.backend_of(id).unwrap()] += 1;
            }
            let even = ids.len() as f64 / n as f64;
            for c in counts {
                let off = (c as f64 - even).abs() / even;
                assert!(off < 0.10, "{n} backends: {c} against {even:.0} ({off:.3})");
            }
        }
    }

    #[test]
    fn removing_one_of_four_backends_should_move_about_a_quarter_of_the_traces() {
        let four = Ring::new(&names(4));
        let three = Ring::new(&names(3));
        let ids = ids(100_000, 42);
        let mut moved = 0;
        for id in &ids {
            let before = &four.backends()[four.backend_of(id).unwrap()];
            let after = &three.backends()[three.backend_of(id).unwrap()];
            if before != after {
                moved += 1;
                // Only the removed backend's traces move.
                assert_eq!(before, "10.0.0.4:4317");
            }
        }
        let share = moved as f64 / ids.len() as f64;
        println!("4 -> 3 backends: {share:.4} of the trace ids moved");
        assert!((share - 0.25).abs() < 0.025, "moved {share:.4}");
    }

    #[test]
    fn the_ring_should_not_depend_on_the_order_backends_are_listed_in() {
        let mut reversed = names(5);
        reversed.reverse();
        reversed.push(reversed[0].clone());
        assert_eq!(Ring::new(&names(5)), Ring::new(&reversed));
    }

    #[test]
    fn placement_should_be_fixed_across_versions_and_platforms() {
        // Pinned values: a change here sends traces to other samplers than older routers do.
        assert_eq!(fnv1a(b"10.0.0.1:4317"), fnv1a(b"10.0.0.1:4317"));
        assert_eq!(fnv1a(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a(b"a"), 0xaf63_dc4c_8601_ec8c);
        assert_eq!(mix(0), 0);
        assert_eq!(mix(1), 0x5692_161d_100b_05e5);
        let ring = Ring::new(&names(3));
        let id = [7u8; 16];
        assert_eq!(ring.backend_of(&id), Ring::new(&names(3)).backend_of(&id));
    }

    #[test]
    fn an_empty_ring_should_route_nowhere() {
        assert_eq!(Ring::new(&[]).backend_of(&[1; 16]), None);
    }
}
