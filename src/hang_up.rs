//! Hanging up on abandoned connections, which tiny_http offers no way to do.
//!
//! tiny_http reads every connection until the client ends it, parses each request on the
//! connection's own thread and queues it, without a bound, for the acceptor. A client that
//! pipelines requests and never reads is abandoned after `PIPELINED_PER_CONNECTION_MAX`
//! (`connections.rs`), and the acceptor drops the rest; but parsing costs more than dropping,
//! and with several such connections each parser thread gets as much of the core as the one
//! acceptor, so the queue grows faster than it drains. Measured before this module: four
//! connections pipelining 200,000 requests each (24 MB) took resident memory to 434 MiB.
//!
//! The hang-up thread finds the socket of each abandoned connection among the process's
//! descriptors, by its peer address, and shuts it down in both directions. The kernel resets
//! the connection when the client sends more, and tiny_http's thread reads what was already
//! buffered, then the end of the stream, and lets the connection go.
//!
//! It also ends replies that take too long to write. The send timeout bounds each write call,
//! not a whole reply: a client that reads a few bytes at a time lets every call make a little
//! progress, and could hold the writing thread (a worker, a step responder) for as long as it
//! liked. Every reply being written is registered in `Writes`; one still being written after
//! `SEND_TIMEOUT_MS` in all is hung up on, which makes the blocked write fail at once.

use std::collections::HashSet;
use std::ffi::c_int;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::limits;

/// Runs until `stopping` returns true: takes the peers of abandoned connections from
/// `peers`, and the peers of replies in `writes` begun over `write_max` ago, and hangs up on
/// each of them that is a connection to `local_port`.
pub fn run(
    peers: Receiver<SocketAddr>,
    writes: &Writes,
    write_max: Duration,
    local_port: u16,
    stopping: impl Fn() -> bool,
) {
    let poll = Duration::from_millis(limits::HANG_UP_POLL_MS);
    while !stopping() {
        let mut batch = HashSet::new();
        match peers.recv_timeout(poll) {
            Ok(peer) => {
                batch.insert(peer);
            }
            Err(RecvTimeoutError::Timeout) => {}
            Err(RecvTimeoutError::Disconnected) => return,
        }
        batch.extend(peers.try_iter().take(limits::HANG_UP_QUEUE_MAX));
        if let Some(began_before) = Instant::now().checked_sub(write_max) {
            batch.extend(writes.overdue(began_before));
        }
        if batch.is_empty() {
            continue;
        }
        let scan_started = Instant::now();
        hang_up(&batch, local_port);
        // A scan reads every descriptor, thousands under a flood of connections: resting a
        // few times as long as it took keeps a stream of abandonments from taking the core.
        thread::sleep(scan_started.elapsed() * limits::HANG_UP_REST_PER_SCAN);
    }
}

/// The replies being written, one slot per writing thread: the client's address and when
/// the write began.
pub struct Writes {
    slots: Box<[Mutex<Slot>]>,
}

#[derive(Clone, Copy, PartialEq, Debug)]
enum Slot {
    Idle,
    Writing(SocketAddr, Instant),
    /// The write took too long and its connection was hung up on.
    HungUp,
}

/// Slots in `Writes`: more than the threads that write replies (the workers, at most
/// `WORKERS_MAX`, the step responders and the acceptors). A thread holds its slot until it
/// ends; one that finds none free writes untracked, as before there was a hang-up thread.
const WRITE_SLOTS: usize = 512;

/// Slots given back by threads that ended, and the next never used.
static FREE_WRITE_SLOTS: Mutex<Vec<usize>> = Mutex::new(Vec::new());
static NEXT_WRITE_SLOT: AtomicUsize = AtomicUsize::new(0);

/// A thread's slot, given back when the thread ends, so that no two live threads share one.
struct SlotClaim(Option<usize>);

