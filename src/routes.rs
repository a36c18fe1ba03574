//! The HTTP contract, free of any server library: which request target and method map to
//! which action, and how every answer and error is spelled in plain text and in JSON.
//! Pure functions of their input, so they are unit-tested and fuzzed directly.

use std::borrow::Cow;
use std::fmt::Write as _;
use std::sync::OnceLock;

use crate::cursor::{Bound, Step};
use crate::fib;
use crate::limits;

/// Longest piece of client input echoed back in an error message; longer input is cut, so a
/// hostile request cannot make us build a large error body.
const ECHO_BYTES_MAX: usize = 64;

/// The largest `N` accepted by `/fib?n=N`: the whole table, F(0)..=F(186).
pub const LIST_LEN_MAX: u64 = fib::TABLE_LEN as u64;

/// How the client asked to be answered.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Text,
    Json,
    /// The Prometheus text exposition format, for `/metrics` only.
    Prometheus,
}

impl Format {
    /// The format one `Accept` header value asks for (`Accept::format`); plain text without one.
    pub fn from_accept(accept: Option<&str>) -> Format {
        let mut negotiation = Accept::default();
        if let Some(value) = accept {
            negotiation.add(value);
        }
        negotiation.format()
    }

    /// The `Content-Type` of an answer in this format.
    pub fn content_type(self) -> &'static str {
        match self {
            Format::Text => "text/plain; charset=utf-8",
            Format::Json => "application/json",
            Format::Prometheus => "text/plain; version=0.0.4; charset=utf-8",
        }
    }
}

/// Content negotiation between the two formats fibd answers in, over every `Accept` header
/// field of a request (RFC 9110, 12.5.1). Several fields count as one comma-separated list
/// (RFC 9110, 5.3), so each is `add`ed in the order received; `format` then decides.
///
/// Each format takes the weight (q) of the most specific media range that matches it:
/// `application/json` or `text/plain` by name (ASCII case ignored, parameters other than q
/// not compared), else `application/*` or `text/*`, else `*/*`. Among equally specific ranges
/// the highest q counts. JSON is answered when its q is above 0 and at least text's; on equal
/// q, the format named more specifically wins, then the one listed first, so that
/// `application/json, text/plain` and `application/json, */*` get JSON while `*/*` (curl's
/// default) and `*/*;q=0.8` (a browser's) get text. Otherwise, and with no Accept header, text.
///
/// An element that is not a media range, or whose q is not a qvalue (0 to 1 with at most three
/// decimals, RFC 9110 12.4.2), is ignored: a preference that cannot be read is not guessed at.
/// The scan is one pass over the bytes and allocates nothing.
#[derive(Clone, Copy, Debug, Default)]
pub struct Accept {
    /// Elements seen so far, over every field: an element's position breaks ties.
    elements: usize,
    json: Option<Rating>,
    text: Option<Rating>,
}

/// How one media range rates a format: the range's specificity (1 for `*/*`, 2 for `type/*`,
/// 3 for a full type), its weight in thousandths, and its position in the list.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Rating {
    specificity: u8,
    q: u16,
    position: usize,
}

impl Accept {
    /// Adds the elements of one `Accept` field value.
    pub fn add(&mut self, value: &str) {
        for element in SplitOutsideQuotes::new(value, b',') {
            let position = self.elements;
            self.elements += 1;
            let Some((media_type, subtype, q)) = media_range(element) else {
                continue;
            };
            let specificity = |ty: &str, sub: &str| match (media_type, subtype) {
                ("*", "*") => Some(1),
                (t, "*") if t.eq_ignore_ascii_case(ty) => Some(2),
                (t, s) if t.eq_ignore_ascii_case(ty) && s.eq_ignore_ascii_case(sub) => Some(3),
                _ => None,
            };
            for (slot, ty, sub) in [
                (&mut self.json, "application", "json"),
                (&mut self.text, "text", "plain"),
            ] {
                let Some(specificity) = specificity(ty, sub) else {
                    continue;
                };
                let rating = Rating {
                    specificity,
                    q,
                    position,
                };
                // The most specific range counts; among equals the highest q, then the first.
                if slot.is_none_or(|kept| (specificity, q) > (kept.specificity, kept.q)) {
                    *slot = Some(rating);
                }
            }
        }
    }

    /// The format to answer in.
    pub fn format(&self) -> Format {
        let Some(json) = self.json.filter(|json| json.q > 0) else {
            return Format::Text;
        };
        let Some(text) = self.text else {
            return Format::Json;
        };
        // Higher q first, then the more specific range, then the earlier one (a lower
        // position ranks higher); a single range that rates both (`*/*`) leaves text.
        let rank = |r: Rating| (r.q, r.specificity, std::cmp::Reverse(r.position));
        if rank(json) > rank(text) {
            Format::Json
        } else {
            Format::Text
        }
    }
}

/// The type, subtype and weight (in thousandths) of one element of an Accept list, or `None`
/// when it is not a media range or its weight is not a qvalue. Parameters other than q are
/// skipped unread, as is anything after q (RFC 7231's accept-ext).
fn media_range(element: &str) -> Option<(&str, &str, u16)> {
    let mut parts = SplitOutsideQuotes::new(element, b';');
    let range = parts.next()?.trim_matches(OWS);
    let (media_type, subtype) = range.split_once('/')?;
    let token = |s: &str| !s.is_empty() && s.bytes().all(is_tchar);
    if !token(media_type) || !token(subtype) || (media_type == "*" && subtype != "*") {
        return None;
    }
    for parameter in parts {
        let Some((name, value)) = parameter.split_once('=') else {
            continue;
        };
        if name.trim_matches(OWS).eq_ignore_ascii_case("q") {
            return Some((media_type, subtype, qvalue(value.trim_matches(OWS))?));
        }
    }
    Some((media_type, subtype, 1000))
}

/// A qvalue (RFC 9110, 12.4.2: `0` to `1` with at most three decimals) in thousandths.
fn qvalue(value: &str) -> Option<u16> {
    let (whole, decimals) = value.split_once('.').unwrap_or((value, ""));
    if decimals.len() > 3 || !decimals.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    let mut thousandths = 0u16;
    for place in 0..3 {
        let digit = decimals
            .as_bytes()
            .get(place)
            .map_or(0, |b| u16::from(b - b'0'));
        thousandths = thousandths * 10 + digit;
    }
    match whole {
        "0" => Some(thousandths),
        "1" if thousandths == 0 => Some(1000),
        _ => None,
    }
}

/// Optional white space, RFC 9110's OWS.
const OWS: &[char] = &[' ', '\t'];

