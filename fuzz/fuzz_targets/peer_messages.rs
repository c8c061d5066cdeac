//! libFuzzer target: `oxcd::fuzzing::peer_messages` must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oxcd::fuzzing::peer_messages(data);
});
