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
//! While the acceptor is far behind a flood (`queue_lag.rs`), a purge hangs up on every
//! connection but those the edge spares and those whose client has sent too little to have
//! filled the queue, by the kernel's count (`TCP_INFO`).
//!
//! It also ends replies that take too long to write. The send timeout bounds each write call,
//! not a whole reply: a client that reads a few bytes at a time lets every call make a little
//! progress, and could hold the writing thread (a worker, a step responder) for as long as it
//! liked. Every reply being written is registered in `Writes`; one still being written after
//! `SEND_TIMEOUT_MS` in all is hung up on, which makes the blocked write fail at once.

use std::collections::HashSet;
use std::ffi::{c_int, c_void};
use std::io;
use std::io::Write;
use std::net::{Ipv4Addr, Shutdown, SocketAddr, TcpListener, TcpStream};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, bounded};

use crate::limits;
use crate::process::{self, Descriptor};

/// The connections to hang up on, as the edge asks for them: a set, so that a burst of
/// abandonments is kept whole however long a scan takes, and a doorbell for the hang-up thread.
pub struct HangUps {
    wanted: Mutex<HashSet<SocketAddr>>,
    /// Set while the acceptor is far behind (`queue_lag.rs`): the next scan hangs up on every
    /// connection but those spared, and those that have sent little.
    purge: AtomicBool,
    doorbell: Sender<()>,
    rung: Receiver<()>,
    /// The replies being written, for the hang-up thread to end one that takes too long.
    pub writes: Writes,
}

impl Default for HangUps {
    fn default() -> HangUps {
        let (doorbell, rung) = bounded(1);
        HangUps {
            wanted: Mutex::new(HashSet::new()),
            purge: AtomicBool::new(false),
            doorbell,
            rung,
            writes: Writes::default(),
        }
    }
}

impl HangUps {
    /// Asks for the connection from `peer` to be hung up on. Past `HANG_UPS_WANTED_MAX` waiting,
    /// the request is dropped: the connection table forgets abandoned connections beyond that
    /// many too.
    pub fn request(&self, peer: SocketAddr) {
        let mut wanted = lock(&self.wanted);
        if wanted.len() < limits::HANG_UPS_WANTED_MAX {
            wanted.insert(peer);
        }
        drop(wanted);
        // Full means the thread has yet to take the last ring, and will see this one too.
        let _ = self.doorbell.try_send(());
    }

    /// Asks for every connection to be hung up on but those `run`'s `spared` keeps and those
    /// that have sent little (`run`'s `quiet_bytes_max`): the acceptor is far behind, and
    /// which connections filled its queue cannot be told until it reaches their requests.
    /// Asked again while a scan runs, it is done once more after.
    pub fn purge(&self) {
        self.purge.store(true, Ordering::Release);
        let _ = self.doorbell.try_send(());
    }

    fn take(&self) -> HashSet<SocketAddr> {
        std::mem::take(&mut *lock(&self.wanted))
    }
}

