//! A fixed-size log-linear latency histogram.
//!
//! Constant memory however long a phase runs: the bench process is also replica 1, so keeping
//! every sample would grow the RSS that the soak is meant to watch. Values below 128 ns are
//! exact; above, each power of two is split into 64 buckets, so a reported quantile is within
//! 0.8% of the true sample (the bucket midpoint).

/// Values below this are counted exactly.
const EXACT: u64 = 128;
/// Buckets per power of two above `EXACT`.
const HALF: u64 = EXACT / 2;
/// log2(EXACT).
const EXACT_BITS: u32 = 7;
/// Enough buckets for any u64.
const BUCKETS: usize = (EXACT + (64 - EXACT_BITS as u64) * HALF) as usize;

/// Counts of nanosecond latencies.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
}

impl Default for Histogram {
    fn default() -> Self {
        Histogram {
            counts: vec![0; BUCKETS],
            total: 0,
        }
    }
}

fn index(v: u64) -> usize {
    if v < EXACT {
        return v as usize;
    }
    let msb = 63 - v.leading_zeros();
    let shift = msb - (EXACT_BITS - 1);
    (EXACT + (shift as u64 - 1) * HALF + ((v >> shift) - HALF)) as usize
}

fn midpoint(i: usize) -> f64 {
    let i = i as u64;
    if i < EXACT {
        return i as f64;
    }
    let shift = (i - EXACT) / HALF + 1;
    let sub = (i - EXACT) % HALF + HALF;
    let low = sub << shift;
    low as f64 + ((1u64 << shift) - 1) as f64 / 2.0
}

impl Histogram {
    /// Counts one sample.
    pub fn record(&mut self, nanos: u64) {
        self.counts[index(nanos)] += 1;
        self.total += 1;
    }

    /// Adds every sample of `other`.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
    }

    /// Number of samples.
    pub fn len(&self) -> u64 {
        self.total
    }

    /// Nearest-rank quantile in nanoseconds (as the peers compute theirs); 0 when empty.
    pub fn quantile(&self, q: f64) -> f64 {
        if self.total == 0 {
            return 0.0;
        }
        let rank = ((q * self.total as f64).ceil() as u64).clamp(1, self.total);
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return midpoint(i);
            }
        }
        unreachable!("rank {rank} is at most the total {}", self.total)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_u64_and_stay_within_one_percent() {
        assert_eq!(index(u64::MAX), BUCKETS - 1);
        for v in [
            0,
            1,
            127,
            128,
            129,
            255,
            256,
            1000,
            12_345,
            987_654_321,
            1 << 40,
        ] {
            let m = midpoint(index(v));
            assert!((m - v as f64).abs() <= v as f64 * 0.008 + 0.5, "{v} -> {m}");
        }
        for i in 1..BUCKETS {
            assert!(midpoint(i) > midpoint(i - 1), "bucket {i} out of order");
        }
    }

    #[test]
    fn quantiles_use_nearest_rank() {
        let mut h = Histogram::default();
        for v in 1..=100 {
            h.record(v);
        }
        assert_eq!(h.quantile(0.5), 50.0);
        assert_eq!(h.quantile(0.99), 99.0);
        assert_eq!(h.quantile(1.0), 100.0);
        let mut other = Histogram::default();
        other.record(1_000_000);
        h.merge(&other);
        assert_eq!(h.len(), 101);
        assert!((h.quantile(1.0) - 1e6).abs() < 1e4);
    }
}
