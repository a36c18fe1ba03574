//! The properties the fuzz targets check, kept in the library so that the regression inputs
//! the fuzzer finds run as ordinary tests (`tests/fuzz_regressions.rs`) without a fuzzer.

use crate::cursor::Cursor;
use crate::routes::{self, Format, Head};
use crate::slot;

/// Takes the first byte of `data` as flags and splits the rest, by lines, into a method, a
/// request target, an Accept header and a Host header, routes it, and checks that the answer
/// is a well-formed success or a one-line 4xx (or the 501 of a method fibd does not know),
/// never a panic or another 5xx; and that JSON is only chosen when the Accept header names an
/// `application/` type. The flags come from a byte of their own so that any method, `GET`
/// included, can be fuzzed with and without each of them: bit 0 drops the Host header, bit 3
/// sends it twice, bit 1 says there is a body, bit 2 that its length is ambiguous, and the top
/// four bits count the header fields. Returns the status.
pub fn route_request(data: &[u8]) -> u16 {
    let (flags, text) = data.split_first().map_or((0, &[][..]), |(f, t)| (*f, t));
    let text = String::from_utf8_lossy(text);
    let mut parts = text.splitn(4, '\n');
    let method = parts.next().unwrap_or_default();
    let target = parts.next().unwrap_or_default();
    let accept = parts.next();
    let host = parts.next().unwrap_or("localhost");
    let format = Format::from_accept(accept);
    if format == Format::Json {
        let accept = accept.unwrap_or_default();
        assert!(
            routes::contains_ignore_case(accept, "application/"),
            "JSON for {accept:?}"
        );
    }
    let host_fields = match flags & 9 {
        0 => 1,
        1 => 0,
        _ => 2,
    };
    let head = Head {
        version: (1, 1),
        target_bytes: target.len(),
        header_bytes: accept.map_or(0, str::len) + host.len(),
        header_fields: usize::from(flags >> 4),
        host: routes::HostField::judge((1, 1), host_fields, Some(host)),
        length_ambiguous: flags & 4 == 4,
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
            reply.status
        }
        Err(reply) => {
            assert!(
                (400..500).contains(&reply.status) || reply.status == 501,
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
            reply.status
        }
    }
}

/// Recovering state from arbitrary bytes either succeeds with an index in the table or fails
/// with a message; it never panics. The bytes are also laid over one slot of a file whose
/// slots are both valid (the first byte picks the slot), which lets the fuzzer reach past the
/// length check; damage to one slot must never lose the other: recovery then returns the
/// intact slot, or the damaged one only if its record still decodes as a newer valid slot;
/// or it refuses the file, when the damage is a slot written whole (its envelope intact) of
/// another format version, or newer than the intact one and holding what fibd never writes.
pub fn recover_state(data: &[u8]) {
    if let Ok(recovered) = slot::recover(data) {
        assert!(recovered.slot.cursor.index() <= crate::fib::INDEX_MAX);
        assert_eq!(data.len(), slot::FILE_BYTES);
    }
    let Some((which, overlay)) = data.split_first() else {
        return;
    };
    let slots = [(10, 40), (11, 41)].map(|(sequence, index)| slot::Slot {
        sequence,
        cursor: Cursor::at(index).expect("in the table"),
    });
    let mut file = Vec::with_capacity(slot::FILE_BYTES);
    for s in slots {
        file.extend_from_slice(&slot::encode(s));
    }
    let damaged = usize::from(which & 1);
    let start = damaged * slot::SLOT_BYTES;
    let len = overlay.len().min(slot::SLOT_BYTES);
    file[start..start + len].copy_from_slice(&overlay[..len]);
    let intact = slots[1 - damaged];
    let recovered = match slot::recover(&file) {
        Ok(recovered) => recovered,
        Err(slot::RecoverError::OtherVersion { position, .. }) if position == damaged => return,
        Err(slot::RecoverError::Damaged {
            position,
            sequence,
            error,
        }) if position == damaged => {
            // Only a slot written whole, and newer than the intact one, refuses the file: a
            // torn one (its checksum failing) never may.
            let bytes = file[start..start + slot::SLOT_BYTES]
                .try_into()
                .expect("one slot");
            let decoded = slot::decode(bytes, damaged);
            assert!(
                error.written_whole() && decoded.as_ref().err() == Some(&error),
                "refused for {error} where the slot decodes as {decoded:?}"
            );
            assert!(sequence > intact.sequence, "refused for an older slot");
            return;
        }
        Err(err) => panic!("one slot is intact, yet: {err}"),
    };
    assert!(
        recovered.slot == intact || recovered.slot.sequence > intact.sequence,
        "{recovered:?} instead of the intact {intact:?}"
    );
}

#[cfg(test)]
mod tests {
    use super::route_request;

    #[test]
    fn the_flags_byte_reaches_every_route_and_every_refusal() {
        assert_eq!(route_request(b"\0GET\n/fib/10\n"), 200);
        assert_eq!(route_request(b"\0GET\n/current\napplication/json"), 200);
        assert_eq!(route_request(b"\0BREW\n/next\n"), 501);
        assert_eq!(route_request(b"\0DELETE\n/next\n"), 405);
        assert_eq!(route_request(b"\0GET\n/nowhere\n"), 404);
        assert_eq!(route_request(b"\x01GET\n/fib/10\n"), 400, "missing Host");
        assert_eq!(route_request(b"\x08GET\n/fib/10\n"), 400, "two Hosts");
        assert_eq!(
            route_request(b"\0GET\n/fib/10\n\na b"),
            400,
            "an invalid Host"
        );
        assert_eq!(route_request(b"\0GET\n/fib/10\n\n[::1]:80"), 200, "IPv6");
        assert_eq!(route_request(b"\0GET\n/fib/10\n\n"), 200, "an empty Host");
        assert_eq!(route_request(b"\x02GET\n/fib/10\n"), 400, "a body");
        assert_eq!(
            route_request(b"\x04GET\n/fib/10\n"),
            400,
            "ambiguous length"
        );
        assert_eq!(
            route_request(b"\xf0GET\n/fib/10\n"),
            200,
            "15 header fields"
        );
        assert_eq!(route_request(b""), 501, "no method");
    }

    #[test]
    fn damage_to_one_slot_never_loses_the_other() {
        super::recover_state(b"");
        super::recover_state(b"\0");
        super::recover_state(&[1; 5000]);
        // A valid newer slot laid over the second slot wins.
        let newer = crate::slot::encode(crate::slot::Slot {
            sequence: 13,
            cursor: super::Cursor::at(7).unwrap(),
        });
        super::recover_state(&[[1].as_slice(), &newer].concat());
        // Slots written whole with what fibd never writes, newer than the intact one: the last
        // sequence number over slot 1, and an odd sequence over slot 0. Both refuse the file.
        for (which, sequence) in [(1u8, u64::MAX), (0, 13)] {
            let whole = crate::slot::encode(crate::slot::Slot {
                sequence,
                cursor: super::Cursor::at(7).unwrap(),
            });
            super::recover_state(&[[which].as_slice(), &whole].concat());
        }
    }
}
