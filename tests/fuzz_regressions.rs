//! Runs every input in `fuzz/regressions/` through the fuzz targets' checks, so an input the
//! fuzzer once found (or that we added by hand) stays fixed without a fuzzer installed.

use std::path::Path;

fn each_input<T>(target: &str, check: fn(&[u8]) -> T) -> usize {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("fuzz/regressions")
        .join(target);
    let mut count = 0;
    for entry in std::fs::read_dir(&dir).unwrap() {
        let path = entry.unwrap().path();
        let data = std::fs::read(&path).unwrap();
        let result = std::panic::catch_unwind(|| drop(check(&data)));
        assert!(result.is_ok(), "{} fails {target}", path.display());
        count += 1;
    }
    count
}

#[test]
fn route_request_regressions() {
    assert!(each_input("route_request", fibd::fuzz_check::route_request) > 0);
}

#[test]
fn recover_state_regressions() {
    assert!(each_input("recover_state", fibd::fuzz_check::recover_state) > 0);
}
