//! The queue-lag gauge: how far behind tiny_http's connection threads the acceptor is, which
//! tiny_http cannot say, and what counts as too far.
//!
//! tiny_http parses every connection's requests on that connection's own thread into one
//! unbounded queue, which the acceptor empties. Clients that pipeline without reading, and
//! reconnect whenever they are hung up on, can make a dozen parsers outrun the one acceptor:
//! the queue then grows by hundreds of MiB a second until the kernel kills the process
//! (docs/SECURITY.md). The gauge measures the queue from outside. A thread of ours keeps one
//! connection to our own socket and writes a marker request on it, stamped with when it was
//! written; the acceptor takes the marker out of the queue like any request, notes the stamp,
//! and drops the marker unanswered. The next marker is written once that one was taken, at
//! most every `QUEUE_LAG_MARKER_INTERVAL_MS`. So the gauge always knows how long its marker has
//! waited so far, and how many pipelined requests the acceptors took meanwhile. A marker that
//! has waited long while the acceptors took many pipelined requests means a flood of them, and
//! the acceptor far behind it (the marker is judged while it waits: under a flood the acceptor
//! would reach it only seconds later). The edge then hangs up on every connection but its own,
//! those with only a request in flight and those whose client has sent no more than a request
//! (`hang_up.rs`): their parsers stop, and what they queued is drained.

use std::io::{self, Write};
use std::net::{IpAddr, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crate::limits;

/// The local port of a connection of ours to our own listening socket while it is open, zero
/// when there is none (no connected socket has port zero). The watchdog's probes and the gauge
/// note theirs, so that the hang-up thread spares them and the acceptor knows the markers.
#[derive(Default)]
pub struct OwnPort(AtomicU16);

impl OwnPort {
    pub fn set(&self, port: u16) {
        self.0.store(port, Ordering::Release);
    }

    pub fn clear(&self) {
        self.0.store(0, Ordering::Release);
    }

    fn is(&self, port: u16) -> bool {
        port != 0 && self.0.load(Ordering::Acquire) == port
    }
}

/// The gauge's shared state: written by the gauge thread and the acceptors, read by the
/// hang-up thread and `/metrics`.
pub struct QueueLag {
    /// The stamps on markers are microseconds since this instant.
    epoch: Instant,
    /// The address our own connections come from: the one the watchdog probes (loopback for a
    /// wildcard bind). Set once the socket is bound.
    own_ip: OnceLock<IpAddr>,
    /// The gauge's connection.
    pub gauge: OwnPort,
    /// The watchdog's probe, while one is open.
    pub watchdog: OwnPort,
    /// Requests the acceptors have taken that were pipelined: sent behind another request of
    /// their connection still in flight, or on a connection given up on.
    pipelined: AtomicU64,
    /// The stamp of the newest marker taken.
    seen_us: AtomicU64,
    /// How long the marker waited, or has waited so far, in microseconds, for `/metrics`.
    lag_us: AtomicU64,
    /// Asks the gauge thread for a new connection: the accept loop that served its old one
    /// was retired, and a retired loop's queue is only polled now and then.
    reconnect: AtomicBool,
    /// Whether the gauge judges the acceptor far behind, for `/metrics`.
    behind: AtomicBool,
}

/// The verdict after a look at the marker.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reading {
    /// The acceptor keeps up, as it did.
    KeepingUp,
    /// The acceptor has just fallen far behind: hang up, and say so.
    FellBehind { lag: Duration, pipelined: u64 },
    /// The acceptor is still far behind: hang up again on whoever connected since.
    StillBehind,
    /// The acceptor has caught up after being far behind for about `behind`.
    CaughtUp { behind: Duration },
}

impl QueueLag {
    pub fn new(epoch: Instant) -> QueueLag {
        QueueLag {
            epoch,
            own_ip: OnceLock::new(),
            gauge: OwnPort::default(),
            watchdog: OwnPort::default(),
            pipelined: AtomicU64::new(0),
            seen_us: AtomicU64::new(0),
            lag_us: AtomicU64::new(0),
            reconnect: AtomicBool::new(false),
            behind: AtomicBool::new(false),
        }
    }

    /// Records the address our own connections come from; the first call wins.
    pub fn set_own_ip(&self, ip: IpAddr) {
        let _ = self.own_ip.set(ip);
    }

    /// Whether `peer` is a connection of ours: the gauge's or the watchdog's current probe.
    pub fn is_own(&self, peer: SocketAddr) -> bool {
        self.own_ip.get() == Some(&peer.ip())
            && (self.gauge.is(peer.port()) || self.watchdog.is(peer.port()))
    }

