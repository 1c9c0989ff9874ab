//! libFuzzer target: `pneumotriage::fuzz::pdu_stream` (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pneumotriage::fuzz::pdu_stream(data));
