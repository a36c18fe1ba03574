//! The bytes of an HTTP/1.x response for a `Reply`: status line, headers and body, and the
//! `Date` header's spelling. Pure: the caller supplies the clock and writes the bytes.
//!
//! fibd spells its responses itself and hands tiny_http only the bytes to write. tiny_http's
//! `Response` allocates each header, looks for a `TE` header in the request, and formats the
//! date and the status line for every response; callgrind counted that as about a quarter of
//! the user-space instructions of a `/current` request in the musl build (docs/BENCHMARKS.md).

use crate::routes::{Reply, contains_ignore_case};

/// Whether tiny_http keeps reading requests from a connection after this one, by the same rule
/// tiny_http 0.12 applies (its `ClientConnection`): a `Connection` header naming `close` or
/// `upgrade` ends the connection, and HTTP/1.0 ends it unless the header names `keep-alive`.
/// Only the first `Connection` header counts, as in tiny_http.
pub fn connection_persists(version: (u8, u8), connection_header: Option<&str>) -> bool {
    let http_1_0 = version == (1, 0);
    match connection_header {
        Some(value)
            if contains_ignore_case(value, "close") || contains_ignore_case(value, "upgrade") =>
        {
            false
        }
        Some(value) => !http_1_0 || contains_ignore_case(value, "keep-alive"),
        None => !http_1_0,
    }
}

/// How a response is framed, beyond what the `Reply` says.
#[derive(Clone, Copy, Debug)]
pub struct Framing {
    /// The request's HTTP version, which decides whether the connection persists unless the
    /// response says otherwise. The status line says HTTP/1.1 whatever it is.
    pub version: (u8, u8),
    /// A `HEAD` request: the headers, `Content-Length` included, and no body.
    pub head_only: bool,
    /// Whether the connection stays open after this response (`connection_persists`). The
    /// response says so when it differs from the version's default, so that the client knows.
    pub persists: bool,
}