/// Runs until `stopping` returns true: hangs up on the connections to `local_port` that
/// `hang_ups` asks for, on those of replies begun over `write_max` ago and still being
/// written, and, when a purge is asked for, on every connection whose peer `spared` does not
/// keep and whose client has sent more than `quiet_bytes_max` (every one, when that is None:
/// the kernel does not count what clients send). A scan that could not read every descriptor
/// (they have run out) leaves what it did not find for the next one; after a whole scan, a
/// connection not found has already ended.
/// `on_hung_up` is told how many each scan shut down, and how many of those for a purge alone.
pub fn run(
    hang_ups: &HangUps,
    write_max: Duration,
    local_port: u16,
    spared: impl Fn(SocketAddr) -> bool,
    quiet_bytes_max: Option<u64>,
    stopping: impl Fn() -> bool,
    on_hung_up: impl Fn(usize, usize),
) {
    let poll = Duration::from_millis(limits::HANG_UP_POLL_MS);
    let mut pending = HashSet::new();
    // What the last scan shut down. A write hung up on fails, its connection is abandoned,
    // and the edge asks for it to be hung up on again: that second scan is spared.
    let mut last_shut_down = HashSet::new();
    // The sockets shut down so far and still open (tiny_http closes one only once every reply
    // it queued for it is dropped): asked for again, as a flood's backlog makes the edge do,
    // they are neither shut down nor counted twice.
    let mut shut_sockets = HashSet::new();
    while !stopping() {
        let _ = hang_ups.rung.recv_timeout(poll);
        for peer in hang_ups.take() {
            if pending.len() < limits::HANG_UPS_WANTED_MAX && !last_shut_down.contains(&peer) {
                pending.insert(peer);
            }
        }
        let overdue = match Instant::now().checked_sub(write_max) {
            Some(began_before) => hang_ups.writes.overdue(began_before),
            None => Vec::new(),
        };
        let purging = hang_ups.purge.swap(false, Ordering::AcqRel);
        if pending.is_empty() && overdue.is_empty() && !purging {
            // Replaced, not cleared, as `pending` is below: the room a flood grew stays otherwise.
            last_shut_down = HashSet::new();
            continue;
        }
        let mut targets = pending.clone();
        targets.extend(overdue.iter().map(|write| write.peer));
        let scan_started = Instant::now();
        let purge = purging.then_some(Purge {
            spared: &spared,
            quiet_bytes_max,
        });
        let scan = hang_up(&targets, purge, local_port, &shut_sockets);
        on_hung_up(scan.shut_down.len(), scan.purged);
        if scan.complete {
            shut_sockets = scan.shut_sockets;
        } else {
            shut_sockets.extend(scan.shut_sockets);
        }
        for write in overdue {
            if !scan.shut_down.contains(&write.peer) {
                hang_ups.writes.not_hung_up(write);
            }
        }
        if scan.complete {
            // Replaced, not cleared: a flood can grow it to thousands, and that room would stay.
            pending = HashSet::new();
        } else {
            pending.retain(|peer| !scan.shut_down.contains(peer));
        }
        last_shut_down = scan.shut_down;
        // A scan reads every descriptor, thousands under a flood of connections: resting a
        // few times as long as it took keeps a stream of abandonments from taking the core.
        thread::sleep(scan_started.elapsed() * limits::HANG_UP_REST_PER_SCAN);
    }
}

/// The replies being written, one slot per writing thread: the client's address and when
/// the write began.
pub struct Writes {
    slots: Box<[PaddedSlot]>,
}

/// A slot alone on its cache lines: each writing thread locks its own twice per reply, and
/// slots side by side would make neighbouring threads on other cores contend for the line.
#[repr(align(128))]
struct PaddedSlot(Mutex<Slot>);

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
            slots: (0..WRITE_SLOTS)
                .map(|_| PaddedSlot(Mutex::new(Slot::Idle)))
                .collect(),
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
            .map(|slot| &self.slots[slot].0);
        if let Some(slot) = slot {
            *lock(slot) = Slot::Writing(peer, Instant::now());
        }
        Writing { slot }
    }

    /// The writes begun before `began_before` and still going, each marked as hung up on
    /// from now: its writer may see its write fail the moment the socket is shut down, and
    /// must know why.
    fn overdue(&self, began_before: Instant) -> Vec<Overdue> {
        let mut late = Vec::new();
        for (index, slot) in self.slots.iter().enumerate() {
            let mut slot = lock(&slot.0);
            if let Slot::Writing(peer, began) = *slot
                && began < began_before
            {
                late.push(Overdue { index, peer, began });
                *slot = Slot::HungUp;
            }
        }
        late
    }

    /// Takes back the mark of an overdue write whose connection a scan did not reach, so that
    /// the next poll tries again; unless the write has ended meanwhile. (Its writer, had it
    /// ended first, took the write as not read, which a reply that late is.)
    fn not_hung_up(&self, write: Overdue) {
        let mut slot = lock(&self.slots[write.index].0);
        if *slot == Slot::HungUp {
            *slot = Slot::Writing(write.peer, write.began);
        }
    }
}

