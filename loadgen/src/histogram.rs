//! The one way the load generator makes latency histograms.

use hdrhistogram::Histogram;

/// A histogram for latencies in any unit from 1 to 3.6e12 (an hour in nanoseconds), at three
/// significant figures. Fixed bounds, so recording never resizes or clamps a real value.
pub(crate) fn latency() -> Histogram<u64> {
    Histogram::new_with_bounds(1, 3_600_000_000_000, 3).expect("the bounds are valid")
}