    /// Whether a request from `peer` is a marker: it came on the gauge's connection.
    pub fn is_marker(&self, peer: SocketAddr) -> bool {
        self.gauge.is(peer.port()) && self.own_ip.get() == Some(&peer.ip())
    }

    /// Whether the gauge has its connection open.
    pub fn gauge_connected(&self) -> bool {
        self.gauge.0.load(Ordering::Acquire) != 0
    }

    /// Counts one pipelined request taken from tiny_http's queue.
    pub fn count_pipelined(&self) {
        self.pipelined.fetch_add(1, Ordering::Relaxed);
    }

    /// Notes a marker the acceptor took at `now`; false for a target that is not one.
    pub fn take_marker(&self, target: &str, now: Instant) -> bool {
        let Some(sent_us) = parse_marker(target) else {
            return false;
        };
        let lag_us = micros_since(self.epoch, now).saturating_sub(sent_us);
        self.lag_us.store(lag_us, Ordering::Relaxed);
        self.seen_us.fetch_max(sent_us, Ordering::AcqRel);
        true
    }

    /// How long the marker waited, or has waited so far, for `/metrics`.
    pub fn lag(&self) -> Duration {
        Duration::from_micros(self.lag_us.load(Ordering::Relaxed))
    }

    /// Whether the gauge judges the acceptor far behind, for `/metrics`.
    pub fn is_behind(&self) -> bool {
        self.behind.load(Ordering::Relaxed)
    }

    /// Asks the gauge thread to connect again (see `reconnect`).
    pub fn reconnect(&self) {
        self.reconnect.store(true, Ordering::Release);
    }

    fn now_us(&self) -> u64 {
        micros_since(self.epoch, Instant::now())
    }
}

fn micros_since(epoch: Instant, at: Instant) -> u64 {
    u64::try_from(at.saturating_duration_since(epoch).as_micros()).unwrap_or(u64::MAX)
}

/// The marker's target: `/healthz`, which anything that sees it by mistake (a retired accept
/// loop's queue, after the gauge moved on) answers harmlessly.
const MARKER_PREFIX: &str = "/healthz?from=gauge&sent=";

/// The marker written at `sent_us`.
fn marker_request(sent_us: u64) -> String {
    format!("GET {MARKER_PREFIX}{sent_us} HTTP/1.1\r\nHost: fibd\r\n\r\n")
}

/// The stamp of a marker's target.
fn parse_marker(target: &str) -> Option<u64> {
    target.strip_prefix(MARKER_PREFIX)?.parse().ok()
}

/// The verdict over the gauge's looks at its marker, one every `QUEUE_LAG_MARKER_INTERVAL_MS`.
/// Far behind means `QUEUE_LAG_LATE_LOOKS_MIN` looks in a row found the marker late: it had
/// waited `QUEUE_LAG_MAX_MS` or more, while the acceptors took `QUEUE_LAG_PIPELINED_MIN`
/// pipelined requests or more. Both, because either alone is ordinary: clients that pipeline
/// a few requests each are served within milliseconds, and a process starved of the core (a
/// busy host, a stop and continue, a burst of thousands of new connections) lags without
/// pipelined requests, where hanging up on clients would free little. Caught up means a
/// marker was taken in time; a marker still on its way and not yet late proves nothing, and
/// while behind, the edge goes on hanging up meanwhile.
#[derive(Default)]
pub struct Judge {
    late_in_row: u32,
    /// Looks since the acceptor fell behind, while it is.
    behind: Option<u32>,
}

impl Judge {
    /// Judges one look at a marker that has waited `lag` so far (or in all, once `taken`)
    /// while the acceptors took `pipelined` pipelined requests.
    pub fn look(&mut self, lag: Duration, pipelined: u64, taken: bool) -> Reading {
        let late = lag >= Duration::from_millis(limits::QUEUE_LAG_MAX_MS)
            && pipelined >= limits::QUEUE_LAG_PIPELINED_MIN;
        self.late_in_row = if late { self.late_in_row + 1 } else { 0 };
        match self.behind {
            None if self.late_in_row >= limits::QUEUE_LAG_LATE_LOOKS_MIN => {
                self.behind = Some(0);
                Reading::FellBehind { lag, pipelined }
            }
            None => Reading::KeepingUp,
            Some(looks) if late || !taken => {
                self.behind = Some(looks + 1);
                Reading::StillBehind
            }
            Some(looks) => {
                self.behind = None;
                let interval = Duration::from_millis(limits::QUEUE_LAG_MARKER_INTERVAL_MS);
                Reading::CaughtUp {
                    behind: interval * (looks + 1),
                }
            }
        }
    }