/// A write found still going after its time.
#[derive(Clone, Copy)]
struct Overdue {
    index: usize,
    peer: SocketAddr,
    began: Instant,
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

/// What a scan of our descriptors did.
pub struct Scan {
    /// The peers whose connections were shut down.
    pub shut_down: HashSet<SocketAddr>,
    /// The inodes of the sockets this scan shut down, and of those of `already_shut` it found
    /// still open.
    pub shut_sockets: HashSet<u64>,
    /// Whether every descriptor was looked at: false when /proc could not be read, or a
    /// descriptor could not be copied for want of a free one.
    pub complete: bool,
    /// How many of `shut_down` were not among the peers asked for: shut down for a purge.
    pub purged: usize,
}

/// Whom a purge spares: the peers the edge names, and connections that have sent little.
#[derive(Clone, Copy)]
pub struct Purge<'a> {
    /// The peers it spares whatever they sent.
    pub spared: &'a dyn Fn(SocketAddr) -> bool,
    /// The most a client may have sent on a connection the purge spares for that alone; None
    /// where the kernel's count cannot be trusted (`kernel_counts_bytes_received`).
    pub quiet_bytes_max: Option<u64>,
}

impl Purge<'_> {
    /// Whether the purge hangs up on the connection from `peer`, whose client has sent as many
    /// bytes as `bytes_received` says (asked only when it matters: it costs a system call).
    fn hangs_up_on(&self, peer: SocketAddr, bytes_received: impl FnOnce() -> Option<u64>) -> bool {
        if (self.spared)(peer) {
            return false;
        }
        // A purge is for the connections that filled tiny_http's queue. One whose client has
        // sent no more than `quiet_bytes_max` (a few dozen of the smallest requests) cannot
        // have, and is likely an ordinary client whose request waits in that queue: hung up
        // on, it would lose it, and so would every retry for as long as a flood keeps the
        // acceptor behind. Sparing it keeps out of the queue nothing a hang-up would: what it
        // sent is buffered, and parsed either way; if it sends more while fibd is still
        // behind, the next scan hangs up on it; and if it sends nothing, the idle timeout
        // ends it. An unknown count is taken as a flooder's.
        match self.quiet_bytes_max {
            Some(max) => bytes_received().is_none_or(|sent| sent > max),
            None => true,
        }
    }
}

/// Shuts down the sockets connected to `local_port` from any of `peers`, and with a `purge`,
/// from any peer it hangs up on (`Purge::hangs_up_on`); but for those whose inodes are in
/// `already_shut`.
pub fn hang_up(
    peers: &HashSet<SocketAddr>,
    purge: Option<Purge>,
    local_port: u16,
    already_shut: &HashSet<u64>,
) -> Scan {
    let mut scan = Scan {
        shut_down: HashSet::new(),
        shut_sockets: HashSet::new(),
        complete: true,
        purged: 0,
    };
    let Ok(descriptors) = process::descriptors() else {
        scan.complete = false;
        return scan;
    };
    for descriptor in descriptors {
        let (fd, inode) = match descriptor {
            Ok(Descriptor {
                fd,
                socket_inode: Some(inode),
            }) => (fd, inode),
            Ok(_) => continue,
            Err(_) => {
                scan.complete = false;
                continue;
            }
        };
        // Still open, so still remembered. (The listing's inode may be stale by now; it only
        // keeps a memory alive. What is shut down below is judged by the copy's own inode.)
        if already_shut.contains(&inode) {
            scan.shut_sockets.insert(inode);
        }
        // The descriptor is tiny_http's, and may be closed, and its number reused, at any
        // moment. A copy of our own pins whichever socket it names now; everything after is
        // asked of that socket, so a reused number cannot make us shut down the wrong one.
        let socket = match duplicate(fd) {
            Ok(socket) => socket,
            // Closed since it was listed: nothing to look at.
            Err(err) if err.raw_os_error() == Some(EBADF) => continue,
            Err(_) => {
                scan.complete = false;
                continue;
            }
        };
        let ours = socket
            .local_addr()
            .is_ok_and(|local| local.port() == local_port);
        let Ok(peer) = socket.peer_addr() else {
            continue;
        };
        if !ours {
            continue;
        }
        let asked = peers.contains(&peer);
        let purged = !asked
            && purge.is_some_and(|purge| purge.hangs_up_on(peer, || bytes_received(&socket)));
        if !(asked || purged) {
            continue;
        }
        let (socket, inode) = with_inode(socket);
        if inode.is_some_and(|inode| already_shut.contains(&inode)) {
            continue;
        }
        if socket.shutdown(Shutdown::Both).is_ok() {
            // tiny_http holds two descriptors of each connection: count it once.
            if scan.shut_down.insert(peer) && !asked {
                scan.purged += 1;
            }
            scan.shut_sockets.extend(inode);
        }
    }
    scan
}

