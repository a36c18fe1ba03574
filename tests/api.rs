//! The HTTP contract, through the front door: the real binary, a temporary state file, TCP.

mod common;

use std::io::{BufReader, Read, Write};

use common::{Server, TempDir, connect, read_reply, request, write_state};

#[test]
fn a_fresh_server_answers_the_example_sequence() {
    let dir = TempDir::new("example");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    let got: Vec<String> = ["/current", "/next", "/next", "/next", "/previous"]
        .iter()
        .map(|p| server.value(p))
        .collect();
    assert_eq!(got, ["0", "1", "1", "2", "1"]);
    // POST works as well as GET for steps, and /current follows.
    assert_eq!(server.post("/next").body, "2\n");
    assert_eq!(server.post("/previous").body, "1\n");
    assert_eq!(server.value("/current"), "1");
}

#[test]
fn plain_text_replies_are_a_number_and_a_newline() {
    let dir = TempDir::new("text");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    let reply = server.get("/current");
    assert_eq!(reply.body, "0\n");
    assert_eq!(
        reply.header("Content-Type"),
        Some("text/plain; charset=utf-8")
    );
    for path in ["/current", "/next", "/previous"] {
        let reply = server.get(path);
        assert_eq!(reply.header("Cache-Control"), Some("no-store"), "{path}");
    }
}

#[test]
fn json_replies_carry_numbers_as_strings() {
    let dir = TempDir::new("json");
    let state = dir.join("fibd.state");
    write_state(&state, 185);
    let server = Server::start(&state, &[]);
    let reply = server.json("GET", "/current");
    assert_eq!(reply.header("Content-Type"), Some("application/json"));
    assert_eq!(
        reply.body,
        "{\"index\":185,\"value\":\"205697230343233228174223751303346572685\"}\n"
    );
    let reply = server.json("POST", "/next");
    assert_eq!(
        reply.body,
        "{\"index\":186,\"value\":\"332825110087067562321196029789634457848\"}\n"
    );
    let reply = server.json("POST", "/next");
    assert_eq!(reply.status, 409);
    assert!(
        reply
            .body
            .starts_with("{\"error\":\"at_end\",\"message\":\""),
        "{}",
        reply.body
    );
    assert_eq!(server.json("GET", "/fib?n=3").body, "[\"0\",\"1\",\"1\"]\n");
    assert_eq!(
        server.json("GET", "/fib/10").body,
        "{\"index\":10,\"value\":\"55\"}\n"
    );
    let reply = server.json("GET", "/fib/x");
    assert!(
        reply.body.starts_with("{\"error\":\"invalid_n\""),
        "{}",
        reply.body
    );
    assert_eq!(server.json("GET", "/healthz").body, "{\"status\":\"ok\"}\n");
    assert_eq!(
        server.json("GET", "/readyz").body,
        "{\"status\":\"ready\"}\n"
    );
}

#[test]
fn the_accept_header_is_read_as_a_weighted_list() {
    let dir = TempDir::new("negotiation");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    // Each case: the Accept fields sent, in order, and whether the answer is JSON.
    let cases: &[(&[&str], bool)] = &[
        (&["application/json"], true),
        (&["application/json, text/plain"], true),
        (&["text/html, application/json;q=0.9"], true),
        (&["*/*"], false),
        (&["application/json;q=0"], false),
        (&["text/plain;q=1, application/json;q=0.1"], false),
        (&["application/jsonx"], false),
        (&["application/json-seq"], false),
        (&["application/json;q=2"], false),
        // Several fields are one list: the second does not replace the first.
        (&["application/json", "text/html"], true),
        (&["text/plain", "application/json;q=0.5"], false),
        // Quoted strings reach the parser as sent: the `,` and `;` inside them split nothing,
        // and an escaped quote does not end one.
        (&["text/plain;q=0.5;x=\"a,b\\\"c\", application/json"], true),
        (&["text/plain;x=\"a;q=0\", application/json;q=0.5"], false),
    ];
    for &(fields, json) in cases {
        let headers: Vec<(&str, &str)> = fields.iter().map(|&f| ("Accept", f)).collect();
        let reply = request(server.addr, "GET", "/fib/10", &headers);
        let expected = if json {
            "{\"index\":10,\"value\":\"55\"}\n"
        } else {
            "55\n"
        };
        assert_eq!(reply.body, expected, "Accept: {fields:?}");
    }
}

