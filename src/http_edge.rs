//! The HTTP edge: the listening socket, tiny_http's accept loop, the worker pool and the
//! threads that write step replies.
//!
//! Request flow: tiny_http parses each connection on its own thread and queues the request;
//! the acceptor (one thread per accept loop) routes it and either hands it to the worker pool
//! or, for `/next` and `/previous`, to the state owner. Workers answer everything but steps.
//! The state owner hands finished steps to the step responders, which write the replies.
//!
//! tiny_http writes a connection's replies in request order, blocking a reply until the ones
//! before it are written. So that no thread ever waits for another request's reply, only one
//! request per connection is in flight at a time (`connections`): a pipelined request waits
//! there until the reply before it is written, and the thread that wrote that reply sends it on.
//! Steps are answered by responders, not workers, so a worker never waits on the disk.

use std::cell::{Cell, RefCell};
use std::io;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::os::fd::OwnedFd;
use std::panic::{self, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use crossbeam_channel::{Receiver, Sender, TrySendError, bounded};
use tiny_http::{Method, Request, Response, Server};

use crate::connections::{Abandoned, Admit, Connections, Finish, Peer, Weighed};
use crate::hang_up;
use crate::http_response::{self, Framing};
use crate::limits;
use crate::log;
use crate::metrics::{Depths, Metrics, RouteLabel};
use crate::queue_lag::{self, QueueLag, Reading};
use crate::routes::{self, Format, Readiness, Reply, Route};
use crate::state_owner::{Outcome, Published, StepRequest};
use crate::watchdog;

/// Binds the listening socket, deepens its queue to `LISTEN_BACKLOG`, and sets the timeouts
/// and the receive buffer every accepted connection inherits.
///
/// SO_SNDTIMEO is safe on a listening socket. SO_RCVTIMEO is what bounds idle and stalled
/// connections, but on a listening socket it also makes `accept` fail when no connection
/// arrives in time, which ends tiny_http's accept loop; the watchdog's regular probe keeps
/// that from happening, and the acceptor restarts the loop if it happens anyway.
pub fn bind(addr: SocketAddr, idle_timeout: Duration) -> io::Result<TcpListener> {
    let listener = TcpListener::bind(addr)?;
    deepen_listen_queue(&listener, limits::LISTEN_BACKLOG)?;
    fix_receive_buffer(&listener, limits::RECEIVE_BUFFER_BYTES)?;
    // std offers these options only on streams. A listening socket accepts them too, and the
    // conversion moves ownership of the descriptor, so no unsafe code is needed.
    let socket = TcpStream::from(OwnedFd::from(listener));
    socket.set_read_timeout(Some(idle_timeout))?;
    socket.set_write_timeout(Some(Duration::from_millis(limits::SEND_TIMEOUT_MS)))?;
    socket.set_nodelay(true)?;
    Ok(TcpListener::from(OwnedFd::from(socket)))
}

/// Raises the listening socket's backlog from the 128 that std's `bind` asks for. Linux applies
/// a second `listen` on a listening socket as a new backlog, capped by `net.core.somaxconn`.
fn deepen_listen_queue(listener: &TcpListener, backlog: u32) -> io::Result<()> {
    use std::ffi::c_int;
    use std::os::fd::AsRawFd;
    unsafe extern "C" {
        /// listen(2), from the C library that std itself links (musl or glibc).
        fn listen(socket: c_int, backlog: c_int) -> c_int;
    }
    let backlog = c_int::try_from(backlog).expect("the listen backlog fits in a C int");
    // SAFETY: listen(2) takes two integers and reads or writes no memory of ours. The
    // descriptor belongs to `listener`, which is borrowed for the whole call, so it is open and
    // cannot have been closed and reused for another file in the meantime.
    let status = unsafe { listen(listener.as_raw_fd(), backlog) };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

#[cfg(not(all(
    target_os = "linux",
    any(
        target_arch = "x86",
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "arm",
        target_arch = "riscv64"
    )
)))]
compile_error!(
    "fix_receive_buffer knows SOL_SOCKET and SO_RCVBUF only for Linux on x86, arm and riscv64"
);

/// Fixes the receive buffer of every connection the listening socket accepts at `bytes`, in
/// place of the kernel's tuning, which grows it to `net.ipv4.tcp_rmem`'s maximum (32 MiB on
/// some hosts) for a client that sends without pause. tiny_http reads whatever is buffered
/// even after a hang-up, so the buffer bounds what a connection hung up on can still queue.
fn fix_receive_buffer(listener: &TcpListener, bytes: u32) -> io::Result<()> {
    use std::ffi::{c_int, c_void};
    use std::os::fd::AsRawFd;
    unsafe extern "C" {
        /// setsockopt(2), from the C library that std itself links (musl or glibc).
        fn setsockopt(
            socket: c_int,
            level: c_int,
            name: c_int,
            value: *const c_void,
            length: u32,
        ) -> c_int;
    }
    // SOL_SOCKET and SO_RCVBUF, the same numbers on every Linux architecture fibd is built
    // for (the generic ones; mips, sparc, alpha and parisc differ, and are refused below).
    const SOL_SOCKET: c_int = 1;
    const SO_RCVBUF: c_int = 8;
    let value = c_int::try_from(bytes).expect("the receive buffer size fits in a C int");
    // SAFETY: setsockopt(2) reads `length` bytes at `value`, which points at a live c_int of
    // exactly that size for the whole call, and writes no memory of ours. The descriptor
    // belongs to `listener`, borrowed for the whole call, so it is open and not reused.
    let status = unsafe {
        setsockopt(
            listener.as_raw_fd(),
            SOL_SOCKET,
            SO_RCVBUF,
            (&raw const value).cast(),
            std::mem::size_of::<c_int>() as u32,
        )
    };
    if status == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Why `Edge::forward` did not send a request on.
enum Refusal {
    QueueFull,
    DiskStalled,
    ShuttingDown,
}

/// Whether the commit in progress, if any, has run long enough to mean a stalled disk.
fn disk_stalled(commit_in_flight: Option<Duration>) -> bool {
    commit_in_flight >= Some(Duration::from_millis(limits::COMMIT_STALLED_MS))
}

/// Readiness from the state file's health, shutdown, and how long the commit in progress (if
/// any) has run. A failed write is named first: it is why the process is going away.
fn readiness_of(healthy: bool, stopping: bool, commit_in_flight: Option<Duration>) -> Readiness {
    if !healthy {
        Readiness::StorageFailed
    } else if stopping {
        Readiness::Stopping
    } else if disk_stalled(commit_in_flight) {
        Readiness::DiskStalled
    } else {
        Readiness::Ready
    }
}

/// Set when tiny_http's accept thread panicked: 1 for any reason, 2 when descriptors or
/// threads ran out. tiny_http 0.12 unwraps `try_clone` of each accepted socket and panics when
/// a connection thread cannot be spawned; both happen in its accept thread, which then ends
/// without a word.
static ACCEPT_THREAD_PANICKED: AtomicU8 = AtomicU8::new(0);

thread_local! {
    /// True while this thread starts a tiny_http server, which spawns its accept thread with
    /// `thread::spawn` and so panics when no thread can be had (the task limit of a systemd
    /// unit, RLIMIT_NPROC, memory). That panic is caught (`start_accept_loop`), so the panic
    /// hook must let it unwind instead of aborting the process as for a broken invariant.
    static STARTING_ACCEPT_LOOP: Cell<bool> = const { Cell::new(false) };
}

/// Whether a panic on this thread happened while it started a tiny_http server, and will be
/// caught and handled as a failure to start an accept loop.
pub fn starting_accept_loop() -> bool {
    STARTING_ACCEPT_LOOP.get()
}

/// Whether a panic or error message from tiny_http says that a resource every connection
/// needs ran out: file descriptors (ENFILE, EMFILE) or a thread ("failed to spawn thread").
/// No connection waiting in the backlog could then be served, so it is shed.
fn out_of_resources(message: &str) -> bool {
    message.contains("code: 24")
        || message.contains("code: 23")
        || message.contains("failed to spawn thread")
}

/// Called by the panic hook for a panic in one of tiny_http's threads (which are unnamed).
/// Returns true if it was the accept thread, which the acceptor will then replace.
///
/// When the accept thread panics for want of a thread, it holds its pool's lock, and the
/// pool's connection threads then panic on the poisoned lock as their connections end. Those
/// follow a failure already handled, often a second or more later: counting them would retire
/// the healthy accept loop started since.
pub fn tiny_http_panicked(file: &str, message: &str) -> bool {
    match accept_thread_panic(file, message) {
        Some(failure) => {
            ACCEPT_THREAD_PANICKED.store(failure as u8, Ordering::Release);
            true
        }
        None => false,
    }
}

/// How tiny_http's accept thread failed, as `ACCEPT_THREAD_PANICKED` records it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AcceptPanic {
    Other = 1,
    OutOfResources = 2,
}

