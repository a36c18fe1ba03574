//! Test support: start the real `fibd` binary on a free port with a temporary state file, and
//! talk to it with a small std-only HTTP/1.1 client.

#![allow(dead_code)] // Each test binary uses a different part of this module.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub const BIN: &str = env!("CARGO_BIN_EXE_fibd");

/// How long a test waits for the server to say it has started before failing.
const START_TIMEOUT: Duration = Duration::from_secs(10);
/// Socket timeout of the test client: a hang becomes a test failure, not a stuck run.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// A directory removed when dropped.
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(name: &str) -> TempDir {
        TempDir::under(&std::env::temp_dir(), name)
    }

    /// A directory in memory (`/dev/shm`, where there is one), whose fdatasync costs nothing:
    /// for tests whose pace thousands of commits would otherwise set, on whatever disk the
    /// machine has.
    pub fn in_memory(name: &str) -> TempDir {
        let shm = Path::new("/dev/shm");
        if shm.is_dir() {
            TempDir::under(shm, name)
        } else {
            TempDir::new(name)
        }
    }

    fn under(base: &Path, name: &str) -> TempDir {
        static COUNTER: AtomicUsize = AtomicUsize::new(0);
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let path = base.join(format!("fibd-test-{}-{name}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&path);
        std::fs::create_dir_all(&path).unwrap();
        TempDir(path)
    }

    pub fn join(&self, name: &str) -> PathBuf {
        self.0.join(name)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// A running fibd. Killed (SIGKILL) when dropped, if still running.
pub struct Server {
    pub child: Child,
    pub addr: SocketAddr,
    pub log: Arc<Mutex<Vec<String>>>,
    /// The thread copying fibd's stderr into `log`; it ends at end of file.
    reader: std::thread::JoinHandle<()>,
}

/// How long, after fibd has exited, its last lines may take to reach the log. The reader
/// thread ends at end of file, normally within microseconds; a starved one can take longer.
const LOG_DRAIN_TIMEOUT: Duration = Duration::from_secs(5);

/// Waits until `reader` has copied all of a dead process's stderr, up to `LOG_DRAIN_TIMEOUT`.
fn drain_log(reader: &std::thread::JoinHandle<()>) {
    let deadline = Instant::now() + LOG_DRAIN_TIMEOUT;
    while !reader.is_finished() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Server {
    /// Starts fibd on `127.0.0.1:0` with `state` as its state file and waits for its start line.
    pub fn start(state: &Path, extra: &[&str]) -> Server {
        Self::try_start(state, extra).unwrap_or_else(|(status, log)| {
            panic!("fibd did not start (exit {status:?}):\n{}", log.join("\n"))
        })
    }

    /// Like `start`, but returns the exit status and log if the process exits instead.
    pub fn try_start(
        state: &Path,
        extra: &[&str],
    ) -> Result<Server, (Option<ExitStatus>, Vec<String>)> {
        let mut child = Command::new(BIN)
            .args(["--listen", "127.0.0.1:0", "--state-file"])
            .arg(state)
            .args(extra)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn fibd");
        let log = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        let stderr = child.stderr.take().unwrap();
        let sink = Arc::clone(&log);
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines() {
                let Ok(line) = line else { break };
                // Recorded before it is announced, so the start line is in the log by the
                // time `start` returns.
                sink.lock().unwrap().push(line.clone());
                if line.contains("event=start ") {
                    let _ = tx.send(line);
                }
            }
        });
        let deadline = Instant::now() + START_TIMEOUT;
        loop {
            if let Ok(line) = rx.recv_timeout(Duration::from_millis(20)) {
                let addr = field(&line, "listen").expect("start line names the address");
                return Ok(Server {
                    child,
                    addr: addr.parse().expect("listen= is an address"),
                    log,
                    reader,
                });
            }
            if let Ok(Some(status)) = child.try_wait() {
                drain_log(&reader);
                let lines = log.lock().unwrap().clone();
                return Err((Some(status), lines));
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                return Err((None, log.lock().unwrap().clone()));
            }
        }
    }

    pub fn get(&self, path: &str) -> Reply {
        request(self.addr, "GET", path, &[])
    }

    pub fn post(&self, path: &str) -> Reply {
        request(self.addr, "POST", path, &[])
    }

    pub fn json(&self, method: &str, path: &str) -> Reply {
        request(self.addr, method, path, &[("Accept", "application/json")])
    }

    /// The body of a successful GET, without its newline.
    pub fn value(&self, path: &str) -> String {
        let reply = self.get(path);
        assert_eq!(reply.status, 200, "GET {path}: {reply:?}");
        reply.body.trim_end().to_string()
    }

    pub fn kill9(&mut self) {
        self.child.kill().unwrap();
        self.child.wait().unwrap();
    }

    pub fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([&format!("-{signal}"), &self.child.id().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits up to `limit` for the process to exit.
    pub fn wait_exit(&mut self, limit: Duration) -> Option<ExitStatus> {
        let deadline = Instant::now() + limit;
        while Instant::now() < deadline {
            if let Some(status) = self.child.try_wait().unwrap() {
                drain_log(&self.reader);
                return Some(status);
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        None
    }

    pub fn log_text(&self) -> String {
        self.log.lock().unwrap().join("\n")
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The value of `key=` in a key=value log line.
pub fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split(' ')
        .find_map(|kv| kv.strip_prefix(key).and_then(|rest| rest.strip_prefix('=')))
}

#[derive(Debug, Clone)]
pub struct Reply {
    /// The status line's HTTP version, such as `HTTP/1.1`.
    pub version: String,
    pub status: u16,
    pub headers: Vec<(String, String)>,
    pub body: String,
}

impl Reply {
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// One request on a fresh connection (`Connection: close`).
pub fn request(addr: SocketAddr, method: &str, path: &str, headers: &[(&str, &str)]) -> Reply {
    let mut stream = connect(addr);
    let mut raw = format!("{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\n");
    for (k, v) in headers {
        raw.push_str(&format!("{k}: {v}\r\n"));
    }
    raw.push_str("\r\n");
    stream.write_all(raw.as_bytes()).unwrap();
    let mut reader = BufReader::new(stream);
    read_reply(&mut reader, method == "HEAD").expect("a reply")
}

pub fn connect(addr: SocketAddr) -> TcpStream {
    let stream = TcpStream::connect_timeout(&addr, CLIENT_TIMEOUT).expect("connect");
    stream.set_read_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    stream.set_write_timeout(Some(CLIENT_TIMEOUT)).unwrap();
    stream
}

/// Reads one response (status line, headers, Content-Length body). `None` on a clean EOF
/// before the status line.
pub fn read_reply(reader: &mut impl BufRead, head_only: bool) -> Option<Reply> {
    let mut status_line = String::new();
    if reader.read_line(&mut status_line).ok()? == 0 {
        return None;
    }
    let status: u16 = status_line
        .split(' ')
        .nth(1)
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("bad status line {status_line:?}"));
    let mut headers = Vec::new();
    loop {
        let mut line = String::new();
        reader.read_line(&mut line).expect("header line");
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        let (k, v) = line.split_once(':').expect("header has a colon");
        headers.push((k.trim().to_string(), v.trim().to_string()));
    }
    let len: usize = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("Content-Length"))
        .map_or(0, |(_, v)| v.parse().unwrap());
    let mut body = vec![0u8; if head_only { 0 } else { len }];
    reader.read_exact(&mut body).expect("body");
    Some(Reply {
        version: status_line
            .split(' ')
            .next()
            .unwrap_or_default()
            .to_string(),
        status,
        headers,
        body: String::from_utf8(body).expect("utf-8 body"),
    })
}

/// Writes a state file whose cursor is at `index`, as if a server had stepped there.
pub fn write_state(path: &Path, index: u64) {
    use fibd::cursor::Cursor;
    use fibd::slot::{Slot, encode};
    let cursor = Cursor::at(index).unwrap();
    let mut bytes = encode(Slot {
        sequence: 10,
        cursor,
    })
    .to_vec();
    bytes.extend_from_slice(&encode(Slot {
        sequence: 11,
        cursor,
    }));
    std::fs::write(path, bytes).unwrap();
}

/// Polls `done` until it holds; panics with `what` if it does not within 5 s.
pub fn wait_until(what: &str, done: impl FnMut() -> bool) {
    wait_until_for(Duration::from_secs(5), what, done);
}

/// Polls `done` until it holds; panics with `what` if it does not within `limit`.
pub fn wait_until_for(limit: Duration, what: &str, mut done: impl FnMut() -> bool) {
    let deadline = Instant::now() + limit;
    while !done() {
        assert!(Instant::now() < deadline, "{what}");
        std::thread::sleep(Duration::from_millis(5));
    }
}