#[test]
fn answers_whose_format_follows_accept_say_vary_accept() {
    let dir = TempDir::new("vary");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    for (method, path) in [
        ("GET", "/current"),
        ("POST", "/next"),
        ("POST", "/previous"),
        ("GET", "/fib/10"),
        ("GET", "/fib?n=3"),
        ("GET", "/fib/x"),
        ("GET", "/healthz"),
        ("GET", "/readyz"),
        ("GET", "/nowhere"),
        ("POST", "/"),
        ("POST", "/metrics"),
    ] {
        let reply = request(server.addr, method, path, &[]);
        assert_eq!(reply.header("Vary"), Some("Accept"), "{method} {path}");
    }
    // The index and the metrics have one format whatever the client asks for.
    for path in ["/", "/metrics"] {
        let reply = request(server.addr, "GET", path, &[("Accept", "application/json")]);
        assert_eq!(reply.status, 200);
        assert_eq!(reply.header("Vary"), None, "{path}");
    }
}

#[test]
fn both_bounds_answer_409_and_leave_the_cursor_alone() {
    let dir = TempDir::new("bounds");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    let reply = server.post("/previous");
    assert_eq!(reply.status, 409);
    assert!(reply.body.contains("F(0)"), "{}", reply.body);
    assert!(reply.body.contains("0..=186"), "{}", reply.body);
    assert_eq!(reply.body.lines().count(), 1);
    assert_eq!(server.value("/current"), "0");
    drop(server);

    let state = dir.join("top.state");
    write_state(&state, 186);
    let server = Server::start(&state, &[]);
    assert_eq!(
        server.value("/current"),
        "332825110087067562321196029789634457848"
    );
    let reply = server.get("/next");
    assert_eq!(reply.status, 409);
    assert!(reply.body.contains("128 bits"), "{}", reply.body);
    assert_eq!(
        server.value("/current"),
        "332825110087067562321196029789634457848"
    );
    assert_eq!(
        server.value("/previous"),
        "205697230343233228174223751303346572685"
    );
}

#[test]
fn lookups_by_index() {
    let dir = TempDir::new("lookup");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    for (n, v) in [
        ("0", "0"),
        ("1", "1"),
        ("10", "55"),
        ("93", "12200160415121876738"),
        ("186", "332825110087067562321196029789634457848"),
    ] {
        assert_eq!(server.value(&format!("/fib/{n}")), v);
    }
    assert_eq!(server.get("/fib?n=0").body, "");
    assert_eq!(server.get("/fib?n=6").body, "0\n1\n1\n2\n3\n5\n");
    let all = server.get("/fib?n=187").body;
    assert_eq!(all.lines().count(), 187);
    assert_eq!(
        all.lines().last(),
        Some("332825110087067562321196029789634457848")
    );
    // Look-ups never move the cursor.
    assert_eq!(server.value("/current"), "0");
}

#[test]
fn every_error_status_with_a_clear_one_line_message() {
    let dir = TempDir::new("errors");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    let cases: &[(&str, &str, u16, &str)] = &[
        ("GET", "/fib/abc", 400, "plain decimal"),
        ("GET", "/fib/-1", 400, "0 <= n <= 186"),
        ("GET", "/fib/+5", 400, "plain decimal"),
        ("GET", "/fib/007", 400, "leading zeros"),
        ("GET", "/fib/1%30", 400, "plain decimal"),
        ("GET", "/fib/187", 422, "F(187) does not fit in 128 bits"),
        ("GET", "/fib/", 400, "index n is missing from the path"),
        ("GET", "/fib/?n=3", 400, "/fib?n=N to list"),
        (
            "GET",
            "/fib/340282366920938463463374607431768211456000",
            422,
            "0 <= n <= 186",
        ),
        ("GET", "/fib?n=188", 422, "0 <= N <= 187"),
        ("GET", "/fib?n=x", 400, "0 <= N <= 187"),
        ("GET", "/fib", 400, "?n=N"),
        ("GET", "/nowhere", 404, "GET / lists the routes"),
        ("DELETE", "/next", 405, "allowed: GET, POST"),
        ("POST", "/current", 405, "allowed: GET, HEAD"),
        ("PUT", "/fib/3", 405, "allowed: GET, HEAD"),
        ("FOO", "/current", 501, "not one fibd knows"),
        ("FOO", "/nowhere", 501, "GET, HEAD or POST"),
    ];
    for &(method, path, status, needle) in cases {
        let reply = request(server.addr, method, path, &[]);
        assert_eq!(reply.status, status, "{method} {path}: {reply:?}");
        assert!(
            reply.body.contains(needle),
            "{method} {path}: {:?}",
            reply.body
        );
        assert_eq!(
            reply.body.lines().count(),
            1,
            "{method} {path}: {:?}",
            reply.body
        );
    }
    // RFC 9112 (3.2): exactly one Host field, and a valid one, or 400.
    let reply = request(
        server.addr,
        "POST",
        "/next",
        &[("Host", "other"), ("Accept", "application/json")],
    );
    assert_eq!(reply.status, 400, "{reply:?}");
    assert!(
        reply.body.starts_with("{\"error\":\"bad_host\""),
        "{}",
        reply.body
    );
    let reply = request(server.addr, "DELETE", "/next", &[]);
    assert_eq!(reply.header("Allow"), Some("GET, POST"));
    let reply = request(server.addr, "HEAD", "/next", &[]);
    assert_eq!(reply.status, 405, "HEAD must not move the cursor");
    assert_eq!(
        server.value("/current"),
        "0",
        "rejected requests never move the cursor"
    );
}