/// Whether a panic in one of tiny_http's threads, by its source file and message, was its
/// accept thread's, and why.
fn accept_thread_panic(file: &str, message: &str) -> Option<AcceptPanic> {
    let accept_thread = (file.ends_with("refined_tcp_stream.rs")
        || file.ends_with("task_pool.rs")
        || message.contains("failed to spawn thread"))
        && !message.contains("PoisonError");
    match accept_thread {
        false => None,
        true if out_of_resources(message) => Some(AcceptPanic::OutOfResources),
        true => Some(AcceptPanic::Other),
    }
}

/// State shared by every thread of the edge.
pub struct Edge {
    published: Arc<Published>,
    pub metrics: Arc<Metrics>,
    access_log: bool,
    /// Set by `main` when shutdown begins: readiness turns false and the acceptors stop.
    stopping: AtomicBool,
    /// Accept loops that failed but still serve the connections they had.
    retired_loops: AtomicUsize,
    /// Retired accept loops whose threads ended, oldest first (`RETIRED_IDLE_TIMEOUTS`).
    buried_loops: Mutex<std::collections::VecDeque<Arc<Server>>>,
    idle_timeout: Duration,
    /// Which connections have a request in flight, and what they pipelined behind it.
    connections: Connections<Routed>,
    /// Connections kept open forever because tiny_http left a request body unread on them.
    kept_connections: AtomicUsize,
    /// What the hang-up thread is to hang up on (`hang_up.rs`), and the replies being written,
    /// which it watches.
    hang_ups: Arc<hang_up::HangUps>,
    /// How far behind tiny_http's parsers the acceptor is (`queue_lag.rs`).
    queue_lag: QueueLag,
    /// Bounds the lines saying the acceptor fell behind or caught up, which a flood can
    /// alternate a few times a second.
    queue_lag_log: log::Throttle,
    /// A reader of the step responders' queue, kept only to tell its depth to `/metrics`.
    replies_depth: std::sync::OnceLock<Receiver<(Ticket, Outcome)>>,
    /// Bounds the `connection_abandoned` lines, one per connection and so at a client's pace.
    abandoned_log: log::Throttle,
    /// Ends the process non-zero, for its supervisor to restart it.
    on_fatal: Box<dyn Fn(String) + Send + Sync>,
    /// The queues to the workers and the state owner; `None` once shutdown has drained the
    /// accept loop, so that the workers' and the state owner's queues close and they end.
    queues: Mutex<Option<Queues>>,
}

/// What the edge remembers about a request until its reply is written.
#[derive(Clone, Copy)]
struct Meta {
    /// The client's address as hashed for the connection table (`Peer::digest`), so that
    /// finishing the request need not hash it again. Only the digest is kept: a queue slot
    /// holds a `Meta`, and every queue's slots are allocated when it is made.
    peer_digest: u64,
    route: RouteLabel,
    arrived: Instant,
    step: bool,
    /// Whether tiny_http keeps reading the connection after this request; the reply says so.
    persists: bool,
    /// Whether tiny_http left the request's body on the socket (`body_left_unread`).
    body_unread: bool,
    /// Whether the request's end is unclear (an ambiguous Content-Length, or any
    /// Transfer-Encoding, whose body tiny_http leaves on the socket, or an HTTP version fibd
    /// does not speak), so that what tiny_http reads after it on the connection is not a
    /// request the client meant: the reply closes the connection, and whatever follows on it
    /// is dropped or refused, never served.
    framing_lost: bool,
    /// The watchdog's own probe, once a second: answered like any request, but left out of
    /// the request metrics and the access log, which are about clients.
    own_probe: bool,
}

impl Edge {
    pub fn new(
        published: Arc<Published>,
        metrics: Arc<Metrics>,
        access_log: bool,
        idle_timeout: Duration,
        on_fatal: Box<dyn Fn(String) + Send + Sync>,
    ) -> Arc<Edge> {
        Arc::new(Edge {
            published,
            metrics,
            access_log,
            stopping: AtomicBool::new(false),
            retired_loops: AtomicUsize::new(0),
            buried_loops: Mutex::default(),
            idle_timeout,
            connections: Connections::new(
                idle_timeout * limits::ABANDONED_IDLE_TIMEOUTS,
                idle_timeout * limits::ABANDONED_WATCH_IDLE_TIMEOUTS_MAX,
                Instant::now(),
            ),
            queues: Mutex::new(None),
            kept_connections: AtomicUsize::new(0),
            hang_ups: Arc::default(),
            queue_lag: QueueLag::new(Instant::now()),
            queue_lag_log: log::Throttle::new(limits::CLIENT_EVENT_LOG_LINES_PER_S_MAX),
            replies_depth: std::sync::OnceLock::new(),
            abandoned_log: log::Throttle::new(limits::CLIENT_EVENT_LOG_LINES_PER_S_MAX),
            on_fatal,
        })
    }