/// Spells the complete response to write for `reply` into `out`, which it empties first.
/// `date` is `http_date` of the present second.
pub fn render(out: &mut Vec<u8>, reply: &Reply, framing: Framing, date: &[u8; HTTP_DATE_BYTES]) {
    let body = if framing.head_only { "" } else { &reply.body };
    out.clear();
    out.reserve(HEAD_BYTES_MAX + body.len());
    // The highest version fibd speaks, whatever the request's (RFC 9110, 6.2): an HTTP/1.0
    // client reads it as 1.0, and its connection still closes by 1.0's rules.
    out.extend_from_slice(b"HTTP/1.1 ");
    push_decimal(out, u64::from(reply.status));
    out.push(b' ');
    let reason = tiny_http::StatusCode(reply.status).default_reason_phrase();
    out.extend_from_slice(reason.as_bytes());
    out.extend_from_slice(b"\r\nDate: ");
    out.extend_from_slice(date);
    out.extend_from_slice(b"\r\nContent-Type: ");
    out.extend_from_slice(reply.format.content_type().as_bytes());
    out.extend_from_slice(b"\r\nContent-Length: ");
    push_decimal(out, reply.body.len() as u64);
    out.extend_from_slice(b"\r\n");
    if reply.no_store {
        out.extend_from_slice(b"Cache-Control: no-store\r\n");
    }
    if reply.negotiated {
        out.extend_from_slice(b"Vary: Accept\r\n");
    }
    if let Some(allow) = reply.allow {
        out.extend_from_slice(b"Allow: ");
        out.extend_from_slice(allow.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    if let Some(secs) = reply.retry_after {
        out.extend_from_slice(b"Retry-After: ");
        push_decimal(out, u64::from(secs));
        out.extend_from_slice(b"\r\n");
    }
    let persists_by_default = framing.version >= (1, 1);
    match (framing.persists, persists_by_default) {
        (false, _) => out.extend_from_slice(b"Connection: close\r\n"),
        (true, false) => out.extend_from_slice(b"Connection: keep-alive\r\n"),
        (true, true) => {}
    }
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body.as_bytes());
}

/// Room for the status line and headers, so that `render` allocates once.
const HEAD_BYTES_MAX: usize = 320;

/// The length of an IMF-fixdate: `Sun, 06 Nov 1994 08:49:37 GMT`.
pub const HTTP_DATE_BYTES: usize = 29;

/// The last second whose year has four digits, which the fixed-length date format needs.
const HTTP_DATE_SECS_MAX: u64 = 253_402_300_799; // Fri, 31 Dec 9999 23:59:59 GMT

/// `unix_secs` as an HTTP date (RFC 9110's IMF-fixdate), clamped to the year 9999.
pub fn http_date(unix_secs: u64) -> [u8; HTTP_DATE_BYTES] {
    const WEEKDAYS: [&[u8; 3]; 7] = [b"Thu", b"Fri", b"Sat", b"Sun", b"Mon", b"Tue", b"Wed"];
    const MONTHS: [&[u8; 3]; 12] = [
        b"Jan", b"Feb", b"Mar", b"Apr", b"May", b"Jun", b"Jul", b"Aug", b"Sep", b"Oct", b"Nov",
        b"Dec",
    ];
    let secs = unix_secs.min(HTTP_DATE_SECS_MAX);
    let days = secs / 86_400;
    let of_day = secs % 86_400;
    let (year, month, day) = civil_from_days(days);
    let mut out = *b"Thu, 01 Jan 1970 00:00:00 GMT";
    // 1970-01-01 was a Thursday, the first entry of WEEKDAYS.
    out[0..3].copy_from_slice(WEEKDAYS[(days % 7) as usize]);
    put_digits(&mut out[5..7], u64::from(day));
    out[8..11].copy_from_slice(MONTHS[usize::from(month - 1)]);
    put_digits(&mut out[12..16], year);
    put_digits(&mut out[17..19], of_day / 3600);
    put_digits(&mut out[20..22], of_day / 60 % 60);
    put_digits(&mut out[23..25], of_day % 60);
    out
}

/// The proleptic Gregorian (year, month 1-12, day 1-31) of a count of days since 1970-01-01.
/// It counts in 400-year eras that start on 1 March, so that the leap day ends each year.
fn civil_from_days(days: u64) -> (u64, u8, u8) {
    const DAYS_PER_ERA: u64 = 146_097;
    // 0000-03-01 is 719,468 days before 1970-01-01.
    let since_era_zero = days + 719_468;
    let era = since_era_zero / DAYS_PER_ERA;
    let day_of_era = since_era_zero % DAYS_PER_ERA; // 0..=146_096
    let year_of_era =
        (day_of_era - day_of_era / 1460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_from_march = (5 * day_of_year + 2) / 153; // 0 = March .. 11 = February
    let day = day_of_year - (153 * month_from_march + 2) / 5 + 1;
    let month = if month_from_march < 10 {
        month_from_march + 3
    } else {
        month_from_march - 9
    };
    let year = era * 400 + year_of_era + u64::from(month <= 2);
    (year, month as u8, day as u8)
}

/// Writes `value` in decimal into all of `out`, zero-padded on the left.
fn put_digits(out: &mut [u8], mut value: u64) {
    for digit in out.iter_mut().rev() {
        *digit = b'0' + (value % 10) as u8;
        value /= 10;
    }
    assert_eq!(value, 0, "the value fits its field");
}

/// Appends `value` in decimal, without padding.
fn push_decimal(out: &mut Vec<u8>, value: u64) {
    let mut digits = [0u8; 20]; // u64::MAX has 20 digits
    let mut start = digits.len();
    let mut rest = value;
    loop {
        start -= 1;
        digits[start] = b'0' + (rest % 10) as u8;
        rest /= 10;
        if rest == 0 {
            break;
        }
    }
    out.extend_from_slice(&digits[start..]);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::routes::{self, Format};

    fn date(secs: u64) -> String {
        String::from_utf8(http_date(secs).to_vec()).unwrap()
    }

    #[test]
    fn dates_are_imf_fixdates() {
        assert_eq!(date(0), "Thu, 01 Jan 1970 00:00:00 GMT");
        // The example of RFC 9110, section 5.6.7.
        assert_eq!(date(784_111_777), "Sun, 06 Nov 1994 08:49:37 GMT");
        assert_eq!(date(951_782_400), "Tue, 29 Feb 2000 00:00:00 GMT");
        assert_eq!(date(951_868_800), "Wed, 01 Mar 2000 00:00:00 GMT");
        assert_eq!(date(4_107_542_399), "Sun, 28 Feb 2100 23:59:59 GMT");
        assert_eq!(date(4_107_542_400), "Mon, 01 Mar 2100 00:00:00 GMT");
        assert_eq!(date(1_795_392_000), "Mon, 23 Nov 2026 00:00:00 GMT");
        assert_eq!(date(HTTP_DATE_SECS_MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
        assert_eq!(date(u64::MAX), "Fri, 31 Dec 9999 23:59:59 GMT");
    }

    #[test]
    fn every_day_follows_the_one_before() {
        // Walk day by day from 1970 to 2200: each date is the day after the previous one in
        // the calendar, with February's length by the Gregorian rule.
        let leap =
            |y: u64| (y.is_multiple_of(4) && !y.is_multiple_of(100)) || y.is_multiple_of(400);
        let month_days = |y: u64, m: u8| match m {
            2 if leap(y) => 29,
            2 => 28,
            4 | 6 | 9 | 11 => 30,
            _ => 31,
        };
        let mut expected = (1970, 1, 1);
        for days in 0..84_000 {
            assert_eq!(civil_from_days(days), expected, "day {days}");
            let (y, m, d) = expected;
            expected = if d < month_days(y, m) {
                (y, m, d + 1)
            } else if m < 12 {
                (y, m + 1, 1)
            } else {
                (y + 1, 1, 1)
            };
        }
    }

    #[test]
    fn render_replaces_what_the_buffer_held() {
        let framing = Framing {
            version: (1, 1),
            head_only: false,
            persists: true,
        };
        let (long, short) = (
            routes::list(100, Format::Json),
            routes::number(3, Format::Text),
        );
        let mut reused = Vec::new();
        render(&mut reused, &long, framing, DATE);
        render(&mut reused, &short, framing, DATE);
        let mut fresh = Vec::new();
        render(&mut fresh, &short, framing, DATE);
        assert_eq!(reused, fresh);
        assert!(
            fresh.ends_with(b"\r\n\r\n2\n"),
            "{}",
            String::from_utf8_lossy(&fresh)
        );
    }

    #[test]
    fn decimals() {
        for value in [0, 7, 10, 186, 65_535, u64::MAX] {
            let mut out = b"x".to_vec();
            push_decimal(&mut out, value);
            assert_eq!(out, format!("x{value}").into_bytes());
        }
    }

    fn reply(status: u16, body: &str) -> Reply {
        Reply {
            status,
            body: body.to_string().into(),
            format: Format::Text,
            no_store: false,
            allow: None,
            retry_after: None,
            negotiated: false,
        }
    }

    const DATE: &[u8; HTTP_DATE_BYTES] = b"Mon, 23 Nov 2026 15:00:00 GMT";

    fn rendered(reply: &Reply, version: (u8, u8), head_only: bool, persists: bool) -> String {
        let framing = Framing {
            version,
            head_only,
            persists,
        };
        let mut out = Vec::new();
        render(&mut out, reply, framing, DATE);
        String::from_utf8(out).unwrap()
    }

    #[test]
    fn a_plain_reply_is_framed_by_its_length() {
        assert_eq!(
            rendered(&reply(200, "5\n"), (1, 1), false, true),
            "HTTP/1.1 200 OK\r\nDate: Mon, 23 Nov 2026 15:00:00 GMT\r\n\
             Content-Type: text/plain; charset=utf-8\r\nContent-Length: 2\r\n\r\n5\n"
        );
    }

    #[test]
    fn head_keeps_the_length_and_drops_the_body() {
        let text = rendered(&reply(200, "5\n"), (1, 1), true, true);
        assert!(text.ends_with("Content-Length: 2\r\n\r\n"), "{text}");
    }

    #[test]
    fn optional_headers_appear_when_set() {
        let mut refused = reply(503, "overloaded\n");
        refused.format = Format::Json;
        refused.no_store = true;
        refused.allow = Some("GET, POST");
        refused.retry_after = Some(1);
        refused.negotiated = true;
        let text = rendered(&refused, (1, 1), false, true);
        assert!(
            text.starts_with("HTTP/1.1 503 Service Unavailable\r\n"),
            "{text}"
        );
        for header in [
            "Content-Type: application/json\r\n",
            "Cache-Control: no-store\r\n",
            "Allow: GET, POST\r\n",
            "Retry-After: 1\r\n",
            "Vary: Accept\r\n",
        ] {
            assert!(text.contains(header), "{header} in {text}");
        }
    }

    #[test]
    fn the_connection_header_says_what_differs_from_the_default() {
        let ok = reply(200, "0\n");
        let says = |version, persists| {
            let text = rendered(&ok, version, false, persists);
            text.lines()
                .find_map(|line| line.strip_prefix("Connection: "))
                .map(str::to_string)
        };
        assert_eq!(says((1, 1), true), None);
        assert_eq!(says((1, 1), false).as_deref(), Some("close"));
        assert_eq!(says((1, 0), true).as_deref(), Some("keep-alive"));
        assert_eq!(says((1, 0), false).as_deref(), Some("close"));
        // The status line names the server's version, not the request's.
        assert!(rendered(&ok, (1, 0), false, false).starts_with("HTTP/1.1 200 OK\r\n"));
    }

    #[test]
    fn persistence_follows_tiny_http() {
        assert!(connection_persists((1, 1), None));
        assert!(connection_persists((1, 1), Some("keep-alive")));
        assert!(!connection_persists((1, 1), Some("Close")));
        assert!(!connection_persists((1, 1), Some("Upgrade")));
        assert!(!connection_persists((1, 0), None));
        assert!(!connection_persists((1, 0), Some("TE")));
        assert!(connection_persists((1, 0), Some("Keep-Alive")));
        assert!(!connection_persists((1, 0), Some("keep-alive, close")));
    }
}
