//! Counters and histograms for `/metrics`, in the Prometheus text exposition format.
//! Recording is a few relaxed atomic additions on the request path, with no lock; the
//! process figures (memory, descriptors, sockets, threads) are read only when scraped.

use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crate::cursor::Step;
use crate::routes::Route;

/// How full the edge's bounded queues and its connection table are, read when `/metrics` is
/// scraped: a queue that stays full, or requests that stay parked, show a stuck consumer.
#[derive(Clone, Copy, Debug, Default)]
pub struct Depths {
    pub work: usize,
    pub steps: usize,
    pub replies: usize,
    pub requests_waiting: usize,
    pub connections_tracked: usize,
    /// How long the last marker of the queue-lag gauge waited in tiny_http's queue.
    pub request_queue_lag: Duration,
    /// Whether the gauge judges fibd far behind a flood of pipelined requests.
    pub request_queue_behind: bool,
}

/// Panics in tiny_http's threads, which fibd survives. A static, since the panic hook that
/// counts them runs before, and outside, anything that could hand it the `Metrics`.
pub static TINY_HTTP_PANICS: AtomicU64 = AtomicU64::new(0);

/// The routes requests are counted by. `Other` is every request that matched no route.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RouteLabel {
    Index,
    Current,
    Next,
    Previous,
    Fib,
    FibList,
    Healthz,
    Readyz,
    Metrics,
    Other,
}

impl RouteLabel {
    /// The label for a request target, whatever its method and whether or not it is valid.
    pub fn of_target(target: &str) -> RouteLabel {
        match crate::routes::path_and_query(target).0 {
            "/" => RouteLabel::Index,
            "/current" => RouteLabel::Current,
            "/next" => RouteLabel::Next,
            "/previous" => RouteLabel::Previous,
            "/fib" => RouteLabel::FibList,
            "/healthz" => RouteLabel::Healthz,
            "/readyz" => RouteLabel::Readyz,
            "/metrics" => RouteLabel::Metrics,
            p if p.starts_with("/fib/") => RouteLabel::Fib,
            _ => RouteLabel::Other,
        }
    }

    /// The label of a routed request: what `of_target` gives for its target, without parsing
    /// the target a second time.
    pub fn of_route(route: &Route) -> RouteLabel {
        match route {
            Route::Index => RouteLabel::Index,
            Route::Current => RouteLabel::Current,
            Route::Step(Step::Next) => RouteLabel::Next,
            Route::Step(Step::Previous) => RouteLabel::Previous,
            Route::Fib(_) => RouteLabel::Fib,
            Route::FibList(_) => RouteLabel::FibList,
            Route::Health => RouteLabel::Healthz,
            Route::Ready => RouteLabel::Readyz,
            Route::Metrics => RouteLabel::Metrics,
        }
    }
}

const ROUTES: [(RouteLabel, &str); 10] = [
    (RouteLabel::Index, "/"),
    (RouteLabel::Current, "/current"),
    (RouteLabel::Next, "/next"),
    (RouteLabel::Previous, "/previous"),
    (RouteLabel::Fib, "/fib/{n}"),
    (RouteLabel::FibList, "/fib"),
    (RouteLabel::Healthz, "/healthz"),
    (RouteLabel::Readyz, "/readyz"),
    (RouteLabel::Metrics, "/metrics"),
    (RouteLabel::Other, "other"),
];

/// The status codes fibd answers with; anything else (tiny_http's own 4xx) counts as "other".
const CODES: [u16; 13] = [
    200, 400, 404, 405, 409, 414, 421, 422, 431, 500, 501, 503, 0,
];

fn code_slot(status: u16) -> usize {
    CODES
        .iter()
        .position(|&c| c == status)
        .unwrap_or(CODES.len() - 1)
}