    /// Begins shutdown: readiness turns false and the acceptors stop taking new requests.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::Release);
    }

    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::Acquire)
    }

    /// Keeps a retired accept loop whose thread is ending, for `poll_buried`.
    fn bury(&self, server: Arc<Server>) {
        let let_go = {
            let mut buried = self.buried_loops.lock().expect("buried loops lock");
            let oldest = (buried.len() == limits::BURIED_ACCEPT_LOOPS_MAX)
                .then(|| buried.pop_front())
                .flatten();
            buried.push_back(server);
            oldest
        };
        // Outside the lock: tiny_http's `Server` connects to its own address as it is dropped,
        // which can wait on a full listen queue.
        drop(let_go);
    }

    /// The queue-lag gauge's state, whose `watchdog` port the watchdog notes its probes in.
    pub fn queue_lag(&self) -> &QueueLag {
        &self.queue_lag
    }

    /// Takes a marker of the queue-lag gauge out of tiny_http's queue, unanswered.
    fn take_marker(&self, request: Request, now: Instant) {
        self.queue_lag.take_marker(request.url(), now);
        // The gauge never reads; taking the writer first makes tiny_http write nothing.
        drop(request.into_writer());
    }

    /// Acts on what the queue-lag gauge says: while the acceptor is far behind, hangs up on
    /// the connections that may have filled its queue.
    fn on_queue_lag(&self, reading: Reading) {
        match reading {
            Reading::FellBehind { lag, pipelined } => {
                self.hang_ups.purge();
                self.queue_lag_log.event(
                    log::Level::Warn,
                    "fell_behind",
                    &[
                        ("lag_ms", &lag.as_millis()),
                        ("pipelined_meanwhile", &pipelined),
                        (
                            "note",
                            &"clients send requests faster than fibd takes them; hanging up \
                              on every connection without a request in flight that has sent \
                              over 512 bytes, until it catches up",
                        ),
                    ],
                );
            }
            Reading::StillBehind => self.hang_ups.purge(),
            Reading::CaughtUp { behind } => {
                self.queue_lag_log.event(
                    log::Level::Info,
                    "caught_up",
                    &[("behind_ms", &behind.as_millis())],
                );
            }
            Reading::KeepingUp => {}
        }
    }

    /// Our sockets that are no client's: the bound one (each accept loop's copy of it is a
    /// descriptor of the same socket, which `/metrics` counts once), and both ends of the
    /// queue-lag gauge's connection while it is open. (For the moment between the gauge's
    /// connect and tiny_http's accept, only one end is ours, and the count is one short.)
    fn own_sockets(&self) -> u64 {
        1 + if self.queue_lag.gauge_connected() {
            2
        } else {
            0
        }
    }

    /// How full the queues and the connection table are, for `/metrics`.
    fn depths(&self) -> Depths {
        let (work, steps) = self
            .queues
            .lock()
            .expect("queues lock")
            .as_ref()
            .map_or((0, 0), |q| (q.work.len(), q.steps.len()));
        Depths {
            work,
            steps,
            replies: self.replies_depth.get().map_or(0, Receiver::len),
            requests_waiting: self.connections.waiting(),
            connections_tracked: self.connections.tracked(),
            request_queue_lag: self.queue_lag.lag(),
            request_queue_behind: self.queue_lag.is_behind(),
        }
    }

    /// The cursor index as last made durable.
    pub fn durable_index(&self) -> u8 {
        self.published.index()
    }

    /// Whether to send this process traffic. A stalled disk turns it false as well as a failed
    /// one: no step can be acknowledged until the commit in progress returns, and a load
    /// balancer or orchestrator should know, not just a person reading `/metrics`.
    fn readiness(&self) -> Readiness {
        readiness_of(
            self.published.healthy(),
            self.is_stopping(),
            self.metrics.commit_in_flight(),
        )
    }

    /// Writes `reply`, then moves the request's connection on: the request it pipelined next,
    /// if any, is sent on, and if the reply could not be written the connection is abandoned.
    fn answer(&self, request: Request, reply: Reply, meta: Meta) {
        let mut next = Some((request, reply, meta));
        while let Some((request, reply, meta)) = next.take() {
            let peer = request
                .remote_addr()
                .map(|&addr| Peer::of_digest(addr, meta.peer_digest));
            let (answered, answered_at) = self.respond(request, reply, meta);
            let Some(peer) = peer else { return };
            match self.connections.finish(peer, answered, answered_at) {
                Finish::Idle => {}
                Finish::Next(routed) => next = self.forward(routed),
                Finish::Drop(dropped, reason) => {
                    self.drop_unanswered(peer.addr(), dropped, Some(reason));
                }
            }
        }
    }

    /// Writes a refusal `forward` returned to the acceptor: through a worker while the work
    /// queue has room (a step refused for a stalled disk or a full step queue), so that a
    /// client that does not read holds up one worker for a send timeout at most, not the
    /// acceptor and every request behind it; itself only when that queue is full too.
    fn refuse_from_acceptor(&self, request: Request, reply: Reply, meta: Meta) {
        let job = Job::Reject(request, Box::new(reply), meta);
        let job = match self.queues.lock().expect("queues lock").as_ref() {
            Some(queues) => match queues.work.try_send(job) {
                Ok(()) => return,
                Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => job,
            },
            None => job,
        };
        let Job::Reject(request, reply, meta) = job else {
            unreachable!("the job made above is a rejection");
        };
        self.answer(request, *reply, meta);
    }

    /// Sends a request on to its queue. When the queue is full, or closed by shutdown, or the
    /// request is a step while the disk is stalled, returns the 503 the caller is to write
    /// instead.
    fn forward(&self, routed: Routed) -> Option<(Request, Reply, Meta)> {
        // Read before the lock is taken: the clock read need not hold up other threads.
        let stalled =
            matches!(routed, Routed::Step(_)) && disk_stalled(self.metrics.commit_in_flight());
        let (refused, why) = {
            let queues = self.queues.lock().expect("queues lock");
            match (queues.as_ref(), routed) {
                (Some(queues), Routed::Work(job)) => match queues.work.try_send(job) {
                    Ok(()) => return None,
                    Err(TrySendError::Full(job) | TrySendError::Disconnected(job)) => {
                        (Routed::Work(job), Refusal::QueueFull)
                    }
                },
                // A step queued behind a commit that does not return would wait as long as
                // the disk does, its outcome unknown to a client that gives up first; refused
                // now, it is plainly not made, and the client can retry when the disk is back.
                (Some(_), Routed::Step(step)) if stalled => {
                    (Routed::Step(step), Refusal::DiskStalled)
                }
                (Some(queues), Routed::Step(step)) => match queues.steps.try_send(step) {
                    Ok(()) => return None,
                    Err(TrySendError::Full(step) | TrySendError::Disconnected(step)) => {
                        (Routed::Step(step), Refusal::QueueFull)
                    }
                },
                // A request pipelined behind one that was answered during shutdown.
                (None, routed) => (routed, Refusal::ShuttingDown),
            }
        };
        let liveness = matches!(refused, Routed::Work(Job::Answer(_, Route::Health, _, _)));
        let (request, format, mut meta) = refused.into_parts();
        match why {
            // The process is alive, only busy: a liveness probe (a container's health check,
            // Kubernetes') that read a full queue as death would restart it under load, and
            // the restart would shed more. The answer costs what the 503 would have.
            Refusal::QueueFull if liveness => Some((request, routes::health(format), meta)),
            Refusal::QueueFull => {
                self.metrics.requests_shed.fetch_add(1, Ordering::Relaxed);
                Some((request, routes::overloaded(format), meta))
            }
            Refusal::DiskStalled => Some((request, routes::disk_stalled(format), meta)),
            Refusal::ShuttingDown => {
                // The process exits once the last replies are written: the client is told so.
                meta.persists = false;
                Some((request, routes::shutting_down(format), meta))
            }
        }
    }

    /// Drops requests of an abandoned connection without a reply. tiny_http would write a 500
    /// for a request dropped whole; taking its writer first writes nothing and never blocks.
    fn drop_unanswered(
        &self,
        peer: SocketAddr,
        dropped: Vec<Routed>,
        abandoned: Option<Abandoned>,
    ) {
        let count = dropped.len() as u64;
        for routed in dropped {
            let (request, _, meta) = routed.into_parts();
            if meta.body_unread {
                self.keep_forever(request);
            } else {
                drop(request.into_writer());
            }
        }
        self.metrics
            .requests_dropped
            .fetch_add(count, Ordering::Relaxed);
        if let Some(reason) = abandoned {
            self.metrics
                .connections_abandoned
                .fetch_add(1, Ordering::Relaxed);
            // tiny_http would read on whatever the client sends, only for us to drop it. The
            // refusals after an unclear request end must still be written, and a connection
            // kept for its unread body is held by us, not read.
            if matches!(
                reason,
                Abandoned::NotReading | Abandoned::PipelinedTooDeep | Abandoned::PipelinedTotalFull
            ) {
                self.hang_ups.request(peer);
            }
            // A request of unclear end that nothing followed yet is most often a client that
            // streamed a body no route takes (`curl -T -` sends it chunked); it is logged, so
            // that what follows from its address can be traced to it, but it is not worth a
            // warning.
            let level = if count == 0 && reason == Abandoned::FramingLost {
                log::Level::Info
            } else {
                log::Level::Warn
            };
            self.abandoned_log.event(
                level,
                "connection_abandoned",
                &[
                    ("remote", &peer),
                    ("reason", &reason.as_str()),
                    ("requests_dropped", &count),
                ],
            );
        }
    }

    /// Writes `reply` to the client. `Ok` when it was written (a client that has closed the
    /// connection counts, since tiny_http ignores those errors); else why the connection is to
    /// be abandoned: the client stopped reading (the send timeout fired), or the request's
    /// body was left unread. Also returns when the reply was done, which both the latency
    /// metric and the connection table take, so that the clock is read once.
    fn respond(
        &self,
        request: Request,
        reply: Reply,
        meta: Meta,
    ) -> (Result<(), Abandoned>, Instant) {
        let status = reply.status;
        let access = if meta.own_probe {
            None
        } else {
            self.access_fields(&request)
        };
        let mut writing = request
            .remote_addr()
            .map(|&peer| self.hang_ups.writes.begin(peer));
        let answered = if meta.body_unread {
            self.respond_and_keep(request, &reply);
            Err(Abandoned::BodyUnread)
        } else {
            let written = write_reply(request, &reply, meta.persists);
            // A write the hang-up thread ended fails as if the client had closed the
            // connection, which `write_reply` counts as answered: the client stopped reading.
            let hung_up = writing.take().is_some_and(hang_up::Writing::finish);
            if written.is_err() || hung_up {
                Err(Abandoned::NotReading)
            } else if meta.framing_lost {
                Err(Abandoned::FramingLost)
            } else {
                Ok(())
            }
        };
        drop(writing);
        let answered_at = Instant::now();
        let elapsed = answered_at.duration_since(meta.arrived);
        if !meta.own_probe {
            self.metrics.request(meta.route, status, meta.step, elapsed);
        }
        if let Some((method, target, remote)) = access {
            log::info(
                "access",
                &[
                    ("method", &method),
                    ("target", &target),
                    ("status", &status),
                    ("duration_us", &elapsed.as_micros()),
                    ("remote", &remote),
                ],
            );
        }
        (answered, answered_at)
    }

    /// Answers a request whose body tiny_http left on the socket, without ever dropping it
    /// (see `body_left_unread`). `upgrade` is the one way tiny_http offers to write on a
    /// connection and take it over with its body unread: it writes an interim `100 Continue`,
    /// which HTTP/1.1 clients skip, and the final answer follows, framed by us and marked
    /// `Connection: close`. The connection is then kept, never used again.
    fn respond_and_keep(&self, request: Request, reply: &Reply) {
        let framing = Framing {
            version: (1, 1),
            head_only: request.method() == &Method::Head,
            persists: false,
        };
        let mut connection = request.upgrade("HTTP/1.1", Response::empty(100));
        let _ = with_rendered(reply, framing, |bytes| {
            connection
                .write_all(bytes)
                .and_then(|()| connection.flush())
        });
        self.keep_forever(connection);
    }

    /// Keeps a request or connection whose body tiny_http left unread from ever being dropped.
    /// Each costs tiny_http's thread for its connection and two descriptors until the process
    /// ends; past `KEPT_CONNECTIONS_MAX`, the process exits for its supervisor to start afresh.
    fn keep_forever<T>(&self, kept: T) {
        std::mem::forget(kept);
        let count = self.kept_connections.fetch_add(1, Ordering::Relaxed) + 1;
        self.metrics
            .connections_kept
            .fetch_add(1, Ordering::Relaxed);
        log::warn("request_body_unread", &[("connections_kept", &count)]);
        if count == limits::KEPT_CONNECTIONS_MAX {
            (self.on_fatal)(format!(
                "{count} connections kept open for request bodies that were never read"
            ));
        }
    }

    /// The access log's fields for `request`, when the access log is on.
    fn access_fields(&self, request: &Request) -> Option<(String, String, String)> {
        self.access_log.then(|| {
            let method = cut_for_log(request.method().as_str(), limits::LOGGED_METHOD_CHARS_MAX);
            let target = cut_for_log(request.url(), limits::LOGGED_TARGET_CHARS_MAX);
            let remote = request
                .remote_addr()
                .map_or("-".to_string(), ToString::to_string);
            (method, target, remote)
        })
    }
}

