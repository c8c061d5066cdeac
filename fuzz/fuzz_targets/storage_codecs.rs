//! libFuzzer target: `oxcd::fuzzing::storage_codecs` must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oxcd::fuzzing::storage_codecs(data);
});