/// `socket`, with the inode of the socket it is, from fstat(2) on it.
fn with_inode(socket: TcpStream) -> (TcpStream, Option<u64>) {
    let file = std::fs::File::from(OwnedFd::from(socket));
    let inode = file.metadata().map(|metadata| metadata.ino()).ok();
    (TcpStream::from(OwnedFd::from(file)), inode)
}

/// Whether the kernel counts the bytes a client sends (`bytes_received`), asked of a
/// connection of our own over loopback. Linux does since 4.1; a sandbox's own network stack
/// may answer TCP_INFO with a count that stays 0, which would make every connection look quiet
/// and spare it from every purge.
pub fn kernel_counts_bytes_received() -> bool {
    let check = || -> io::Result<bool> {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0))?;
        let mut client = TcpStream::connect(listener.local_addr()?)?;
        let (served, _) = listener.accept()?;
        let sent = b"fibd";
        client.write_all(sent)?;
        let waited = Instant::now();
        while waited.elapsed() < Duration::from_millis(limits::BYTES_RECEIVED_CHECK_WAIT_MS) {
            match bytes_received(&served) {
                Some(count) if count == sent.len() as u64 => return Ok(true),
                Some(0) => thread::sleep(Duration::from_millis(1)),
                _ => return Ok(false),
            }
        }
        Ok(false)
    };
    check().unwrap_or(false)
}

/// The bytes the client has sent on `socket` since it connected (`tcpi_bytes_received` of
/// TCP_INFO, Linux 4.1 on; a FIN counts as one), whether or not tiny_http has read them yet;
/// None where the kernel does not say.
fn bytes_received(socket: &TcpStream) -> Option<u64> {
    unsafe extern "C" {
        /// getsockopt(2), from the C library that std itself links (musl or glibc).
        fn getsockopt(
            fd: c_int,
            level: c_int,
            name: c_int,
            value: *mut c_void,
            length: *mut u32,
        ) -> c_int;
    }
    let mut info = [0u8; TCP_INFO_BYTES_RECEIVED_END];
    let mut length = TCP_INFO_BYTES_RECEIVED_END as u32;
    // SAFETY: getsockopt(2) writes at most `length` bytes to `value`, here a buffer of ours
    // that long, and the count it wrote to `length`, a u32 of ours (socklen_t is 32 bits on
    // Linux); `socket` holds the descriptor open for the call. Any bytes are a valid [u8].
    let status = unsafe {
        getsockopt(
            socket.as_raw_fd(),
            IPPROTO_TCP,
            TCP_INFO,
            info.as_mut_ptr().cast(),
            &mut length,
        )
    };
    if status != 0 || (length as usize) < TCP_INFO_BYTES_RECEIVED_END {
        return None;
    }
    let field = TCP_INFO_BYTES_RECEIVED_END - 8..TCP_INFO_BYTES_RECEIVED_END;
    Some(u64::from_ne_bytes(info[field].try_into().ok()?))
}

