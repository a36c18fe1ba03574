//! A minimal HTTP GET over TCP with a deadline, for `fibd probe URL` (the container's
//! HEALTHCHECK, which has no curl) and for the watchdog that probes our own socket.

use std::io::{self, Read, Write};
use std::net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream};
use std::time::{Duration, Instant};

/// Longest status line we read; anything longer is not an HTTP answer.
const STATUS_LINE_BYTES_MAX: usize = 256;

/// A parsed `http://HOST:PORT/PATH` URL. HOST must be an IP address or `localhost`: the
/// scratch image has no resolver, and a health check should not depend on DNS anyway.
#[derive(Debug, PartialEq, Eq)]
pub struct Target {
    pub addr: SocketAddr,
    pub path: String,
}

impl Target {
    pub fn parse(url: &str) -> Result<Target, String> {
        let rest = url
            .strip_prefix("http://")
            .ok_or_else(|| format!("{url:?} is not an http:// URL"))?;
        let (authority, path) = match rest.find('/') {
            Some(i) => (&rest[..i], &rest[i..]),
            None => (rest, "/"),
        };
        let bad_port = || format!("{url:?} has a bad port");
        // An IPv6 address is bracketed (RFC 3986), and its colons are not a port's.
        let (host, port) = match authority.strip_prefix('[') {
            Some(bracketed) => {
                let (host, after) = bracketed
                    .split_once(']')
                    .ok_or_else(|| format!("{url:?}: an IPv6 address lacks its ']'"))?;
                match after {
                    "" => (host, None),
                    after => (host, Some(after.strip_prefix(':').ok_or_else(bad_port)?)),
                }
            }
            None => match authority.rsplit_once(':') {
                Some((host, port)) => (host, Some(port)),
                None => (authority, None),
            },
        };
        let port = port.map_or(Ok(80), |p| p.parse::<u16>().map_err(|_| bad_port()))?;
        let ip: IpAddr = if host.eq_ignore_ascii_case("localhost") {
            IpAddr::V4(Ipv4Addr::LOCALHOST)
        } else {
            host.parse()
                .map_err(|_| format!("{url:?}: host must be an IP address or localhost"))?
        };
        if path
            .bytes()
            .any(|b| b.is_ascii_whitespace() || b.is_ascii_control())
        {
            return Err(format!(
                "{url:?}: the path contains spaces or control characters"
            ));
        }
        Ok(Target {
            addr: SocketAddr::new(ip, port),
            path: path.to_string(),
        })
    }
}

/// Sends `GET path` and returns the status code of the answer, all within `timeout`: one
/// deadline for the connect, the request and the status line together, so that a caller who
/// probes on a schedule (the watchdog, a health check) knows how long a probe can take.
pub fn get_status(addr: SocketAddr, path: &str, timeout: Duration) -> io::Result<u16> {
    get_status_noting(addr, path, timeout, |_| {})
}

/// `get_status`, telling `note` the connection's local port once it is connected and before
/// anything is sent.
pub fn get_status_noting(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    note: impl FnOnce(u16),
) -> io::Result<u16> {
    exchange(addr, path, timeout, note).map_err(|err| {
        // A socket timeout reads "Resource temporarily unavailable" (EAGAIN), which names no
        // cause; the deadline running out is said as such, whatever part of the probe it cut.
        if matches!(
            err.kind(),
            io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
        ) {
            io::Error::new(
                io::ErrorKind::TimedOut,
                format!("no answer within {} ms", timeout.as_millis()),
            )
        } else {
            err
        }
    })
}