impl SlotClaim {
    fn claim() -> SlotClaim {
        let freed = lock(&FREE_WRITE_SLOTS).pop();
        SlotClaim(freed.or_else(|| {
            let next = NEXT_WRITE_SLOT.fetch_add(1, Ordering::Relaxed);
            (next < WRITE_SLOTS).then_some(next)
        }))
    }
}

impl Drop for SlotClaim {
    fn drop(&mut self) {
        if let Some(slot) = self.0 {
            lock(&FREE_WRITE_SLOTS).push(slot);
        }
    }
}

thread_local! {
    static WRITE_SLOT: SlotClaim = SlotClaim::claim();
}

impl Default for Writes {
    fn default() -> Writes {
        Writes {
            slots: (0..WRITE_SLOTS).map(|_| Mutex::new(Slot::Idle)).collect(),
        }
    }
}

impl Writes {
    /// Registers this thread's write of a reply to `peer` until `Writing::finish`.
    pub fn begin(&self, peer: SocketAddr) -> Writing<'_> {
        let slot = WRITE_SLOT
            .try_with(|claim| claim.0)
            .ok()
            .flatten()
            .map(|slot| &self.slots[slot]);
        if let Some(slot) = slot {
            *lock(slot) = Slot::Writing(peer, Instant::now());
        }
        Writing { slot }
    }

    /// The peers of writes begun before `began_before`, each marked as hung up on, so that it
    /// is reported once and its writer knows.
    fn overdue(&self, began_before: Instant) -> Vec<SocketAddr> {
        let mut late = Vec::new();
        for slot in &self.slots {
            let mut slot = lock(slot);
            if let Slot::Writing(peer, began) = *slot
                && began < began_before
            {
                late.push(peer);
                *slot = Slot::HungUp;
            }
        }
        late
    }
}

/// A write in progress.
pub struct Writing<'a> {
    slot: Option<&'a Mutex<Slot>>,
}

impl Writing<'_> {
    /// Ends the write; true if it took too long and its connection was hung up on.
    pub fn finish(mut self) -> bool {
        self.slot
            .take()
            .is_some_and(|slot| std::mem::replace(&mut *lock(slot), Slot::Idle) == Slot::HungUp)
    }
}

impl Drop for Writing<'_> {
    fn drop(&mut self) {
        if let Some(slot) = self.slot {
            *lock(slot) = Slot::Idle;
        }
    }
}

/// A lock of this module's. A panic while holding it aborts the process (see the panic hook),
/// so it is never found poisoned by a live server; a test's panic is no reason to stop others.
fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex
        .lock()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Shuts down the sockets connected to `local_port` from any of `peers`; returns how many.
pub fn hang_up(peers: &HashSet<SocketAddr>, local_port: u16) -> usize {
    let Ok(entries) = std::fs::read_dir("/proc/self/fd") else {
        return 0;
    };
    let mut hung_up = 0;
    for entry in entries.flatten() {
        let is_socket = std::fs::read_link(entry.path()).is_ok_and(|target| {
            target
                .as_os_str()
                .as_encoded_bytes()
                .starts_with(b"socket:[")
        });
        let fd = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<c_int>().ok());
        let (true, Some(fd)) = (is_socket, fd) else {
            continue;
        };
        // The descriptor is tiny_http's, and may be closed, and its number reused, at any
        // moment. A copy of our own pins whichever socket it names now; everything after is
        // asked of that socket, so a reused number cannot make us shut down the wrong one.
        let Some(socket) = duplicate(fd) else {
            continue;
        };
        let ours = socket
            .local_addr()
            .is_ok_and(|local| local.port() == local_port);
        if ours
            && socket.peer_addr().is_ok_and(|peer| peers.contains(&peer))
            && socket.shutdown(Shutdown::Both).is_ok()
        {
            hung_up += 1;
        }
    }
    hung_up
}

