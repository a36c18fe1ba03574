//! The watchdog: probes our own listening socket over TCP, the way a client would, so that a
//! process that is alive but no longer answers (its accept loop dead, its threads stuck) is
//! noticed and turned into a non-zero exit that the supervisor restarts.

use std::collections::VecDeque;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::thread;
use std::time::{Duration, Instant};

use crate::limits;
use crate::log;
use crate::probe;
use crate::queue_lag::OwnPort;

/// The address to probe for a server bound to `bound`: a wildcard bind is reached on loopback.
pub fn probe_address(bound: SocketAddr) -> SocketAddr {
    let ip = match bound.ip() {
        IpAddr::V4(ip) if ip.is_unspecified() => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(ip) if ip.is_unspecified() => IpAddr::V6(Ipv6Addr::LOCALHOST),
        ip => ip,
    };
    SocketAddr::new(ip, bound.port())
}

/// The watchdog's request target: `/healthz`, marked so that the request metrics and the
/// access log, which are about clients, can leave out what would otherwise appear every
/// second.
pub const PROBE_TARGET: &str = "/healthz?from=watchdog";

/// Sends `GET /healthz` and waits for an HTTP answer. Any status counts: an overloaded
/// server that answers 503 is busy, not deaf. The probe's connection is noted in `own` while
/// it is open, so that a server far behind does not hang up on it (`queue_lag.rs`): its
/// answer comes once the queue ahead of it drains.
pub fn probe(addr: SocketAddr, timeout: Duration, own: &OwnPort) -> std::io::Result<()> {
    let status = probe::get_status_noting(addr, PROBE_TARGET, timeout, |port| own.set(port));
    own.clear();
    status.map(|_| ())
}

/// How often to probe: every `PROBE_INTERVAL_MS`, or a third of the idle timeout if shorter.
pub fn interval(idle_timeout: Duration) -> Duration {
    Duration::from_millis(limits::PROBE_INTERVAL_MS).min(idle_timeout / 3)
}

/// How long probes must keep failing before the server counts as deaf.
pub fn deaf_after(idle_timeout: Duration) -> Duration {
    idle_timeout * limits::PROBE_FAILING_IDLE_TIMEOUTS
        + Duration::from_millis(limits::PROBE_TIMEOUT_MS)
}

/// The verdict over recent probes. A window of `deaf_after`, stretched back to hold at least the
/// last `PROBE_FAILURES_DEAF_MIN` probes: when each failing probe takes a whole probe timeout,
/// a short window would never hold enough of them to reach a verdict, and the server would stay
/// up but deaf for ever.
pub struct ProbeHistory {
    deaf_after: Duration,
    started: Instant,
    /// (when, succeeded) of the probes in the window, oldest first.
    recent: VecDeque<(Instant, bool)>,
}

impl ProbeHistory {
    pub fn new(deaf_after: Duration, started: Instant) -> ProbeHistory {
        ProbeHistory {
            deaf_after,
            started,
            recent: VecDeque::new(),
        }
    }

    /// Records one probe's outcome; returns why the server is deaf, if it now is. Deaf means:
    /// this probe failed, probes have run for at least `deaf_after`, and of the probes in the
    /// window at least `PROBE_FAILURES_DEAF_MIN` failed, making up at least
    /// `PROBE_FAILED_PERCENT_DEAF` percent. A share rather than a streak, because a server
    /// starved of descriptors may still answer the odd probe while its clients are mostly
    /// refused.
    pub fn record(&mut self, now: Instant, ok: bool) -> Option<String> {
        let kept_min = limits::PROBE_FAILURES_DEAF_MIN as usize;
        self.recent.push_back((now, ok));
        while self.recent.len() > kept_min
            && self
                .recent
                .front()
                .is_some_and(|&(at, _)| now - at > self.deaf_after)
        {
            self.recent.pop_front();
        }
        let failed = self.recent.iter().filter(|&&(_, ok)| !ok).count();
        let window_full = now - self.started >= self.deaf_after;
        let deaf = !ok
            && window_full
            && failed >= kept_min
            && failed * 100 >= self.recent.len() * limits::PROBE_FAILED_PERCENT_DEAF;
        deaf.then(|| {
            let oldest = self.recent.front().map_or(now, |&(at, _)| at);
            format!(
                "{failed} of {} self-probes failed in the last {} ms",
                self.recent.len(),
                (now - oldest).as_millis()
            )
        })
    }
}