/// A histogram with fixed upper bounds, in the unit of its observations.
pub struct Histogram {
    bounds: &'static [f64],
    buckets: Vec<AtomicU64>,
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [f64]) -> Histogram {
        Histogram {
            bounds,
            buckets: bounds.iter().map(|_| AtomicU64::new(0)).collect(),
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation. The sum is kept in millionths of the unit, which is exact
    /// for counts and microsecond-exact for durations in seconds.
    pub fn observe(&self, value: f64) {
        if let Some(i) = self.bounds.iter().position(|&b| value <= b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.sum_micros
            .fetch_add((value * 1e6) as u64, Ordering::Relaxed);
        self.count.fetch_add(1, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.count.load(Ordering::Relaxed)
    }

    pub fn sum(&self) -> f64 {
        self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cumulative = 0;
        for (bound, bucket) in self.bounds.iter().zip(&self.buckets) {
            cumulative += bucket.load(Ordering::Relaxed);
            let _ = writeln!(
                out,
                "{name}_bucket{{{labels}{sep}le=\"{bound}\"}} {cumulative}"
            );
        }
        let count = self.count();
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {count}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(out, "{name}_sum{braces} {}", self.sum());
        let _ = writeln!(out, "{name}_count{braces} {count}");
    }
}

/// Request latency bounds in seconds: from 50 µs (a read on an idle server) to 1 s.
const LATENCY_BOUNDS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];
/// Commit (write + fdatasync) latency bounds in seconds: from 100 µs (battery-backed cache)
/// to 5 s (a disk in trouble).
const COMMIT_BOUNDS: &[f64] = &[
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0, 5.0,
];
/// Steps per commit: powers of two up to the largest batch.
const BATCH_BOUNDS: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0, 4096.0,
];

/// Every figure fibd keeps about itself.
pub struct Metrics {
    requests: Vec<AtomicU64>,
    /// Latency of reads (answered by workers) and of steps (answered after their commit).
    pub read_latency: Histogram,
    pub step_latency: Histogram,
    pub commit_latency: Histogram,
    pub commit_steps: Histogram,
    pub state_write_errors: AtomicU64,
    /// Requests answered 503 because a queue was full.
    pub requests_shed: AtomicU64,
    /// Connections closed unanswered because file descriptors ran out.
    pub connections_shed: AtomicU64,
    /// Connections given up on: they did not read their replies, pipelined too deep, or sent
    /// a request whose end was unclear.
    pub connections_abandoned: AtomicU64,
    /// Connections shut down by the hang-up thread (`hang_up.rs`).
    pub connections_hung_up: AtomicU64,
    /// Of those, connections hung up on because the acceptor was far behind (`queue_lag.rs`).
    pub connections_purged: AtomicU64,
    /// Requests of abandoned connections, dropped without a reply.
    pub requests_dropped: AtomicU64,
    /// Connections kept open forever because a request on them left its body unread.
    pub connections_kept: AtomicU64,
    /// Accept loops that failed and were restarted.
    pub accept_failures: AtomicU64,
    /// When the commit now in progress began, in milliseconds since `epoch` plus one; 0 while
    /// no commit runs. A disk that stalls shows here first, and in readiness once the commit
    /// has run `limits::COMMIT_STALLED_MS`.
    commit_began_ms: AtomicU64,
    epoch: Instant,
    start_time_seconds: f64,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}

impl Metrics {
    pub fn new() -> Metrics {
        let start = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default();
        Metrics {
            requests: (0..ROUTES.len() * CODES.len())
                .map(|_| AtomicU64::new(0))
                .collect(),
            read_latency: Histogram::new(LATENCY_BOUNDS),
            step_latency: Histogram::new(LATENCY_BOUNDS),
            commit_latency: Histogram::new(COMMIT_BOUNDS),
            commit_steps: Histogram::new(BATCH_BOUNDS),
            state_write_errors: AtomicU64::new(0),
            requests_shed: AtomicU64::new(0),
            connections_shed: AtomicU64::new(0),
            connections_abandoned: AtomicU64::new(0),
            connections_hung_up: AtomicU64::new(0),
            connections_purged: AtomicU64::new(0),
            requests_dropped: AtomicU64::new(0),
            connections_kept: AtomicU64::new(0),
            accept_failures: AtomicU64::new(0),
            commit_began_ms: AtomicU64::new(0),
            epoch: Instant::now(),
            start_time_seconds: start.as_secs_f64(),
        }
    }

    /// The state owner is about to write and fdatasync a commit.
    pub fn commit_began(&self) {
        let since_epoch = u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX - 1);
        self.commit_began_ms
            .store(since_epoch.saturating_add(1), Ordering::Relaxed);
    }

    /// Metrics whose clock for commits in flight started at `epoch`, so that a test can have a
    /// commit begin in the past (`commit_began_ago`) rather than wait for one to age.
    #[cfg(test)]
    pub(crate) fn with_epoch(epoch: Instant) -> Metrics {
        Metrics {
            epoch,
            ..Metrics::new()
        }
    }

    /// As `commit_began`, `ago` ago, which must be after the epoch.
    #[cfg(test)]
    pub(crate) fn commit_began_ago(&self, ago: Duration) {
        let began = self
            .epoch
            .elapsed()
            .checked_sub(ago)
            .expect("after the epoch");
        let began_ms = u64::try_from(began.as_millis()).expect("a test's milliseconds fit");
        self.commit_began_ms.store(began_ms + 1, Ordering::Relaxed);
    }

    /// The commit begun last has returned, whether it succeeded or failed.
    pub fn commit_ended(&self) {
        self.commit_began_ms.store(0, Ordering::Relaxed);
    }

    /// How long the commit in progress has run, or `None` when none is running.
    pub fn commit_in_flight(&self) -> Option<Duration> {
        match self.commit_began_ms.load(Ordering::Relaxed) {
            0 => None,
            began => {
                let now = self.epoch.elapsed();
                Some(now.saturating_sub(Duration::from_millis(began - 1)))
            }
        }
    }

    /// Counts one answered request.
    pub fn request(&self, route: RouteLabel, status: u16, step: bool, elapsed: Duration) {
        let r = ROUTES
            .iter()
            .position(|(l, _)| *l == route)
            .unwrap_or(ROUTES.len() - 1);
        self.requests[r * CODES.len() + code_slot(status)].fetch_add(1, Ordering::Relaxed);
        let histogram = if step {
            &self.step_latency
        } else {
            &self.read_latency
        };
        histogram.observe(elapsed.as_secs_f64());
    }

    /// The exposition text. `index` and `ready` come from the state owner and the edge;
    /// `own_sockets` is how many of our sockets are no client's: the listening one, and both
    /// ends of the queue-lag gauge's connection (the edge knows).
    pub fn render(
        &self,
        index: u8,
        ready: bool,
        (version, revision): (&str, &str),
        own_sockets: u64,
        depths: Depths,
    ) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let family = |out: &mut String, name: &str, kind: &str, help: &str| {
            let _ = writeln!(out, "# HELP {name} {help}");
            let _ = writeln!(out, "# TYPE {name} {kind}");
        };

        family(
            &mut out,
            "fibd_requests_total",
            "counter",
            "Clients' HTTP requests answered, by route and status code (fibd's own watchdog probe left out).",
        );
        for (r, (_, route)) in ROUTES.iter().enumerate() {
            for (c, &code) in CODES.iter().enumerate() {
                let n = self.requests[r * CODES.len() + c].load(Ordering::Relaxed);
                if n > 0 {
                    let code = if code == 0 {
                        "other".to_string()
                    } else {
                        code.to_string()
                    };
                    let _ = writeln!(
                        out,
                        "fibd_requests_total{{route=\"{route}\",code=\"{code}\"}} {n}"
                    );
                }
            }
        }
        family(
            &mut out,
            "fibd_request_duration_seconds",
            "histogram",
            "Time from a client's request's arrival at the acceptor to its reply written; steps include their commit.",
        );
        self.read_latency
            .render(&mut out, "fibd_request_duration_seconds", "kind=\"read\"");
        self.step_latency
            .render(&mut out, "fibd_request_duration_seconds", "kind=\"step\"");
        family(
            &mut out,
            "fibd_cursor_index",
            "gauge",
            "Index n of the durable cursor, which holds F(n).",
        );
        let _ = writeln!(out, "fibd_cursor_index {index}");
        family(
            &mut out,
            "fibd_ready",
            "gauge",
            "1 while the state is loaded, the last write succeeded, no write has run for a second (a stalled disk) and fibd is not shutting down.",
        );
        let _ = writeln!(out, "fibd_ready {}", u8::from(ready));
        family(
            &mut out,
            "fibd_commits_total",
            "counter",
            "Commits of the state file (one write and fdatasync each).",
        );
        let _ = writeln!(out, "fibd_commits_total {}", self.commit_steps.count());
        family(
            &mut out,
            "fibd_commit_steps",
            "histogram",
            "Steps acknowledged by one commit (group commit batch size).",
        );
        self.commit_steps.render(&mut out, "fibd_commit_steps", "");
        family(
            &mut out,
            "fibd_commit_duration_seconds",
            "histogram",
            "Time to write and fdatasync one commit.",
        );
        self.commit_latency
            .render(&mut out, "fibd_commit_duration_seconds", "");
        family(
            &mut out,
            "fibd_commit_in_flight_seconds",
            "gauge",
            "How long the commit in progress (write and fdatasync) has run; 0 when none is. A value that keeps growing means the disk has stalled.",
        );
        let in_flight = self.commit_in_flight().unwrap_or_default();
        let _ = writeln!(
            out,
            "fibd_commit_in_flight_seconds {:.3}",
            in_flight.as_secs_f64()
        );
        for (name, help, value) in [
            (
                "fibd_state_write_errors_total",
                "Failed writes or fdatasyncs of the state file; the first one makes fibd exit.",
                &self.state_write_errors,
            ),
            (
                "fibd_requests_shed_total",
                "Requests answered 503 at once because a bounded queue was full.",
                &self.requests_shed,
            ),
            (
                "fibd_connections_shed_total",
                "Connections closed unanswered because file descriptors or threads ran out.",
                &self.connections_shed,
            ),
            (
                "fibd_connections_abandoned_total",
                "Connections given up on because they did not read their replies, pipelined too deep, or sent a request whose end was unclear.",
                &self.connections_abandoned,
            ),
            (
                "fibd_connections_hung_up_total",
                "Connections fibd shut down: abandoned ones that tiny_http would have read on, and those of replies still being written after the send timeout.",
                &self.connections_hung_up,
            ),
            (
                "fibd_connections_purged_total",
                "Of those, connections hung up on because fibd had fallen far behind a flood of pipelined requests (its marker request waited 100 ms while it took 1,000 pipelined requests): all but those with just a request in flight or whose client has sent at most 512 bytes.",
                &self.connections_purged,
            ),
            (
                "fibd_requests_dropped_total",
                "Requests of abandoned connections, dropped without a reply.",
                &self.requests_dropped,
            ),
            (
                "fibd_connections_kept_total",
                "Connections kept open for good because a request on them announced a body over 1 KiB, or any body with Expect: 100-continue; fibd exits at 128.",
                &self.connections_kept,
            ),
            (
                "fibd_accept_failures_total",
                "Accept loops that failed and were restarted.",
                &self.accept_failures,
            ),
            (
                "fibd_tiny_http_panics_total",
                "Panics in tiny_http's threads, survived: most often a client that reset its connection before tiny_http read its address.",
                &TINY_HTTP_PANICS,
            ),
        ] {
            family(&mut out, name, "counter", help);
            let _ = writeln!(out, "{name} {}", value.load(Ordering::Relaxed));
        }
        family(
            &mut out,
            "fibd_queue_depth",
            "gauge",
            "Items waiting in each bounded queue of 4,096: requests for the workers, steps for the state owner, step replies for the responders. A full work or steps queue answers 503; a full replies queue holds up the state owner until the steps queue fills.",
        );
        for (queue, depth) in [
            ("work", depths.work),
            ("steps", depths.steps),
            ("replies", depths.replies),
        ] {
            let _ = writeln!(out, "fibd_queue_depth{{queue=\"{queue}\"}} {depth}");
        }
        family(
            &mut out,
            "fibd_requests_waiting",
            "gauge",
            "Pipelined requests parked behind the one in flight on their connection (at most 8,192).",
        );
        let _ = writeln!(out, "fibd_requests_waiting {}", depths.requests_waiting);
        family(
            &mut out,
            "fibd_connections_tracked",
            "gauge",
            "Connections in fibd's table: with a request in flight, or abandoned and still watched (at most 65,536).",
        );
        let _ = writeln!(
            out,
            "fibd_connections_tracked {}",
            depths.connections_tracked
        );
        family(
            &mut out,
            "fibd_request_queue_lag_seconds",
            "gauge",
            "How long fibd's own marker request waited, or has waited so far, between being sent and being taken from the request queue (one at a time, at most every 20 ms).",
        );
        let _ = writeln!(
            out,
            "fibd_request_queue_lag_seconds {}",
            depths.request_queue_lag.as_secs_f64()
        );
        family(
            &mut out,
            "fibd_request_queue_behind",
            "gauge",
            "1 while fibd is far behind a flood of pipelined requests and hangs up on connections (between event=fell_behind and event=caught_up), else 0.",
        );
        let _ = writeln!(
            out,
            "fibd_request_queue_behind {}",
            u8::from(depths.request_queue_behind)
        );
        let process = crate::process::Figures::read();
        family(
            &mut out,
            "fibd_open_connections",
            "gauge",
            "Open sockets other than the listening one and fibd's own queue-lag gauge connection, each counted once (tiny_http holds two descriptors of each connection): client connections, plus the watchdog's probe while it runs (both ends) and, under systemd, the journal's and notify sockets.",
        );
        let _ = writeln!(
            out,
            "fibd_open_connections {}",
            process.sockets.saturating_sub(own_sockets)
        );
        family(
            &mut out,
            "fibd_build_info",
            "gauge",
            "Always 1; the version and the commit built from are in the labels.",
        );
        let _ = writeln!(
            out,
            "fibd_build_info{{version=\"{version}\",revision=\"{revision}\"}} 1"
        );
        family(
            &mut out,
            "process_start_time_seconds",
            "gauge",
            "Start time of the process since the Unix epoch, in seconds.",
        );
        let _ = writeln!(
            out,
            "process_start_time_seconds {:.3}",
            self.start_time_seconds
        );
        family(
            &mut out,
            "process_resident_memory_bytes",
            "gauge",
            "Resident memory size in bytes.",
        );
        let _ = writeln!(
            out,
            "process_resident_memory_bytes {}",
            process.resident_bytes
        );
        family(
            &mut out,
            "process_open_fds",
            "gauge",
            "Number of open file descriptors.",
        );
        let _ = writeln!(out, "process_open_fds {}", process.open_fds);
        if let Some(max) = process.max_fds {
            family(
                &mut out,
                "process_max_fds",
                "gauge",
                "Maximum number of open file descriptors.",
            );
            let _ = writeln!(out, "process_max_fds {max}");
        }
        family(
            &mut out,
            "fibd_threads",
            "gauge",
            "Threads of the process; tiny_http starts one per open connection.",
        );
        let _ = writeln!(out, "fibd_threads {}", process.threads);
        if let Some(max) = process.max_threads {
            family(
                &mut out,
                "fibd_threads_max",
                "gauge",
                "The tightest limit on the process's threads it can see: the pids.max of its cgroup and the cgroup's ancestors (systemd's TasksMax, a container's pids limit), or RLIMIT_NPROC unless it runs as root. Each counts more than fibd's threads when other tasks share it.",
            );
            let _ = writeln!(out, "fibd_threads_max {max}");
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_status_fibd_answers_with_is_counted_by_itself() {
        use crate::cursor::Bound;
        use crate::routes::{self, Format};
        let f = Format::Text;
        let routed = |method, target| routes::route(method, target, false, f).unwrap_err();
        let head = routes::Head {
            version: (1, 1),
            target_bytes: crate::limits::TARGET_BYTES_MAX + 1,
            header_bytes: 0,
            header_fields: 0,
            host: routes::HostField::Fine,
            length_ambiguous: false,
        };
        let replies = [
            routes::number(1, f),
            routes::bound(Bound::AtEnd, f),
            routes::unavailable(f),
            routes::overloaded(f),
            routes::shutting_down(f),
            routes::disk_stalled(f),
            routes::after_framing_lost(f),
            routes::ready(routes::Readiness::DiskStalled, f),
            routed("GET", "/fib/x"),
            routed("GET", "/nope"),
            routed("DELETE", "/next"),
            routed("FOO", "/next"),
            routed("GET", "/fib/999"),
            routes::check_head(&head, f).unwrap_err(),
        ];
        for reply in replies {
            assert_ne!(code_slot(reply.status), CODES.len() - 1, "{}", reply.status);
        }
    }

    #[test]
    fn a_status_fibd_does_not_know_is_counted_as_other_and_unused_series_are_left_out() {
        let m = Metrics::new();
        let render = |m: &Metrics| m.render(0, true, ("v", "r"), 1, Depths::default());
        assert!(
            !render(&m).contains("fibd_requests_total{"),
            "a series is shown before any request"
        );
        m.request(RouteLabel::Other, 418, false, Duration::from_micros(10));
        m.request(RouteLabel::Next, 418, true, Duration::from_micros(10));
        let text = render(&m);
        let series: Vec<_> = text
            .lines()
            .filter(|l| l.starts_with("fibd_requests_total{"))
            .collect();
        assert_eq!(
            series,
            [
                "fibd_requests_total{route=\"/next\",code=\"other\"} 1",
                "fibd_requests_total{route=\"other\",code=\"other\"} 1",
            ]
        );
    }

    #[test]
    fn route_labels_follow_the_router() {
        assert_eq!(RouteLabel::of_target("/next"), RouteLabel::Next);
        assert_eq!(RouteLabel::of_target("/fib/abc"), RouteLabel::Fib);
        assert_eq!(RouteLabel::of_target("/fib?n=3"), RouteLabel::FibList);
        // An absolute-form target is routed by its path, so it is counted by it too.
        assert_eq!(RouteLabel::of_target("http://h/next"), RouteLabel::Next);
        assert_eq!(RouteLabel::of_target("HTTP://h/next"), RouteLabel::Next);
        assert_eq!(RouteLabel::of_target("http://h?x"), RouteLabel::Index);
        assert_eq!(RouteLabel::of_target("/nowhere"), RouteLabel::Other);
    }

    #[test]
    fn a_routed_request_gets_the_label_of_its_target() {
        let targets = [
            "/",
            "/current",
            "/next",
            "/previous",
            "/fib/7",
            "/fib?n=3",
            "/healthz",
            "/readyz",
            "/metrics",
            "http://h/next",
            "HTTP://h?x",
            "/current?x=1",
            "/fib?n=187",
            "/fib/186",
            "https://h",
        ];
        for target in targets {
            let route = ["GET", "POST"]
                .iter()
                .find_map(|m| {
                    crate::routes::route(m, target, false, crate::routes::Format::Text).ok()
                })
                .unwrap_or_else(|| panic!("{target} routes"));
            assert_eq!(
                RouteLabel::of_route(&route),
                RouteLabel::of_target(target),
                "{target}"
            );
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::new(&[1.0, 2.0]);
        for v in [0.5, 1.5, 1.5, 3.0] {
            h.observe(v);
        }
        let mut out = String::new();
        h.render(&mut out, "x", "");
        assert_eq!(
            out,
            "x_bucket{le=\"1\"} 1\nx_bucket{le=\"2\"} 3\nx_bucket{le=\"+Inf\"} 4\nx_sum 6.5\nx_count 4\n"
        );
    }

    #[test]
    fn render_names_every_family_once() {
        let m = Metrics::new();
        m.request(RouteLabel::Next, 200, true, Duration::from_micros(300));
        m.request(RouteLabel::Other, 404, false, Duration::from_micros(30));
        let text = m.render(
            5,
            true,
            ("0.1.0", "1a2b3c4 2026-11-30"),
            2,
            Depths {
                work: 1,
                steps: 2,
                replies: 3,
                requests_waiting: 4,
                connections_tracked: 5,
                request_queue_lag: Duration::from_millis(6),
                request_queue_behind: true,
            },
        );
        assert!(
            text.contains("fibd_requests_total{route=\"/next\",code=\"200\"} 1"),
            "{text}"
        );
        assert!(text.contains("fibd_requests_total{route=\"other\",code=\"404\"} 1"));
        assert!(text.contains("fibd_cursor_index 5"));
        for line in [
            "fibd_queue_depth{queue=\"work\"} 1",
            "fibd_queue_depth{queue=\"steps\"} 2",
            "fibd_queue_depth{queue=\"replies\"} 3",
            "fibd_requests_waiting 4",
            "fibd_connections_tracked 5",
            "fibd_request_queue_lag_seconds 0.006",
            "fibd_request_queue_behind 1",
        ] {
            assert!(text.lines().any(|l| l == line), "{line}\n{text}");
        }
        assert!(
            text.contains("fibd_build_info{version=\"0.1.0\",revision=\"1a2b3c4 2026-11-30\"} 1")
        );
        assert!(text.contains("process_resident_memory_bytes "));
        let types = text
            .lines()
            .filter(|l| l.starts_with("# TYPE fibd_request_duration_seconds"))
            .count();
        assert_eq!(types, 1);
    }

    fn in_flight_seconds(m: &Metrics) -> f64 {
        let text = m.render(0, true, ("0.1.0", "unknown"), 1, Depths::default());
        let line = text
            .lines()
            .find(|l| l.starts_with("fibd_commit_in_flight_seconds "))
            .expect("the gauge is always rendered");
        line.split(' ').nth(1).unwrap().parse().unwrap()
    }

    #[test]
    fn a_commit_in_progress_shows_its_age_until_it_ends() {
        let m = Metrics::new();
        assert_eq!(m.commit_in_flight(), None);
        assert_eq!(in_flight_seconds(&m), 0.0);
        m.commit_began();
        std::thread::sleep(Duration::from_millis(30));
        let age = m.commit_in_flight().expect("a commit is in progress");
        assert!(age >= Duration::from_millis(20), "{age:?}");
        assert!(in_flight_seconds(&m) >= 0.02);
        m.commit_ended();
        assert_eq!(m.commit_in_flight(), None);
        assert_eq!(in_flight_seconds(&m), 0.0);
    }
}
