//! The in-suite fuzz driver shared by `memds-proto/tests/fuzz.rs` and
//! `memds-server/tests/fuzz_wal.rs` (each includes this file with `#[path]`): the checked-in
//! seed corpus, and running targets over it, over seeded mutations of it and over seeds with
//! arbitrary tails, naming the input whenever a target panics.

#![allow(dead_code, unreachable_pub)]

use std::fs;
use std::path::{Path, PathBuf};

use memds_proto::fuzzing::{Mutator, Seed, Target};

/// `fuzz/corpus/`.
pub fn corpus_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus")
}

/// Every file of a target's corpus, in name order.
pub fn corpus(target: &str) -> Vec<(PathBuf, Vec<u8>)> {
    let dir = corpus_dir().join(target);
    let mut files: Vec<(PathBuf, Vec<u8>)> = fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| {
            let path = entry.expect("a directory entry").path();
            let bytes = fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
            (path, bytes)
        })
        .collect();
    files.sort();
    files
}

/// Checks that each generated seed is in the corpus as generated, or with
/// `UPDATE_FUZZ_CORPUS=1` writes it there; `regenerate` is the command that does so.
pub fn check_or_update_corpus(seeds: &[Seed], regenerate: &str) {
    let update = std::env::var_os("UPDATE_FUZZ_CORPUS").is_some_and(|v| v == "1");
    for seed in seeds {
        let path = corpus_dir().join(seed.target).join(&seed.name);
        if update {
            fs::create_dir_all(path.parent().expect("a corpus file has a folder"))
                .expect("creating the corpus folder");
            fs::write(&path, &seed.bytes).expect("writing a seed");
            continue;
        }
        assert!(
            fs::read(&path).unwrap_or_default() == seed.bytes,
            "{} is missing or differs from its generator; run UPDATE_FUZZ_CORPUS=1 {regenerate}",
            path.display()
        );
    }
}

/// Runs every file of each target's corpus (none may be empty).
pub fn run_corpus(targets: &[(&'static str, Target)]) {
    for &(target, run) in targets {
        let files = corpus(target);
        assert!(!files.is_empty(), "the corpus of {target} is empty");
        for (path, bytes) in files {
            run_reporting(target, run, &bytes, &path.display().to_string());
        }
    }
}

/// Runs `mutations` seeded mutations of each target's corpus files.
pub fn run_mutations(targets: &[(&'static str, Target)], mutations: usize, seed: u64) {
    for (i, &(target, run)) in targets.iter().enumerate() {
        let seeds: Vec<Vec<u8>> = corpus(target).into_iter().map(|(_, b)| b).collect();
        let mut mutator = Mutator::new(seed + i as u64);
        for n in 0..mutations {
            let input = mutator.mutate(&seeds[n % seeds.len()], &seeds[(n / 7) % seeds.len()]);
            run_reporting(target, run, &input, &format!("mutation {n}"));
        }
    }
}

/// Runs the first `keep` bytes of `seed` followed by `tail` through the seed's own target:
/// arbitrary bytes after a valid prefix reach past magic numbers, headers and checksums.
pub fn run_seed_with_tail(
    targets: &[(&'static str, Target)],
    seed: &Seed,
    keep: usize,
    tail: &[u8],
) {
    let mut input = seed.bytes[..keep.min(seed.bytes.len())].to_vec();
    input.extend_from_slice(tail);
    let &(target, run) = targets
        .iter()
        .find(|(name, _)| *name == seed.target)
        .expect("every seed belongs to a target");
    run_reporting(target, run, &input, "a seed with an arbitrary tail");
}

/// Runs one input, and on a panic names the input (as hex) before failing.
pub fn run_reporting(target: &str, run: Target, bytes: &[u8], what: &str) {
    if std::panic::catch_unwind(|| run(bytes)).is_err() {
        let hex: String = bytes.iter().map(|b| format!("{b:02x}")).collect();
        panic!("fuzz target {target} panicked on {what}; input (hex): {hex}");
    }
}