/// Probes every `interval` until `stopping` returns true. When the probe history says the
/// server is deaf, calls `on_deaf` once and returns.
///
/// `not_deaf` is called after every probe that does not make the server deaf, a failed one
/// included: it feeds systemd's watchdog. Feeding it only after a successful probe would let
/// systemd, after its own 10 s, kill a server that has run out of descriptors and would serve
/// again as soon as idle connections time out; whether failed probes mean deaf is this
/// history's judgement, with its tolerance for that. systemd's watchdog still catches a
/// process too stuck for this loop to go round, which takes at most one probe timeout plus
/// one interval.
pub fn run(
    addr: SocketAddr,
    own: &OwnPort,
    interval: Duration,
    deaf_after: Duration,
    stopping: impl Fn() -> bool,
    mut not_deaf: impl FnMut(),
    on_deaf: impl FnOnce(String),
) {
    let timeout = Duration::from_millis(limits::PROBE_TIMEOUT_MS);
    let mut history = ProbeHistory::new(deaf_after, Instant::now());
    while !stopping() {
        let ok = match probe(addr, timeout, own) {
            Ok(()) => true,
            Err(err) => {
                log::warn("probe_failed", &[("address", &addr), ("error", &err)]);
                false
            }
        };
        if let Some(reason) = history.record(Instant::now(), ok) {
            on_deaf(format!("{reason} ({addr})"));
            return;
        }
        not_deaf();
        thread::sleep(interval);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_wildcard_bind_is_probed_on_loopback_and_any_other_address_as_bound() {
        for (bound, probed) in [
            ("0.0.0.0:8080", "127.0.0.1:8080"),
            ("[::]:8080", "[::1]:8080"),
            ("10.1.2.3:8080", "10.1.2.3:8080"),
            ("[fd00::1]:8080", "[fd00::1]:8080"),
        ] {
            let bound: SocketAddr = bound.parse().unwrap();
            assert_eq!(probe_address(bound).to_string(), probed, "{bound}");
        }
    }

    #[test]
    fn probe_interval_and_deaf_window_follow_the_idle_timeout() {
        let idle = Duration::from_secs(15);
        assert_eq!(
            interval(idle),
            Duration::from_millis(limits::PROBE_INTERVAL_MS)
        );
        // A short idle timeout probes three times within it.
        assert_eq!(
            interval(Duration::from_millis(300)),
            Duration::from_millis(100)
        );
        assert_eq!(
            deaf_after(idle),
            idle * limits::PROBE_FAILING_IDLE_TIMEOUTS
                + Duration::from_millis(limits::PROBE_TIMEOUT_MS)
        );
        assert_eq!(deaf_after(idle), Duration::from_secs(35));
    }

    /// Feeds outcomes spaced `step` apart; returns the index of the probe that made the
    /// verdict deaf, if any.
    fn first_deaf(deaf_after: Duration, step: Duration, outcomes: &[bool]) -> Option<usize> {
        let started = Instant::now();
        let mut history = ProbeHistory::new(deaf_after, started);
        outcomes.iter().enumerate().find_map(|(i, &ok)| {
            history
                .record(started + step * (i as u32 + 1), ok)
                .map(|_| i)
        })
    }

    #[test]
    fn fast_failures_are_deaf_once_the_window_has_passed() {
        let fails = [false; 40];
        // 9 s window, a failure every 500 ms: the window is full at the 18th probe.
        assert_eq!(
            first_deaf(Duration::from_secs(9), Duration::from_millis(500), &fails),
            Some(17)
        );
    }

    #[test]
    fn a_long_healthy_past_does_not_delay_the_verdict() {
        // An hour of good probes, then the server goes deaf. The window forgets probes older
        // than 9 s, so the verdict comes at the 16th failure, when 16 of the 19 probes of the
        // last 9 s have failed (84%, the 15th makes 79%); a window that kept the hour would
        // not reach 80% failed for four hours.
        let mut outcomes = vec![true; 7_200];
        outcomes.extend([false; 40]);
        assert_eq!(
            first_deaf(
                Duration::from_secs(9),
                Duration::from_millis(500),
                &outcomes
            ),
            Some(7_200 + 15)
        );
        // The same with probes 700 ms apart, so that no probe is ever exactly as old as the
        // window (which a real clock never meets either).
        let mut outcomes = vec![true; 5_000];
        outcomes.extend([false; 40]);
        let at = first_deaf(
            Duration::from_secs(9),
            Duration::from_millis(700),
            &outcomes,
        );
        assert!(at.is_some_and(|i| i < 5_000 + 14), "{at:?}");
    }

    #[test]
    fn slow_failures_still_reach_a_verdict() {
        // Each failure takes a 5 s timeout plus the interval: a 9 s window alone would never
        // hold five of them.
        let fails = [false; 10];
        assert_eq!(
            first_deaf(Duration::from_secs(9), Duration::from_millis(5_700), &fails),
            Some(4)
        );
    }

    #[test]
    fn a_healthy_or_mostly_healthy_server_is_never_deaf() {
        let healthy = [true; 100];
        assert_eq!(
            first_deaf(Duration::from_secs(9), Duration::from_millis(500), &healthy),
            None
        );
        // One failure in three is a struggling server, not a deaf one.
        let struggling: Vec<bool> = (0..300).map(|i| i % 3 != 0).collect();
        assert_eq!(
            first_deaf(
                Duration::from_secs(9),
                Duration::from_millis(500),
                &struggling
            ),
            None
        );
    }

    #[test]
    fn a_starved_server_that_answers_the_odd_probe_is_still_deaf() {
        // One success in ten: 90% failures.
        let starved: Vec<bool> = (0..100).map(|i| i % 10 == 0).collect();
        let at = first_deaf(Duration::from_secs(9), Duration::from_millis(500), &starved);
        assert!(at.is_some_and(|i| i < 25), "{at:?}");
    }

    #[test]
    fn failed_probes_feed_the_supervisors_watchdog_until_the_verdict_is_deaf() {
        // A port nothing listens on: every probe fails at once.
        let refused = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|listener| listener.local_addr())
            .expect("a free port");
        let mut fed = 0u32;
        let mut verdict = None;
        // Should another test take the port and answer on it, give up rather than hang.
        let deadline = Instant::now() + Duration::from_secs(10);
        run(
            refused,
            &OwnPort::default(),
            Duration::from_millis(5),
            Duration::from_millis(60),
            || Instant::now() >= deadline,
            || fed += 1,
            |reason| verdict = Some(reason),
        );
        let reason = verdict.expect("deaf at last");
        assert!(reason.contains("self-probes failed"), "{reason}");
        // Fed after each failed probe before the verdict, which needs at least five failures.
        // (None after it: `run` returns, and the process exits by itself.)
        assert!(
            fed >= limits::PROBE_FAILURES_DEAF_MIN - 1,
            "fed {fed} times"
        );
    }

    #[test]
    fn a_recovery_resets_the_verdict() {
        // Failures for less than the window, then success: never deaf.
        let mut outcomes = vec![false; 10];
        outcomes.extend([true; 50]);
        assert_eq!(
            first_deaf(
                Duration::from_secs(9),
                Duration::from_millis(500),
                &outcomes
            ),
            None
        );
    }
}
