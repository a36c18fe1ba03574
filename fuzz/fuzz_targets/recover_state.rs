//! Fuzzes state recovery from arbitrary file bytes: see `fibd::fuzz_check::recover_state`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| fibd::fuzz_check::recover_state(data));
