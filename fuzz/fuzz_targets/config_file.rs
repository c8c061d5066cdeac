//! libFuzzer target: `oxcd::fuzzing::config_file` must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oxcd::fuzzing::config_file(data);
});
