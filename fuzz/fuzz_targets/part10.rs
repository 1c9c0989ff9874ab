//! libFuzzer target: `pneumotriage::fuzz::part10_meta` (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pneumotriage::fuzz::part10_meta(data));