fn exchange(
    addr: SocketAddr,
    path: &str,
    timeout: Duration,
    note: impl FnOnce(u16),
) -> io::Result<u16> {
    let deadline = Instant::now() + timeout;
    let remaining = || {
        deadline
            .checked_duration_since(Instant::now())
            .filter(|left| !left.is_zero())
            .ok_or_else(|| io::Error::from(io::ErrorKind::TimedOut))
    };
    let mut stream = TcpStream::connect_timeout(&addr, remaining()?)?;
    note(stream.local_addr()?.port());
    stream.set_write_timeout(Some(remaining()?))?;
    let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes())?;
    // Read in chunks until the status line is complete: the watchdog probes every second, and
    // a read per byte would cost it a system call for each of the line's 17 or so bytes. What
    // follows the line in the same chunk (headers, body) is ignored.
    let mut head = [0u8; STATUS_LINE_BYTES_MAX];
    let mut filled = 0;
    let line_end = loop {
        if let Some(end) = head[..filled].iter().position(|&b| b == b'\n') {
            break end;
        }
        if filled == head.len() {
            break filled;
        }
        stream.set_read_timeout(Some(remaining()?))?;
        match stream.read(&mut head[filled..])? {
            0 => break filled,
            read => filled += read,
        }
    };
    let line = String::from_utf8_lossy(&head[..line_end]);
    let mut parts = line.split(' ');
    match (
        parts.next(),
        parts.next().and_then(|c| c.trim().parse::<u16>().ok()),
    ) {
        (Some(version), Some(code)) if version.starts_with("HTTP/1.") => Ok(code),
        _ => Err(io::Error::other(format!("not an HTTP answer: {line:?}"))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Serves one connection on a free port: reads the request head, then writes `chunks`
    /// with a pause between them, so that the answer reaches the probe in pieces.
    fn answer_in_pieces(chunks: &'static [&'static [u8]]) -> SocketAddr {
        use std::io::{BufRead, BufReader};
        use std::net::TcpListener;
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = listener.local_addr().unwrap();
        std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut line = String::new();
            while reader.read_line(&mut line).unwrap() > 0 && line != "\r\n" {
                line.clear();
            }
            let mut stream = reader.into_inner();
            for chunk in chunks {
                // The probe may have given up and closed the connection.
                if stream.write_all(chunk).is_err() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
        });
        addr
    }

    #[test]
    fn reads_a_status_line_that_arrives_in_pieces() {
        let timeout = Duration::from_secs(5);
        let addr = answer_in_pieces(&[b"HTTP/1.1 2", b"04 No Content\r", b"\nServer: x\r\n\r\n"]);
        assert_eq!(get_status(addr, "/healthz", timeout).unwrap(), 204);
        let addr = answer_in_pieces(&[b"HTTP/1.0 503 Service Unavailable\r\n\r\nbody"]);
        assert_eq!(get_status(addr, "/readyz", timeout).unwrap(), 503);
        // An answer that ends before its line does, or is no HTTP at all, is an error.
        let addr = answer_in_pieces(&[b"HTTP/1.1 "]);
        assert!(get_status(addr, "/", timeout).is_err());
        let addr = answer_in_pieces(&[b"SSH-2.0-OpenSSH_9.2\r\n"]);
        assert!(get_status(addr, "/", timeout).is_err());
        // A status code behind another protocol's version is not an HTTP answer either.
        let addr = answer_in_pieces(&[b"RTSP/1.0 200 OK\r\n\r\n"]);
        assert!(get_status(addr, "/", timeout).is_err());
        // A line longer than any status line is cut at the bound and judged on its start.
        let addr = answer_in_pieces(&[&[b'x'; 2 * STATUS_LINE_BYTES_MAX]]);
        assert!(get_status(addr, "/", timeout).is_err());
    }

    #[test]
    fn the_timeout_bounds_the_whole_probe_not_each_read() {
        // A status line trickled a byte every 20 ms takes about 340 ms in all; every read
        // gets its byte long before 150 ms, but the probe as a whole must give up at 150 ms
        // (a timeout per read would wait for the whole line and return 200), well before 1 s.
        const LINE: &[&[u8]] = &[
            b"H", b"T", b"T", b"P", b"/", b"1", b".", b"1", b" ", b"2", b"0", b"0", b" ", b"O",
            b"K", b"\r", b"\n",
        ];
        let addr = answer_in_pieces(LINE);
        let started = std::time::Instant::now();
        let err = get_status(addr, "/", Duration::from_millis(150)).unwrap_err();
        // Whichever part of the probe the deadline cut (a read's EAGAIN, or a deadline already
        // past), it is told as the deadline.
        assert_eq!(err.kind(), io::ErrorKind::TimedOut, "{err}");
        assert_eq!(err.to_string(), "no answer within 150 ms");
        assert!(
            started.elapsed() < Duration::from_secs(1),
            "{:?}",
            started.elapsed()
        );
        // Given the time, the same answer is read.
        let addr = answer_in_pieces(LINE);
        assert_eq!(get_status(addr, "/", Duration::from_secs(5)).unwrap(), 200);
    }

    #[test]
    fn parses_urls() {
        let t = Target::parse("http://127.0.0.1:8080/healthz").unwrap();
        assert_eq!(t.addr.to_string(), "127.0.0.1:8080");
        assert_eq!(t.path, "/healthz");
        let t = Target::parse("http://[::1]:9/readyz?x=1").unwrap();
        assert_eq!(t.addr.to_string(), "[::1]:9");
        assert_eq!(t.path, "/readyz?x=1");
        assert_eq!(
            Target::parse("http://localhost").unwrap().addr.to_string(),
            "127.0.0.1:80"
        );
        assert!(Target::parse("https://127.0.0.1/").is_err());
        assert!(Target::parse("http://example.com/").is_err());
        assert!(Target::parse("http://127.0.0.1:x/").is_err());
        let t = Target::parse("http://[::1]/healthz").unwrap();
        assert_eq!(t.addr.to_string(), "[::1]:80", "IPv6 without a port");
        assert!(Target::parse("http://[::1]x/").is_err());
        assert!(Target::parse("http://[::1/").is_err());
        assert!(Target::parse("http://[::1]:/").is_err());
        // The path is sent as is in the request line, so it must not break the line.
        assert!(Target::parse("http://127.0.0.1/a b").is_err());
        assert!(Target::parse("http://127.0.0.1/a\u{1}").is_err());
    }
}
