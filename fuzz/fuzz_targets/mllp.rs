//! libFuzzer target: `pneumotriage::fuzz::mllp_reply` (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pneumotriage::fuzz::mllp_reply(data));
