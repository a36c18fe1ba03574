//! Knowing when fibd is down or degraded: /metrics moves with traffic, `fibd probe` answers
//! like a health check, systemd notifications arrive, the access log is opt-in.

mod common;

use std::os::unix::net::UnixDatagram;
use std::process::Command;
use std::time::{Duration, Instant};

use common::{BIN, Server, TempDir};

/// The value of an unlabelled or exactly-labelled sample in an exposition text.
fn sample(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series)?.strip_prefix(' ')?.parse().ok())
}

#[test]
fn metrics_move_as_requests_are_made() {
    let dir = TempDir::new("metrics");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    let before = server.get("/metrics");
    assert_eq!(before.status, 200);
    assert_eq!(
        before.header("Content-Type"),
        Some("text/plain; version=0.0.4; charset=utf-8")
    );
    let before = before.body;
    for _ in 0..3 {
        server.post("/next");
    }
    server.get("/previous");
    server.get("/fib/abc");
    server.get("/nowhere");
    // A request is counted just after its reply is written, so the client can be a moment
    // ahead of the counters: wait until the last requests show.
    let deadline = Instant::now() + Duration::from_secs(5);
    let after = loop {
        let after = server.get("/metrics").body;
        let counted = [
            ("fibd_requests_total{route=\"/next\",code=\"200\"}", 3.0),
            ("fibd_requests_total{route=\"/previous\",code=\"200\"}", 1.0),
            ("fibd_requests_total{route=\"/fib/{n}\",code=\"400\"}", 1.0),
            ("fibd_requests_total{route=\"other\",code=\"404\"}", 1.0),
            ("fibd_request_duration_seconds_count{kind=\"step\"}", 4.0),
        ]
        .iter()
        .all(|&(name, count)| sample(&after, name) == Some(count));
        if counted || Instant::now() > deadline {
            break after;
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    assert_eq!(sample(&after, "fibd_cursor_index"), Some(2.0));
    assert_eq!(
        sample(&after, "fibd_requests_total{route=\"/next\",code=\"200\"}"),
        Some(3.0)
    );
    assert_eq!(
        sample(
            &after,
            "fibd_requests_total{route=\"/previous\",code=\"200\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(
            &after,
            "fibd_requests_total{route=\"/fib/{n}\",code=\"400\"}"
        ),
        Some(1.0)
    );
    assert_eq!(
        sample(&after, "fibd_requests_total{route=\"other\",code=\"404\"}"),
        Some(1.0)
    );
    let commits = sample(&after, "fibd_commits_total").unwrap();
    assert!((1.0..=4.0).contains(&commits), "{commits}");
    assert_eq!(
        sample(&after, "fibd_commit_steps_sum"),
        Some(4.0),
        "four steps committed"
    );
    assert_eq!(
        sample(&after, "fibd_commit_duration_seconds_count"),
        Some(commits)
    );
    assert_eq!(
        sample(&after, "fibd_request_duration_seconds_count{kind=\"step\"}"),
        Some(4.0)
    );
    assert_eq!(sample(&after, "fibd_ready"), Some(1.0));
    assert_eq!(sample(&after, "fibd_state_write_errors_total"), Some(0.0));
    let build = after
        .lines()
        .find(|l| l.starts_with("fibd_build_info{"))
        .expect("fibd_build_info");
    assert!(
        build.starts_with("fibd_build_info{version=\"0.1.0\",revision=\"")
            && build.ends_with("\"} 1"),
        "{build}"
    );
    assert!(sample(&after, "process_resident_memory_bytes").unwrap() > 100_000.0);
    assert!(sample(&after, "process_open_fds").unwrap() >= 3.0);
    // At least a worker, the state owner, the acceptor, the watchdog and the nudger.
    assert!(sample(&after, "fibd_threads").unwrap() >= 5.0);
    assert!(
        sample(&after, "fibd_open_connections").unwrap() >= 1.0,
        "this scrape's own"
    );
    let start = sample(&after, "process_start_time_seconds").unwrap();
    assert_eq!(Some(start), sample(&before, "process_start_time_seconds"));
    // Every family is declared once, and every sample belongs to a declared family.
    let families: Vec<&str> = after
        .lines()
        .filter_map(|l| l.strip_prefix("# TYPE "))
        .map(|l| l.split(' ').next().unwrap())
        .collect();
    let mut unique = families.clone();
    unique.sort_unstable();
    unique.dedup();
    assert_eq!(unique.len(), families.len(), "duplicate TYPE lines");
    for line in after.lines().filter(|l| !l.starts_with('#')) {
        let name = line.split(['{', ' ']).next().unwrap();
        let family = ["_bucket", "_sum", "_count"]
            .iter()
            .find_map(|s| name.strip_suffix(s).filter(|f| families.contains(f)))
            .unwrap_or(name);
        assert!(families.contains(&family), "undeclared sample {line}");
    }
}

#[test]
fn open_connections_counts_each_connection_once() {
    use std::io::{BufReader, Write};
    let dir = TempDir::new("connections");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    const HELD: usize = 20;
    // Each connection has been answered once, so tiny_http holds both its descriptors.
    let held: Vec<_> = (0..HELD)
        .map(|_| {
            let mut stream = common::connect(server.addr);
            stream
                .write_all(b"GET /current HTTP/1.1\r\nHost: test\r\n\r\n")
                .unwrap();
            let mut reader = BufReader::new(stream);
            assert_eq!(common::read_reply(&mut reader, false).unwrap().status, 200);
            reader
        })
        .collect();
    // The scrape's own connection counts too. The watchdog's probe or a nudge, both ends of
    // which are ours, may be open at that moment; a reading is taken again until neither is.
    // Counting descriptors, not sockets, read about twice as many.
    common::wait_until("fibd_open_connections reads the held connections", || {
        let open = sample(&server.get("/metrics").body, "fibd_open_connections").unwrap();
        open == (HELD + 1) as f64
    });
    drop(held);
}

#[test]
fn probe_exits_zero_only_for_a_timely_2xx() {
    let dir = TempDir::new("probe");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    let probe = |url: String| Command::new(BIN).args(["probe", &url]).output().unwrap();
    let ok = probe(format!("http://{}/healthz", server.addr));
    assert_eq!(ok.status.code(), Some(0), "{ok:?}");
    let not_found = probe(format!("http://{}/nope", server.addr));
    assert_eq!(not_found.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&not_found.stderr).contains("404"));
    // Nothing listens on a port we just released.
    let free = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    let refused = probe(format!("http://{free}/healthz"));
    assert_eq!(refused.status.code(), Some(1));
    // A server that accepts but never answers fails within the timeout.
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let started = Instant::now();
    let out = Command::new(BIN)
        .args([
            "probe",
            &format!("http://{}/healthz", silent.local_addr().unwrap()),
        ])
        .args(["--timeout-ms", "300"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(started.elapsed() < Duration::from_secs(3));
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(said.contains("no answer within 300 ms"), "{said}");
    // A bare path probes the address FIBD_LISTEN names, as the container's health check does.
    let port = server.addr.port();
    let out = Command::new(BIN)
        .args(["probe", "/readyz"])
        .env("FIBD_LISTEN", format!("0.0.0.0:{port}"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    // A FIBD_LISTEN the server would refuse is an error here too, not a silent default.
    let out = Command::new(BIN)
        .args(["probe", "/readyz"])
        .env("FIBD_LISTEN", "localhost")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{out:?}");
    assert!(String::from_utf8_lossy(&out.stderr).contains("FIBD_LISTEN"));
    let bad = probe("ftp://x".into());
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn systemd_notifications_ready_watchdog_stopping() {
    let dir = TempDir::new("notify");
    let socket_path = dir.join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket
        .set_read_timeout(Some(Duration::from_secs(5)))
        .unwrap();
    let mut child = Command::new(BIN)
        .args(["--listen", "127.0.0.1:0", "--state-file"])
        .arg(dir.join("fibd.state"))
        .env("NOTIFY_SOCKET", &socket_path)
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut received = Vec::new();
    let mut buf = [0u8; 256];
    // READY=1 at start, then WATCHDOG=1 after the first self-probe (about a second later).
    while !received.iter().any(|m| m == "WATCHDOG=1") {
        let n = socket.recv(&mut buf).expect("a notification within 5 s");
        received.push(String::from_utf8_lossy(&buf[..n]).to_string());
    }
    assert_eq!(received[0], "READY=1", "{received:?}");
    Command::new("kill")
        .args(["-TERM", &child.id().to_string()])
        .status()
        .unwrap();
    loop {
        let n = socket.recv(&mut buf).expect("STOPPING=1 on shutdown");
        if &buf[..n] == b"STOPPING=1" {
            break;
        }
    }
    assert!(child.wait().unwrap().success());
}

#[test]
fn access_log_is_off_by_default_and_one_line_per_request_when_on() {
    let dir = TempDir::new("access");
    let quiet = Server::start(&dir.join("a.state"), &[]);
    quiet.get("/current");
    quiet.get("/fib/5");
    assert!(!quiet.log_text().contains("event=access"));

    let loud = Server::start(&dir.join("b.state"), &["--access-log"]);
    loud.get("/current");
    loud.post("/next");
    // Each line is written after its reply, by the thread that wrote it: wait for both.
    common::wait_until("the access log lacks /current or /next", || {
        let log = loud.log_text();
        log.contains("target=/current") && log.contains("target=/next")
    });
    let log = loud.log_text();
    let lines: Vec<&str> = log.lines().filter(|l| l.contains("event=access")).collect();
    assert!(
        lines
            .iter()
            .any(|l| l.contains("method=GET target=/current status=200")),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.contains("method=POST target=/next status=200")),
        "{log}"
    );
    assert!(
        lines
            .iter()
            .all(|l| l.contains("duration_us=") && l.contains("remote=127.0.0.1:"))
    );
    assert!(
        !log.contains("target=/healthz?from=watchdog"),
        "the watchdog is not logged"
    );

    // A client chooses the method and the target, and each control character in them takes
    // four in the log: both are cut, so one request cannot write a line of any length.
    let (method, target) = (
        "\x01".repeat(5_000),
        format!("/fib/{}", "\x01".repeat(5_000)),
    );
    let mut stream = common::connect(loud.addr);
    std::io::Write::write_all(
        &mut stream,
        format!("{method} {target} HTTP/1.1\r\nHost: t\r\n\r\n").as_bytes(),
    )
    .unwrap();
    let reply = common::read_reply(&mut std::io::BufReader::new(stream), false);
    assert_eq!(reply.map(|r| r.status), Some(501));
    common::wait_until("the long request was not logged", || {
        loud.log_text().contains("status=501")
    });
    let log = loud.log_text();
    let line = log.lines().find(|l| l.contains("status=501")).unwrap();
    assert!(line.len() < 2_000, "a line of {} bytes", line.len());
    assert!(
        line.contains("...\" target=") || line.contains("...\""),
        "{line:.300}"
    );
}