/// The first `max` characters of `text`, and "..." if there were more.
fn cut_for_log(text: &str, max: usize) -> String {
    let mut cut: String = text.chars().take(max).collect();
    if cut.len() < text.len() {
        cut.push_str("...");
    }
    cut
}

/// Writes `reply` as the answer to `request`, spelled by `http_response` and written through
/// tiny_http's writer for the request, which keeps a connection's answers in order. As with
/// tiny_http's own `respond`, a client that has closed its connection counts as answered; any
/// other error (the send timeout) is returned.
fn write_reply(request: Request, reply: &Reply, persists: bool) -> io::Result<()> {
    let version = request.http_version();
    let framing = Framing {
        version: (version.0, version.1),
        head_only: request.method() == &Method::Head,
        persists,
    };
    let mut writer = request.into_writer();
    match with_rendered(reply, framing, |bytes| {
        writer.write_all(bytes).and_then(|()| writer.flush())
    }) {
        Err(error)
            if matches!(
                error.kind(),
                io::ErrorKind::BrokenPipe
                    | io::ErrorKind::ConnectionAborted
                    | io::ErrorKind::ConnectionRefused
                    | io::ErrorKind::ConnectionReset
            ) =>
        {
            Ok(())
        }
        written => written,
    }
}

thread_local! {
    /// Each answering thread's reply buffer (`with_rendered`).
    static REPLY_BUFFER: RefCell<Vec<u8>> = const { RefCell::new(Vec::new()) };
    /// The second whose `Date` this thread spelled last, and that date (`date_for`).
    static LAST_DATE: Cell<(u64, [u8; http_response::HTTP_DATE_BYTES])> =
        const { Cell::new((u64::MAX, [0; http_response::HTTP_DATE_BYTES])) };
}

/// Renders `reply` with `http_response::render` into this thread's reply buffer, and hands
/// the bytes to `write`. Reusing the buffer spares an allocation per reply; one grown past
/// `REPLY_BUFFER_KEPT_BYTES_MAX` by a large reply is given back afterwards.
fn with_rendered<R>(reply: &Reply, framing: Framing, write: impl FnOnce(&[u8]) -> R) -> R {
    REPLY_BUFFER.with_borrow_mut(|out| {
        http_response::render(out, reply, framing, &date_for(unix_secs_now()));
        let written = write(out);
        if out.capacity() > limits::REPLY_BUFFER_KEPT_BYTES_MAX {
            *out = Vec::new();
        }
        written
    })
}

/// Seconds since 1970. A clock set before 1970 dates responses 1970 rather than failing them.
fn unix_secs_now() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |since| since.as_secs())
}

/// The `Date` header's value for `secs`. Spelling a date costs about as much as the rest of
/// the response head, and a busy thread writes thousands of replies in the same second, so
/// each thread keeps the last one it spelled.
fn date_for(secs: u64) -> [u8; http_response::HTTP_DATE_BYTES] {
    LAST_DATE.with(|last| {
        let (last_secs, last_date) = last.get();
        if last_secs == secs {
            return last_date;
        }
        let date = http_response::http_date(secs);
        last.set((secs, date));
        date
    })
}

/// tiny_http reads a request body of up to this many bytes when it parses the request.
const TINY_HTTP_BODY_READ_BYTES: usize = 1024;

/// True when tiny_http left the request's body on the socket: a Content-Length over
/// `TINY_HTTP_BODY_READ_BYTES`, or any body announced with `Expect: 100-continue`. Dropping
/// such a request makes tiny_http read the body to its end, into one allocation of the length
/// the client announced (a Content-Length of petabytes aborts the process) and with no limit
/// on time (a client trickling its body holds the dropping thread). No route takes a body, so
/// fibd never wants it: such a request is answered and then kept, never dropped.
///
/// `body_length` is tiny_http's (`None` for no body, or a chunked one, which tiny_http does not
/// drain). Any `Expect` that reaches us is `100-continue` (tiny_http answers others 417
/// itself). An upgrade request (its first `Connection` header names `upgrade`) gets the raw
/// socket as its body, which is never drained.
fn body_left_unread(body_length: Option<usize>, expects: bool, upgrade: bool) -> bool {
    body_length.is_some_and(|length| {
        length > 0 && !upgrade && (length > TINY_HTTP_BODY_READ_BYTES || expects)
    })
}

/// A request for a worker: answer a route, or send an error already decided by the acceptor.
enum Job {
    Answer(Request, Route, Format, Meta),
    /// Boxed, because the work queue's slots are all allocated up front at the size of the
    /// largest job, and a reply is larger than a route; a rejection is worth an allocation.
    Reject(Request, Box<Reply>, Meta),
}

/// A routed request on its way to the thread that answers it.
enum Routed {
    Work(Job),
    Step(StepRequest<Ticket>),
}

impl Weighed for Routed {
    fn head_bytes(&self) -> usize {
        match self {
            Routed::Work(Job::Answer(request, ..) | Job::Reject(request, ..)) => {
                head_bytes(request)
            }
            Routed::Step(step) => head_bytes(&step.ticket.request),
        }
    }
}

/// What tiny_http holds for each header field besides its name and value: the field's own
/// 48 bytes, its place in a list that doubles as it grows, and an allocation for the name.
/// Without it, a request of 10,000 fields `a:` would weigh 10 KB while holding about 800 KB.
const HEADER_FIELD_OVERHEAD_BYTES: usize = 96;

/// The bytes a request's head holds: its target, and each header field's name, value and
/// overhead.
fn head_bytes(request: &Request) -> usize {
    let fields = request.headers().iter();
    let field_bytes: usize = fields
        .map(|h| h.field.as_str().as_str().len() + h.value.as_str().len())
        .map(|bytes| bytes + HEADER_FIELD_OVERHEAD_BYTES)
        .sum();
    request.url().len() + field_bytes
}

impl Routed {
    fn into_parts(self) -> (Request, Format, Meta) {
        match self {
            Routed::Work(Job::Answer(request, _, format, meta)) => (request, format, meta),
            Routed::Work(Job::Reject(request, reply, meta)) => (request, reply.format, meta),
            Routed::Step(step) => (step.ticket.request, step.ticket.format, step.ticket.meta),
        }
    }
}

/// What a step carries through the state owner to a responder.
pub struct Ticket {
    request: Request,
    format: Format,
    meta: Meta,
}

/// Channels between the threads of the edge.
struct Queues {
    work: Sender<Job>,
    steps: Sender<StepRequest<Ticket>>,
}

/// The running edge: its threads, and the two ends the state owner connects to.
pub struct Started {
    /// Every thread of the edge; they end after `Edge::stop`.
    pub threads: Vec<JoinHandle<()>>,
    /// The steps, in the order the acceptor received them.
    pub steps: Receiver<StepRequest<Ticket>>,
    /// Where the state owner delivers each step's outcome.
    pub replies: StepReplies,
}

/// The step responders' queue, which they all take from.
pub struct StepReplies {
    queue: Sender<(Ticket, Outcome)>,
}

impl StepReplies {
    /// Hands a finished step to the responders. A full queue blocks, which is the
    /// back-pressure that keeps replies bounded.
    pub fn deliver(&self, ticket: Ticket, outcome: Outcome) {
        // The edge keeps a reader of this queue (for its depth in `/metrics`), so a send never
        // fails; and a responder that panicked has aborted the process.
        let sent = self.queue.send((ticket, outcome));
        assert!(
            sent.is_ok(),
            "a step responder ended while the state owner runs"
        );
    }
}