/// RFC 9110's `tchar`, the characters of a token.
fn is_tchar(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

/// The pieces of `text` between `delimiter`s that are not inside a quoted string (where a
/// backslash escapes the next character), so that `a;b="x,y", c` splits on its one real comma.
struct SplitOutsideQuotes<'a> {
    rest: Option<&'a str>,
    delimiter: u8,
}

impl<'a> SplitOutsideQuotes<'a> {
    fn new(text: &'a str, delimiter: u8) -> Self {
        SplitOutsideQuotes {
            rest: Some(text),
            delimiter,
        }
    }
}

impl<'a> Iterator for SplitOutsideQuotes<'a> {
    type Item = &'a str;

    fn next(&mut self) -> Option<&'a str> {
        let text = self.rest?;
        let (mut quoted, mut escaped) = (false, false);
        for (i, b) in text.bytes().enumerate() {
            match b {
                _ if escaped => escaped = false,
                b'\\' if quoted => escaped = true,
                b'"' => quoted = !quoted,
                _ if b == self.delimiter && !quoted => {
                    self.rest = Some(&text[i + 1..]);
                    return Some(&text[..i]);
                }
                _ => {}
            }
        }
        self.rest = None;
        Some(text)
    }
}

/// What a well-formed request asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Route {
    Index,
    Current,
    Step(Step),
    Fib(u8),
    FibList(u8),
    Health,
    Ready,
    Metrics,
}

/// A finished answer: status, body and the headers that vary between answers.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reply {
    pub status: u16,
    /// Borrowed for the answers spelled once for all (`number`), owned for the rest.
    pub body: Cow<'static, str>,
    pub format: Format,
    /// Set on every answer about the cursor, whose value changes under the client's feet.
    pub no_store: bool,
    /// The methods a route accepts, for 405 answers.
    pub allow: Option<&'static str>,
    /// Seconds, for 503 answers that are worth retrying.
    pub retry_after: Option<u32>,
    /// Whether the body's format was chosen by the request's `Accept` header, which the answer
    /// then names in `Vary` (RFC 9110, 12.5.5) so that a cache keeps one copy per format.
    pub negotiated: bool,
}

impl Reply {
    fn ok(format: Format, body: impl Into<Cow<'static, str>>) -> Reply {
        Reply {
            status: 200,
            body: body.into(),
            format,
            no_store: false,
            allow: None,
            retry_after: None,
            negotiated: true,
        }
    }

    /// An error answer: a one-line message, or `{"error":code,"message":...}` in JSON.
    pub fn error(status: u16, code: &'static str, message: &str, format: Format) -> Reply {
        let body = match format {
            Format::Text | Format::Prometheus => format!("{message}\n"),
            Format::Json => {
                let mut body = String::with_capacity(message.len() + code.len() + 32);
                body.push_str("{\"error\":\"");
                body.push_str(code);
                body.push_str("\",\"message\":");
                push_json_string(&mut body, message);
                body.push_str("}\n");
                body
            }
        };
        Reply {
            status,
            body: body.into(),
            format,
            no_store: false,
            allow: None,
            retry_after: None,
            negotiated: true,
        }
    }

    /// For the answers whose format is fixed, whatever the client asked for.
    fn not_negotiated(mut self) -> Reply {
        self.negotiated = false;
        self
    }

    /// Marks the answer `Cache-Control: no-store`.
    fn uncacheable(mut self) -> Reply {
        self.no_store = true;
        self
    }
}

/// The sizes and facts of a request head that are checked before routing.
#[derive(Clone, Debug, Default)]
pub struct Head {
    /// The HTTP version of the request line (`version_served`).
    pub version: (u8, u8),
    pub target_bytes: usize,
    pub header_bytes: usize,
    pub header_fields: usize,
    /// What its Host header fields are worth (`HostField::judge`).
    pub host: HostField,
    /// Its Content-Length headers do not frame it unambiguously (`content_length_conflicts`).
    pub length_ambiguous: bool,
}

/// Whether fibd serves requests of HTTP `version`: 1.0 and 1.1. tiny_http answers higher
/// versions itself and passes on `HTTP/0.9`, which fibd refuses: RFC 9112 (2.3) lets a server
/// read a higher minor version as the highest it implements, but never another major version,
/// and a request line with a version is not HTTP/0.9 either (which has none), so it is
/// malformed: 400, as RFC 9110 (15.5.1) has for malformed syntax, rather than 505, which would
/// count a client's error among the server's failures.
pub fn version_served(version: (u8, u8)) -> bool {
    version >= (1, 0)
}

/// A request's Host header fields, as RFC 9112 (3.2) judges them: a server must answer 400 to
/// an HTTP/1.1 request without one, and to any request with several or with an invalid one.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum HostField {
    /// One valid Host field, or none where none is needed (HTTP/1.0).
    #[default]
    Fine,
    Missing,
    Repeated,
    Invalid,
}

impl HostField {
    /// Judges a request of HTTP `version` with `count` Host fields, the first of value `first`.
    pub fn judge(version: (u8, u8), count: usize, first: Option<&str>) -> HostField {
        match (count, first) {
            (0, _) if version >= (1, 1) => HostField::Missing,
            (2.., _) => HostField::Repeated,
            (_, Some(value)) if !valid_host(value) => HostField::Invalid,
            _ => HostField::Fine,
        }
    }
}

/// Whether `value` is a valid Host field value (RFC 9110, 7.2): `uri-host [ ":" port ]`, where
/// uri-host (RFC 3986, 3.2.2) is an IP literal in brackets (IPv6 or IPvFuture) or a reg-name:
/// letters, digits, `-._~`, `!$&'()*+,;=` and percent-escapes, possibly none (an IPv4 address
/// is spelled as a reg-name). The port is digits, possibly none. An empty value is valid: RFC
/// 9112 has a client send it when the target URI has no authority.
pub fn valid_host(value: &str) -> bool {
    let (host_is_valid, port) = match value.strip_prefix('[') {
        Some(bracketed) => match bracketed.split_once(']') {
            Some((literal, port)) => (ip_literal(literal), port),
            None => return false,
        },
        None => {
            let (host, port) = value.split_at(value.find(':').unwrap_or(value.len()));
            (reg_name(host), port)
        }
    };
    host_is_valid
        && (port.is_empty()
            || port
                .strip_prefix(':')
                .is_some_and(|digits| digits.bytes().all(|b| b.is_ascii_digit())))
}

