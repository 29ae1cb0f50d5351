//! cargo-fuzz target: [`memds_server::fuzzing::wal`] (see `docs/fuzzing.md`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| memds_server::fuzzing::wal(data));
