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

use std::collections::HashSet;
use std::ffi::c_int;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::os::fd::FromRawFd;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::limits;

/// Runs until `stopping` returns true: takes the peers of abandoned connections from
/// `peers`, and hangs up on each of them that is a connection to `local_port`.
pub fn run(peers: Receiver<SocketAddr>, local_port: u16, stopping: impl Fn() -> bool) {
    let poll = Duration::from_millis(limits::ACCEPT_POLL_MS);
    while !stopping() {
        let first = match peers.recv_timeout(poll) {
            Ok(peer) => peer,
            Err(RecvTimeoutError::Timeout) => continue,
            Err(RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = HashSet::from([first]);
        batch.extend(peers.try_iter().take(limits::HANG_UP_QUEUE_MAX));
        let scan_started = Instant::now();
        hang_up(&batch, local_port);
        // A scan reads every descriptor, thousands under a flood of connections: resting a
        // few times as long as it took keeps a stream of abandonments from taking the core.
        thread::sleep(scan_started.elapsed() * limits::HANG_UP_REST_PER_SCAN);
    }
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
    fn a_descriptor_that_is_not_open_is_skipped() {
        assert!(duplicate(-1).is_none());
        assert!(duplicate(c_int::MAX).is_none());
    }
}