/// RFC 3986's reg-name: unreserved characters, sub-delims and percent-escapes.
fn reg_name(host: &str) -> bool {
    let bytes = host.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let escape = bytes.get(i + 1..i + 3);
                if !escape.is_some_and(|hex| hex.iter().all(u8::is_ascii_hexdigit)) {
                    return false;
                }
                i += 3;
            }
            b if unreserved_or_sub_delim(b) => i += 1,
            _ => return false,
        }
    }
    true
}

/// RFC 3986's IP-literal without its brackets: an IPv6 address, or `v` HEX `.` and more.
fn ip_literal(literal: &str) -> bool {
    if literal.parse::<std::net::Ipv6Addr>().is_ok() {
        return true;
    }
    let future = literal
        .strip_prefix(['v', 'V'])
        .and_then(|v| v.split_once('.'));
    future.is_some_and(|(version, address)| {
        !version.is_empty()
            && version.bytes().all(|b| b.is_ascii_hexdigit())
            && !address.is_empty()
            && address
                .bytes()
                .all(|b| b == b':' || unreserved_or_sub_delim(b))
    })
}

/// RFC 3986's `unreserved` and `sub-delims` characters.
fn unreserved_or_sub_delim(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"-._~!$&'()*+,;=".contains(&b)
}

/// Reads one Content-Length header's value into `length` (the earlier ones' value, if any).
/// True when it makes the request's framing ambiguous: it is not a plain decimal that fits in
/// `usize` (RFC 9112 allows digits only), or it differs from an earlier Content-Length.
/// tiny_http frames the body by the first Content-Length and ignores one it cannot parse, so
/// the body of such a request is read as the next request on the connection; a proxy in front
/// that reads the framing differently would let a client smuggle requests past it.
pub fn content_length_conflicts(length: &mut Option<usize>, value: &str) -> bool {
    let digits = !value.is_empty() && value.bytes().all(|b| b.is_ascii_digit());
    let Some(parsed) = digits.then(|| value.parse::<usize>().ok()).flatten() else {
        return true;
    };
    *length.get_or_insert(parsed) != parsed
}

/// Refuses requests of an HTTP version fibd does not serve (400), request heads past the
/// limits (414, 431), requests with an ambiguous Content-Length and those whose Host fields
/// RFC 9112 refuses (400). Of the two 400s, the
/// Content-Length's is given, since it is what makes fibd close the connection.
pub fn check_head(head: &Head, format: Format) -> Result<(), Reply> {
    if !version_served(head.version) {
        let message = format!(
            "HTTP/{}.{} is not served; send HTTP/1.1 or HTTP/1.0, on a new connection",
            head.version.0, head.version.1
        );
        return Err(Reply::error(400, "unsupported_version", &message, format));
    }
    if head.target_bytes > limits::TARGET_BYTES_MAX {
        let message = format!(
            "the request target is {} bytes; at most {} are served",
            head.target_bytes,
            limits::TARGET_BYTES_MAX
        );
        return Err(Reply::error(414, "target_too_long", &message, format));
    }
    if head.header_bytes > limits::HEADER_BYTES_MAX
        || head.header_fields > limits::HEADER_FIELDS_MAX
    {
        let message = format!(
            "the request has {} header fields and {} header bytes; at most {} and {} are served",
            head.header_fields,
            head.header_bytes,
            limits::HEADER_FIELDS_MAX,
            limits::HEADER_BYTES_MAX
        );
        return Err(Reply::error(431, "headers_too_large", &message, format));
    }
    if head.length_ambiguous {
        return Err(Reply::error(
            400,
            "bad_content_length",
            "Content-Length must be one decimal number of bytes, the same in every \
             Content-Length header; the connection is closed",
            format,
        ));
    }
    match head.host {
        HostField::Fine => Ok(()),
        HostField::Missing => Err(Reply::error(
            400,
            "missing_host",
            "an HTTP/1.1 request needs a Host header",
            format,
        )),
        HostField::Repeated => Err(Reply::error(
            400,
            "bad_host",
            "the request has more than one Host header; send exactly one",
            format,
        )),
        HostField::Invalid => Err(Reply::error(
            400,
            "bad_host",
            "the Host header is not a host name, an IPv4 address or a bracketed IPv6 address \
             with an optional :port",
            format,
        )),
    }
}

