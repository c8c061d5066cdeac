//! libFuzzer target: `oxcd::fuzzing::gateway_json` must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oxcd::fuzzing::gateway_json(data);
});
