//! The one way the load generator makes latency histograms.

use std::hint::black_box;
use std::time::Instant;

use hdrhistogram::Histogram;

/// A histogram for latencies in any unit from 1 to 3.6e12 (an hour in nanoseconds), at three
/// significant figures. Fixed bounds, so recording never resizes or clamps a real value.
pub(crate) fn latency() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("the bounds are valid")
}

/// The median cost of reading the clock twice, which every per-call timing includes; timed
/// benchmarks subtract it from each sample.
pub(crate) fn timer_overhead_ns() -> f64 {
    let mut samples: Vec<u64> = (0..200_001)
        .map(|_| {
            let t = Instant::now();
            black_box(());
            t.elapsed().as_nanos() as u64
        })
        .collect();
    samples.sort_unstable();
    samples[samples.len() / 2] as f64
}

/// The median of some figures (the upper one of an even count; 0 for none).
pub(crate) fn median(v: &mut [f64]) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}
