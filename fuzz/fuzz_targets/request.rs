//! libFuzzer target: `pneumotriage::fuzz::http_request` (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pneumotriage::fuzz::http_request(data));
