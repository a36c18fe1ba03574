//! Fuzzes request routing and error rendering: see `fibd::fuzz_check::route_request`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| {
    fibd::fuzz_check::route_request(data);
});