#[test]
fn absolute_form_targets_are_routed_by_their_path() {
    let dir = TempDir::new("absolute");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    // The scheme is case-insensitive, and an empty path is `/`, the query kept.
    for (target, body) in [
        ("http://x/fib/10", "55\n"),
        ("HTTP://x/fib/10", "55\n"),
        ("Https://x:8080/fib?n=3", "0\n1\n1\n"),
    ] {
        let reply = request(server.addr, "GET", target, &[]);
        assert_eq!((reply.status, reply.body.as_str()), (200, body), "{target}");
    }
    // A slash in the query is not the path: this is the index, and no step.
    for target in ["http://x", "http://x?y", "http://x?y/next"] {
        let reply = request(server.addr, "GET", target, &[]);
        assert_eq!(reply.status, 200, "{target}");
        assert!(reply.body.starts_with("fibd: "), "{target}: the index");
    }
    assert_eq!(server.value("/current"), "0");
}

#[test]
fn head_answers_without_a_body() {
    let dir = TempDir::new("head");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    // A HEAD reply is read as a head only, so a body sent after it would show as garbage in
    // place of the next reply on the connection, or as bytes before the end of the stream.
    let mut stream = connect(server.addr);
    stream
        .write_all(
            b"HEAD /fib/186 HTTP/1.1\r\nHost: test\r\n\r\n\
              GET /fib/3 HTTP/1.1\r\nHost: test\r\nConnection: close\r\n\r\n",
        )
        .unwrap();
    let mut reader = BufReader::new(stream);
    let head = read_reply(&mut reader, true).expect("the HEAD reply");
    assert_eq!(head.status, 200);
    assert_eq!(head.header("Content-Length"), Some("40"));
    let get = read_reply(&mut reader, false).expect("the GET reply after it");
    assert_eq!((get.status, get.body.as_str()), (200, "2\n"));
    let mut rest = Vec::new();
    reader.read_to_end(&mut rest).unwrap();
    assert!(rest.is_empty(), "bytes after the last reply: {rest:?}");
}

#[test]
fn replies_carry_their_date_type_and_length() {
    let dir = TempDir::new("headers");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    let now = || {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs()
    };
    let before = now();
    let reply = request(server.addr, "GET", "/current", &[]);
    let after = now();
    let dates: Vec<String> = (before..=after)
        .map(|secs| String::from_utf8(fibd::http_response::http_date(secs).to_vec()).unwrap())
        .collect();
    let date = reply.header("Date").expect("a Date header").to_string();
    assert!(dates.contains(&date), "{date} is not one of {dates:?}");
    assert_eq!(
        reply.header("Content-Type"),
        Some("text/plain; charset=utf-8")
    );
    assert_eq!(reply.header("Content-Length"), Some("2"));
    assert_eq!(reply.header("Cache-Control"), Some("no-store"));
    let reply = request(
        server.addr,
        "GET",
        "/fib/10",
        &[("Accept", "application/json")],
    );
    assert_eq!(reply.header("Content-Type"), Some("application/json"));
    assert_eq!(
        reply.header("Cache-Control"),
        None,
        "a look-up never changes"
    );
}

