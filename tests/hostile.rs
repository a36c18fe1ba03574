//! Hostile and broken clients: malformed and oversized requests, bodies where none belong,
//! odd versions, slow and idle clients, a slowloris crowd, and a connection flood past the file
//! descriptor limit. Each gets a clear 4xx or a closed connection, never a 500, a panic or a
//! hang, and the cursor never moves for a rejected request.

mod common;

use std::io::{BufReader, Read, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Server, TempDir, connect, read_reply};

/// The tests that push the machine (thousands of connections, descriptor exhaustion) run one
/// at a time, so that one's load cannot change another's timing.
static HEAVY: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// A child process killed when dropped, so a failing test never leaves a server behind.
struct Killed(std::process::Child);

impl Drop for Killed {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts fibd under `sh` with a descriptor limit of `fds`. Returns the process, its log as
/// it grows (collected by a thread that ends when the process does), and its address.
fn start_with_fd_limit(
    fds: u32,
    idle_ms: u32,
    state: &std::path::Path,
) -> (Killed, Log, std::thread::JoinHandle<()>, SocketAddr) {
    let mut child = Command::new("sh")
        .arg("-c")
        .arg(format!(
            "ulimit -n {fds} && exec '{BIN}' --listen 127.0.0.1:0 --idle-timeout-ms {idle_ms} --state-file '{}'",
            state.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut stderr = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    std::io::BufRead::read_line(&mut stderr, &mut line).unwrap();
    let addr = common::field(&line, "listen")
        .expect("start line")
        .parse()
        .unwrap();
    let log = Log::default();
    let sink = Log::clone(&log);
    let reader = std::thread::spawn(move || {
        for line in std::io::BufRead::lines(stderr).map_while(Result::ok) {
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    (Killed(child), log, reader, addr)
}

type Log = std::sync::Arc<std::sync::Mutex<String>>;

/// Sends raw bytes on a fresh connection and returns the status of the first reply, or `None`
/// if the server closed the connection without one.
fn raw(addr: SocketAddr, bytes: &[u8]) -> Option<u16> {
    let mut stream = connect(addr);
    stream.write_all(bytes).ok()?;
    let mut reader = BufReader::new(stream);
    let mut line = String::new();
    std::io::BufRead::read_line(&mut reader, &mut line).ok()?;
    line.split(' ').nth(1)?.parse().ok()
}

/// The limits README.md states (src/limits.rs): a target of 8 KiB, 16 KiB of header names and
/// values, 100 header fields. A request exactly at each is served; one byte or field more is not.
#[test]
fn a_request_exactly_at_each_head_limit_is_served_and_one_past_it_refused() {
    const TARGET_BYTES_MAX: usize = 8 * 1024;
    const HEADER_BYTES_MAX: usize = 16 * 1024;
    const HEADER_FIELDS_MAX: usize = 100;
    let dir = TempDir::new("head-limits");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    // `/current` ignores its query, so the query pads the target.
    let target = |bytes: usize| {
        let path = "/current?";
        format!(
            "GET {path}{} HTTP/1.1\r\nHost: t\r\n\r\n",
            "a".repeat(bytes - path.len())
        )
    };
    // "Host" and "t" are 5 bytes; "X-Big" is 5 more.
    let header_bytes = |bytes: usize| {
        format!(
            "GET /current HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
            "b".repeat(bytes - 10)
        )
    };
    let fields = |count: usize| {
        format!(
            "GET /current HTTP/1.1\r\nHost: t\r\n{}\r\n",
            "X-A: 1\r\n".repeat(count - 1)
        )
    };
    for (what, request, status) in [
        ("target at the limit", target(TARGET_BYTES_MAX), 200),
        ("target past it", target(TARGET_BYTES_MAX + 1), 414),
        (
            "header bytes at the limit",
            header_bytes(HEADER_BYTES_MAX),
            200,
        ),
        (
            "header bytes past it",
            header_bytes(HEADER_BYTES_MAX + 1),
            431,
        ),
        ("header fields at the limit", fields(HEADER_FIELDS_MAX), 200),
        ("header fields past it", fields(HEADER_FIELDS_MAX + 1), 431),
    ] {
        assert_eq!(raw(server.addr, request.as_bytes()), Some(status), "{what}");
    }
}

#[test]
fn malformed_and_odd_requests_get_a_4xx_or_a_closed_connection() {
    let dir = TempDir::new("malformed");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    let addr = server.addr;
    let long_target = format!("GET /{} HTTP/1.1\r\nHost: t\r\n\r\n", "a".repeat(100_000));
    let long_header = format!(
        "GET /current HTTP/1.1\r\nHost: t\r\nX-Big: {}\r\n\r\n",
        "b".repeat(100_000)
    );
    let many_headers = format!(
        "GET /current HTTP/1.1\r\nHost: t\r\n{}\r\n",
        "X-A: 1\r\n".repeat(500)
    );
    let cases: Vec<(&str, Vec<u8>, &[u16])> = vec![
        ("garbage request line", b"GARBAGE\r\n\r\n".to_vec(), &[400]),
        ("no version", b"GET /current\r\n\r\n".to_vec(), &[400]),
        ("unknown version", b"GET /current HTTP/9.9\r\nHost: t\r\n\r\n".to_vec(), &[400]),
        ("header without colon", b"GET /current HTTP/1.1\r\nHost t\r\n\r\n".to_vec(), &[400]),
        ("unknown method", b"BREW /next HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), &[501]),
        ("lowercase method", b"get /current HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), &[501]),
        ("missing Host in HTTP/1.1", b"GET /current HTTP/1.1\r\n\r\n".to_vec(), &[400]),
        ("two Host fields", b"GET /current HTTP/1.1\r\nHost: x\r\nHost: x\r\n\r\n".to_vec(), &[400]),
        ("two Host fields in HTTP/1.0", b"GET /current HTTP/1.0\r\nHost: x\r\nhost: y\r\n\r\n".to_vec(), &[400]),
        ("a space in Host", b"GET /current HTTP/1.1\r\nHost: a b\r\n\r\n".to_vec(), &[400]),
        ("a path in Host", b"GET /current HTTP/1.1\r\nHost: x/next\r\n\r\n".to_vec(), &[400]),
        ("userinfo in Host", b"GET /current HTTP/1.1\r\nHost: u@x\r\n\r\n".to_vec(), &[400]),
        ("an unbracketed IPv6 Host", b"GET /current HTTP/1.1\r\nHost: ::1\r\n\r\n".to_vec(), &[400]),
        ("an empty Host, valid for a target without authority", b"GET /current HTTP/1.1\r\nHost:\r\n\r\n".to_vec(), &[200]),
        ("a bracketed IPv6 Host with a port", b"GET /current HTTP/1.1\r\nHost: [::1]:8080\r\n\r\n".to_vec(), &[200]),
        ("100 KB target", long_target.into_bytes(), &[414]),
        ("100 KB header", long_header.into_bytes(), &[431]),
        ("500 headers", many_headers.into_bytes(), &[431]),
        ("body on a step", b"POST /next HTTP/1.1\r\nHost: t\r\nContent-Length: 5\r\n\r\nhello".to_vec(), &[400]),
        (
            "chunked body on a step",
            b"POST /next HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n".to_vec(),
            &[400],
        ),
        ("unsupported expectation", b"POST /next HTTP/1.1\r\nHost: t\r\nExpect: magic\r\n\r\n".to_vec(), &[417]),
        ("absolute-form target of a step, GET with body", b"GET http://x/previous HTTP/1.1\r\nHost: t\r\nContent-Length: 1\r\n\r\nx".to_vec(), &[400]),
        ("fragment in the target", b"GET /fib/3#x HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), &[400]),
        ("space-padded n", b"GET /fib/%2010 HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), &[400]),
        ("n past u64", b"GET /fib/99999999999999999999999999 HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), &[422]),
        ("negative N", b"GET /fib?n=-3 HTTP/1.1\r\nHost: t\r\n\r\n".to_vec(), &[400]),
    ];
    for (what, bytes, expected) in &cases {
        let status = raw(addr, bytes);
        // `None` (closed without a reply) is accepted only for framing errors below.
        assert!(
            status.is_some_and(|s| expected.contains(&s)),
            "{what}: got {status:?}, expected {expected:?}"
        );
    }
    // tiny_http leaves a chunked body unread, to parse it as the next request; fibd's answer
    // says that the connection ends.
    let chunked = "POST /next HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n5\r\nhello\r\n0\r\n\r\n";
    let answer =
        final_answer(addr, chunked, Duration::from_secs(5)).map(|(s, closes, _)| (s, closes));
    assert_eq!(answer, Some((400, true)), "chunked body");
    // Bytes that are not ASCII in the request line cannot be framed: the connection closes.
    let status = raw(
        addr,
        "GET /fib/\u{0661} HTTP/1.1\r\nHost: t\r\n\r\n".as_bytes(),
    );
    assert!(
        status.is_none() || status == Some(400),
        "non-ASCII: {status:?}"
    );
    // HTTP/1.0 without Host is fine, and the connection closes after the reply.
    let mut stream = connect(addr);
    stream.write_all(b"GET /current HTTP/1.0\r\n\r\n").unwrap();
    let mut all = String::new();
    stream.read_to_string(&mut all).unwrap();
    // The status line names the version fibd speaks, not the request's (RFC 9110, 6.2).
    assert!(all.starts_with("HTTP/1.1 200 OK\r\n"), "{all}");
    assert!(all.ends_with("\r\n\r\n0\n"), "{all}");

    assert_eq!(
        server.value("/current"),
        "0",
        "no rejected request moved the cursor"
    );
}

/// Pins what tiny_http 0.12 does with requests it cannot parse, before fibd sees them
/// (docs/SECURITY.md, known gaps): a tiny_http upgrade that changes any of it fails here, so
/// that the documentation is revisited.
#[test]
fn requests_tiny_http_cannot_parse_get_its_own_answer_or_none() {
    let dir = TempDir::new("unparsed");
    let idle = Duration::from_millis(2_000);
    let server = Server::start(&dir.join("fibd.state"), &["--idle-timeout-ms", "2000"]);
    // An HTTP/2.0 request line deadlocks the connection's thread inside tiny_http (its 505
    // waits for a writer that the request itself holds), so the connection is neither answered
    // nor closed, not even by the idle timeout, which only ends reads. Sent first and checked
    // last, so that its wait past the idle timeout overlaps the checks below.
    let http_2_sent = Instant::now();
    let mut http_2 = connect(server.addr);
    http_2
        .write_all(b"GET /current HTTP/2.0\r\nHost: t\r\n\r\n")
        .unwrap();
    // Answered by tiny_http itself: an empty 4xx that names tiny_http, then the connection ends.
    for (what, bytes, status) in [
        ("a malformed request line", &b"GARBAGE\r\n\r\n"[..], 400),
        ("HTTP/1.2", b"GET /current HTTP/1.2\r\nHost: t\r\n\r\n", 400),
        (
            "a header line without a colon",
            b"GET /current HTTP/1.1\r\nHost t\r\n\r\n",
            400,
        ),
        (
            "Expect: foo",
            b"GET /current HTTP/1.1\r\nHost: t\r\nExpect: foo\r\n\r\n",
            417,
        ),
    ] {
        let mut stream = connect(server.addr);
        stream.write_all(bytes).unwrap();
        let mut reader = BufReader::new(stream);
        let reply = read_reply(&mut reader, false).expect("an answer");
        assert_eq!(reply.status, status, "{what}");
        let server_header = reply.header("Server").unwrap_or_default();
        assert!(server_header.starts_with("tiny-http"), "{what}: {reply:?}");
        assert_eq!(reply.body, "", "{what}");
        assert!(read_reply(&mut reader, false).is_none(), "{what}: closed");
    }
    // Not answered at all: bytes that are not ASCII end the connection at once; a request
    // whose lines end in a bare LF is never complete, so it waits out the idle timeout.
    for (what, bytes, waits) in [
        (
            "non-ASCII in the request line",
            "GET /fib/\u{e9} HTTP/1.1\r\nHost: t\r\n\r\n",
            false,
        ),
        (
            "non-ASCII in a header value",
            "GET /current HTTP/1.1\r\nHost: t\r\nX: \u{e9}\r\n\r\n",
            false,
        ),
        (
            "bare LF line ends",
            "GET /current HTTP/1.1\nHost: t\n\n",
            true,
        ),
    ] {
        let started = Instant::now();
        let mut stream = connect(server.addr);
        stream.write_all(bytes.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream);
        assert!(
            read_reply(&mut reader, false).is_none(),
            "{what}: no answer"
        );
        let waited = started.elapsed();
        assert_eq!(
            waited >= idle * 9 / 10,
            waits,
            "{what}: closed after {waited:?}"
        );
    }
    // Past the idle timeout, the HTTP/2.0 connection has still neither an answer nor an end.
    let past_idle = (idle * 3 / 2).saturating_sub(http_2_sent.elapsed());
    http_2
        .set_read_timeout(Some(past_idle.max(Duration::from_millis(100))))
        .unwrap();
    let mut byte = [0u8; 1];
    let err = http_2
        .read(&mut byte)
        .expect_err("HTTP/2.0: neither an answer nor a close");
    assert!(
        matches!(
            err.kind(),
            std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
        ),
        "HTTP/2.0: {err}"
    );
    assert_eq!(server.value("/current"), "0");
}

#[test]
fn a_request_that_does_not_say_where_it_ends_cannot_smuggle_another() {
    let dir = TempDir::new("smuggle");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    // tiny_http reads what follows each of these heads as the next request on the connection;
    // a proxy in front could have framed it as the first request's body.
    let smuggled = "POST /next HTTP/1.1\r\nHost: t\r\n\r\n";
    let framings = [
        "Content-Length: 2x\r\n".to_string(),
        format!(
            "Content-Length: 0\r\nContent-Length: {}\r\n",
            smuggled.len()
        ),
        "Content-Length: 99999999999999999999999\r\n".to_string(),
        "Transfer-Encoding: chunked\r\n".to_string(),
    ];
    for framing in framings {
        let before = not_served(server.addr);
        let head = format!("GET /current HTTP/1.1\r\nHost: t\r\n{framing}\r\n{smuggled}");
        // The connection stays open until the count moves: closing it with the answer's body
        // unread would reset it, and the reset could discard the next request unread.
        let answer = final_answer(server.addr, &head, Duration::from_secs(5));
        let (status, closes, _open) = answer.expect("an answer");
        assert_eq!((status, closes), (400, true), "{framing:?}");
        // The request read after it is never served: it is dropped if it arrives while the
        // first is in flight, else refused with a 421.
        let what = format!("{framing:?}: the request after it was neither dropped nor refused");
        common::wait_until(&what, || not_served(server.addr) != before);
        assert_eq!(server.value("/current"), "0", "{framing:?} smuggled a step");
    }
}

/// Requests dropped unanswered or refused as following one of unclear end, from the server's
/// metrics.
fn not_served(addr: SocketAddr) -> u64 {
    let metrics = common::request(addr, "GET", "/metrics", &[]).body;
    let counter = |prefix: &str| {
        metrics
            .lines()
            .find_map(|l| l.strip_prefix(prefix))
            .map_or(0, |n| n.parse::<u64>().unwrap())
    };
    counter("fibd_requests_dropped_total ")
        + counter("fibd_requests_total{route=\"/next\",code=\"421\"} ")
}

#[test]
fn what_follows_a_request_of_unclear_end_is_refused_out_loud() {
    let dir = TempDir::new("refused");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    let mut stream = connect(server.addr);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    let mut ask = |request: &[u8]| {
        stream.write_all(request).unwrap();
        let reply = read_reply(&mut reader, false).expect("an answer");
        let closes = reply.header("connection") == Some("close");
        (reply.status, closes, reply.body)
    };
    // No body follows this head, so what the client sends next is read as its next request.
    let first = ask(b"GET /current HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n");
    assert_eq!((first.0, first.1), (400, true));
    // The abandonment is logged, at info since nothing was lost yet, once the connection
    // table holds it.
    let logged = "level=info event=connection_abandoned";
    common::wait_until("the abandonment was not logged", || {
        server.log_text().contains(logged)
    });
    // A client that goes on (as would a new connection reusing the address) is told to retry
    // elsewhere, and its step is not taken.
    let (status, closes, body) = ask(b"POST /next HTTP/1.1\r\nHost: t\r\n\r\n");
    assert_eq!((status, closes), (421, true));
    assert!(body.contains("retry on a new connection"), "{body}");
    assert_eq!(server.value("/current"), "0");
    assert!(
        server
            .log_text()
            .contains("reason=framing_lost requests_dropped=0")
    );
}

/// An abandoned connection is logged, and a client can abandon connections as fast as it can
/// open them. The log holds at most `CLIENT_EVENT_LOG_LINES_PER_S_MAX` such lines a second; the
/// first line after a held-back spell says how many lines it held back, so that every
/// abandonment is accounted for.
#[test]
fn a_flood_of_abandoned_connections_is_logged_at_a_bounded_rate() {
    const FLOOD: u64 = 100;
    let dir = TempDir::new("logflood");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    // Each abandoned connection stays open to the end: a closed one's port could be handed
    // to a later scrape, which fibd, still watching that address, would refuse (421).
    let mut held = Vec::new();
    let mut abandoned = || {
        let mut stream = connect(server.addr);
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        stream
            .write_all(b"GET /current HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap();
        assert_eq!(read_reply(&mut reader, false).map(|r| r.status), Some(400));
        held.push(stream);
    };
    let counted = |n: u64| {
        common::wait_until("not every abandonment was counted", || {
            server
                .get("/metrics")
                .body
                .contains(&format!("\nfibd_connections_abandoned_total {n}\n"))
        });
    };
    let lines = || {
        server
            .log_text()
            .lines()
            .filter(|l| l.contains("event=connection_abandoned"))
            .map(str::to_string)
            .collect::<Vec<_>>()
    };
    let started = Instant::now();
    for _ in 0..FLOOD {
        abandoned();
    }
    counted(FLOOD);
    let elapsed = started.elapsed();
    // The table holds each abandoned connection while it is watched (two idle timeouts, 30 s
    // here), and the scrape's own connection; nothing waits in a queue. (A worker lets go of a
    // connection just after writing its reply, so the scrape before may still be counted.)
    let tracked = format!("fibd_connections_tracked {}", FLOOD + 1);
    let mut metrics = String::new();
    common::wait_until("the table did not hold the abandoned connections", || {
        metrics = server.get("/metrics").body;
        metrics.lines().any(|l| l == tracked)
    });
    for line in [
        "fibd_requests_waiting 0".to_string(),
        "fibd_queue_depth{queue=\"work\"} 0".to_string(),
        "fibd_queue_depth{queue=\"steps\"} 0".to_string(),
        "fibd_queue_depth{queue=\"replies\"} 0".to_string(),
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line}\n{metrics}");
    }
    let during = lines().len() as u64;
    let per_s = u64::from(fibd::limits::CLIENT_EVENT_LOG_LINES_PER_S_MAX);
    assert!(
        during <= per_s * (elapsed.as_secs() + 2),
        "{during} lines in {elapsed:?}"
    );
    // Past the last window: the next line is written, and accounts for the held back. A flood
    // that spans several of the throttle's one-second windows has its held-back count spread
    // over the first line of each later window. (The lines reach the test a little after the
    // counter moves, so the test waits for the sum rather than reading it once.)
    std::thread::sleep(Duration::from_millis(1_100));
    abandoned();
    counted(FLOOD + 1);
    let accounted = |all: &[String]| -> u64 {
        let suppressed: u64 = all
            .iter()
            .filter_map(|line| common::field(line, "lines_suppressed"))
            .map(|n| n.parse::<u64>().unwrap())
            .sum();
        all.len() as u64 + suppressed
    };
    common::wait_until(
        "lines written + lines held back never came to the abandonments counted",
        || accounted(&lines()) == FLOOD + 1,
    );
    let all = lines();
    assert_eq!(accounted(&all), FLOOD + 1, "{all:#?}");
    assert!(
        all.len() as u64 > during,
        "the last abandonment was not logged"
    );
}

#[test]
fn a_flood_behind_a_request_of_unclear_end_is_hung_up_on() {
    // The refusals that follow a request of unclear end are written, so its connection is not
    // hung up on when it is abandoned. A client that reads them while it pipelines a flood
    // would have tiny_http parse and queue all of the flood, however large; fibd hangs up once
    // it has dropped as many as one connection may pipeline, long before the idle timeout (a
    // minute here) would end the connection.
    let dir = TempDir::new("framingflood");
    let server = Server::start(&dir.join("fibd.state"), &["--idle-timeout-ms", "60000"]);
    let mut stream = connect(server.addr);
    let mut reader = stream.try_clone().unwrap();
    let (ended_tx, ended) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut received = Vec::new();
        let mut chunk = [0; 4096];
        let end = loop {
            match reader.read(&mut chunk) {
                Ok(0) => break Ok(()),
                Ok(n) => received.extend_from_slice(&chunk[..n]),
                Err(err) => break Err(err.kind()),
            }
        };
        let _ = ended_tx.send((end, received));
    });
    stream
        .write_all(b"GET /current HTTP/1.1\r\nHost: t\r\nTransfer-Encoding: chunked\r\n\r\n")
        .unwrap();
    common::wait_until("the connection was not abandoned", || {
        server.log_text().contains("reason=framing_lost")
    });
    // Every request of the flood is either refused or, while a refusal is in flight, dropped,
    // and fibd hangs up once it has dropped more than the bound. One flood of eight times the
    // bound is usually enough; on a busy machine, whose workers may write most refusals before
    // the acceptor takes the next request, floods are sent until the connection ends.
    let flood = "POST /next HTTP/1.1\r\nHost: t\r\n\r\n"
        .repeat(fibd::limits::PIPELINED_PER_CONNECTION_MAX * 8);
    let deadline = Instant::now() + Duration::from_secs(10);
    let (end, received) = loop {
        // Writing may fail once fibd has hung up.
        let _ = stream.write_all(flood.as_bytes());
        match ended.recv_timeout(Duration::from_millis(100)) {
            Ok(ended) => break ended,
            Err(_) => assert!(Instant::now() < deadline, "the connection was not ended"),
        }
    };
    assert!(
        end.is_ok() || end == Err(std::io::ErrorKind::ConnectionReset),
        "{end:?}"
    );
    let received = String::from_utf8_lossy(&received);
    assert!(received.starts_with("HTTP/1.1 400"), "{received:.200}");
    assert!(!received.contains("HTTP/1.1 200"), "a request was served");
    assert_eq!(server.value("/current"), "0");
    let log = server.log_text();
    assert!(
        !log.contains("reason=pipelined_too_deep") && !log.contains("reason=not_reading"),
        "hung up on for another reason:\n{log}"
    );
    // The hang-up is counted once its scan of the descriptors is over, which may be just after
    // the client sees the end.
    hung_up_once(&server);
}

/// Waits for `fibd_connections_hung_up_total` to read 1 (and fails if it reads anything else
/// for 5 s).
fn hung_up_once(server: &Server) {
    common::wait_until("fibd_connections_hung_up_total did not come to 1", || {
        server
            .get("/metrics")
            .body
            .contains("\nfibd_connections_hung_up_total 1\n")
    });
}

#[test]
fn an_http_0_9_request_line_is_refused_and_nothing_after_it_is_served() {
    let dir = TempDir::new("http09");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    let mut stream = connect(server.addr);
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    // No Host: the version is refused before the Host check, which HTTP/1.1 asks for.
    stream.write_all(b"GET /current HTTP/0.9\r\n\r\n").unwrap();
    let reply = read_reply(&mut reader, false).expect("an answer");
    assert_eq!((reply.version.as_str(), reply.status), ("HTTP/1.1", 400));
    assert_eq!(reply.header("Connection"), Some("close"));
    assert!(
        reply.body.contains("HTTP/0.9 is not served"),
        "{}",
        reply.body
    );
    // tiny_http keeps reading the connection; fibd serves nothing more on it.
    common::wait_until("the connection was not abandoned", || {
        server.log_text().contains("event=connection_abandoned")
    });
    stream
        .write_all(b"POST /next HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let reply = read_reply(&mut reader, false).expect("an answer");
    assert_eq!(reply.status, 421);
    assert_eq!(server.value("/current"), "0");
}

#[test]
fn idle_connections_are_closed_after_the_idle_timeout() {
    let dir = TempDir::new("idle");
    let server = Server::start(&dir.join("fibd.state"), &["--idle-timeout-ms", "300"]);
    let mut stream = connect(server.addr);
    // The server's idle clock cannot start before the request is sent; it may start before
    // this thread has read the reply, if this thread is slow to run.
    let idle_from = Instant::now();
    stream
        .write_all(b"GET /current HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    let mut reader = BufReader::new(stream.try_clone().unwrap());
    assert_eq!(read_reply(&mut reader, false).unwrap().status, 200);
    let mut rest = Vec::new();
    // The server closes the keep-alive connection: read returns EOF (or a reset).
    let _ = reader.read_to_end(&mut rest);
    let waited = idle_from.elapsed();
    assert!(
        waited >= Duration::from_millis(250),
        "closed too early: {waited:?}"
    );
    assert!(waited < Duration::from_secs(5), "not closed: {waited:?}");
    // A client that stops half-way through its request line is cut off the same way.
    let mut slow = connect(server.addr);
    slow.write_all(b"GET /cur").unwrap();
    let started = Instant::now();
    let _ = slow.read_to_end(&mut rest);
    assert!(started.elapsed() < Duration::from_secs(5));
    // And the server still serves, long after several idle timeouts of its accept loop: its
    // own probes keep `accept` from timing out. On a box so busy that fibd does not run for a
    // whole timeout, one may end the loop (`accept_idled`, then a new loop); without the
    // probes, every timeout would, about seven times here.
    std::thread::sleep(Duration::from_millis(1200));
    assert_eq!(server.value("/current"), "0");
    let log = server.log_text();
    assert!(!log.contains("event=accept_failed"), "{log}");
    assert!(log.matches("event=accept_idled").count() <= 2, "{log}");
}

#[test]
fn a_slowloris_crowd_does_not_stop_ordinary_clients() {
    const ATTACKERS: usize = 2000;
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("slowloris");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    let mut crowd: Vec<TcpStream> = Vec::with_capacity(ATTACKERS);
    for _ in 0..ATTACKERS {
        let mut s = connect(server.addr);
        s.write_all(b"GET /current HTTP/1.1\r\nHost: t\r\nX-Slow: ")
            .unwrap();
        crowd.push(s);
    }
    // While the crowd trickles a byte each, ordinary clients are served.
    let mut latencies = Vec::new();
    let until = Instant::now() + Duration::from_secs(2);
    let mut round = 0;
    while Instant::now() < until {
        for s in crowd.iter_mut().skip(round % 10).step_by(10) {
            let _ = s.write_all(b"a");
        }
        round += 1;
        for _ in 0..10 {
            let started = Instant::now();
            let reply = server.get("/fib/50");
            latencies.push(started.elapsed());
            assert_eq!(reply.body, "12586269025\n");
        }
    }
    latencies.sort_unstable();
    let p = |q: f64| latencies[((latencies.len() - 1) as f64 * q) as usize];
    println!(
        "slowloris: {ATTACKERS} trickling connections; {} ordinary requests, p50 {:?}, p99 {:?}, max {:?}",
        latencies.len(),
        p(0.5),
        p(0.99),
        latencies.last().unwrap()
    );
    let metrics = server.get("/metrics").body;
    let rss: f64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("process_resident_memory_bytes "))
        .unwrap()
        .parse()
        .unwrap();
    println!("slowloris: resident memory {:.1} MiB", rss / 1048576.0);
    assert!(rss < 256.0 * 1048576.0, "memory stays bounded: {rss}");
    drop(crowd);
    assert_eq!(server.value("/current"), "0");
}

#[test]
fn a_connection_flood_past_the_descriptor_limit_is_survived() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("flood");
    // A small descriptor limit, so the flood reaches it quickly.
    let (mut child, log, reader, addr) = start_with_fd_limit(96, 1000, &dir.join("fibd.state"));

    // Open far more connections than the server has descriptors, and keep them open.
    let flood: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
        .collect();
    std::thread::sleep(Duration::from_millis(300));
    // The server keeps, or within a few idle timeouts regains, service while the flood's
    // sockets are still open on our side: idle ones are closed by the server, and connections
    // it cannot accept are shed.
    let deadline = Instant::now() + Duration::from_secs(15);
    let served = loop {
        let attempt =
            TcpStream::connect_timeout(&addr, Duration::from_secs(1)).and_then(|mut s| {
                s.set_read_timeout(Some(Duration::from_secs(1)))?;
                s.write_all(b"GET /healthz HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")?;
                let mut reply = String::new();
                s.read_to_string(&mut reply)?;
                Ok(reply)
            });
        if attempt
            .as_ref()
            .is_ok_and(|r| r.starts_with("HTTP/1.1 200"))
        {
            break true;
        }
        if Instant::now() > deadline {
            break false;
        }
        std::thread::sleep(Duration::from_millis(100));
    };
    let still_running = child.0.try_wait().unwrap().is_none();
    drop(flood);
    drop(child);
    // The reader reaches the end of stderr once fibd is gone, with every line logged.
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert!(served, "service not regained during the flood:\n{log}");
    assert!(still_running, "fibd exited during the flood:\n{log}");
    assert!(
        log.contains("event=accept_failed"),
        "the flood reached the limit:\n{log}"
    );
}

#[test]
fn a_request_trickled_past_its_failed_accept_loop_is_still_answered() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("buried");
    let idle = Duration::from_millis(1000);
    let (_child, log, _reader, addr) =
        start_with_fd_limit(96, idle.as_millis() as u32, &dir.join("fibd.state"));
    // A connection of the first accept loop, which has begun its next request.
    let mut early = connect(addr);
    early
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut reader = BufReader::new(early.try_clone().unwrap());
    early
        .write_all(b"GET /current HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut reader, false).map(|r| r.status), Some(200));
    early
        .write_all(b"GET /current HTTP/1.1\r\nHost: t\r\n")
        .unwrap();
    // The request goes on arriving a header line at a time, each inside the idle timeout,
    // from now on: the flood and the wait for the failure below may take longer than the idle
    // timeout on a busy machine.
    let (stop, stopped) = std::sync::mpsc::channel::<()>();
    let mut trickle = early.try_clone().unwrap();
    let trickler = std::thread::spawn(move || {
        while stopped.recv_timeout(idle / 3) == Err(std::sync::mpsc::RecvTimeoutError::Timeout) {
            trickle.write_all(b"X-Trickle: 1\r\n").unwrap();
        }
    });
    // Descriptors run out, and that loop fails and is retired.
    let flood: Vec<TcpStream> = (0..300)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
        .collect();
    common::wait_until("the accept loop did not fail", || {
        log.lock().unwrap().contains("event=accept_failed")
    });
    drop(flood);
    // The trickle lasts longer than the retired loop's thread waits for its connections'
    // requests.
    std::thread::sleep(idle * (fibd::limits::RETIRED_IDLE_TIMEOUTS + 1));
    stop.send(()).unwrap();
    trickler.join().unwrap();
    early.write_all(b"\r\n").unwrap();
    let reply = read_reply(&mut reader, false);
    let log = log.lock().unwrap().clone();
    assert_eq!(reply.map(|r| r.status), Some(200), "{log}");
}

#[test]
fn a_server_that_can_no_longer_accept_exits_non_zero_instead_of_staying_deaf() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("deaf");
    let (mut child, log, reader, addr) = start_with_fd_limit(64, 2000, &dir.join("fibd.state"));
    // Hold every descriptor the server has with connections that never go idle: each keeps
    // trickling a header, so the idle timeout never frees them.
    let mut holders: Vec<TcpStream> = (0..120)
        .filter_map(|_| TcpStream::connect_timeout(&addr, Duration::from_secs(2)).ok())
        .collect();
    let started = Instant::now();
    let status = loop {
        for s in &mut holders {
            let _ = s.write_all(b"X");
        }
        // Keep knocking, so that any descriptor the server frees is taken again at once.
        holders
            .extend((0..4).filter_map(|_| {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).ok()
            }));
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        let waited = started.elapsed();
        let log = log.lock().unwrap();
        assert!(
            // Each failing probe can take its whole 5 s timeout, and five must fail: about
            // 30 s at worst, so 60 s leaves room for a slow machine.
            waited < Duration::from_secs(60),
            "fibd stayed up but deaf:\n{log}"
        );
        // Well inside the 2 s idle timeout, so no held connection is ever idle long enough.
        std::thread::sleep(Duration::from_millis(100));
    };
    reader.join().unwrap();
    let log = log.lock().unwrap().clone();
    assert_eq!(status.code(), Some(1), "{log}");
    assert!(log.contains("event=shutdown reason=deaf"), "{log}");
    println!("deaf: exited 1 after {:?}", started.elapsed());
}

#[test]
fn a_client_that_pipelines_deep_and_never_reads_cannot_stall_everyone_else() {
    // Pipelines as fast as the server takes requests: far past the depth one connection may
    // have waiting, so it is abandoned for that.
    non_reading_client_is_abandoned(50, false, "pipelined_too_deep");
}

#[test]
fn a_connection_abandoned_for_pipelining_too_deep_is_hung_up_on() {
    // tiny_http would read on, parse and queue all that such a client sends, however much;
    // fibd shuts its socket down instead, so the client sees the end of the stream at once,
    // not after the idle timeout (a minute here).
    let dir = TempDir::new("hangup");
    let server = Server::start(&dir.join("fibd.state"), &["--idle-timeout-ms", "60000"]);
    let mut stream = common::connect(server.addr);
    // On an idle machine one burst is deeper than the bound by the time the acceptor takes
    // it, since tiny_http queues it faster than the workers answer; on a busy one the workers
    // may keep up, and nothing ever waits. So bursts are sent until fibd abandons the
    // connection: their replies (the first 187 numbers, about 4 KB each) are never read, soon
    // fill the socket buffers, and a reply's write blocks, behind which the next burst waits.
    let burst = "GET /fib?n=187 HTTP/1.1\r\nHost: t\r\n\r\n"
        .repeat(fibd::limits::PIPELINED_PER_CONNECTION_MAX * 3);
    let mut sent = 0;
    common::wait_until_for(
        Duration::from_secs(30),
        "the connection is abandoned",
        || {
            if server.log_text().contains("reason=pipelined_too_deep") {
                return true;
            }
            if stream.write_all(burst.as_bytes()).is_ok() {
                sent += fibd::limits::PIPELINED_PER_CONNECTION_MAX * 3;
            }
            false
        },
    );
    let started = Instant::now();
    let mut received = Vec::new();
    let ended = loop {
        let mut chunk = [0; 4096];
        match stream.read(&mut chunk) {
            Ok(0) => break Ok(()),
            Ok(n) => received.extend_from_slice(&chunk[..n]),
            Err(err) => break Err(err),
        }
    };
    assert!(
        ended.as_ref().is_ok()
            || ended
                .as_ref()
                .is_err_and(|e| e.kind() == std::io::ErrorKind::ConnectionReset),
        "the connection was not ended: {ended:?} after {:?}",
        started.elapsed()
    );
    let replies = String::from_utf8_lossy(&received)
        .matches("HTTP/1.1 200")
        .count();
    assert!(replies < sent, "{replies} replies to {sent} requests");
    assert_eq!(
        server.get("/metrics").status,
        200,
        "others are still served"
    );
    hung_up_once(&server);
}

#[test]
fn a_client_that_never_reads_its_replies_cannot_stall_everyone_else() {
    // Keeps few requests waiting, so that it is never abandoned for pipelining, until the
    // replies fill the socket buffers and a write times out: it is abandoned for not reading.
    non_reading_client_is_abandoned(FILL_WINDOW, true, "not_reading");
}

#[test]
fn a_step_reply_that_cannot_be_written_holds_up_no_other_client_s_steps() {
    // A client sends only /next and reads none of the replies, until one of them can no longer
    // be written (about 18,000, some 3 MB, fill the socket buffers): the thread writing it is
    // then stuck until the send timeout, or until the kernel makes room. Other clients' steps
    // (/previous here, so that the two are counted apart) must not wait behind it.
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    // Each of the thousands of steps it takes to fill the buffers has a commit of its own (the
    // client has one request in flight at a time): in memory, so that the disk does not set
    // the pace.
    let dir = TempDir::in_memory("stepstall");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    let addr = server.addr;
    let answered = std::sync::Arc::new(std::sync::atomic::AtomicU64::new(0));
    let answered_seen = std::sync::Arc::clone(&answered);
    let hostile = std::thread::spawn(move || stall_a_step_reply(addr, &answered_seen));
    let mut asked = Vec::new();
    while !hostile.is_finished() {
        let head = "POST /previous HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n";
        let sent = Instant::now();
        let reply = final_status(addr, head, Duration::from_secs(5)).map(|(status, _)| status);
        assert!(matches!(reply, Some(200 | 409)), "{reply:?}");
        asked.push((sent, sent.elapsed()));
        answered.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        std::thread::sleep(Duration::from_millis(10));
    }
    let (stuck_from, stuck_until) = hostile.join().unwrap();
    // Steps asked and answered while the reply was stuck: had they queued behind it, none
    // would be answered before it moved on. (Not a bound on their latency: on a starved box a
    // step can take most of a second without waiting for anyone.)
    let inside = asked
        .iter()
        .filter(|&&(sent, took)| sent >= stuck_from && sent + took <= stuck_until)
        .count();
    assert!(
        inside >= 2,
        "{inside} steps were asked and answered while another client's reply was stuck for \
         {:?}:\n{}",
        stuck_until - stuck_from,
        server.log_text()
    );
}

/// How many other clients' steps must be answered during a pause of this client's replies for
/// the pause to count as a stuck reply. A pause without them is the disk or the CPU being slow
/// for everyone (a commit of a second on a starved box), not a reply that cannot be written.
const STEPS_ANSWERED_WHILE_STUCK_MIN: u64 = 3;

/// Steps /next without reading a reply, half a pipelining bound at a time, each once the last
/// is written, until the replies written stop for a second while other clients' steps
/// (`answered`) go on: a reply is then stuck. Returns when they stopped and when they went on
/// (the write given up on, or room found for it).
fn stall_a_step_reply(
    addr: SocketAddr,
    answered: &std::sync::atomic::AtomicU64,
) -> (Instant, Instant) {
    let answered = || answered.load(std::sync::atomic::Ordering::Relaxed);
    let mut stream = TcpStream::connect(addr).unwrap();
    let window = "POST /next HTTP/1.1\r\nHost: t\r\n\r\n"
        .repeat(fibd::limits::PIPELINED_PER_CONNECTION_MAX / 2);
    let per_window = fibd::limits::PIPELINED_PER_CONNECTION_MAX as u64 / 2;
    let stuck_for = Duration::from_secs(1);
    let (before, started) = (replies_finished(addr, "/next"), Instant::now());
    let (mut sent, mut seen, mut moved, mut others) = (0, 0, Instant::now(), answered());
    loop {
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "no reply got stuck while other clients' steps were answered"
        );
        let done = replies_finished(addr, "/next") - before;
        if done != seen {
            if moved.elapsed() >= stuck_for && answered() - others >= STEPS_ANSWERED_WHILE_STUCK_MIN
            {
                return (moved, Instant::now());
            }
            (seen, moved, others) = (done, Instant::now(), answered());
        }
        if done == sent {
            stream.write_all(window.as_bytes()).unwrap();
            sent += per_window;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// One connection sends `burst` requests (large replies and steps) at a time and reads
/// nothing, while ordinary clients read and step. Without `fill_until_blocked` it sends them as
/// fast as the server takes them for 3 s; with it, as `fill_until_blocked_writes` says. Each
/// ordinary request must be answered, well inside the time that would mean the server had
/// stalled behind the hostile client, and the hostile connection must be abandoned for `reason`.
fn non_reading_client_is_abandoned(burst: usize, fill_until_blocked: bool, reason: &str) {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("nonreader");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    let addr = server.addr;
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let stop_hostile = std::sync::Arc::clone(&stop);
    let hostile = std::thread::spawn(move || {
        let mut stream = TcpStream::connect(addr).unwrap();
        stream
            .set_write_timeout(Some(Duration::from_millis(200)))
            .unwrap();
        let mut requests = String::new();
        let mut fib_requests = 0;
        for i in 0..burst {
            // Two steps in 32 requests: each waits for its own fdatasync, which would otherwise
            // set the pace of filling the buffers.
            requests.push_str(match i % 32 {
                1 => "POST /next HTTP/1.1\r\nHost: t\r\n\r\n",
                3 => "POST /previous HTTP/1.1\r\nHost: t\r\n\r\n",
                _ => {
                    fib_requests += 1;
                    "GET /fib?n=187 HTTP/1.1\r\nHost: t\r\n\r\n"
                }
            });
        }
        let stopped = || stop_hostile.load(std::sync::atomic::Ordering::Relaxed);
        if fill_until_blocked {
            fill_until_blocked_writes(&mut stream, addr, &requests, fib_requests, &stopped);
        } else {
            // Until the test ends, whole requests only: a write that times out (the server
            // not reading for a moment) goes on where it stopped, so that what follows it
            // still waits behind the stuck reply; one that fails otherwise means the server
            // ended the connection.
            let bytes = requests.as_bytes();
            let mut at = 0;
            while !stopped() {
                match stream.write(&bytes[at..]) {
                    Ok(written) => at = (at + written) % bytes.len(),
                    Err(err)
                        if matches!(
                            err.kind(),
                            std::io::ErrorKind::WouldBlock
                                | std::io::ErrorKind::TimedOut
                                | std::io::ErrorKind::Interrupted
                        ) => {}
                    Err(_) => break,
                }
            }
        }
        // Hold the connection open, unread, until the test ends.
        while !stopped() {
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let mut worst = Duration::ZERO;
    let started = Instant::now();
    let mut asked = 0;
    // Until the hostile connection is abandoned, and at least 3 s; 30 s at most.
    let abandoned = || server.log_text().contains("event=connection_abandoned");
    while started.elapsed() < Duration::from_secs(3)
        || !abandoned() && started.elapsed() < Duration::from_secs(30)
    {
        for (method, path) in [
            ("GET", "/current"),
            ("POST", "/next"),
            ("POST", "/previous"),
        ] {
            let sent = Instant::now();
            let head = format!("{method} {path} HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n");
            let reply = final_status(addr, &head, Duration::from_secs(5)).map(|(status, _)| status);
            let took = sent.elapsed();
            worst = worst.max(took);
            asked += 1;
            assert!(
                reply.is_some_and(|s| s == 200 || s == 409),
                "{method} {path} after {:?}: {reply:?} in {took:?}\n{}",
                started.elapsed(),
                server.log_text()
            );
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    hostile.join().unwrap();
    let log = server.log_text();
    assert!(!log.contains("reason=deaf"), "{log}");
    assert!(
        log.lines()
            .any(|l| l.contains("event=connection_abandoned") && l.contains(reason)),
        "expected the connection abandoned for {reason}:\n{log}"
    );
    println!("non-reading client ({reason}): {asked} ordinary requests, slowest {worst:?}");
}

/// Requests the filling client sends at a time: half the pipelining bound, so that the ones
/// waiting behind a blocked write can never reach it.
const FILL_WINDOW: usize = fibd::limits::PIPELINED_PER_CONNECTION_MAX / 2;

/// Sends `requests` (with `fib_requests` look-ups among them) one window at a time, each once
/// the server has finished writing the replies to the windows before, until the test ends.
/// The replies (about 4 KB each) pile up unread in the socket buffers, which the kernel grows
/// to megabytes while they have room, so this goes at the server's pace until a write blocks
/// for good; the requests waiting behind that write stay within one window. Waiting for the
/// replies, rather than for the buffers to look full, matters: a full send buffer can still
/// grow, and a client that stopped early would leave the server nothing to block on.
fn fill_until_blocked_writes(
    stream: &mut TcpStream,
    addr: SocketAddr,
    requests: &str,
    fib_requests: u64,
    stopped: &dyn Fn() -> bool,
) {
    let mut sent = 0;
    while !stopped() {
        if stream.write_all(requests.as_bytes()).is_err() {
            return;
        }
        sent += fib_requests;
        // Only the hostile client asks for `/fib`.
        while replies_finished(addr, "/fib") < sent {
            if stopped() {
                return;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }
}

/// Requests of `route` whose replies the server has finished writing or given up on, whatever
/// their status, from its metrics (it counts a request once its reply's write has returned).
fn replies_finished(addr: SocketAddr, route: &str) -> u64 {
    let metrics = common::request(addr, "GET", "/metrics", &[]).body;
    let prefix = format!("fibd_requests_total{{route=\"{route}\",");
    metrics
        .lines()
        .filter_map(|line| line.strip_prefix(&prefix))
        .filter_map(|rest| rest.rsplit(' ').next()?.parse::<u64>().ok())
        .sum()
}

/// Sends `head` on a fresh connection and returns the final status, skipping interim 1xx
/// answers, or `None` if none came within `limit`.
fn final_status(addr: SocketAddr, head: &str, limit: Duration) -> Option<(u16, TcpStream)> {
    final_answer(addr, head, limit).map(|(status, _, stream)| (status, stream))
}

/// Like `final_status`, with whether the final answer says `Connection: close`.
fn final_answer(addr: SocketAddr, head: &str, limit: Duration) -> Option<(u16, bool, TcpStream)> {
    let mut stream = TcpStream::connect_timeout(&addr, limit).ok()?;
    stream.set_read_timeout(Some(limit)).ok()?;
    stream.write_all(head.as_bytes()).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    loop {
        let mut line = String::new();
        std::io::BufRead::read_line(&mut reader, &mut line).ok()?;
        let status: u16 = line.split(' ').nth(1)?.parse().ok()?;
        // Read the head; a 1xx has no body, and the final answer's body is not needed here.
        let mut closes = false;
        loop {
            let mut header = String::new();
            std::io::BufRead::read_line(&mut reader, &mut header).ok()?;
            if header.trim_end().is_empty() {
                break;
            }
            closes |= header.trim_end().eq_ignore_ascii_case("connection: close");
        }
        if status >= 200 {
            return Some((status, closes, stream));
        }
    }
}

#[test]
fn announced_bodies_get_a_4xx_without_being_read() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("bodies");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    let addr = server.addr;
    let limit = Duration::from_secs(5);
    // A Content-Length of petabytes: tiny_http would allocate it whole to read it through.
    let huge = "GET /current HTTP/1.1\r\nHost: t\r\nContent-Length: 100000000000000000\r\n\r\n";
    // Each answer says the connection ends, as it does.
    let answer = final_answer(addr, huge, limit).map(|(status, closes, _)| (status, closes));
    assert_eq!(answer, Some((400, true)));
    // Bodies trickled a byte at a time, more of them than there are workers: each is
    // answered at once, and nobody else waits for them.
    let trickled = "POST /next HTTP/1.1\r\nHost: t\r\nContent-Length: 5000\r\n\r\n";
    let mut tricklers = Vec::new();
    for _ in 0..8 {
        let (status, closes, stream) = final_answer(addr, trickled, limit).expect("an answer");
        assert_eq!((status, closes), (400, true));
        tricklers.push(stream);
    }
    let continued =
        "POST /next HTTP/1.1\r\nHost: t\r\nExpect: 100-continue\r\nContent-Length: 10\r\n\r\n";
    let answer = final_answer(addr, continued, limit).map(|(status, closes, _)| (status, closes));
    assert_eq!(answer, Some((400, true)));
    for _ in 0..5 {
        for stream in &mut tricklers {
            let _ = stream.write_all(b"x");
        }
        assert_eq!(
            server.value("/current"),
            "0",
            "no rejected step moved the cursor"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(server.post("/next").status, 200);
    let log = server.log_text();
    assert!(log.contains("event=request_body_unread"), "{log}");
    assert!(log.contains("reason=body_unread"), "{log}");
    assert!(!log.contains("level=error"), "{log}");
}

#[test]
fn too_many_unread_bodies_restart_the_server() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    let dir = TempDir::new("bodies-max");
    let mut server = Server::start(&dir.join("fibd.state"), &[]);
    let head = "POST /next HTTP/1.1\r\nHost: t\r\nContent-Length: 2000\r\n\r\n";
    let mut held = Vec::new();
    for _ in 0..fibd::limits::KEPT_CONNECTIONS_MAX {
        if let Some((status, stream)) = final_status(server.addr, head, Duration::from_secs(5)) {
            assert_eq!(status, 400);
            held.push(stream);
        }
    }
    let status = server.wait_exit(Duration::from_secs(10));
    let log = server.log_text();
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{log}");
    assert!(log.contains("reason=unread_bodies"), "{log}");
    // The last line says how the process ended, at the level of its worst news.
    let last = log.lines().last().unwrap_or_default();
    assert!(last.contains("level=error event=stopped"), "{log}");
    assert_eq!(common::field(last, "exit"), Some("1"), "{log}");
}

/// A burst of new connections, as when every client reconnects at once after a restart, is
/// served promptly. tiny_http's thread pool can leave most of such a burst queued behind
/// threads that serve other keep-alive connections; before the nudger (src/nudger.rs) they
/// waited seconds, freed one per second by the watchdog's probe, up to 90 of 100 at a time.
#[test]
fn a_burst_of_new_keep_alive_connections_is_served_promptly() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    const BURSTS: usize = 5;
    const CONNECTIONS: usize = 100;
    /// Without the nudger a queued connection waits for the next watchdog probe, up to a
    /// second, and the second one queued up to two; with it, a few nudges.
    const SLOWEST_MAX: Duration = Duration::from_millis(1_200);
    let mut slowest_of_bursts = Vec::new();
    for burst in 0..BURSTS {
        let dir = TempDir::new(&format!("burst-{burst}"));
        let server = Server::start(&dir.join("fibd.state"), &[]);
        let barrier = std::sync::Arc::new(std::sync::Barrier::new(CONNECTIONS));
        let clients: Vec<_> = (0..CONNECTIONS)
            .map(|_| {
                let (barrier, addr) = (barrier.clone(), server.addr);
                std::thread::spawn(move || {
                    barrier.wait();
                    let started = Instant::now();
                    let mut stream = connect(addr);
                    stream
                        .write_all(b"GET /current HTTP/1.1\r\nHost: test\r\n\r\n")
                        .unwrap();
                    let reply = read_reply(&mut BufReader::new(&stream), false);
                    // The stream is handed back and kept open until every client is done,
                    // as keep-alive clients would: a closed one would free its thread.
                    (reply.map(|r| r.status), started.elapsed(), stream)
                })
            })
            .collect();
        let outcomes: Vec<_> = clients.into_iter().map(|c| c.join().unwrap()).collect();
        let unanswered = outcomes.iter().filter(|o| o.0 != Some(200)).count();
        let slowest = outcomes.iter().map(|o| o.1).max().unwrap();
        assert_eq!(unanswered, 0, "burst {burst}: connections left unanswered");
        // New connections that each wait for their reply are no flood of pipelined requests.
        let log = server.log_text();
        assert!(!log.contains("event=fell_behind"), "burst {burst}:\n{log}");
        slowest_of_bursts.push(slowest);
    }
    // Judged on the median burst: a starved box can slow one or two bursts past the bound,
    // while without the nudger most bursts would be.
    let mut sorted = slowest_of_bursts.clone();
    sorted.sort();
    assert!(
        sorted[BURSTS / 2] <= SLOWEST_MAX,
        "the slowest of {CONNECTIONS} new connections, burst by burst: {slowest_of_bursts:?}"
    );
}

/// A burst of new connections larger than the 128 that std's `bind` asks the kernel to queue
/// waits in the listen queue until fibd accepts it, instead of having its surplus SYNs dropped
/// and retried a second later (measured here: bursts of 300 took over 1 s, with about 160
/// listen overflows each). fibd is stopped while the burst arrives, so that it accepts nothing
/// and every connection must fit in the queue; then it is resumed and serves each of them.
#[test]
fn a_burst_of_connections_waits_in_the_listen_queue_while_fibd_cannot_accept() {
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    /// As many as the seed load test opens at once.
    const CONNECTIONS: usize = 300;
    assert!(CONNECTIONS <= fibd::limits::LISTEN_BACKLOG as usize);
    let somaxconn: usize = std::fs::read_to_string("/proc/sys/net/core/somaxconn")
        .expect("read net.core.somaxconn")
        .trim()
        .parse()
        .expect("net.core.somaxconn is a number");
    assert!(
        somaxconn >= CONNECTIONS,
        "net.core.somaxconn = {somaxconn} caps every listen queue below the {CONNECTIONS} this test needs"
    );
    let dir = TempDir::new("listen-queue");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    server.signal("STOP");
    // A connection the queue has no room for has its SYN dropped, and the retry comes a second
    // later, to a queue that is still full: it cannot connect within this.
    let queued_within = Duration::from_secs(2);
    let mut streams = Vec::with_capacity(CONNECTIONS);
    let mut not_queued = None;
    for i in 0..CONNECTIONS {
        match TcpStream::connect_timeout(&server.addr, queued_within) {
            Ok(stream) => streams.push(stream),
            Err(e) => {
                not_queued = Some((i, e));
                break;
            }
        }
    }
    server.signal("CONT");
    if let Some((i, e)) = not_queued {
        panic!("connection {i} of {CONNECTIONS} was not queued while fibd was stopped: {e}");
    }
    for stream in &mut streams {
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .unwrap();
        stream
            .write_all(b"GET /current HTTP/1.1\r\nHost: test\r\n\r\n")
            .unwrap();
    }
    for (i, stream) in streams.iter().enumerate() {
        let reply = read_reply(&mut BufReader::new(stream), false);
        assert_eq!(reply.map(|r| r.status), Some(200), "connection {i}");
    }
}

/// Resident memory of process `pid` in KiB, from /proc.
fn resident_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    line.split_whitespace().nth(1)?.parse().ok()
}

/// docs/SECURITY.md's pipelining flood: clients that pipeline without reading and reconnect
/// whenever they are hung up on. tiny_http parses their requests into its queue faster than
/// the acceptor takes them; fibd must see that it fell behind, hang up on them, stay small,
/// go on answering an ordinary client, and catch up once the flood stops.
/// Without the queue-lag gauge, this flood took fibd to 424 MiB.
#[test]
fn a_reconnecting_flood_of_pipelined_requests_is_hung_up_on_while_fibd_falls_behind() {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    let _heavy = HEAVY.lock().unwrap_or_else(|e| e.into_inner());
    const FLOODERS: usize = 16;
    const FLOOD: Duration = Duration::from_secs(3);
    const FLOOD_MAX: Duration = Duration::from_secs(30);
    /// Far above the 5-10 MiB fibd holds under ordinary load, far below the 512 MiB box.
    const RESIDENT_MAX_KIB: u64 = 256 * 1024;
    let dir = TempDir::new("pipeline-flood");
    let mut server = Server::start(&dir.join("fibd.state"), &[]);
    let addr = server.addr;
    let stop = Arc::new(AtomicBool::new(false));
    let connections = Arc::new(AtomicU64::new(0));
    let burst = b"GET /fib?n=187 HTTP/1.1\r\nHost: t\r\n\r\n".repeat(64);
    let flooders: Vec<_> = (0..FLOODERS)
        .map(|_| {
            let (stop, connections, burst) = (stop.clone(), connections.clone(), burst.clone());
            std::thread::spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    let Ok(mut stream) = TcpStream::connect(addr) else {
                        std::thread::sleep(Duration::from_millis(10));
                        continue;
                    };
                    connections.fetch_add(1, Ordering::Relaxed);
                    stream
                        .set_write_timeout(Some(Duration::from_millis(200)))
                        .unwrap();
                    while !stop.load(Ordering::Relaxed) {
                        if stream.write_all(&burst).is_err() {
                            break;
                        }
                    }
                }
            })
        })
        .collect();
    // An ordinary client asks on a new connection every 50 ms, each on a thread of its own, so
    // that a slow answer does not hold up the next question. Its request may wait in the
    // queue while fibd hangs up on everyone, but its connection, having sent one small
    // request, is spared, and the request is answered when the acceptor reaches it: here all
    // 58-60 were, also with the test and fibd on one core, where each took about a second.
    // Without that spare, 30 of 60 were answered here, and none of 58 on one core, where the
    // flood kept fibd behind throughout (a busy CI machine, asking one at a time, had 1 of 40).
    // Three quarters is the floor: a new connection that reuses the port of an abandoned one
    // is closed unanswered.
    let ordinary = {
        let stop = stop.clone();
        std::thread::spawn(move || {
            let mut asking = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                asking.push(std::thread::spawn(move || {
                    let mut stream = connect(addr);
                    let _ = stream.write_all(
                        b"GET /current HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n",
                    );
                    let reply = read_reply(&mut BufReader::new(&stream), false);
                    reply.is_some_and(|r| r.status == 200)
                }));
                std::thread::sleep(Duration::from_millis(50));
            }
            let asked = asking.len();
            let answered = asking
                .into_iter()
                .map(|asking| asking.join().expect("the ordinary client connects"))
                .filter(|&answered| answered)
                .count();
            (asked, answered)
        })
    };
    let started = Instant::now();
    let mut resident_peak_kib = 0;
    // At least `FLOOD`, and on until fibd says it fell behind: on a starved machine its
    // acceptor takes fewer pipelined requests between the gauge's looks than a flood needs
    // to count as one, and saying so takes longer.
    while started.elapsed() < FLOOD || !server.log_text().contains("event=fell_behind") {
        assert!(
            started.elapsed() < FLOOD_MAX,
            "fibd never said it fell behind in {FLOOD_MAX:?} of flood:\n{}",
            server.log_text()
        );
        let resident = resident_kib(server.child.id()).expect("fibd is alive");
        resident_peak_kib = resident_peak_kib.max(resident);
        std::thread::sleep(Duration::from_millis(20));
    }
    stop.store(true, Ordering::Relaxed);
    for flooder in flooders {
        flooder.join().unwrap();
    }
    let (asked, answered) = ordinary.join().unwrap();
    assert!(
        resident_peak_kib <= RESIDENT_MAX_KIB,
        "fibd grew to {resident_peak_kib} KiB"
    );
    assert!(
        answered * 4 >= asked * 3,
        "{answered} of {asked} ordinary requests answered"
    );
    // Caught up: no longer behind, and the gauge's markers, each stamped anew, are taken in
    // time (a lag that moves is a gauge that still measures).
    let sample = |name: &str| {
        let metrics = server.get("/metrics").body;
        let line = metrics
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::to_string);
        line.expect("the gauge's metrics are exported")
    };
    let mut lags = Vec::new();
    // Draining what tiny_http queued takes a starved acceptor a while: 30 s at most.
    common::wait_until_for(
        Duration::from_secs(30),
        "fibd did not catch up after the flood",
        || {
            lags.push(sample("fibd_request_queue_lag_seconds "));
            let moving = lags.len() >= 2 && lags[lags.len() - 1] != lags[lags.len() - 2];
            let on_time = lags.last().unwrap().parse::<f64>().unwrap() < 0.1;
            std::thread::sleep(Duration::from_millis(50));
            sample("fibd_request_queue_behind ") == "0" && moving && on_time
        },
    );
    let metrics = server.get("/metrics").body;
    let purged: u64 = metrics
        .lines()
        .find_map(|l| l.strip_prefix("fibd_connections_purged_total "))
        .expect("the purge counter is exported")
        .parse()
        .unwrap();
    let log = server.log_text();
    let fell_behind = log
        .lines()
        .find(|l| l.contains("event=fell_behind"))
        .expect("fibd said it fell behind");
    assert!(
        common::field(fell_behind, "lag_ms").is_some(),
        "{fell_behind}"
    );
    assert!(
        purged > 0,
        "no connection was hung up on for the flood ({} made)\n{log}",
        connections.load(Ordering::Relaxed)
    );
    assert_eq!(server.get("/current").status, 200);
    assert!(
        server.child.try_wait().unwrap().is_none(),
        "fibd is still running"
    );
    assert!(!log.contains("level=error"), "{log}");
}
