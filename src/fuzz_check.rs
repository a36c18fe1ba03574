//! The properties the fuzz targets check, kept in the library so that the regression inputs
//! the fuzzer finds run as ordinary tests (`tests/fuzz_regressions.rs`) without a fuzzer.

use crate::routes::{self, Format, Head};
use crate::slot;

/// Splits `data` into a method, a request target, an Accept header and flags, routes it, and
/// checks that the answer is a well-formed success or a one-line 4xx, never a panic or a 5xx.
pub fn route_request(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let mut parts = text.splitn(3, '\n');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let accept = parts.next();
    let flags = data.first().copied().unwrap_or_default();
    let format = Format::from_accept(accept);
    let head = Head {
        target_bytes: target.len(),
        header_bytes: accept.map_or(0, str::len),
        header_fields: usize::from(flags >> 4),
        missing_host: flags & 1 == 1,
        length_ambiguous: false,
    };
    let has_body = flags & 2 == 2;
    let outcome = routes::check_head(&head, format)
        .and_then(|()| routes::route(method, target, has_body, format));
    match outcome {
        Ok(route) => {
            // Every route a request can reach renders without a panic.
            let reply = match route {
                routes::Route::Fib(n) => routes::number(n, format),
                routes::Route::FibList(n) => routes::list(n, format),
                _ => routes::health(format),
            };
            assert_eq!(reply.status, 200);
        }
        Err(reply) => {
            assert!(
                (400..500).contains(&reply.status),
                "status {}",
                reply.status
            );
            assert_eq!(
                reply.body.matches('\n').count(),
                1,
                "one line: {:?}",
                reply.body
            );
            assert!(reply.body.len() < 1024, "bounded error body");
            if reply.status == 405 {
                assert!(reply.allow.is_some(), "405 names the allowed methods");
            }
        }
    }
}

/// Recovering state from arbitrary bytes either succeeds with an index in the table or fails
/// with a message; it never panics.
pub fn recover_state(data: &[u8]) {
    if let Ok(recovered) = slot::recover(data) {
        assert!(recovered.slot.cursor.index() <= crate::fib::INDEX_MAX);
        assert_eq!(data.len(), slot::FILE_BYTES);
    }
}
