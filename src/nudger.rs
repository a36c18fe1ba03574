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
//! head of the queue, so each nudge frees one waiting connection, if there is one. A burst
//! that arrives while no thread is idle gets new threads, and a freed connection keeps its new
//! thread, so a rise in the process's thread count says that connections may be waiting. The
//! nudger reads the count every 20 ms and nudges at once, once more for each thread
//! gained, when it rose; otherwise it nudges a few times a second. The cost follows the growth
//! in connections, not the request rate.

use std::net::{SocketAddr, TcpStream};
use std::os::unix::fs::MetadataExt;
use std::thread;
use std::time::{Duration, Instant};

use crate::limits;

/// Reads the thread count every `NUDGE_POLL_INTERVAL_MS` and nudges once more than the
/// threads gained since the last reading whenever it rose, and once every `NUDGE_INTERVAL_MS`
/// otherwise, until `stopping` returns true.
pub fn run(addr: SocketAddr, stopping: impl Fn() -> bool) {
    let timeout = Duration::from_millis(limits::NUDGE_CONNECT_TIMEOUT_MS);
    let interval = Duration::from_millis(limits::NUDGE_INTERVAL_MS);
    let mut threads_before = thread_count();
    let mut last_round = Instant::now();
    while !stopping() {
        let threads = thread_count();
        let gained = threads.saturating_sub(threads_before);
        threads_before = threads;
        if gained > 0 || last_round.elapsed() >= interval {
            last_round = Instant::now();
            for _ in 0..(1 + gained).min(limits::NUDGES_PER_ROUND_MAX) {
                // A failed connect is left to the watchdog to judge: a server out of
                // descriptors or with a full backlog has bigger problems than a queued
                // connection.
                if TcpStream::connect_timeout(&addr, timeout).is_err() {
                    break;
                }
            }
        }
        thread::sleep(Duration::from_millis(limits::NUDGE_POLL_INTERVAL_MS));
    }
}

/// The process's thread count: the link count of /proc/self/task, which Linux reports as two
/// plus the number of threads. One `stat` costs a few microseconds, where reading
/// /proc/self/status cost about a hundred here. 0 where /proc is missing, which leaves the
/// nudger at one nudge per `NUDGE_INTERVAL_MS`.
fn thread_count() -> usize {
    let links = std::fs::metadata("/proc/self/task").map_or(0, |task| task.nlink());
    usize::try_from(links.saturating_sub(2)).unwrap_or(usize::MAX)
}

#[cfg(test)]
mod tests {
    use super::thread_count;

    #[test]
    fn the_thread_count_sees_this_thread_and_one_more() {
        let (release, parked) = std::sync::mpsc::channel::<()>();
        let other = std::thread::spawn(move || parked.recv());
        // Other tests' threads may come and go, so only the two known ones are counted on.
        assert!(thread_count() >= 2, "thread count {}", thread_count());
        release.send(()).unwrap();
        other.join().unwrap().unwrap();
    }
}
