//! libFuzzer target: `pneumotriage::fuzz::dataset` (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pneumotriage::fuzz::dataset(data));