/// Starts the workers, the step responders and the acceptor.
pub fn start(
    edge: &Arc<Edge>,
    listener: TcpListener,
    workers: usize,
    on_deaf: impl Fn(String) + Send + 'static,
) -> io::Result<Started> {
    let (work_tx, work_rx) = bounded::<Job>(limits::WORK_QUEUE_MAX);
    let (steps_tx, steps_rx) = bounded::<StepRequest<Ticket>>(limits::STEP_QUEUE_MAX);
    let mut handles = Vec::new();

    for id in 0..workers {
        let (edge, rx) = (Arc::clone(edge), work_rx.clone());
        handles.push(spawn(&format!("worker-{id}"), move || work(&edge, rx))?);
    }

    // One queue for all responders: a connection has one request in flight at a time, so its
    // replies keep their order whichever responder writes them, and a client that does not
    // read holds up the one responder writing to it, not the replies queued behind.
    let (reply_tx, reply_rx) = bounded::<(Ticket, Outcome)>(limits::REPLY_QUEUE_MAX);
    for id in 0..limits::STEP_RESPONDERS {
        let (edge, rx) = (Arc::clone(edge), reply_rx.clone());
        handles.push(spawn(&format!("responder-{id}"), move || {
            for (ticket, outcome) in rx {
                let reply = match outcome {
                    Outcome::Stepped(index) => routes::cursor(index, ticket.format),
                    Outcome::Bound(bound) => routes::bound(bound, ticket.format),
                    Outcome::Unavailable => routes::unavailable(ticket.format),
                };
                edge.answer(ticket.request, reply, ticket.meta);
            }
        })?);
    }
    let _ = edge.replies_depth.set(reply_rx);

    let local_addr = listener.local_addr()?;
    let edge_for_hang_up = Arc::clone(edge);
    handles.push(spawn("hang-up", move || {
        let edge = edge_for_hang_up;
        let write_max = Duration::from_millis(limits::SEND_TIMEOUT_MS);
        // Asked here, not before serving: it takes a connection of its own, and a purge is
        // needed only a tenth of a second into a flood at the soonest.
        let quiet_bytes_max = if hang_up::kernel_counts_bytes_received() {
            Some(limits::PURGE_SPARES_RECEIVED_BYTES_MAX)
        } else {
            log::warn(
                "bytes_received_uncounted",
                &[(
                    "note",
                    &"the kernel does not say how much a client has sent (TCP_INFO); when fibd \
                      falls behind a flood of pipelined requests, it hangs up on new clients \
                      whose requests wait too",
                )],
            );
            None
        };
        hang_up::run(
            &edge.hang_ups,
            write_max,
            local_addr.port(),
            // A purge spares our own connections, and clients waiting for the reply to a
            // request already taken: hanging up on them would free nothing. (It also spares
            // those that have sent little: `quiet_bytes_max`.)
            |peer| edge.queue_lag.is_own(peer) || edge.connections.settled(Peer::of(peer)),
            quiet_bytes_max,
            || edge.is_stopping(),
            |count, purged| {
                edge.metrics
                    .connections_hung_up
                    .fetch_add(count as u64, Ordering::Relaxed);
                edge.metrics
                    .connections_purged
                    .fetch_add(purged as u64, Ordering::Relaxed);
            },
        );
    })?);

    let own_address = watchdog::probe_address(local_addr);
    edge.queue_lag.set_own_ip(own_address.ip());
    let edge_for_gauge = Arc::clone(edge);
    handles.push(spawn("queue-lag", move || {
        let edge = edge_for_gauge;
        // tiny_http times out the gauge's connection once it has sent nothing for an idle
        // timeout, which it does not while its marker waits: a marker is lost by then.
        queue_lag::run(
            own_address,
            &edge.queue_lag,
            edge.idle_timeout,
            || edge.is_stopping(),
            |reading| edge.on_queue_lag(reading),
        );
    })?);

    let edge_for_graveyard = Arc::clone(edge);
    handles.push(spawn("graveyard", move || {
        poll_buried(&edge_for_graveyard);
    })?);

    *edge.queues.lock().expect("queues lock") = Some(Queues {
        work: work_tx,
        steps: steps_tx,
    });
    let edge_for_acceptor = Arc::clone(edge);
    handles.push(spawn("acceptor", move || {
        accept(&edge_for_acceptor, listener, on_deaf);
        // Everything the accept loop had queued is routed: close the queues, so the workers
        // and the state owner end once they have answered what is in them.
        edge_for_acceptor.queues.lock().expect("queues lock").take();
    })?);
    Ok(Started {
        threads: handles,
        steps: steps_rx,
        replies: StepReplies { queue: reply_tx },
    })
}

/// Routes the requests that buried accept loops queued, every `BURIED_POLL_MS`, until
/// shutdown, and once more then. A connection of a retired loop that trickled its request for
/// longer than the loop's thread waited would otherwise have it queued where no one looks,
/// and when the connection ended, tiny_http would drop the request with a 500.
fn poll_buried(edge: &Edge) {
    let poll = Duration::from_millis(limits::BURIED_POLL_MS);
    loop {
        let stopping = edge.is_stopping();
        let mut requests = Vec::new();
        for server in edge.buried_loops.lock().expect("buried loops lock").iter() {
            while let Ok(Some(request)) = server.try_recv() {
                requests.push(request);
            }
        }
        for request in requests {
            dispatch(edge, request);
        }
        if stopping {
            return;
        }
        thread::sleep(poll);
    }
}

fn spawn(name: &str, body: impl FnOnce() + Send + 'static) -> io::Result<JoinHandle<()>> {
    thread::Builder::new().name(name.to_string()).spawn(body)
}

/// Runs tiny_http accept loops on `listener` until shutdown. A loop that fails (tiny_http ends
/// it on the first accept error, such as running out of file descriptors) is retired: its
/// connections keep being served by a thread of their own, and a new loop takes over.
fn accept(edge: &Arc<Edge>, listener: TcpListener, on_deaf: impl Fn(String)) {
    let mut retry = Duration::from_millis(limits::ACCEPT_RETRY_FIRST_MS);
    while !edge.is_stopping() {
        let server = match start_accept_loop(&listener) {
            Ok(server) => server,
            Err(err) => {
                log::warn("accept_restart_failed", &[("error", &err.message)]);
                if err.out_of_resources {
                    shed_backlog(edge, &listener);
                }
                thread::sleep(retry);
                retry = (retry * 2).min(Duration::from_millis(limits::ACCEPT_RETRY_MAX_MS));
                continue;
            }
        };
        let started = Instant::now();
        let Err(err) = serve(edge, &server, None) else {
            // Shutdown: `serve` routed what the loop had queued.
            let_go(listener, server);
            return;
        };
        if err.idled {
            // Not a failure to accept: no client was refused, so neither the log's failures
            // nor `fibd_accept_failures_total` (whose alert reads "descriptors or threads ran
            // out") count it. Its connections are served on, and a new loop takes over.
            log::warn(
                "accept_idled",
                &[
                    ("error", &err.message),
                    (
                        "note",
                        &"nothing connected for a whole idle timeout, not even fibd's own \
                          probes (a starved or stalled process); accept loop restarted",
                    ),
                ],
            );
        } else {
            log::warn("accept_failed", &[("error", &err.message)]);
            edge.metrics.accept_failures.fetch_add(1, Ordering::Relaxed);
        }
        if err.out_of_resources {
            shed_backlog(edge, &listener);
        }
        if edge.retired_loops.fetch_add(1, Ordering::AcqRel) >= limits::RETIRED_ACCEPT_LOOPS_MAX {
            on_deaf(format!(
                "{} accept loops failed and are still draining",
                limits::RETIRED_ACCEPT_LOOPS_MAX
            ));
            let_go(listener, server);
            return;
        }
        // The gauge's connection is one the retired loop serves, and would keep it busy for
        // ever, and its markers would wait for the graveyard's polls.
        edge.queue_lag.reconnect();
        let server = Arc::new(server);
        let (edge_for_retired, server_for_retired) = (Arc::clone(edge), Arc::clone(&server));
        let retired = move || {
            let idle = edge_for_retired.idle_timeout * limits::RETIRED_IDLE_TIMEOUTS;
            let _ = serve(&edge_for_retired, &server_for_retired, Some(idle));
            edge_for_retired.bury(server_for_retired);
            edge_for_retired
                .retired_loops
                .fetch_sub(1, Ordering::AcqRel);
        };
        if let Err(err) = spawn("acceptor-retired", retired) {
            // Threads have run out. What the loop has queued is routed now, and the loop is
            // buried at once: its connections' later requests wait for the graveyard's polls.
            // It no longer counts as draining, or enough of these would read as a server that
            // can never recover.
            log::warn("retired_accept_loop_failed", &[("error", &err)]);
            while let Ok(Some(request)) = server.try_recv() {
                dispatch(edge, request);
            }
            edge.bury(server);
            edge.retired_loops.fetch_sub(1, Ordering::AcqRel);
        }
        // A loop that failed quickly will likely fail again at once: back off. One that idled
        // out has not failed: a new loop starts at once.
        if !err.idled && started.elapsed() < Duration::from_millis(limits::ACCEPT_RETRY_MAX_MS) {
            thread::sleep(retry);
            retry = (retry * 2).min(Duration::from_millis(limits::ACCEPT_RETRY_MAX_MS));
        } else {
            retry = Duration::from_millis(limits::ACCEPT_RETRY_FIRST_MS);
        }
    }
}