#[test]
fn replies_say_when_the_connection_ends() {
    let dir = TempDir::new("persistence");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    // Each case: the request's version and Connection header, what the reply says, and whether
    // a second request on the same connection is answered.
    let cases: &[(&str, Option<&str>, Option<&str>, bool)] = &[
        ("HTTP/1.1", None, None, true),
        ("HTTP/1.1", Some("close"), Some("close"), false),
        ("HTTP/1.0", None, Some("close"), false),
        ("HTTP/1.0", Some("keep-alive"), Some("keep-alive"), true),
        ("HTTP/1.0", Some("close"), Some("close"), false),
        ("HTTP/1.1", Some("keep-alive, close"), Some("close"), false),
        ("HTTP/1.1", Some("Upgrade"), Some("close"), false),
    ];
    for &(version, asked, said, persists) in cases {
        let mut stream = connect(server.addr);
        let header = asked.map_or(String::new(), |value| format!("Connection: {value}\r\n"));
        let raw = format!("GET /current {version}\r\nHost: t\r\n{header}\r\n");
        stream.write_all(raw.as_bytes()).unwrap();
        let mut reader = BufReader::new(stream.try_clone().unwrap());
        let reply = read_reply(&mut reader, false).expect("a reply");
        assert_eq!(reply.status, 200, "{version} {asked:?}");
        // The status line names the version fibd speaks, not the request's (RFC 9110, 6.2).
        assert_eq!(reply.version, "HTTP/1.1", "{version} {asked:?}");
        assert_eq!(reply.header("Connection"), said, "{version} {asked:?}");
        // A server that closes answers nothing more; one that keeps the connection answers.
        let _ = stream.write_all(raw.as_bytes());
        let second = read_reply(&mut reader, false);
        assert_eq!(
            second.is_some(),
            persists,
            "{version} {asked:?}: {second:?}"
        );
    }
}

#[test]
fn health_readiness_and_index() {
    let dir = TempDir::new("health");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    assert_eq!(server.get("/healthz").body, "ok\n");
    assert_eq!(server.get("/readyz").body, "ready\n");
    let index = server.get("/").body;
    for route in [
        "/current",
        "/next",
        "/previous",
        "/fib/{n}",
        "/fib?n=N",
        "/healthz",
        "/readyz",
    ] {
        assert!(index.contains(route), "index lists {route}");
    }
}

#[test]
fn concurrent_steps_are_linearizable() {
    let dir = TempDir::new("concurrent");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    let addr = server.addr;
    let clients: Vec<_> = (0..8)
        .map(|_| {
            std::thread::spawn(move || {
                (0..20)
                    .map(|_| {
                        let reply =
                            request(addr, "POST", "/next", &[("Accept", "application/json")]);
                        assert_eq!(reply.status, 200, "{reply:?}");
                        let index = reply
                            .body
                            .split(['"', ':', ','])
                            .nth(3)
                            .unwrap()
                            .to_string();
                        index.parse::<u32>().unwrap()
                    })
                    .collect::<Vec<u32>>()
            })
        })
        .collect();
    let mut all: Vec<u32> = clients
        .into_iter()
        .flat_map(|c| c.join().unwrap())
        .collect();
    all.sort_unstable();
    assert_eq!(
        all,
        (1..=160).collect::<Vec<u32>>(),
        "160 distinct indices, none skipped"
    );
    assert_eq!(
        server.json("GET", "/current").body,
        format!(
            "{{\"index\":160,\"value\":\"{}\"}}\n",
            fibd::fib::decimal(160).unwrap()
        )
    );
}

#[test]
fn pipelined_requests_are_answered_in_order() {
    let dir = TempDir::new("pipeline");
    let server = Server::start(&dir.join("fibd.state"), &["--workers", "1"]);
    let mut stream = connect(server.addr);
    // More requests than workers, steps mixed with reads, all sent before reading anything.
    let paths = [
        "/next",
        "/current",
        "/next",
        "/fib/10",
        "/next",
        "/current",
        "/previous",
    ];
    let mut raw = String::new();
    for p in paths {
        raw.push_str(&format!("GET {p} HTTP/1.1\r\nHost: t\r\n\r\n"));
    }
    stream.write_all(raw.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    let bodies: Vec<String> = paths
        .iter()
        .map(|_| read_reply(&mut reader, false).unwrap().body)
        .collect();
    // Replies come back in request order, and one connection's requests are handled one after
    // another, so a read pipelined behind a step sees that step.
    assert_eq!(
        bodies,
        ["1\n", "1\n", "1\n", "55\n", "2\n", "2\n", "1\n"],
        "F(1), F(1), F(2), F(10), F(3), F(3), F(2)"
    );
    assert_eq!(server.value("/current"), "1");
    // The connection is still usable after the pipeline.
    reader
        .get_mut()
        .write_all(b"GET /fib/3 HTTP/1.1\r\nHost: t\r\n\r\n")
        .unwrap();
    assert_eq!(read_reply(&mut reader, false).unwrap().body, "2\n");
}

#[test]
fn keep_alive_connections_serve_many_requests() {
    let dir = TempDir::new("keepalive");
    let server = Server::start(&dir.join("fibd.state"), &[]);
    let stream = connect(server.addr);
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    for i in 1..=50u64 {
        writer
            .write_all(b"POST /next HTTP/1.1\r\nHost: t\r\n\r\n")
            .unwrap();
        let reply = read_reply(&mut reader, false).unwrap();
        assert_eq!(reply.body, format!("{}\n", fibd::fib::decimal(i).unwrap()));
    }
}
