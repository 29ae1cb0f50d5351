//! cargo-fuzz target: [`memds_proto::fuzzing::snapshot`] (see `docs/fuzzing.md`).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| memds_proto::fuzzing::snapshot(data));