/// Ends the acceptor's hold on the listening socket and on its last accept loop, without
/// waiting. tiny_http's `Server`, as it is dropped, connects to its own address to wake its
/// accept thread; with the listen queue full and that thread dead or stalled, the connect
/// waits through SYN retries, for minutes, and the acceptor must go on to close the queues.
/// So the server is dropped on a thread of its own, which nothing waits for (if no thread can
/// be spawned, it is dropped here). Our copy of the listening socket is closed first: if the
/// accept thread has died, no one else holds the socket, and the connect is refused at once.
fn let_go(listener: TcpListener, server: Server) {
    drop(listener);
    let _ = spawn("acceptor-end", move || drop(server));
}

/// Why an accept loop ended, other than for shutdown, or could not start.
struct LoopFailed {
    message: String,
    /// Descriptors or threads ran out. The backlog is then shed, since no connection in it
    /// could be served.
    out_of_resources: bool,
    /// `accept` timed out: the listening socket's receive timeout, which accepted sockets
    /// inherit as their idle timeout, also bounds an idle `accept`, and nothing connected for
    /// that long, not even the watchdog's probes, which come several times per timeout. The
    /// process was starved of CPU or stopped; nothing ran out.
    idled: bool,
}

impl LoopFailed {
    /// A loop that failed to accept, as opposed to one that idled.
    fn failed(message: String, out_of_resources: bool) -> LoopFailed {
        LoopFailed {
            message,
            out_of_resources,
            idled: false,
        }
    }
}

/// Starts a tiny_http server (its accept loop) on a copy of `listener`. When no thread can
/// be spawned for it, tiny_http panics on this thread; that is caught and returned as an
/// error like any other, so running out of threads is survived as running out of
/// descriptors is. Nothing is left half-made: the spawn is the last thing tiny_http does, and
/// unwinding drops the socket copy and the queue it had made.
fn start_accept_loop(listener: &TcpListener) -> Result<Server, LoopFailed> {
    let copy = listener.try_clone().map_err(|err| {
        LoopFailed::failed(
            format!("cannot copy the listening socket: {err}"),
            out_of_descriptors(&err),
        )
    })?;
    STARTING_ACCEPT_LOOP.set(true);
    let started = panic::catch_unwind(AssertUnwindSafe(|| Server::from_listener(copy, None)));
    STARTING_ACCEPT_LOOP.set(false);
    match started {
        Ok(Ok(server)) => Ok(server),
        Ok(Err(err)) => Err(LoopFailed::failed(
            err.to_string(),
            out_of_resources(&format!("{err:?}")),
        )),
        Err(payload) => {
            let message = payload
                .downcast_ref::<String>()
                .map(String::as_str)
                .or_else(|| payload.downcast_ref::<&str>().copied())
                .unwrap_or("(no message)");
            Err(LoopFailed::failed(
                format!("tiny_http could not start: {message}"),
                out_of_resources(message),
            ))
        }
    }
}

/// Routes the requests of one accept loop until shutdown (`Ok`), until tiny_http reports that
/// the loop has failed (`Err`), or, for a retired loop, until it has been idle for `idle_max`.
fn serve(edge: &Edge, server: &Server, idle_max: Option<Duration>) -> Result<(), LoopFailed> {
    let poll = Duration::from_millis(limits::ACCEPT_POLL_MS);
    let mut last_request = Instant::now();
    loop {
        if edge.is_stopping() {
            // Requests tiny_http already queued are answered; new connections are no longer
            // accepted once `server` is dropped by our caller.
            while let Ok(Some(request)) = server.try_recv() {
                dispatch(edge, request);
            }
            return Ok(());
        }
        if idle_max.is_none() {
            const OUT_OF_RESOURCES: u8 = AcceptPanic::OutOfResources as u8;
            match ACCEPT_THREAD_PANICKED.swap(0, Ordering::AcqRel) {
                0 => {}
                OUT_OF_RESOURCES => {
                    return Err(LoopFailed::failed(
                        "tiny_http's accept thread panicked: file descriptors or threads ran \
                         out"
                        .to_string(),
                        true,
                    ));
                }
                _ => {
                    return Err(LoopFailed::failed(
                        "tiny_http's accept thread panicked".to_string(),
                        false,
                    ));
                }
            }
        }
        // With tiny_http's queue empty, yield once before sleeping on it. On a busy core the
        // connection threads are then often runnable, about to queue a request each; letting
        // them run first spares the acceptor a sleep and a wake-up per request (context
        // switches per read fell from 2.2 to 1.6, peak reads rose by about a sixth). With
        // nothing else runnable the yield returns at once.
        let received = match server.try_recv() {
            Ok(None) => {
                thread::yield_now();
                server.recv_timeout(poll)
            }
            received => received,
        };
        match received {
            Ok(Some(request)) => {
                last_request = Instant::now();
                dispatch(edge, request);
            }
            Ok(None) => {
                if idle_max.is_some_and(|idle| last_request.elapsed() >= idle) {
                    return Ok(());
                }
            }
            // A retired loop reported its failure already; nothing more can come.
            Err(err) if idle_max.is_none() => {
                return Err(LoopFailed {
                    message: err.to_string(),
                    // ENFILE or EMFILE: the system's or the process's descriptors ran out.
                    out_of_resources: out_of_descriptors(&err),
                    idled: matches!(
                        err.kind(),
                        io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                    ),
                });
            }
            Err(_) => {}
        }
    }
}

/// Accepts and closes connections waiting in the backlog while descriptors or threads are
/// exhausted, so those clients get a prompt reset rather than a hang, and counts them. No
/// accept loop runs at this moment (the failed one has ended and the next is not yet
/// started), so switching the shared socket to non-blocking mode briefly cannot disturb one.
fn shed_backlog(edge: &Edge, listener: &TcpListener) {
    if listener.set_nonblocking(true).is_err() {
        return;
    }
    let mut shed = 0u64;
    while shed < limits::SHED_CONNECTIONS_MAX {
        match listener.accept() {
            Ok((stream, _)) => {
                drop(stream);
                shed += 1;
            }
            Err(_) => break,
        }
    }
    let _ = listener.set_nonblocking(false);
    if shed > 0 {
        log::warn("connections_shed", &[("count", &shed)]);
        edge.metrics
            .connections_shed
            .fetch_add(shed, Ordering::Relaxed);
    }
}

/// ENFILE or EMFILE: the system's or the process's descriptors ran out.
fn out_of_descriptors(err: &io::Error) -> bool {
    matches!(err.raw_os_error(), Some(23 | 24))
}