    pub fn is_behind(&self) -> bool {
        self.behind.is_some()
    }
}

/// The marker on its way: when it was written, and the pipelined requests taken by then.
struct Outstanding {
    sent_us: u64,
    pipelined: u64,
}

/// The gauge thread: until `stopping` returns true, keeps a connection to `addr` (our own
/// socket) and a marker on its way there, and every `QUEUE_LAG_MARKER_INTERVAL_MS` tells
/// `on_reading` what a look at the marker says. It never reads: markers are not answered.
/// A connection the server has ended (it may time a marker's connection out after
/// `marker_max` of quiet, hang up on it, or shed it unaccepted) is replaced, as is one whose
/// marker has waited longer than `marker_max`: either would otherwise leave a marker waiting
/// for ever, and the gauge judging a queue it no longer measures.
pub fn run(
    addr: SocketAddr,
    lag: &QueueLag,
    marker_max: Duration,
    stopping: impl Fn() -> bool,
    mut on_reading: impl FnMut(Reading),
) {
    let interval = Duration::from_millis(limits::QUEUE_LAG_MARKER_INTERVAL_MS);
    let retry = Duration::from_millis(limits::QUEUE_LAG_RECONNECT_MS);
    let mut judge = Judge::default();
    while !stopping() {
        // Taken before connecting: a loop retired meanwhile asks again, and is not lost.
        lag.reconnect.store(false, Ordering::Release);
        let Ok((stream, local)) = connect(addr) else {
            thread::sleep(retry);
            continue;
        };
        lag.gauge.set(local.port());
        let mut outstanding: Option<Outstanding> = None;
        let mut any_taken = false;
        while !stopping() && !lag.reconnect.load(Ordering::Acquire) && still_open(&stream) {
            let pipelined = lag.pipelined.load(Ordering::Relaxed);
            let now_us = lag.now_us();
            // A look at the marker just taken, by how long it waited in all (the acceptor
            // noted that), or at the one still on its way, by how long it has waited so far.
            // A new connection has neither: its first marker is written without a look, so
            // that a marker lost with the old connection is not taken for one on time.
            let look = match outstanding.take() {
                Some(marker) if lag.seen_us.load(Ordering::Acquire) >= marker.sent_us => {
                    any_taken = true;
                    let waited = Duration::from_micros(lag.lag_us.load(Ordering::Relaxed));
                    Some((waited, pipelined.saturating_sub(marker.pipelined), true))
                }
                Some(marker) => {
                    let waited_us = now_us.saturating_sub(marker.sent_us);
                    let waited = Duration::from_micros(waited_us);
                    if waited > marker_max {
                        break;
                    }
                    lag.lag_us.store(waited_us, Ordering::Relaxed);
                    let look = (waited, pipelined.saturating_sub(marker.pipelined), false);
                    outstanding = Some(marker);
                    Some(look)
                }
                None => None,
            };
            if outstanding.is_none() {
                if (&stream)
                    .write_all(marker_request(now_us).as_bytes())
                    .is_err()
                {
                    break;
                }
                outstanding = Some(Outstanding {
                    sent_us: now_us,
                    pipelined,
                });
            }
            if let Some((waited, pipelined, taken)) = look {
                let reading = judge.look(waited, pipelined, taken);
                lag.behind.store(judge.is_behind(), Ordering::Relaxed);
                on_reading(reading);
            }
            thread::sleep(interval);
        }
        // Cleared before the connection closes, so that its port, reused by a client, is
        // never taken for ours. A marker still on its way is dropped with the connection: the
        // next is judged afresh.
        lag.gauge.clear();
        drop(stream);
        // A connection that ended before any of its markers was taken (shed unaccepted while
        // descriptors ran out, say) is replaced after a pause: at once, it would spend two
        // descriptors every 20 ms just when they are scarce.
        thread::sleep(if any_taken { interval } else { retry });
    }
}

