//! libFuzzer target: `oxcd::fuzzing::grpc_requests` must never panic.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    oxcd::fuzzing::grpc_requests(data);
});