/// Routes one request: steps go to the state owner, everything else to the workers, unless
/// its connection has a request in flight already: then it waits for that one's reply. When a
/// queue is full the request is answered 503 at once.
fn dispatch(edge: &Edge, request: Request) {
    let arrived = Instant::now();
    let addr = request.remote_addr().copied();
    if addr.is_some_and(|addr| edge.queue_lag.is_marker(addr)) {
        edge.take_marker(request, arrived);
        return;
    }
    let peer = addr.map(Peer::of);
    // One pass over the headers for everything routing needs.
    let mut accept = routes::Accept::default();
    let (mut transfer_encoded, mut header_bytes) = (false, 0);
    let (mut host_fields, mut host) = (0, None);
    let (mut connection, mut expects) = (None, false);
    let (mut content_length, mut length_ambiguous) = (None, false);
    for header in request.headers() {
        header_bytes += header.field.as_str().as_str().len() + header.value.as_str().len();
        if header.field.equiv("Accept") {
            // Every Accept field counts, as one list (RFC 9110, 5.3).
            accept.add(header.value.as_str());
        } else if header.field.equiv("Transfer-Encoding") {
            transfer_encoded = true;
        } else if header.field.equiv("Host") {
            host_fields += 1;
            host.get_or_insert(header.value.as_str());
        } else if header.field.equiv("Connection") && connection.is_none() {
            connection = Some(header.value.as_str()); // the first one, as tiny_http reads it
        } else if header.field.equiv("Expect") {
            expects = true;
        } else if header.field.equiv("Content-Length") {
            length_ambiguous |=
                routes::content_length_conflicts(&mut content_length, header.value.as_str());
        }
    }
    let version = (request.http_version().0, request.http_version().1);
    let body_length = request.body_length();
    // tiny_http takes any Transfer-Encoding as chunked (ignoring a Content-Length beside it),
    // leaves that body on the socket and then parses it as the next request, as it does with
    // the body of a request whose Content-Length it cannot read. It also reads on after an
    // `HTTP/0.9` request line, a version fibd does not speak (`routes::check_head`), so where
    // that request ends is unknown as well.
    let framing_lost = transfer_encoded || length_ambiguous || !routes::version_served(version);
    let persists = http_response::connection_persists(version, connection) && !framing_lost;
    let upgrade = connection.is_some_and(|value| routes::contains_ignore_case(value, "upgrade"));
    let body_unread = body_left_unread(body_length, expects, upgrade);
    let format = accept.format();
    let has_body = transfer_encoded || body_length.is_some_and(|len| len > 0);
    let head = routes::Head {
        version,
        target_bytes: request.url().len(),
        header_bytes,
        header_fields: request.headers().len(),
        host: routes::HostField::judge(version, host_fields, host),
        length_ambiguous,
    };
    let route = routes::check_head(&head, format)
        .and_then(|()| routes::route(request.method().as_str(), request.url(), has_body, format));
    let mut meta = Meta {
        peer_digest: peer.map_or(0, |peer| peer.digest()),
        route: match &route {
            Ok(route) => RouteLabel::of_route(route),
            Err(_) => RouteLabel::of_target(request.url()),
        },
        arrived,
        step: false,
        persists,
        body_unread,
        framing_lost,
        // By the target alone: a probe that timed out is no longer noted as the watchdog's
        // when the acceptor reaches it, late. A client that sends this very target only hides
        // its own health checks.
        own_probe: request.url() == watchdog::PROBE_TARGET,
    };
    let routed = match route {
        Ok(Route::Step(step)) => {
            meta.step = true;
            let ticket = Ticket {
                request,
                format,
                meta,
            };
            Routed::Step(StepRequest { step, ticket })
        }
        Ok(route) => Routed::Work(Job::Answer(request, route, format, meta)),
        Err(reply) => Routed::Work(Job::Reject(request, Box::new(reply), meta)),
    };
    let routed = match peer {
        None => routed,
        Some(peer) => match edge.connections.admit(peer, routed, arrived) {
            Admit::Go(routed) => routed,
            Admit::Parked => {
                edge.queue_lag.count_pipelined();
                return;
            }
            Admit::Drop(dropped, abandoned) => {
                edge.queue_lag.count_pipelined();
                edge.drop_unanswered(peer.addr(), dropped, abandoned);
                return;
            }
            Admit::DropAndHangUp(routed) => {
                edge.queue_lag.count_pipelined();
                edge.hang_ups.request(peer.addr());
                edge.drop_unanswered(peer.addr(), vec![routed], None);
                return;
            }
            Admit::Refuse(routed) => {
                let (request, format, mut meta) = routed.into_parts();
                meta.step = false;
                meta.persists = false;
                let reply = routes::after_framing_lost(format);
                Routed::Work(Job::Reject(request, Box::new(reply), meta))
            }
        },
    };
    if let Some((request, reply, meta)) = edge.forward(routed) {
        edge.refuse_from_acceptor(request, reply, meta);
    }
}