/// IPPROTO_TCP and TCP_INFO, the same numbers on every Linux architecture.
const IPPROTO_TCP: c_int = 6;
const TCP_INFO: c_int = 11;
/// Where `tcpi_bytes_received`, a u64 in the machine's byte order, ends in Linux's `struct
/// tcp_info` (`offsetof` in <linux/tcp.h> plus 8, the same on every architecture). The struct
/// only ever grows; asked for this much, the kernel copies this much, or says it has less.
const TCP_INFO_BYTES_RECEIVED_END: usize = 136;

/// EBADF, the same number on every Linux architecture.
const EBADF: i32 = 9;
/// fcntl(2)'s F_DUPFD_CLOEXEC, the same number on every Linux architecture.
const F_DUPFD_CLOEXEC: c_int = 1030;

/// A descriptor of our own, closed on exec, for the open file `fd` names, as a `TcpStream`
/// whose methods are only asked of a socket (on anything else they fail).
fn duplicate(fd: c_int) -> io::Result<TcpStream> {
    unsafe extern "C" {
        /// fcntl(2), from the C library that std itself links (musl or glibc).
        fn fcntl(fd: c_int, command: c_int, ...) -> c_int;
    }
    // SAFETY: fcntl(2) with F_DUPFD_CLOEXEC takes integers and touches no memory of ours; on a
    // number that is not open it fails with EBADF. It does not take `fd` from its owner: the
    // number may be tiny_http's, or whatever reused it since it was listed, and either way
    // that descriptor stays open and its owner's. (The copy keeps the file open a moment
    // longer when its owner closes it meanwhile; closing the copy would drop POSIX record
    // locks, which fibd does not use: the state file's lock is `flock`.)
    let lowest: c_int = 0;
    let copy = unsafe { fcntl(fd, F_DUPFD_CLOEXEC, lowest) };
    if copy < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `copy` was just returned by fcntl(2), so it is open and no one else owns it; the
    // stream takes it over and closes it when dropped.
    Ok(unsafe { TcpStream::from_raw_fd(copy) })
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{ErrorKind, Read, Write};
    use std::net::TcpListener;
    use std::sync::Arc;
    use std::sync::atomic::AtomicBool;

    /// A new connection to `listener`: the client's end, the served end and the client's
    /// address as the served end sees it.
    fn connect(listener: &TcpListener) -> (TcpStream, TcpStream, SocketAddr) {
        let client = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (served, peer) = listener.accept().unwrap();
        (client, served, peer)
    }

    /// The most a client may send on a connection the tests' purges spare for that alone.
    const QUIET_MAX: u64 = limits::PURGE_SPARES_RECEIVED_BYTES_MAX;

    /// A purge that spares no peer for who it is, only those that sent at most `QUIET_MAX`.
    const SPARES_NONE: Purge<'static> = Purge {
        spared: &|_| false,
        quiet_bytes_max: Some(QUIET_MAX),
    };

    /// Has `client` send more than a purge spares, and waits until the kernel has taken it
    /// on `served`, the server's end.
    fn sends_too_much_to_be_spared(client: &mut TcpStream, served: &TcpStream) {
        let bytes = QUIET_MAX + 1;
        let request = b"GET /fib?n=187 HTTP/1.1\r\nHost: t\r\n\r\n";
        let pipelined: Vec<u8> = request
            .iter()
            .copied()
            .cycle()
            .take(bytes as usize)
            .collect();
        client.write_all(&pipelined).unwrap();
        waits_until_received(served, bytes);
    }

    /// Waits until the kernel has taken `bytes` in all from the client of `served`.
    fn waits_until_received(served: &TcpStream, bytes: u64) {
        let started = Instant::now();
        while bytes_received(served) != Some(bytes) {
            assert!(started.elapsed() < Duration::from_secs(5), "never received");
            thread::sleep(Duration::from_millis(1));
        }
    }

    /// Asserts that the client of `client` sees its connection end.
    fn sees_the_end(client: &mut TcpStream) {
        client
            .set_read_timeout(Some(Duration::from_secs(5)))
            .unwrap();
        assert_eq!(
            client.read(&mut [0; 1]).unwrap(),
            0,
            "the client sees the end"
        );
    }

    /// Asserts that `client`'s connection is still open and quiet.
    fn still_open(client: &mut TcpStream) {
        client
            .set_read_timeout(Some(Duration::from_millis(100)))
            .unwrap();
        let idle = client.read(&mut [0; 1]).unwrap_err();
        assert!(matches!(
            idle.kind(),
            ErrorKind::WouldBlock | ErrorKind::TimedOut
        ));
    }

    #[test]
    fn only_the_named_peers_connections_to_our_port_are_shut_down() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mut abandoned, _served_abandoned, abandoned_peer) = connect(&listener);
        let (mut kept, _served_kept, _) = connect(&listener);
        // The client end of `abandoned` is not a connection to `port`, so only the accepted
        // end is shut down.
        let scan = hang_up(
            &HashSet::from([abandoned_peer]),
            None,
            port,
            &HashSet::new(),
        );
        assert!(scan.complete);
        assert_eq!(scan.shut_down, HashSet::from([abandoned_peer]));
        sees_the_end(&mut abandoned);
        let mut byte = [0; 1];
        // Sending more after the hang-up is answered with a reset.
        let _ = abandoned.write_all(b"GET / HTTP/1.1\r\n\r\n");
        thread::sleep(Duration::from_millis(50));
        let after = abandoned.write_all(b"more");
        assert!(
            after.is_err() || abandoned.read(&mut byte).is_err(),
            "a reset follows"
        );
        // The other connection, and the listener, are untouched.
        still_open(&mut kept);
        let _late = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        assert!(listener.accept().is_ok(), "still listening");
    }

    #[test]
    fn a_socket_already_shut_down_is_not_shut_down_or_counted_again() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (_client, served, peer) = connect(&listener);
        let peers = HashSet::from([peer]);
        let first = hang_up(&peers, None, port, &HashSet::new());
        assert_eq!(first.shut_down, peers);
        assert_eq!(first.shut_sockets.len(), 1, "the served end only");
        // Asked again while the socket is still open (as tiny_http keeps it until its queued
        // requests are dropped): it is remembered, not shut down again.
        let second = hang_up(&peers, None, port, &first.shut_sockets);
        assert!(second.complete);
        assert!(second.shut_down.is_empty());
        assert_eq!(second.shut_sockets, first.shut_sockets);
        // Once closed, it is forgotten.
        drop(served);
        let third = hang_up(&peers, None, port, &second.shut_sockets);
        assert!(third.shut_down.is_empty() && third.shut_sockets.is_empty());
    }

    /// Runs the hang-up thread over `hang_ups` for connections to `port` until the returned
    /// flag is set, a purge sparing the peers in `spared`; the count of connections it shut
    /// down goes to the returned counter.
    fn hang_up_thread(
        hang_ups: &Arc<HangUps>,
        port: u16,
        write_max: Duration,
        spared: HashSet<SocketAddr>,
    ) -> (Arc<AtomicBool>, Arc<AtomicUsize>, thread::JoinHandle<()>) {
        let stop = Arc::new(AtomicBool::new(false));
        let count = Arc::new(AtomicUsize::new(0));
        let (hang_ups, stopping, counted) =
            (Arc::clone(hang_ups), Arc::clone(&stop), Arc::clone(&count));
        let thread = thread::spawn(move || {
            run(
                &hang_ups,
                write_max,
                port,
                |peer| spared.contains(&peer),
                Some(QUIET_MAX),
                || stopping.load(Ordering::Relaxed),
                |n, purged| {
                    assert!(purged <= n);
                    counted.fetch_add(n, Ordering::Relaxed);
                },
            );
        });
        (stop, count, thread)
    }

    #[test]
    fn a_purge_hangs_up_on_every_connection_to_our_port_but_the_spared() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mut first, served_first, first_peer) = connect(&listener);
        let (mut second, served_second, second_peer) = connect(&listener);
        let (mut spared, served_spared, spared_peer) = connect(&listener);
        // Each sends more than a purge spares for that alone (see the next test).
        sends_too_much_to_be_spared(&mut second, &served_second);
        sends_too_much_to_be_spared(&mut spared, &served_spared);
        let keep = |peer: SocketAddr| peer == spared_peer;
        let scan = hang_up(
            &HashSet::from([first_peer]),
            Some(Purge {
                spared: &keep,
                ..SPARES_NONE
            }),
            port,
            &HashSet::new(),
        );
        assert!(scan.complete);
        assert_eq!(scan.shut_down, HashSet::from([first_peer, second_peer]));
        assert_eq!(scan.purged, 1, "the one asked for is not counted as purged");
        sees_the_end(&mut first);
        sees_the_end(&mut second);
        still_open(&mut spared);

        // The thread does the same when asked (with the sockets purged above closed, so that
        // only the new one is left to shut down).
        drop((served_first, served_second));
        let (mut late, served_late, _) = connect(&listener);
        sends_too_much_to_be_spared(&mut late, &served_late);
        let hang_ups = Arc::new(HangUps::default());
        let spare = HashSet::from([spared_peer]);
        let (stop, count, thread) = hang_up_thread(&hang_ups, port, Duration::from_secs(60), spare);
        hang_ups.purge();
        sees_the_end(&mut late);
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
        assert_eq!(count.load(Ordering::Relaxed), 1);
        still_open(&mut spared);
    }

    #[test]
    fn a_purge_spares_a_connection_whose_client_has_sent_little_unless_it_is_asked_for() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mut quiet, served_quiet, quiet_peer) = connect(&listener);
        let (mut asked, served_asked, asked_peer) = connect(&listener);
        let (mut flooder, served_flooder, flooder_peer) = connect(&listener);
        assert_eq!(bytes_received(&served_quiet), Some(0));
        // One request each, as large as a purge spares: the kernel counts every byte.
        let max = QUIET_MAX;
        let head = format!(
            "GET /current HTTP/1.1\r\nHost: t\r\nX-Pad: {}\r\n\r\n",
            "p".repeat(max as usize - 43)
        );
        assert_eq!(head.len() as u64, max);
        for (client, served) in [(&mut quiet, &served_quiet), (&mut asked, &served_asked)] {
            client.write_all(head.as_bytes()).unwrap();
            waits_until_received(served, max);
        }
        sends_too_much_to_be_spared(&mut flooder, &served_flooder);
        let scan = hang_up(
            &HashSet::from([asked_peer]),
            Some(SPARES_NONE),
            port,
            &HashSet::new(),
        );
        assert!(scan.complete);
        assert_eq!(scan.shut_down, HashSet::from([asked_peer, flooder_peer]));
        assert_eq!(scan.purged, 1);
        sees_the_end(&mut asked);
        sees_the_end(&mut flooder);
        still_open(&mut quiet);
        // One byte more, and it is no longer spared.
        quiet.write_all(b"G").unwrap();
        waits_until_received(&served_quiet, max + 1);
        let scan = hang_up(&HashSet::new(), Some(SPARES_NONE), port, &scan.shut_sockets);
        assert_eq!(scan.shut_down, HashSet::from([quiet_peer]));
        sees_the_end(&mut quiet);
        drop(served_quiet);
    }

    #[test]
    fn where_the_kernel_does_not_count_what_clients_send_a_purge_spares_no_quiet_one() {
        assert!(kernel_counts_bytes_received(), "Linux counts them");
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mut quiet, _served_quiet, quiet_peer) = connect(&listener);
        let uncounted = Purge {
            quiet_bytes_max: None,
            ..SPARES_NONE
        };
        let scan = hang_up(&HashSet::new(), Some(uncounted), port, &HashSet::new());
        assert_eq!(scan.shut_down, HashSet::from([quiet_peer]));
        assert_eq!(scan.purged, 1);
        sees_the_end(&mut quiet);
    }

    #[test]
    fn a_purge_spares_whom_it_is_told_to_and_then_those_known_to_have_sent_little() {
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let spared = Purge {
            spared: &|_| true,
            quiet_bytes_max: Some(512),
        };
        assert!(!spared.hangs_up_on(peer, || panic!("not asked: it is spared anyway")));
        for (sent, hung_up_on) in [
            (Some(0), false),
            (Some(512), false),
            (Some(513), true),
            (None, true),
        ] {
            assert_eq!(
                SPARES_NONE.hangs_up_on(peer, || sent),
                hung_up_on,
                "{sent:?}"
            );
        }
        let uncounted = Purge {
            quiet_bytes_max: None,
            ..SPARES_NONE
        };
        assert!(uncounted.hangs_up_on(peer, || panic!("not asked: it is not trusted")));
    }

    #[test]
    fn a_requested_hang_up_ends_the_connection_and_is_counted() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let (mut client, _served, peer) = connect(&listener);
        let hang_ups = Arc::new(HangUps::default());
        let (stop, count, thread) =
            hang_up_thread(&hang_ups, port, Duration::from_secs(60), HashSet::new());
        hang_ups.request(peer);
        sees_the_end(&mut client);
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
        assert_eq!(count.load(Ordering::Relaxed), 1);
    }

    #[test]
    fn a_reply_still_being_written_after_its_time_is_hung_up_on() {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        // A client that never reads: a large enough write to it blocks for good.
        let (_client, mut served, peer) = connect(&listener);
        let hang_ups = Arc::new(HangUps::default());
        let write_max = Duration::from_millis(200);
        let (stop, count, thread) = hang_up_thread(&hang_ups, port, write_max, HashSet::new());
        let started = Instant::now();
        let writing = hang_ups.writes.begin(peer);
        let written = served.write_all(&vec![0; 64 << 20]);
        assert!(writing.finish(), "its writer is told it was hung up on");
        let took = started.elapsed();
        stop.store(true, Ordering::Relaxed);
        thread.join().unwrap();
        assert!(written.is_err(), "the write was ended");
        assert!(took >= write_max, "not before its time: {took:?}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        assert_eq!(count.load(Ordering::Relaxed), 1);
        assert!(
            hang_ups.writes.overdue(Instant::now()).is_empty(),
            "the write is forgotten"
        );
    }

    #[test]
    fn a_write_is_overdue_once_unless_its_connection_was_not_reached() {
        let writes = Writes::default();
        let peer: SocketAddr = "127.0.0.1:4000".parse().unwrap();
        let on_time = writes.begin(peer);
        assert!(
            writes
                .overdue(Instant::now() - Duration::from_secs(1))
                .is_empty()
        );
        assert!(!on_time.finish(), "a write in time was not hung up on");
        let late = writes.begin(peer);
        let later = Instant::now() + Duration::from_millis(1);
        let overdue = writes.overdue(later);
        assert_eq!(overdue.len(), 1);
        assert!(writes.overdue(later).is_empty(), "reported once");
        // A scan that did not reach it: reported again.
        writes.not_hung_up(overdue[0]);
        let overdue = writes.overdue(later);
        assert_eq!(overdue.len(), 1, "tried again");
        assert!(late.finish(), "its writer is told");
        // Taking back the mark of a write that has ended leaves the slot's next write alone.
        let next = writes.begin(peer);
        writes.not_hung_up(overdue[0]);
        assert!(!next.finish());
    }

    #[test]
    fn a_descriptor_that_is_not_open_cannot_be_copied() {
        assert_eq!(duplicate(-1).unwrap_err().raw_os_error(), Some(EBADF));
        assert_eq!(
            duplicate(c_int::MAX).unwrap_err().raw_os_error(),
            Some(EBADF)
        );
    }
}
