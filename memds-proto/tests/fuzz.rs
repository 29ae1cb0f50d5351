//! The bounded, in-suite run of the fuzz targets of `memds_proto::fuzzing` (the long runs use
//! cargo-fuzz on the same functions; see `docs/fuzzing.md`): every file of the checked-in seed
//! corpus, seeded mutations of the seeds, and arbitrary bytes from proptest. A target returning
//! is a pass; a panic is a finding, reproduced by the input the failure prints.
//!
//! `UPDATE_FUZZ_CORPUS=1 cargo test -p memds-proto --test fuzz` rewrites the generated part of
//! the corpus (files added by hand, such as minimized crashes, are left alone).

use std::sync::LazyLock;

use memds_proto::fuzzing::{self, Seed};
use proptest::prelude::*;

#[path = "../../fuzz/driver.rs"]
mod driver;

/// Mutations per target and per run: enough to reach every decoder's error paths from every
/// seed, few enough for a debug build on a small machine.
const MUTATIONS: usize = 20_000;

static SEEDS: LazyLock<Vec<Seed>> = LazyLock::new(fuzzing::seed_corpus);

#[test]
fn seed_corpus_matches_its_generator() {
    driver::check_or_update_corpus(&SEEDS, "cargo test -p memds-proto --test fuzz");
}

#[test]
fn every_corpus_file_runs_clean() {
    driver::run_corpus(&fuzzing::TARGETS);
}

#[test]
fn mutated_seeds_run_clean() {
    driver::run_mutations(&fuzzing::TARGETS, MUTATIONS, 0xF022);
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 512, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_run_clean(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for (_, run) in fuzzing::TARGETS {
            run(&bytes);
        }
    }

    /// Arbitrary bytes after a valid prefix reach past the magic and header checks.
    #[test]
    fn arbitrary_tails_of_seeds_run_clean(
        pick in any::<prop::sample::Index>(),
        keep in any::<prop::sample::Index>(),
        tail in proptest::collection::vec(any::<u8>(), 0..64),
    ) {
        let seed = pick.get(&SEEDS);
        driver::run_seed_with_tail(&fuzzing::TARGETS, seed, keep.index(seed.bytes.len() + 1), &tail);
    }
}