/// A descriptor of our own for the open file `fd` names, as a `TcpStream` whose methods are
/// only asked of a socket (on anything else they fail); `None` if `fd` is not open.
fn duplicate(fd: c_int) -> Option<TcpStream> {
    unsafe extern "C" {
        /// dup(2), from the C library that std itself links (musl or glibc).
        fn dup(fd: c_int) -> c_int;
    }
    // SAFETY: dup(2) takes an integer and touches no memory of ours; on a number that is not
    // open it fails with EBADF.
    let copy = unsafe { dup(fd) };
    if copy < 0 {
        return None;
    }
    // SAFETY: `copy` was just returned by dup(2), so it is open and no one else owns it; the
    // stream takes it over and closes it when dropped.
    Some(unsafe { TcpStream::from_raw_fd(copy) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpListener;

    #[test]
    fn only_the_named_peers_connections_to_our_port_are_shut_down() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let mut abandoned = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_served_abandoned, abandoned_peer) = listener.accept().unwrap();
        let mut kept = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (_served_kept, _) = listener.accept().unwrap();
        // The client end of `abandoned` has the same peer address seen from the other side
        // only if ports collide, which they cannot here: it is not a connection to `port`.
        let hung_up = hang_up(&HashSet::from([abandoned_peer]), port);
        assert_eq!(hung_up, 1, "the accepted end of the named connection only");
        abandoned
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        let mut byte = [0; 1];
        assert_eq!(
            abandoned.read(&mut byte).unwrap(),
            0,
            "the client sees the end"
        );
        // Sending more after the hang-up is answered with a reset.
        let _ = abandoned.write_all(b"GET / HTTP/1.1\r\n\r\n");
        thread::sleep(Duration::from_millis(50));
        let after = abandoned.write_all(b"more");
        assert!(
            after.is_err() || abandoned.read(&mut byte).is_err(),
            "a reset follows"
        );
        // The other connection, and the listener, are untouched.
        kept.set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let idle = kept.read(&mut byte).unwrap_err();
        assert!(matches!(
            idle.kind(),
            ErrorKind::WouldBlock | ErrorKind::TimedOut
        ));
        let _late = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(listener.accept().is_ok(), "still listening");
    }

    #[test]
    fn a_reply_still_being_written_after_its_time_is_hung_up_on() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // A client that never reads: a large enough write to it blocks for good.
        let _client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (mut served, peer) = listener.accept().unwrap();
        let writes = std::sync::Arc::new(Writes::default());
        let (_abandoned_tx, abandoned_rx) = crossbeam_channel::bounded(1);
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let hang_up_thread = {
            let (writes, stop) = (std::sync::Arc::clone(&writes), std::sync::Arc::clone(&stop));
            thread::spawn(move || {
                let write_max = Duration::from_millis(200);
                run(abandoned_rx, &writes, write_max, port, || {
                    stop.load(Ordering::Relaxed)
                });
            })
        };
        let started = Instant::now();
        let writing = writes.begin(peer);
        let written = served.write_all(&vec![0; 64 << 20]);
        assert!(writing.finish(), "its writer is told it was hung up on");
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        hang_up_thread.join().unwrap();
        assert!(written.is_err(), "the write was ended");
        assert!(
            took >= Duration::from_millis(200),
            "not before its time: {took:?}"
        );
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert!(
            writes.overdue(Instant::now()).is_empty(),
            "the write is forgotten"
        );
    }

    #[test]
    fn only_writes_begun_before_the_deadline_are_overdue_and_each_once() {
        let writes = Writes::default();
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let writing = writes.begin(peer);
        let after = Instant::now() + Duration::from_millis(1);
        assert!(
            writes
                .overdue(Instant::now() - Duration::from_secs(1))
                .is_empty()
        );
        assert_eq!(writes.overdue(after), [peer]);
        assert!(writes.overdue(after).is_empty(), "reported once");
        drop(writing);
        assert!(writes.overdue(after).is_empty());
    }

    #[test]
    fn a_descriptor_that_is_not_open_is_skipped() {
        assert!(duplicate(-1).is_none());
        assert!(duplicate(c_int::MAX).is_none());
    }
}
