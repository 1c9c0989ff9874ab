//! libFuzzer target: `pneumotriage::fuzz::config_file` (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pneumotriage::fuzz::config_file(data));
