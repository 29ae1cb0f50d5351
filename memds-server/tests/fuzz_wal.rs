//! The bounded, in-suite run of the fuzz targets of `memds_server::fuzzing` (the write-ahead
//! log reader and the server's request handling; the long runs use cargo-fuzz on the same
//! functions, see `docs/fuzzing.md`): every file of the checked-in seed corpus, seeded
//! mutations of the seeds, and arbitrary bytes from proptest. Mutated logs also go through
//! [`Durable::open`] on real files, which must agree with the in-memory reading the fuzz target
//! runs.
//!
//! `UPDATE_FUZZ_CORPUS=1 cargo test -p memds-server --test fuzz_wal` rewrites the generated
//! part of the corpus (files added by hand, such as minimized crashes, are left alone).

use std::fs;
use std::sync::LazyLock;

use memds_proto::fuzzing::{Mutator, Seed};
use memds_server::durable::fuzz_support::{self, Role};
use memds_server::durable::{Durable, RecoveryMode, WalRecord, log_path};
use memds_server::fuzzing;
use proptest::prelude::*;

#[path = "../../fuzz/driver.rs"]
mod driver;

/// Mutations per target and per run: a debug build on a small machine does these in seconds.
const MUTATIONS: usize = 20_000;
/// Mutated logs recovered from real files (each open syncs files, so far fewer).
const OPENS: usize = 200;

static SEEDS: LazyLock<Vec<Seed>> = LazyLock::new(|| {
    let scratch = tempfile::tempdir().expect("a scratch directory");
    fuzzing::seed_corpus(scratch.path()).expect("writing the sample data directory")
});

#[test]
fn seed_corpus_matches_its_generator() {
    driver::check_or_update_corpus(&SEEDS, "cargo test -p memds-server --test fuzz_wal");
}

#[test]
fn every_corpus_file_runs_clean() {
    driver::run_corpus(&fuzzing::TARGETS);
}

#[test]
fn the_real_log_seed_recovers_every_record() {
    let log = &SEEDS
        .iter()
        .find(|s| s.name == "real-log")
        .expect("the corpus has a real log")
        .bytes[1..];
    let reading = fuzz_support::read(log, Role::LastLog, RecoveryMode::Strict);
    let records = reading.records.expect("a clean log reads");
    assert_eq!(records.len(), 6, "{records:?}");
    assert!(matches!(records[5], WalRecord::Drop { .. }));
    assert_eq!(reading.cut, None);
}

#[test]
fn mutated_seeds_run_clean() {
    driver::run_mutations(&fuzzing::TARGETS, MUTATIONS, 0xA1);
}

/// The in-memory reading the fuzz target runs is the one recovery runs on files: for mutated
/// logs written into a data directory, [`Durable::open`] keeps the same records in both modes,
/// refuses exactly what the strict reading refuses, and cuts the same torn tail.
#[test]
fn mutated_logs_recover_from_files_as_in_memory() {
    let logs: Vec<Vec<u8>> = SEEDS
        .iter()
        .filter(|s| s.target == "wal" && s.bytes[0] == 0 && s.name.contains("log"))
        .map(|s| s.bytes[1..].to_vec())
        .collect();
    let mut mutator = Mutator::new(0x0D15C);
    for n in 0..OPENS {
        let log = mutator.mutate(&logs[n % logs.len()], &logs[(n + 1) % logs.len()]);
        for mode in [RecoveryMode::Strict, RecoveryMode::Salvage] {
            let dir = tempfile::tempdir().expect("a scratch directory");
            fs::write(log_path(dir.path(), 1), &log).expect("writing the log");
            let opened = Durable::open(dir.path(), u64::MAX, mode);
            let reading = fuzz_support::read(&log, Role::LastLog, mode);
            let hex: String = log.iter().map(|b| format!("{b:02x}")).collect();
            match (opened, reading.records) {
                (Ok((_, recovered)), Ok(records)) => {
                    let got: Vec<WalRecord> =
                        recovered.records.into_iter().map(|(_, r)| r).collect();
                    assert_eq!(got, records, "{mode:?}, log {hex}");
                    assert_eq!(
                        recovered.truncated.map(|(o, cut)| (o.offset, cut)),
                        reading.cut,
                        "{mode:?}, log {hex}"
                    );
                }
                (Err(_), Err(_)) => assert_eq!(mode, RecoveryMode::Strict),
                (opened, records) => panic!(
                    "{mode:?}: open gave {:?}, the in-memory reading {:?}; log {hex}",
                    opened.map(|_| ()),
                    records.map(|_| ())
                ),
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 256, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_run_clean(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        for (_, run) in fuzzing::TARGETS {
            run(&bytes);
        }
    }

    /// Arbitrary bytes after a valid prefix of a seed reach past the headers and checksums.
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
