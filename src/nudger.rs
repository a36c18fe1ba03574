//! The nudger: frees connections that tiny_http accepted but left waiting for a thread.
//!
//! tiny_http hands each accepted connection to a pool of threads, one thread per connection.
//! When connections arrive in a burst while some pool threads are idle, the pool counts the
//! idle threads again for every connection until a woken thread gets to run: it queues the
//! whole burst, the few idle threads each take one, and the rest wait in the queue until some
//! thread's connection ends. With keep-alive clients that can be minutes; measured here, a
//! burst of 100 connections to a just-started fibd left up to 90 of them unanswered for
//! seconds, freed one per second by the watchdog's probe. (A connection is only ever queued
//! when the pool believed a thread was idle; with none idle it starts a new thread.)
//!
//! The nudger opens a connection to our own socket and closes it at once. Whichever pool
//! thread takes it reads the end of the stream at once and then takes the connection at the
//! head of the queue, so each nudge frees one waiting connection, if there is one. A freed
//! connection keeps its new thread, so a rise in the process's thread count since the last
//! round says that connections may still be waiting: the next round comes sooner and nudges
//! once more for each thread gained. The cost follows the growth in connections, not the
//! request rate; an idle server pays a few nudges a second.

use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::Duration;

use crate::limits;

/// Nudges every `NUDGE_INTERVAL_MS`, and every `NUDGE_BUSY_INTERVAL_MS` with one more nudge per
/// thread gained while the thread count grows, until `stopping` returns true.
pub fn run(addr: SocketAddr, stopping: impl Fn() -> bool) {
    let timeout = Duration::from_millis(limits::NUDGE_CONNECT_TIMEOUT_MS);
    let mut threads_before = thread_count();
    while !stopping() {
        let threads = thread_count();
        let gained = threads.saturating_sub(threads_before);
        threads_before = threads;
        for _ in 0..(1 + gained).min(limits::NUDGES_PER_ROUND_MAX) {
            // A failed connect is left to the watchdog to judge: a server out of descriptors
            // or with a full backlog has bigger problems than a queued connection.
            if TcpStream::connect_timeout(&addr, timeout).is_err() {
                break;
            }
        }
        let pause = if gained > 0 {
            limits::NUDGE_BUSY_INTERVAL_MS
        } else {
            limits::NUDGE_INTERVAL_MS
        };
        thread::sleep(Duration::from_millis(pause));
    }
}

/// The process's thread count from /proc/self/status; 0 where /proc is missing, which leaves
/// the nudger at one nudge per round.
fn thread_count() -> usize {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("Threads:"))
        .and_then(|count| count.trim().parse().ok())
        .unwrap_or(0)
}