/// A route's methods: as its `Allow` header spells them, and one by one.
type Allowed = (&'static str, &'static [&'static str]);
const GET_HEAD: Allowed = ("GET, HEAD", &["GET", "HEAD"]);
const GET_POST: Allowed = ("GET, POST", &["GET", "POST"]);

/// Maps a method and request target to a route, or to the error answer that explains why not.
/// `has_body` is true when the request announced a non-empty body, which no route accepts.
pub fn route(method: &str, target: &str, has_body: bool, format: Format) -> Result<Route, Reply> {
    if !KNOWN_METHODS.contains(&method) {
        let message = format!(
            "method {} is not one fibd knows; its routes take GET, HEAD or POST (GET / lists them)",
            echo(method)
        );
        return Err(Reply::error(501, "not_implemented", &message, format));
    }
    let (path, query) = path_and_query(target);
    let (route, (allow, methods)) = match path {
        "/" => (Route::Index, GET_HEAD),
        "/current" => (Route::Current, GET_HEAD),
        "/next" => (Route::Step(Step::Next), GET_POST),
        "/previous" => (Route::Step(Step::Previous), GET_POST),
        "/healthz" => (Route::Health, GET_HEAD),
        "/readyz" => (Route::Ready, GET_HEAD),
        "/metrics" => (Route::Metrics, GET_HEAD),
        "/fib" => (Route::FibList(0), GET_HEAD),
        _ => match path.strip_prefix("/fib/") {
            // `n` is checked below, after the method, so a wrong method is always a 405.
            Some(_) => (Route::Fib(0), GET_HEAD),
            None => {
                let message = format!("no route for {}; GET / lists the routes", echo(path));
                return Err(Reply::error(404, "not_found", &message, format));
            }
        },
    };
    if !methods.contains(&method) {
        let message = format!(
            "method {} is not allowed on {}; allowed: {allow}",
            echo(method),
            echo(path)
        );
        let mut reply = Reply::error(405, "method_not_allowed", &message, format);
        reply.allow = Some(allow);
        return Err(reply);
    }
    if has_body {
        let message = format!(
            "{} takes no request body; send the request without one",
            echo(path)
        );
        return Err(Reply::error(400, "unexpected_body", &message, format));
    }
    match route {
        Route::Fib(_) => {
            let n = path.strip_prefix("/fib/").unwrap_or_default();
            Ok(Route::Fib(check_n(n, format)?))
        }
        Route::FibList(_) => Ok(Route::FibList(list_len(query, format)?)),
        other => Ok(other),
    }
}

/// Validates the `{n}` of `/fib/{n}`: 400 unless a plain decimal, 422 past F(186).
fn check_n(n: &str, format: Format) -> Result<u8, Reply> {
    if n.is_empty() {
        let message = format!(
            "the index n is missing from the path: /fib/{{n}} with 0 <= n <= {}, or /fib?n=N \
             to list F(0)..F(N-1)",
            fib::INDEX_MAX
        );
        return Err(Reply::error(400, "invalid_n", &message, format));
    }
    match parse_plain_decimal(n) {
        Decimal::Invalid => Err(Reply::error(
            400,
            "invalid_n",
            &format!(
                "n must be a plain decimal integer (digits only, no sign, spaces or leading \
                 zeros) with 0 <= n <= {}; got {}",
                fib::INDEX_MAX,
                echo(n)
            ),
            format,
        )),
        Decimal::Value(v) if v <= u64::from(fib::INDEX_MAX) => Ok(v as u8),
        Decimal::Value(_) | Decimal::TooLarge => Err(Reply::error(
            422,
            "out_of_range",
            &format!(
                "F({}) does not fit in 128 bits; n must be 0 <= n <= {}",
                echo_digits(n),
                fib::INDEX_MAX
            ),
            format,
        )),
    }
}

/// Validates the query of `/fib?n=N`: exactly one parameter `n`, 0 <= N <= 187.
fn list_len(query: Option<&str>, format: Format) -> Result<u8, Reply> {
    let invalid = |message: String| Reply::error(400, "invalid_n", &message, format);
    let mut value = None;
    for pair in query
        .unwrap_or_default()
        .split('&')
        .filter(|p| !p.is_empty())
    {
        match pair.split_once('=') {
            Some(("n", v)) if value.is_none() => value = Some(v),
            Some(("n", _)) => return Err(invalid("query parameter n is given twice".into())),
            None if pair == "n" => {
                return Err(invalid(format!(
                    "query parameter n has no value; /fib needs ?n=N, the count of numbers to \
                     list, 0 <= N <= {LIST_LEN_MAX}"
                )));
            }
            _ => {
                return Err(invalid(format!(
                    "unknown query parameter {}; /fib takes only n",
                    echo(pair)
                )));
            }
        }
    }
    let Some(n) = value else {
        return Err(invalid(format!(
            "/fib needs ?n=N, the count of numbers to list, 0 <= N <= {LIST_LEN_MAX}"
        )));
    };
    match parse_plain_decimal(n) {
        Decimal::Value(v) if v <= LIST_LEN_MAX => Ok(v as u8),
        Decimal::Invalid => Err(invalid(format!(
            "N must be a plain decimal integer (digits only, no sign, spaces or leading zeros) \
             with 0 <= N <= {LIST_LEN_MAX}; got {}",
            echo(n)
        ))),
        Decimal::Value(_) | Decimal::TooLarge => Err(Reply::error(
            422,
            "out_of_range",
            &format!(
                "N = {} would list numbers past F(186), which do not fit in 128 bits; \
                 N must be 0 <= N <= {LIST_LEN_MAX}",
                echo_digits(n)
            ),
            format,
        )),
    }
}

enum Decimal {
    Value(u64),
    /// All digits, but more than a u64 holds: certainly out of range, never an overflow.
    TooLarge,
    Invalid,
}

/// Digits only, no sign, no leading zeros (except "0" itself), no spaces or escapes.
fn parse_plain_decimal(s: &str) -> Decimal {
    let bytes = s.as_bytes();
    if bytes.is_empty() || !bytes.iter().all(u8::is_ascii_digit) {
        return Decimal::Invalid;
    }
    if bytes.len() > 1 && bytes[0] == b'0' {
        return Decimal::Invalid;
    }
    match s.parse::<u64>() {
        Ok(v) => Decimal::Value(v),
        Err(_) => Decimal::TooLarge,
    }
}

/// The answer for a cursor position or a single table entry.
pub fn number(index: u8, format: Format) -> Reply {
    // `/current` is the most frequent request of all, and there are only 187 numbers: each
    // body is spelled once, the first time any is asked for, and never allocated again.
    static BODIES: OnceLock<Vec<NumberBodies>> = OnceLock::new();
    let bodies = BODIES.get_or_init(|| {
        (0..=fib::INDEX_MAX)
            .map(|index| {
                let value = fib::decimal(index.into()).expect("every index up to the last");
                NumberBodies {
                    text: format!("{value}\n"),
                    json: format!("{{\"index\":{index},\"value\":\"{value}\"}}\n"),
                }
            })
            .collect()
    });
    let bodies = &bodies[usize::from(index)];
    let body = match format {
        Format::Text | Format::Prometheus => bodies.text.as_str(),
        Format::Json => bodies.json.as_str(),
    };
    Reply::ok(format, body)
}

/// A number's answer body in each format.
struct NumberBodies {
    text: String,
    json: String,
}

/// The answer for `/current`, `/next` and `/previous`.
pub fn cursor(index: u8, format: Format) -> Reply {
    number(index, format).uncacheable()
}

/// The 409 answer for a step that would leave the table.
pub fn bound(bound: Bound, format: Format) -> Reply {
    let (code, message) = match bound {
        Bound::AtEnd => (
            "at_end",
            "the cursor is at F(186), the largest Fibonacci number that fits in 128 bits; \
             next would overflow (valid index range 0..=186), cursor unchanged",
        ),
        Bound::AtStart => (
            "at_start",
            "the cursor is at F(0); there is no previous number (valid index range 0..=186), \
             cursor unchanged",
        ),
    };
    Reply::error(409, code, message, format).uncacheable()
}

/// The 503 answer for steps that could not be made durable.
pub fn unavailable(format: Format) -> Reply {
    Reply::error(
        503,
        "unavailable",
        "the state file could not be written, so the step is not acknowledged, though it may \
         have reached the disk; fibd is exiting and its supervisor will restart it from the \
         state on disk: read /current before stepping again",
        format,
    )
    .uncacheable()
}

/// The 503 answer when a bounded queue is full. Like every refusal that asks for a retry, it
/// says `no-store`: on a cursor route it is a cursor answer, and on any route a cache must not
/// give it again once fibd is back.
pub fn overloaded(format: Format) -> Reply {
    let mut reply = Reply::error(
        503,
        "overloaded",
        "fibd is at its request queue limit; retry shortly",
        format,
    );
    reply.retry_after = Some(1);
    reply.uncacheable()
}

/// The 503 answer for a step that arrives while the commit before it has not returned for
/// `limits::COMMIT_STALLED_MS` (a stalled disk): it is not made, so a retry is safe.
pub fn disk_stalled(format: Format) -> Reply {
    let message = format!(
        "a write to the state file has not returned for {} ms or more (a stalled disk), so \
         the step was not made; retry once /readyz answers 200",
        limits::COMMIT_STALLED_MS
    );
    let mut reply = Reply::error(503, "disk_stalled", &message, format);
    reply.retry_after = Some(1);
    reply.uncacheable()
}

/// The 503 answer for a request that reached fibd as it shut down; `no-store` as `overloaded`.
pub fn shutting_down(format: Format) -> Reply {
    let mut reply = Reply::error(
        503,
        "shutting_down",
        "fibd is shutting down; retry shortly, once it or its replacement is up",
        format,
    );
    reply.retry_after = Some(1);
    reply.uncacheable()
}

/// The answer to a request that followed, from the same client address and port, one whose
/// end was unclear: it may be the earlier request's body, so it is never served. 421 is the
/// status whose meaning is "retry on another connection" (RFC 9110, 15.5.20), which is all a
/// client that reused the address for a new connection has to do; and, being a 4xx, a client
/// that provokes it cannot raise the server's 5xx rate.
pub fn after_framing_lost(format: Format) -> Reply {
    Reply::error(
        421,
        "framing_lost",
        "an earlier request from this client address and port did not say where it ended, so \
         what follows it is not served for a while; retry on a new connection",
        format,
    )
}

/// The first `len` table entries, one per line (JSON: an array of strings).
pub fn list(len: u8, format: Format) -> Reply {
    let values = (0..u64::from(len)).map(|n| fib::decimal(n).expect("len <= 187"));
    let mut body = String::with_capacity(usize::from(len) * 24 + 4);
    match format {
        Format::Text | Format::Prometheus => {
            for v in values {
                body.push_str(v);
                body.push('\n');
            }
        }
        Format::Json => {
            body.push('[');
            for (i, v) in values.enumerate() {
                if i > 0 {
                    body.push(',');
                }
                let _ = write!(body, "\"{v}\"");
            }
            body.push_str("]\n");
        }
    }
    Reply::ok(format, body)
}

pub fn health(format: Format) -> Reply {
    Reply::ok(
        format,
        match format {
            Format::Json => "{\"status\":\"ok\"}\n",
            _ => "ok\n",
        },
    )
}

/// Whether the process should be sent traffic, and if not, why not: `/readyz` and
/// `fibd_ready` report it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Readiness {
    Ready,
    /// A write or fdatasync of the state file failed: no step will be acknowledged again, and
    /// the process is on its way out for its supervisor to restart it.
    StorageFailed,
    /// A commit has not returned for `limits::COMMIT_STALLED_MS`: no step can be acknowledged
    /// until the disk answers, and new ones are refused. Ready again once it does.
    DiskStalled,
    /// SIGTERM, SIGINT or SIGHUP arrived: in-flight replies are being finished.
    Stopping,
}

pub fn ready(readiness: Readiness, format: Format) -> Reply {
    let message = match readiness {
        Readiness::Ready => {
            let body = match format {
                Format::Json => "{\"status\":\"ready\"}\n",
                _ => "ready\n",
            };
            return Reply::ok(format, body);
        }
        Readiness::StorageFailed => "not ready: a write to the state file failed; fibd is \
             exiting for its supervisor to restart it"
            .to_string(),
        Readiness::DiskStalled => format!(
            "not ready: a write to the state file has not returned for {} ms or more (a stalled \
             disk); steps are refused until it does",
            limits::COMMIT_STALLED_MS
        ),
        Readiness::Stopping => "not ready: fibd is shutting down".to_string(),
    };
    Reply::error(503, "not_ready", &message, format).uncacheable()
}

/// The `/metrics` answer: `text` is the exposition, whatever the client's Accept header.
pub fn metrics(text: String) -> Reply {
    Reply::ok(Format::Prometheus, text).not_negotiated()
}

/// The index of routes, plain text whatever the client's Accept header.
pub fn index() -> Reply {
    Reply::ok(Format::Text, INDEX).not_negotiated()
}

const INDEX: &str = "\
fibd: a durable cursor over the Fibonacci numbers F(0)..F(186)
GET  /current        the number under the cursor
POST /next           advance the cursor and return the new number (GET works too)
POST /previous       step the cursor back and return the new number (GET works too)
GET  /fib/{n}        F(n) for 0 <= n <= 186
GET  /fib?n=N        F(0)..F(N-1), one per line, 0 <= N <= 187
GET  /healthz        liveness
GET  /readyz         readiness
GET  /metrics        Prometheus metrics
Send 'Accept: application/json' for JSON; numbers are strings there.
";

/// The methods RFC 9110 defines, and PATCH (RFC 5789). Any other is answered 501, as RFC 9110
/// (9.1) says for a method the server does not recognise; these get 405 where a route does not
/// take them, with the `Allow` header that a 405 must carry.
const KNOWN_METHODS: [&str; 9] = [
    "GET", "HEAD", "POST", "PUT", "DELETE", "CONNECT", "OPTIONS", "TRACE", "PATCH",
];

/// The path and query of a request target. An absolute-form target (`http://host/path?query`,
/// the scheme in any case, as RFC 3986 has it) loses its scheme and authority; its empty path
/// is `/` (RFC 9110, 4.2.3), so `http://host?n=1` is `/` with the query `n=1`.
pub fn path_and_query(target: &str) -> (&str, Option<&str>) {
    let origin_form = ["http://", "https://"].iter().find_map(|scheme| {
        let prefix = target.get(..scheme.len())?;
        prefix.eq_ignore_ascii_case(scheme).then(|| {
            let rest = &target[scheme.len()..];
            // The authority ends where the path, the query or a fragment begins; a fragment
            // has no place in a request target, and what follows it is never the path.
            rest.find(['/', '?', '#'])
                .map_or("", |authority_end| &rest[authority_end..])
        })
    });
    let target = origin_form.unwrap_or(target);
    // A byte scan: targets are short, and `split_once` sets up a searcher on every request.
    let (path, query) = match target.bytes().position(|b| b == b'?') {
        Some(at) => (&target[..at], Some(&target[at + 1..])),
        None => (target, None),
    };
    match (path, origin_form) {
        ("", Some(_)) => ("/", query),
        _ => (path, query),
    }
}

/// Client input quoted for an error message, cut to a bounded length.
fn echo(input: &str) -> String {
    let mut out = String::from("\"");
    for (i, c) in input.chars().enumerate() {
        if i == ECHO_BYTES_MAX {
            out.push_str("...");
            break;
        }
        if c.is_ascii_graphic() || c == ' ' {
            out.push(c);
        } else {
            let _ = write!(out, "\\x{:02x}", c as u32);
        }
    }
    out.push('"');
    out
}

/// Client input that is all digits, for an error message: unquoted, as digits need no
/// escaping, and cut to the length `echo` keeps.
fn echo_digits(digits: &str) -> String {
    debug_assert!(digits.bytes().all(|b| b.is_ascii_digit()));
    match digits.get(..ECHO_BYTES_MAX) {
        Some(cut) if cut.len() < digits.len() => format!("{cut}..."),
        _ => digits.to_string(),
    }
}

fn push_json_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
    out.push('"');
}

