//! libFuzzer target: `oxcd::fuzzing::snapshot_file` must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oxcd::fuzzing::snapshot_file(data);
});