/// A worker: answers every route except steps, until the work queue closes.
fn work(edge: &Edge, jobs: Receiver<Job>) {
    for job in jobs {
        match job {
            Job::Reject(request, reply, meta) => edge.answer(request, *reply, meta),
            Job::Answer(request, route, format, meta) => {
                let reply = match route {
                    Route::Current => routes::cursor(edge.published.index(), format),
                    Route::Fib(n) => routes::number(n, format),
                    Route::FibList(len) => routes::list(len, format),
                    Route::Health => routes::health(format),
                    Route::Ready => routes::ready(edge.readiness(), format),
                    Route::Index => routes::index(),
                    Route::Metrics => routes::metrics(edge.metrics.render(
                        edge.published.index(),
                        edge.readiness() == Readiness::Ready,
                        (env!("CARGO_PKG_VERSION"), env!("FIBD_REVISION")),
                        edge.own_sockets(),
                        edge.depths(),
                    )),
                    Route::Step(_) => unreachable!("the acceptor sends steps to the state owner"),
                };
                edge.answer(request, reply, meta);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cursor::Cursor;
    use tiny_http::{Header, TestRequest};

    /// An edge at cursor index 5 with `metrics`, whose work and step queues hold `capacity`
    /// each; the test holds their receivers.
    fn edge_with_queues(
        metrics: Metrics,
        capacity: usize,
    ) -> (Arc<Edge>, Receiver<Job>, Receiver<StepRequest<Ticket>>) {
        let published = Arc::new(Published::new(Cursor::at(5).expect("in range")));
        let on_fatal = Box::new(|why: String| panic!("fatal: {why}"));
        let edge = Edge::new(
            published,
            Arc::new(metrics),
            false,
            Duration::from_secs(15),
            on_fatal,
        );
        let (work, work_rx) = bounded(capacity);
        let (steps, steps_rx) = bounded(capacity);
        *edge.queues.lock().expect("queues lock") = Some(Queues { work, steps });
        (edge, work_rx, steps_rx)
    }

    /// An edge whose queues have no room (zero capacity, receivers held but never read), so
    /// every request the acceptor routes finds its queue full.
    fn edge_with_full_queues() -> (Arc<Edge>, Receiver<Job>, Receiver<StepRequest<Ticket>>) {
        edge_with_queues(Metrics::new(), 0)
    }

    fn get(path: &str, port: u16) -> Request {
        let host = Header::from_bytes("Host", "localhost").expect("valid header");
        TestRequest::new()
            .with_path(path)
            .with_header(host)
            .with_remote_addr(SocketAddr::from(([127, 0, 0, 1], port)))
            .into()
    }

    #[test]
    fn a_request_weighs_its_target_and_header_fields() {
        let pad = Header::from_bytes("X-Pad", "a".repeat(1000)).expect("valid header");
        let request: Request = TestRequest::new()
            .with_path("/fib/10")
            .with_header(Header::from_bytes("Host", "localhost").expect("valid header"))
            .with_header(pad)
            .into();
        // tiny_http's test requests carry a `Content-Length: 0` of their own.
        let overhead = HEADER_FIELD_OVERHEAD_BYTES;
        let fields = (4 + 9 + overhead) + (5 + 1000 + overhead) + (14 + 1 + overhead);
        assert_eq!(head_bytes(&request), 7 + fields);
        // Many empty fields weigh what they hold, not the few bytes of their names.
        let mut many = TestRequest::new().with_path("/");
        for _ in 0..10_000 {
            many = many.with_header(Header::from_bytes("a", "").expect("valid header"));
        }
        let many: Request = many.into();
        assert!(head_bytes(&many) >= 10_000 * 48, "{}", head_bytes(&many));
    }

    #[test]
    fn a_step_sent_while_a_commit_has_run_a_second_is_refused_and_never_queued() {
        let stalled = Duration::from_millis(limits::COMMIT_STALLED_MS);
        let epoch = Instant::now()
            .checked_sub(2 * stalled)
            .expect("the clock is past it");
        let (edge, work_rx, steps_rx) = edge_with_queues(Metrics::with_epoch(epoch), 4);
        // Just begun, so that a test thread held up on a busy machine cannot make it a stall;
        // `readiness_turns_false_for_a_failed_or_stalled_disk_...` has the edge.
        edge.metrics.commit_began_ago(Duration::ZERO);
        dispatch(&edge, get("/next", 40_101));
        assert!(
            steps_rx.try_recv().is_ok(),
            "a commit under a second old does not refuse steps"
        );
        edge.metrics.commit_began_ago(stalled);
        dispatch(&edge, get("/next", 40_102));
        assert!(
            steps_rx.try_recv().is_err(),
            "the step was queued behind the stall"
        );
        // The refusal is written by a worker, so that a client that does not read it cannot
        // hold up the acceptor.
        match work_rx.try_recv() {
            Ok(Job::Reject(request, reply, meta)) => {
                assert!(reply.body.contains("a stalled disk"), "{}", reply.body);
                edge.answer(request, *reply, meta);
            }
            _ => panic!("the refusal was not queued for a worker"),
        }
        assert!(counted(&edge, "/next", 503));
        assert_eq!(edge.metrics.requests_shed.load(Ordering::Relaxed), 0);
        dispatch(&edge, get("/current", 40_103));
        assert!(work_rx.try_recv().is_ok(), "reads are still served");
    }

    #[test]
    fn depths_count_what_waits_in_the_queues_and_the_table() {
        let (edge, _work_rx, _steps_rx) = edge_with_queues(Metrics::new(), 8);
        let (replies, replies_rx) = bounded::<(Ticket, Outcome)>(8);
        let _ = edge.replies_depth.set(replies_rx);
        dispatch(&edge, get("/current", 40_201));
        dispatch(&edge, get("/fib/3", 40_202));
        dispatch(&edge, get("/next", 40_203));
        // A second request on a connection with one in flight is parked, not queued.
        dispatch(&edge, get("/current", 40_201));
        let depths = edge.depths();
        assert_eq!(
            (
                depths.work,
                depths.steps,
                depths.replies,
                depths.requests_waiting,
                depths.connections_tracked,
            ),
            (2, 1, 0, 1, 3)
        );
        drop(replies);
    }

    fn counted(edge: &Edge, route: &str, code: u16) -> bool {
        let text = edge.metrics.render(
            edge.durable_index(),
            true,
            ("test", "test"),
            2,
            edge.depths(),
        );
        text.contains(&format!(
            "fibd_requests_total{{route=\"{route}\",code=\"{code}\"}} "
        ))
    }

    #[test]
    fn the_watchdog_s_own_probe_is_answered_but_left_out_of_the_request_metrics() {
        let (edge, jobs_rx, _steps_rx) = edge_with_queues(Metrics::new(), 4);
        // The probe, then the plain target from a client.
        dispatch(&edge, get(watchdog::PROBE_TARGET, 40_201));
        dispatch(&edge, get("/healthz", 40_202));
        *edge.queues.lock().expect("queues lock") = None;
        work(&edge, jobs_rx);
        let text = edge.metrics.render(
            edge.durable_index(),
            true,
            ("test", "test"),
            2,
            edge.depths(),
        );
        assert!(
            text.contains("fibd_requests_total{route=\"/healthz\",code=\"200\"} 1\n"),
            "{text}"
        );
        assert!(
            text.contains("fibd_request_duration_seconds_count{kind=\"read\"} 1\n"),
            "{text}"
        );
    }

    #[test]
    fn a_request_that_finds_its_queue_full_is_answered_503_and_counted_as_shed() {
        let (edge, work_rx, steps_rx) = edge_with_full_queues();
        dispatch(&edge, get("/current", 40_000));
        dispatch(&edge, get("/next", 40_002));
        assert_eq!(edge.metrics.requests_shed.load(Ordering::Relaxed), 2);
        assert!(counted(&edge, "/current", 503), "the read's 503 is counted");
        assert!(counted(&edge, "/next", 503), "the step's 503 is counted");
        assert!(work_rx.is_empty() && steps_rx.is_empty());
        assert_eq!(
            edge.durable_index(),
            5,
            "a shed step never moves the cursor"
        );

        // The shed request was answered, so its connection has nothing in flight: the next
        // request on it is routed (and shed again), not parked behind a reply that never comes.
        dispatch(&edge, get("/current", 40_000));
        assert_eq!(edge.metrics.requests_shed.load(Ordering::Relaxed), 3);
    }

    #[test]
    fn liveness_is_answered_even_when_the_work_queue_is_full() {
        let (edge, work_rx, _steps_rx) = edge_with_full_queues();
        dispatch(&edge, get("/healthz", 40_000));
        assert!(counted(&edge, "/healthz", 200), "alive, if busy");
        assert_eq!(edge.metrics.requests_shed.load(Ordering::Relaxed), 0);
        assert!(work_rx.is_empty());
        // Readiness is not liveness: a server that sheds load is not ready for more.
        dispatch(&edge, get("/readyz", 40_002));
        assert!(counted(&edge, "/readyz", 503));
    }

    #[test]
    fn a_request_routed_after_shutdown_closed_the_queues_is_answered_503_not_shed() {
        let (edge, _work_rx, _steps_rx) = edge_with_full_queues();
        edge.queues.lock().expect("queues lock").take();
        dispatch(&edge, get("/fib/10", 40_004));
        assert_eq!(edge.metrics.requests_shed.load(Ordering::Relaxed), 0);
        assert!(counted(&edge, "/fib/{n}", 503));
    }

    #[test]
    fn readiness_turns_false_for_a_failed_or_stalled_disk_and_during_shutdown() {
        let stalled = Duration::from_millis(limits::COMMIT_STALLED_MS);
        let just_under = stalled - Duration::from_millis(1);
        for (healthy, stopping, in_flight, expected) in [
            (true, false, None, Readiness::Ready),
            // An ordinary commit, even a slow one, is no stall.
            (true, false, Some(Duration::ZERO), Readiness::Ready),
            (true, false, Some(just_under), Readiness::Ready),
            (true, false, Some(stalled), Readiness::DiskStalled),
            (true, false, Some(stalled * 60), Readiness::DiskStalled),
            (true, true, None, Readiness::Stopping),
            (true, true, Some(stalled), Readiness::Stopping),
            (false, false, None, Readiness::StorageFailed),
            (false, true, Some(stalled), Readiness::StorageFailed),
        ] {
            assert_eq!(
                readiness_of(healthy, stopping, in_flight),
                expected,
                "healthy {healthy}, stopping {stopping}, commit in flight {in_flight:?}"
            );
        }
    }

    #[test]
    fn accept_thread_panics_are_told_from_their_aftermath() {
        const STD_SPAWN: &str = "/rustc/x/library/std/src/thread/functions.rs";
        const POOL: &str = "/x/tiny_http-0.12.0/src/util/task_pool.rs";
        const STREAM: &str = "/x/tiny_http-0.12.0/src/util/refined_tcp_stream.rs";
        let spawn_failed = "failed to spawn thread: Os { code: 11, kind: WouldBlock, \
                            message: \"Resource temporarily unavailable\" }";
        let clone_failed = "called `Result::unwrap()` on an `Err` value: Os { code: 24, \
                            kind: Uncategorized, message: \"No file descriptors available\" }";
        let poisoned = "called `Result::unwrap()` on an `Err` value: PoisonError { .. }";
        for (file, message, expected) in [
            (STD_SPAWN, spawn_failed, Some(AcceptPanic::OutOfResources)),
            (STREAM, clone_failed, Some(AcceptPanic::OutOfResources)),
            (STREAM, "some other failure", Some(AcceptPanic::Other)),
            // A connection thread of a pool whose accept thread died holding its lock.
            (POOL, poisoned, None),
            // A connection thread's own panic, in request parsing, say.
            ("/x/tiny_http-0.12.0/src/request.rs", "oops", None),
        ] {
            assert_eq!(
                accept_thread_panic(file, message),
                expected,
                "{file}: {message}"
            );
        }
    }

    #[test]
    fn each_second_gets_its_own_date() {
        let (a, b) = (1_000_000_000, 1_000_000_001);
        assert_eq!(date_for(a), http_response::http_date(a));
        assert_eq!(date_for(a), http_response::http_date(a));
        assert_eq!(date_for(b), http_response::http_date(b));
        assert_ne!(date_for(a), date_for(b));
    }

    #[test]
    fn a_thread_keeps_its_reply_buffer_unless_a_reply_outgrew_it() {
        let framing = Framing {
            version: (1, 1),
            head_only: false,
            persists: true,
        };
        let large = routes::metrics("x".repeat(limits::REPLY_BUFFER_KEPT_BYTES_MAX));
        let written = with_rendered(&large, framing, <[u8]>::len);
        assert!(written > limits::REPLY_BUFFER_KEPT_BYTES_MAX);
        assert_eq!(REPLY_BUFFER.with_borrow(Vec::capacity), 0, "given back");
        let small = routes::number(10, Format::Text);
        let written = with_rendered(&small, framing, |bytes| bytes.to_vec());
        assert!(written.ends_with(b"\r\n\r\n55\n"));
        assert!(
            REPLY_BUFFER.with_borrow(Vec::capacity) >= written.len(),
            "kept"
        );
    }

    /// A request for `route`, routed as the acceptor routes it, on a connection that persists.
    fn routed(path: &str, route: Route, port: u16) -> Routed {
        let meta = Meta {
            peer_digest: Peer::of(SocketAddr::from(([127, 0, 0, 1], port))).digest(),
            route: RouteLabel::of_target(path),
            arrived: Instant::now(),
            step: false,
            persists: true,
            body_unread: false,
            framing_lost: false,
            own_probe: false,
        };
        Routed::Work(Job::Answer(get(path, port), route, Format::Text, meta))
    }

    #[test]
    fn refusals_for_a_full_or_closed_queue_are_never_cached_and_shutdown_says_close() {
        let (edge, _work_rx, _steps_rx) = edge_with_full_queues();
        let (_, reply, meta) = edge
            .forward(routed("/current", Route::Current, 40_006))
            .expect("refused");
        assert_eq!((reply.status, reply.no_store), (503, true));
        assert!(meta.persists, "an overloaded server keeps the connection");

        edge.queues.lock().expect("queues lock").take();
        let (_, reply, meta) = edge
            .forward(routed("/current", Route::Current, 40_008))
            .expect("refused");
        assert_eq!((reply.status, reply.no_store), (503, true));
        assert!(reply.body.contains("shutting down"), "{}", reply.body);
        assert!(!meta.persists, "the reply says Connection: close");
    }
}