/// Whether `needle` (ASCII) occurs in `haystack`, ignoring ASCII case, without allocating.
pub(crate) fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|w| w.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ok(method: &str, target: &str) -> Route {
        route(method, target, false, Format::Text).unwrap()
    }

    fn status(method: &str, target: &str) -> u16 {
        route(method, target, false, Format::Text)
            .unwrap_err()
            .status
    }

    #[test]
    fn every_number_answer_spells_its_entry() {
        for index in 0..=fib::INDEX_MAX {
            let value = fib::value(index.into()).expect("in the table").to_string();
            assert_eq!(number(index, Format::Text).body, format!("{value}\n"));
            let json = format!("{{\"index\":{index},\"value\":\"{value}\"}}\n");
            assert_eq!(number(index, Format::Json).body, json);
        }
    }

    #[test]
    fn allow_headers_name_exactly_the_methods_checked() {
        for (header, methods) in [GET_HEAD, GET_POST] {
            assert_eq!(header, methods.join(", "));
        }
    }

    #[test]
    fn routes_and_methods() {
        assert_eq!(ok("GET", "/"), Route::Index);
        assert_eq!(ok("HEAD", "/current"), Route::Current);
        assert_eq!(ok("POST", "/next"), Route::Step(Step::Next));
        assert_eq!(ok("GET", "/previous"), Route::Step(Step::Previous));
        assert_eq!(ok("GET", "/fib/186"), Route::Fib(186));
        assert_eq!(ok("GET", "/fib?n=187"), Route::FibList(187));
        assert_eq!(ok("GET", "/fib?n=0"), Route::FibList(0));
        assert_eq!(ok("GET", "/current?cache=bust"), Route::Current);
        assert_eq!(ok("GET", "http://example/next"), Route::Step(Step::Next));
        assert_eq!(ok("GET", "HTTP://example/next"), Route::Step(Step::Next));
        assert_eq!(
            ok("GET", "Https://example:8080/next"),
            Route::Step(Step::Next)
        );
        assert_eq!(ok("GET", "http://example"), Route::Index);
        assert_eq!(ok("GET", "http://example?x"), Route::Index);
        assert_eq!(ok("GET", "http://example?n=3"), Route::Index);
        assert_eq!(ok("GET", "http://example?x/next"), Route::Index);
        assert_eq!(status("GET", "http://example#frag/next"), 404);
        assert_eq!(status("GET", "/current#frag"), 404);
        assert_eq!(ok("GET", "http://example/fib?n=3"), Route::FibList(3));
        assert_eq!(status("GET", "ftp://example/next"), 404);
        assert_eq!(status("GET", "http:/next"), 404);
        assert_eq!(status("DELETE", "/next"), 405);
        assert_eq!(status("PATCH", "/next"), 405);
        assert_eq!(status("OPTIONS", "/current"), 405);
        // Unknown methods (method names are case-sensitive) are 501, whatever the target.
        assert_eq!(status("FOO", "/current"), 501);
        assert_eq!(status("get", "/current"), 501);
        assert_eq!(status("BREW", "/nowhere"), 501);
        let reply = route("FOO", "/next", false, Format::Text).unwrap_err();
        assert_eq!(reply.allow, None);
        assert_eq!(status("HEAD", "/next"), 405);
        assert_eq!(status("POST", "/current"), 405);
        assert_eq!(status("GET", "/nope"), 404);
        assert_eq!(status("GET", "/current/"), 404);
        assert_eq!(status("GET", "//current"), 404);
        let reply = route("PUT", "/previous", false, Format::Text).unwrap_err();
        assert_eq!(reply.allow, Some("GET, POST"));
    }

    #[test]
    fn json_strings_escape_quotes_backslashes_and_control_characters() {
        let mut out = String::new();
        push_json_string(&mut out, "a\"b\\c\nd\u{1}é");
        assert_eq!(out, "\"a\\\"b\\\\c\\u000ad\\u0001é\"");
    }

    #[test]
    fn n_validation() {
        for bad in [
            "", "-1", "+1", " 1", "1 ", "01", "00", "1.0", "1e3", "%31", "abc", "0x10", "١",
        ] {
            assert_eq!(status("GET", &format!("/fib/{bad}")), 400, "{bad:?}");
        }
        for big in [
            "187",
            "1000",
            "18446744073709551616",
            "99999999999999999999999999999",
        ] {
            assert_eq!(status("GET", &format!("/fib/{big}")), 422, "{big}");
        }
        assert_eq!(status("GET", "/fib/1/2"), 400);
        assert_eq!(status("GET", "/fib?n=188"), 422);
        assert_eq!(status("GET", "/fib?n=-1"), 400);
        assert_eq!(status("GET", "/fib"), 400);
        assert_eq!(status("GET", "/fib?n=1&n=2"), 400);
        assert_eq!(status("GET", "/fib?m=1"), 400);
        let reply = route("GET", "/fib?n", false, Format::Text).unwrap_err();
        assert!(reply.body.contains("n has no value"), "{}", reply.body);
        let reply = route("GET", "/fib?n=1&n=2", false, Format::Text).unwrap_err();
        assert!(reply.body.contains("n is given twice"), "{}", reply.body);
        let reply = route("GET", "/fib?m", false, Format::Text).unwrap_err();
        assert!(
            reply.body.contains("unknown query parameter \"m\""),
            "{}",
            reply.body
        );
        // Numbers are quoted as numbers; a long one is cut short.
        let message = |target: &str| route("GET", target, false, Format::Text).unwrap_err().body;
        assert!(message("/fib/999").starts_with("F(999) does not fit"));
        assert!(message("/fib?n=999").starts_with("N = 999 would list"));
        let long = message(&format!("/fib/{}", "9".repeat(1000)));
        assert!(
            long.starts_with(&format!("F({}...)", "9".repeat(64))),
            "{long}"
        );
        // One exactly as long as the cut is quoted whole.
        let at_cut = message(&format!("/fib/{}", "9".repeat(64)));
        assert!(
            at_cut.starts_with(&format!("F({}) does", "9".repeat(64))),
            "{at_cut}"
        );
        for missing in ["/fib/", "/fib/?n=3"] {
            let body = message(missing);
            assert!(
                body.starts_with("the index n is missing from the path"),
                "{body}"
            );
        }
    }

    #[test]
    fn oversized_heads_and_missing_host() {
        let ok = Head {
            version: (1, 1),
            target_bytes: 10,
            header_bytes: 100,
            header_fields: 3,
            host: HostField::Fine,
            length_ambiguous: false,
        };
        assert!(check_head(&ok, Format::Text).is_ok());
        let at_limits = Head {
            target_bytes: limits::TARGET_BYTES_MAX,
            header_bytes: limits::HEADER_BYTES_MAX,
            header_fields: limits::HEADER_FIELDS_MAX,
            ..ok.clone()
        };
        assert!(check_head(&at_limits, Format::Text).is_ok());
        let status = |head: Head| check_head(&head, Format::Text).unwrap_err().status;
        assert_eq!(
            status(Head {
                target_bytes: limits::TARGET_BYTES_MAX + 1,
                ..ok.clone()
            }),
            414
        );
        assert_eq!(
            status(Head {
                header_bytes: limits::HEADER_BYTES_MAX + 1,
                ..ok.clone()
            }),
            431
        );
        assert_eq!(
            status(Head {
                header_fields: limits::HEADER_FIELDS_MAX + 1,
                ..ok.clone()
            }),
            431
        );
        assert!(
            check_head(
                &Head {
                    version: (1, 0),
                    ..ok.clone()
                },
                Format::Text
            )
            .is_ok()
        );
        let old = check_head(
            &Head {
                version: (0, 9),
                ..ok.clone()
            },
            Format::Text,
        );
        assert!(old.unwrap_err().body.starts_with("HTTP/0.9 is not served"));
        for host in [HostField::Missing, HostField::Repeated, HostField::Invalid] {
            let head = Head { host, ..ok.clone() };
            assert_eq!(status(head), 400, "{host:?}");
        }
        assert_eq!(
            status(Head {
                length_ambiguous: true,
                ..ok.clone()
            }),
            400
        );
        // A request with both faults is answered for the one that closes its connection.
        let both = Head {
            host: HostField::Missing,
            length_ambiguous: true,
            ..ok
        };
        let reply = check_head(&both, Format::Text).unwrap_err();
        assert!(reply.body.contains("Content-Length"), "{}", reply.body);
    }

    #[test]
    fn host_fields_are_judged_as_rfc_9112_says() {
        let judge = HostField::judge;
        assert_eq!(judge((1, 1), 1, Some("example.com")), HostField::Fine);
        assert_eq!(judge((1, 1), 0, None), HostField::Missing);
        assert_eq!(judge((1, 0), 0, None), HostField::Fine);
        assert_eq!(judge((1, 1), 2, Some("x")), HostField::Repeated);
        assert_eq!(judge((1, 0), 2, Some("x")), HostField::Repeated);
        assert_eq!(judge((1, 0), 1, Some("a b")), HostField::Invalid);
        for valid in [
            "",
            "localhost",
            "localhost:8080",
            "Example.COM",
            "127.0.0.1",
            "127.0.0.1:80",
            "x:",
            ":80",
            "[::1]",
            "[::1]:8080",
            "[2001:db8::ffff:192.0.2.1]",
            "[v1.fe80::a+en1]",
            "a-b_c~d.e",
            "%41%62",
            "!$&'()*+,;=",
        ] {
            assert!(valid_host(valid), "{valid:?}");
        }
        for invalid in [
            "a b",
            " x",
            "x/y",
            "x?y",
            "x#y",
            "user@x",
            "x:8o",
            "x:80:80",
            "::1",
            "[::1",
            "[::1]x",
            "[::1]:x",
            "[x]",
            "[::1%25eth0]",
            "[v.x]",
            "[v1.]",
            "%4",
            "%zz",
            "\"x\"",
            "x\ty",
        ] {
            assert!(!valid_host(invalid), "{invalid:?}");
        }
    }

    #[test]
    fn refusals_that_are_not_the_clients_fault_ask_for_a_retry() {
        for (reply, code, status, retry_after) in [
            (overloaded(Format::Json), "overloaded", 503, Some(1)),
            (shutting_down(Format::Json), "shutting_down", 503, Some(1)),
            (disk_stalled(Format::Json), "disk_stalled", 503, Some(1)),
            (after_framing_lost(Format::Json), "framing_lost", 421, None),
        ] {
            assert_eq!((reply.status, reply.retry_after), (status, retry_after));
            assert_eq!(
                reply.no_store,
                status == 503,
                "{code}: never kept by a cache"
            );
            let expected = format!("{{\"error\":\"{code}\",");
            assert!(reply.body.starts_with(&expected), "{}", reply.body);
        }
        for reply in [
            unavailable(Format::Text),
            ready(Readiness::DiskStalled, Format::Text),
        ] {
            assert_eq!(
                (reply.status, reply.no_store),
                (503, true),
                "{}",
                reply.body
            );
        }
    }

    #[test]
    fn readiness_says_why_it_is_not_ready() {
        assert_eq!(ready(Readiness::Ready, Format::Text).body, "ready\n");
        assert_eq!(
            ready(Readiness::Ready, Format::Json).body,
            "{\"status\":\"ready\"}\n"
        );
        for (readiness, reason) in [
            (Readiness::StorageFailed, "a write to the state file failed"),
            (Readiness::DiskStalled, "has not returned for 1000 ms"),
            (Readiness::Stopping, "shutting down"),
        ] {
            for format in [Format::Text, Format::Json] {
                let reply = ready(readiness, format);
                assert_eq!((reply.status, reply.no_store), (503, true));
                let code = match format {
                    Format::Json => "{\"error\":\"not_ready\",",
                    _ => "not ready: ",
                };
                assert!(reply.body.starts_with(code), "{}", reply.body);
                assert!(reply.body.contains(reason), "{}", reply.body);
            }
        }
    }

    #[test]
    fn a_content_length_is_one_plain_decimal_throughout() {
        let conflicts = |values: &[&str]| {
            let mut length = None;
            values.iter().fold(false, |bad, v| {
                content_length_conflicts(&mut length, v) | bad
            })
        };
        assert!(!conflicts(&["0"]));
        assert!(!conflicts(&["5", "5"]));
        assert!(!conflicts(&["007", "7"]), "leading zeros are digits too");
        for bad in [
            "",
            "2x",
            "+5",
            "-1",
            " 5",
            "5, 5",
            "0x10",
            "99999999999999999999999",
        ] {
            assert!(conflicts(&[bad]), "{bad:?}");
        }
        assert!(conflicts(&["0", "37"]), "values that disagree");
        assert!(conflicts(&["5", "x"]));
    }

    #[test]
    fn bodies_are_refused() {
        let reply = route("POST", "/next", true, Format::Text).unwrap_err();
        assert_eq!(reply.status, 400);
        // The path is echoed escaped and cut short, like every echo of client input.
        let long = format!("/fib/\r\n{}", "9".repeat(5000));
        let reply = route("GET", &long, true, Format::Text).unwrap_err();
        assert_eq!(reply.status, 400);
        assert!(reply.body.len() < 300, "{}", reply.body);
        assert!(reply.body.contains("/fib/\\x0d\\x0a99"), "{}", reply.body);
    }

    #[test]
    fn answers_in_both_formats() {
        assert_eq!(cursor(3, Format::Text).body, "2\n");
        assert_eq!(
            cursor(3, Format::Json).body,
            "{\"index\":3,\"value\":\"2\"}\n"
        );
        assert!(cursor(3, Format::Text).no_store);
        assert_eq!(list(4, Format::Text).body, "0\n1\n1\n2\n");
        assert_eq!(list(3, Format::Json).body, "[\"0\",\"1\",\"1\"]\n");
        assert_eq!(list(0, Format::Json).body, "[]\n");
        let err = route("GET", "/x\"y", false, Format::Json).unwrap_err();
        assert!(
            err.body
                .starts_with("{\"error\":\"not_found\",\"message\":\"no route for \\\"/x\\\"y"),
            "{}",
            err.body
        );
    }

    #[test]
    fn accept_header_negotiation() {
        assert_eq!(Format::from_accept(None), Format::Text);
        let json = [
            "application/json",
            "Application/JSON",
            "text/html, application/json;q=0.9",
            "application/json, text/plain",
            "application/json, */*",
            "*/*, application/json",
            "text/*, application/json",
            "application/*",
            "application/json;charset=utf-8",
            "text/plain;q=0.5, application/json",
            "text/plain;q=0, application/json;q=0.001",
            "application/json;q=1.000",
            "application/json;Q=0.5",
            "application/json ; q = 0.5",
            "text/plain;q=0.5;x=\"a,b;q=1\", application/json;q=0.6",
            "application/json;q=x, application/json;q=0.2",
            "text/plain;q=2, application/json;q=0.1",
            // A backslash escapes only inside a quoted string: here the `;` still splits.
            "text/plain;x=a\\;q=0, application/json;q=0.5",
            // An escaped quote does not end the quoted string; the one after it does.
            "text/plain;q=0.5;x=\"a\\\"\", application/json",
        ];
        let text = [
            "",
            "text/plain",
            "*/*",
            "text/html,application/xhtml+xml,application/xml;q=0.9,*/*;q=0.8",
            "application/json;q=0",
            "application/json;q=0.000",
            "application/json;q=0.",
            "application/json;q=0, */*",
            "text/plain;q=1, application/json;q=0.1",
            "text/plain, application/json",
            "text/*, application/*",
            "application/jsonx",
            "application/json-seq",
            "application/json+x",
            "xapplication/json",
            "json",
            "*/json",
            "application /json",
            "application/json;q=1.5",
            "application/json;q=0.0001",
            "application/json;q=-1",
            "application/json;q=.5",
            "application/json;q=",
            "text/plain;x=\"application/json\"",
            "text/plain;x=\"a,application/json",
            // `*/*` rates text too, above json's own lower q.
            "application/json;q=0.5, */*",
            // Of equal ranges, the first counts: text's first place beats json's second.
            "text/plain, application/json, text/plain",
            // A `;` or an escaped quote inside a quoted string ends nothing.
            "text/plain;x=\"a;q=0\", application/json;q=0.5",
            "text/plain;x=\"a\\\";q=0\", application/json;q=0.5",
        ];
        let cases =
            (json.iter().map(|a| (a, Format::Json))).chain(text.iter().map(|a| (a, Format::Text)));
        for (accept, format) in cases {
            assert_eq!(Format::from_accept(Some(accept)), format, "{accept}");
        }
    }

    #[test]
    fn several_accept_fields_are_one_list() {
        let format = |fields: &[&str]| {
            let mut accept = Accept::default();
            for field in fields {
                accept.add(field);
            }
            accept.format()
        };
        assert_eq!(format(&[]), Format::Text);
        assert_eq!(format(&["application/json", "text/plain"]), Format::Json);
        assert_eq!(format(&["text/plain", "application/json"]), Format::Text);
        assert_eq!(format(&["application/json", "*/*"]), Format::Json);
        assert_eq!(format(&["application/json;q=0", "text/html"]), Format::Text);
        assert_eq!(format(&["text/html", "application/json"]), Format::Json);
        assert_eq!(
            format(&["application/json", "application/json;q=0"]),
            Format::Json
        );
    }

    #[test]
    fn qvalues() {
        for (text, thousandths) in [
            ("0", 0),
            ("0.", 0),
            ("0.5", 500),
            ("0.05", 50),
            ("0.125", 125),
            ("1", 1000),
            ("1.", 1000),
            ("1.000", 1000),
        ] {
            assert_eq!(qvalue(text), Some(thousandths), "{text}");
        }
        for bad in [
            "", ".5", "1.001", "2", "0.1234", "00.5", "0,5", "0.x", "+0.5", "1e0",
        ] {
            assert_eq!(qvalue(bad), None, "{bad}");
        }
    }

    #[test]
    fn error_messages_are_one_bounded_line() {
        let long = format!("/{}", "a".repeat(10_000));
        let reply = route("GET", &long, false, Format::Text).unwrap_err();
        assert!(reply.body.len() < 200);
        assert_eq!(reply.body.matches('\n').count(), 1);
        let reply = route("GET", "/\u{1}\r\n", false, Format::Text).unwrap_err();
        assert_eq!(reply.body.matches('\n').count(), 1);
    }
}
