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
//!
//! A burst that meets idle threads starts none, so the thread count cannot announce it. Where
//! Linux reports the process's descriptor count (6.2 and later), the nudger also estimates the
//! connections queued: each connection holds two descriptors and each of tiny_http's threads
//! serves at most one, so connections beyond the threads are waiting. When that estimate
//! rises, the nudger nudges once for each connection it rose by. Clients that open a
//! connection per request leave threads idle, which keep the estimate at zero.

use std::net::{SocketAddr, TcpStream};
use std::thread;
use std::time::{Duration, Instant};

use crate::limits;
use crate::process::{descriptor_count, thread_count};

/// Reads the thread and descriptor counts every `NUDGE_POLL_INTERVAL_MS`. Nudges once more
/// than the threads gained since the last reading whenever that count rose (at most
/// `NUDGES_PER_ROUND_MAX`), once more for each connection newly estimated to be queued (at
/// most `QUEUED_NUDGES_PER_ROUND_MAX`), and once every `NUDGE_INTERVAL_MS` otherwise, until
/// `stopping` returns true.
pub fn run(addr: SocketAddr, stopping: impl Fn() -> bool) {
    let timeout = Duration::from_millis(limits::NUDGE_CONNECT_TIMEOUT_MS);
    let interval = Duration::from_millis(limits::NUDGE_INTERVAL_MS);
    let mut threads_before = thread_count();
    let baseline = Baseline {
        descriptors: descriptor_count(),
        threads: threads_before,
    };
    let mut queued_before = 0;
    let mut last_round = Instant::now();
    while !stopping() {
        let threads = thread_count();
        let gained = threads.saturating_sub(threads_before);
        threads_before = threads;
        let queued = baseline.queued_estimate(descriptor_count(), threads);
        let newly_queued = queued.saturating_sub(queued_before);
        queued_before = queued;
        let nudges = nudges(gained, newly_queued, last_round.elapsed() >= interval);
        if nudges > 0 {
            last_round = Instant::now();
            for _ in 0..nudges {
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

/// How many nudges a reading calls for: none unless the threads grew, more connections are
/// estimated queued, or a round is `due`; then one, one more per thread gained (at most
/// `NUDGES_PER_ROUND_MAX` in all) and one per connection newly queued (at most
/// `QUEUED_NUDGES_PER_ROUND_MAX`).
fn nudges(gained: usize, newly_queued: usize, due: bool) -> usize {
    if gained == 0 && newly_queued == 0 && !due {
        return 0;
    }
    (1 + gained).min(limits::NUDGES_PER_ROUND_MAX)
        + newly_queued.min(limits::QUEUED_NUDGES_PER_ROUND_MAX)
}

/// The descriptor and thread counts when the nudger started, before any client connected.
struct Baseline {
    descriptors: Option<usize>,
    threads: usize,
}

impl Baseline {
    /// How many connections tiny_http holds without a thread for them, at least. Each
    /// connection holds two descriptors (tiny_http clones the socket), and each thread tiny_http
    /// started since the baseline, like the `TINY_HTTP_POOL_MIN_THREADS` it started before it,
    /// serves at most one; so connections beyond those threads are queued. Threads left idle by
    /// connections that ended are counted as serving, which can only make the estimate low:
    /// after a burst that idle threads took part of, it counts the rest. Descriptors fibd opens
    /// for itself (the watchdog's probe, a nudge) come and go within a reading or two, and an
    /// estimate raised by them costs a nudge. 0 without a descriptor count.
    fn queued_estimate(&self, descriptors: Option<usize>, threads: usize) -> usize {
        let (Some(base), Some(now)) = (self.descriptors, descriptors) else {
            return 0;
        };
        let connections = now.saturating_sub(base) / 2;
        let pool_threads =
            threads.saturating_sub(self.threads) + limits::TINY_HTTP_POOL_MIN_THREADS;
        connections.saturating_sub(pool_threads)
    }
}

#[cfg(test)]
mod tests {
    use super::{Baseline, nudges};
    use crate::limits::TINY_HTTP_POOL_MIN_THREADS as POOL_MIN;
    use crate::limits::{NUDGES_PER_ROUND_MAX, QUEUED_NUDGES_PER_ROUND_MAX};

    #[test]
    fn a_reading_calls_for_nudges_only_on_growth_or_when_a_round_is_due() {
        // Nothing grew and no round is due: no nudge, so an idle fibd nudges a few times a
        // second, not at every reading.
        assert_eq!(nudges(0, 0, false), 0);
        assert_eq!(nudges(0, 0, true), 1);
        // Each trigger alone starts a round: thread growth, then newly queued connections.
        assert_eq!(nudges(3, 0, false), 4);
        assert_eq!(nudges(0, 5, false), 6);
        assert_eq!(nudges(2, 5, true), 8);
        // Each part has its own cap.
        assert_eq!(nudges(100, 0, false), NUDGES_PER_ROUND_MAX);
        assert_eq!(nudges(0, 1_000, false), 1 + QUEUED_NUDGES_PER_ROUND_MAX);
    }

    /// A fibd with 10 descriptors and 20 threads (tiny_http's idle pool included) before any
    /// client came.
    const BASELINE: Baseline = Baseline {
        descriptors: Some(10),
        threads: 20,
    };

    #[test]
    fn connections_beyond_tiny_http_s_threads_are_counted_as_queued() {
        // 100 connections, 200 descriptors; the pool's idle threads took some, no new thread.
        assert_eq!(BASELINE.queued_estimate(Some(210), 20), 100 - POOL_MIN);
        // 40 of them got threads of their own.
        assert_eq!(BASELINE.queued_estimate(Some(210), 60), 60 - POOL_MIN);
        // The socket tiny_http has accepted but not yet cloned does not count yet.
        assert_eq!(BASELINE.queued_estimate(Some(211), 60), 60 - POOL_MIN);
    }

    #[test]
    fn idle_threads_and_closed_connections_never_count_as_queued() {
        // Every connection has a thread, and threads of ended connections wait idle.
        assert_eq!(BASELINE.queued_estimate(Some(30), 40), 0);
        // Descriptors below the baseline (a probe's socket was open when it was taken).
        assert_eq!(BASELINE.queued_estimate(Some(8), 20), 0);
    }

    #[test]
    fn without_a_descriptor_count_nothing_is_estimated() {
        assert_eq!(BASELINE.queued_estimate(None, 20), 0);
        let old_kernel = Baseline {
            descriptors: None,
            threads: 20,
        };
        assert_eq!(old_kernel.queued_estimate(Some(500), 20), 0);
    }
}
