//! libFuzzer target: `pneumotriage::fuzz::command_set` (see src/fuzz.rs).
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| pneumotriage::fuzz::command_set(data));