/// A connection to `addr` for the gauge, non-blocking, and its local address.
fn connect(addr: SocketAddr) -> io::Result<(TcpStream, SocketAddr)> {
    let timeout = Duration::from_millis(limits::QUEUE_LAG_RECONNECT_MS);
    let stream = TcpStream::connect_timeout(&addr, timeout)?;
    // A marker's stamp is its time of writing only if it leaves at once.
    stream.set_nodelay(true)?;
    // tiny_http reads whatever arrives, and one small marker at a time is written, so a write
    // would block only if the connection thread were gone without closing it; then it fails,
    // and a new connection is wanted. Non-blocking also lets `still_open` look without waiting.
    stream.set_nonblocking(true)?;
    let local = stream.local_addr()?;
    Ok((stream, local))
}

/// Whether the server still holds the gauge's connection open: nothing has come back on it.
/// The server never answers a marker, so anything that arrives (the end of the stream, a reset,
/// a 408 for a marker that waited past the idle timeout) means it is done with the connection.
fn still_open(stream: &TcpStream) -> bool {
    matches!(stream.peek(&mut [0; 1]), Err(err) if err.kind() == io::ErrorKind::WouldBlock)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    const LAG_MAX: Duration = Duration::from_millis(limits::QUEUE_LAG_MAX_MS);
    const MANY: u64 = limits::QUEUE_LAG_PIPELINED_MIN;

    /// Looks at a marker still on its way.
    const WAITING: bool = false;
    /// Looks at a marker just taken.
    const TAKEN: bool = true;

    fn looks(judge: &mut Judge, looks: &[(Duration, u64, bool)]) -> Vec<Reading> {
        looks
            .iter()
            .map(|&(lag, pipelined, taken)| judge.look(lag, pipelined, taken))
            .collect()
    }

    #[test]
    fn markers_round_trip_and_other_targets_are_not_markers() {
        let request = marker_request(12_345);
        let target = request.split(' ').nth(1).unwrap();
        assert_eq!(parse_marker(target), Some(12_345));
        assert_eq!(parse_marker("/healthz"), None);
        assert_eq!(parse_marker("/healthz?from=gauge&sent=x"), None);
        assert!(request.ends_with("\r\n\r\n") && !request.contains("close"));
        let lag = QueueLag::new(Instant::now());
        assert!(!lag.take_marker("/healthz", Instant::now()));
        assert!(lag.take_marker(target, Instant::now()));
        assert_eq!(lag.seen_us.load(Ordering::Relaxed), 12_345);
    }

    #[test]
    fn far_behind_takes_late_looks_in_a_row_each_behind_many_requests() {
        let min = limits::QUEUE_LAG_LATE_LOOKS_MIN as usize;
        let mut judge = Judge::default();
        let readings = looks(&mut judge, &vec![(LAG_MAX, MANY, WAITING); min + 1]);
        assert!(readings[..min - 1].iter().all(|&r| r == Reading::KeepingUp));
        assert_eq!(
            readings[min - 1],
            Reading::FellBehind {
                lag: LAG_MAX,
                pipelined: MANY
            }
        );
        assert_eq!(readings[min], Reading::StillBehind);
        // Once behind, a late marker keeps it behind, taken or not; so does a new marker not
        // yet late, which proves nothing; the first marker taken in time catches up.
        let on_time = Duration::from_millis(1);
        let readings = looks(
            &mut judge,
            &[
                (LAG_MAX * 3, MANY, TAKEN),
                (on_time, 1, WAITING),
                (on_time, 1, TAKEN),
                (on_time, 1, TAKEN),
            ],
        );
        assert_eq!(readings[..2], [Reading::StillBehind; 2], "{readings:?}");
        let interval = Duration::from_millis(limits::QUEUE_LAG_MARKER_INTERVAL_MS);
        assert_eq!(
            readings[2],
            Reading::CaughtUp {
                behind: interval * 4
            }
        );
        assert_eq!(readings[3], Reading::KeepingUp);
        // A marker taken late counts as a late look.
        let mut judge = Judge::default();
        let readings = looks(
            &mut judge,
            &[(LAG_MAX, MANY, TAKEN), (LAG_MAX, MANY, WAITING)],
        );
        assert!(
            matches!(readings[min - 1], Reading::FellBehind { .. }),
            "{readings:?}"
        );
    }

    #[test]
    fn lag_without_a_queue_or_a_queue_without_lag_is_not_behind() {
        // A starved process: the marker very late, a few pipelined requests taken meanwhile.
        let starved = vec![(LAG_MAX * 10, 10, WAITING); 20];
        // Clients pipelining many requests, served in time.
        let burst = vec![(LAG_MAX - Duration::from_micros(1), MANY * 10, TAKEN); 20];
        // A pause of the whole process: the marker written before it has waited long, and
        // on the first look after it few were taken since; by the next it is taken.
        let mut paused = vec![(Duration::from_millis(1), 0, TAKEN); 5];
        paused.push((LAG_MAX * 20, 100, WAITING));
        paused.extend([(Duration::from_millis(1), 0, TAKEN); 5]);
        for sequence in [starved, burst, paused] {
            let readings = looks(&mut Judge::default(), &sequence);
            assert!(
                readings.iter().all(|&r| r == Reading::KeepingUp),
                "{readings:?}"
            );
        }
    }

    /// How long a test waits for what the gauge does before failing.
    const WITHIN: Duration = Duration::from_secs(5);

    /// A gauge thread writing to a listener of the test's, which stands in for the server:
    /// it reads the markers, and plays the acceptors taking requests and markers.
    struct StandIn {
        listener: std::net::TcpListener,
        lag: std::sync::Arc<QueueLag>,
        stop: std::sync::Arc<AtomicBool>,
        readings: std::sync::mpsc::Receiver<Reading>,
        gauge: Option<thread::JoinHandle<()>>,
    }

    impl StandIn {
        fn start(marker_max: Duration) -> StandIn {
            use std::sync::Arc;
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            listener.set_nonblocking(true).unwrap();
            let addr = listener.local_addr().unwrap();
            let lag = Arc::new(QueueLag::new(Instant::now()));
            lag.set_own_ip(addr.ip());
            let stop = Arc::new(AtomicBool::new(false));
            let (readings_tx, readings) = std::sync::mpsc::channel();
            let (gauge_lag, gauge_stop) = (Arc::clone(&lag), Arc::clone(&stop));
            let gauge = thread::spawn(move || {
                let stopping = || gauge_stop.load(Ordering::Relaxed);
                run(addr, &gauge_lag, marker_max, stopping, |reading| {
                    let _ = readings_tx.send(reading);
                })
            });
            StandIn {
                listener,
                lag,
                stop,
                readings,
                gauge: Some(gauge),
            }
        }

        /// The gauge's next connection, and its address.
        fn accept(&self) -> (TcpStream, SocketAddr) {
            let deadline = Instant::now() + WITHIN;
            loop {
                match self.listener.accept() {
                    Ok((stream, peer)) => {
                        stream.set_nonblocking(false).unwrap();
                        stream.set_read_timeout(Some(WITHIN)).unwrap();
                        return (stream, peer);
                    }
                    Err(err) if err.kind() == io::ErrorKind::WouldBlock => {
                        assert!(Instant::now() < deadline, "the gauge did not connect");
                        thread::sleep(Duration::from_millis(5));
                    }
                    Err(err) => panic!("accept: {err}"),
                }
            }
        }

        /// The first reading that `wanted` accepts.
        fn reading(&self, wanted: impl Fn(&Reading) -> bool) -> Reading {
            let deadline = Instant::now() + WITHIN;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                let reading = self.readings.recv_timeout(left).expect("no such reading");
                if wanted(&reading) {
                    return reading;
                }
            }
        }

        /// Waits until the gauge has noted `peer` as its connection.
        fn noted(&self, peer: SocketAddr) {
            let deadline = Instant::now() + WITHIN;
            while !self.lag.is_marker(peer) {
                assert!(Instant::now() < deadline, "the gauge did not note {peer}");
                thread::sleep(Duration::from_millis(5));
            }
        }
    }

    impl Drop for StandIn {
        fn drop(&mut self) {
            self.stop.store(true, Ordering::Relaxed);
            if let Some(gauge) = self.gauge.take() {
                let _ = gauge.join();
            }
        }
    }

    /// The target of the next marker written on `stream`.
    fn next_marker(stream: &mut TcpStream) -> String {
        let mut head = Vec::new();
        while !head.ends_with(b"\r\n\r\n") {
            let mut byte = [0; 1];
            assert_eq!(stream.read(&mut byte).expect("a marker came"), 1);
            head.push(byte[0]);
        }
        let head = String::from_utf8(head).unwrap();
        head.split(' ').nth(1).unwrap().to_string()
    }

    #[test]
    fn the_gauge_judges_its_marker_while_it_waits_and_writes_the_next_once_it_is_taken() {
        let stand_in = StandIn::start(WITHIN);
        let (mut stream, peer) = stand_in.accept();
        let first = next_marker(&mut stream);
        stand_in.noted(peer);
        // The marker waits while the acceptors take many pipelined requests: far behind.
        for _ in 0..MANY {
            stand_in.lag.count_pipelined();
        }
        let behind = stand_in.reading(|r| matches!(r, Reading::FellBehind { .. }));
        let Reading::FellBehind {
            lag: waited,
            pipelined,
        } = behind
        else {
            unreachable!()
        };
        assert!(waited >= LAG_MAX && pipelined >= MANY, "{behind:?}");
        assert!(stand_in.lag.lag() >= LAG_MAX);
        stand_in.reading(|r| *r == Reading::StillBehind);
        // Taken at last, late: the next marker is written, and the gauge is still behind
        // until a marker is taken in time.
        assert!(stand_in.lag.take_marker(&first, Instant::now()));
        let second = next_marker(&mut stream);
        assert!(parse_marker(&second) > parse_marker(&first));
        assert!(stand_in.lag.is_behind());
        assert!(stand_in.lag.take_marker(&second, Instant::now()));
        stand_in.reading(|r| matches!(r, Reading::CaughtUp { .. }));
        assert!(!stand_in.lag.is_behind());
        // A retired accept loop: the gauge connects again, and forgets the old port.
        stand_in.lag.reconnect();
        let (_again, again_peer) = stand_in.accept();
        stand_in.noted(again_peer);
        assert!(!stand_in.lag.is_marker(peer));
        let lag = std::sync::Arc::clone(&stand_in.lag);
        drop(stand_in);
        assert!(!lag.is_marker(again_peer), "cleared as it ends");
    }

    #[test]
    fn a_connection_the_server_ended_or_a_marker_waiting_too_long_is_replaced() {
        let marker_max = Duration::from_secs(2);
        let stand_in = StandIn::start(marker_max);
        // The server ends the connection while the marker waits (as tiny_http does after an
        // idle timeout, or a hang-up): a new connection, with a new marker, long before the
        // marker would be given up for lost.
        let (mut stream, peer) = stand_in.accept();
        let first = next_marker(&mut stream);
        stand_in.noted(peer);
        stand_in.lag.take_marker(&first, Instant::now());
        next_marker(&mut stream);
        let ended = Instant::now();
        stream.shutdown(std::net::Shutdown::Both).unwrap();
        let (mut stream, peer) = stand_in.accept();
        let replaced_after = ended.elapsed();
        assert!(replaced_after < marker_max / 2, "{replaced_after:?}");
        next_marker(&mut stream);
        stand_in.noted(peer);
        // The server holds the connection but never takes the marker: past `marker_max` it
        // is given up for lost, before it could be judged late for ever.
        let waited_since = Instant::now();
        let (mut again, again_peer) = stand_in.accept();
        assert!(
            waited_since.elapsed() >= marker_max / 2,
            "not before its time"
        );
        next_marker(&mut again);
        stand_in.noted(again_peer);
        assert!(!stand_in.lag.is_marker(peer));
        drop(stream);
        // A connection ended before any of its markers was taken (as one shed unaccepted
        // is) is replaced only after a pause, not every look.
        let ended = Instant::now();
        again.shutdown(std::net::Shutdown::Both).unwrap();
        let _last = stand_in.accept();
        let pause = Duration::from_millis(limits::QUEUE_LAG_RECONNECT_MS);
        assert!(ended.elapsed() >= pause / 2, "{:?}", ended.elapsed());
    }

    #[test]
    fn own_ports_are_known_only_from_the_own_address_and_only_while_open() {
        let lag = QueueLag::new(Instant::now());
        let own: SocketAddr = "127.0.0.1:40000".parse().unwrap();
        lag.gauge.set(40_000);
        // The address is not known yet.
        assert!(!lag.is_own(own) && !lag.is_marker(own));
        lag.set_own_ip(own.ip());
        assert!(lag.is_own(own) && lag.is_marker(own));
        let elsewhere: SocketAddr = "10.0.0.7:40000".parse().unwrap();
        assert!(!lag.is_own(elsewhere) && !lag.is_marker(elsewhere));
        lag.watchdog.set(40_001);
        let probe: SocketAddr = "127.0.0.1:40001".parse().unwrap();
        assert!(lag.is_own(probe) && !lag.is_marker(probe));
        lag.gauge.clear();
        lag.watchdog.clear();
        assert!(!lag.is_own(own) && !lag.is_own(probe));
        assert!(!lag.is_own("127.0.0.1:0".parse().unwrap()));
    }
}
