//! Every bound the server enforces, in one place, each with the reason for its value.
//! Units are the last word of each name.

/// Default worker threads. Responses are small and CPU-bound, yet on one core under 100
/// keep-alive connections 16 workers served 8-14% more reads per second than 4 (less kernel
/// time per read) with no worse latency, and 32 or 64 no more (docs/BENCHMARKS.md, "How much
/// of the peak-read gap is fibd's"). Idle workers cost a parked thread each.
pub const WORKERS_DEFAULT: usize = 16;
/// Upper bound on `--workers`: each worker is a thread with its own stack.
pub const WORKERS_MAX: usize = 256;

/// Requests waiting for a worker. Past this the acceptor answers 503 at once instead of
/// letting latency and memory grow without bound.
pub const WORK_QUEUE_MAX: usize = 4096;
/// Steps waiting for the state owner; the same reasoning as the work queue.
pub const STEP_QUEUE_MAX: usize = 4096;
/// Finished steps waiting to be written back to their clients. When full, the state owner
/// waits, the step queue fills, and new steps get 503: back-pressure instead of growth.
pub const REPLY_QUEUE_MAX: usize = 4096;
/// Bytes of reply buffer each answering thread keeps between replies. Every reply fibd spells
/// today fits (the largest, `/metrics`, is about 7 KB, and a list of all 187 numbers about
/// 4 KB); a larger one would give its buffer back afterwards, so that no reply, however
/// large, leaves every thread holding its size.
pub const REPLY_BUFFER_KEPT_BYTES_MAX: usize = 16 * 1024;
/// Threads that write step replies, taking them from one queue. A client that does not read
/// holds up the one writing to it for a send timeout at most; as many as the default worker
/// count makes steps as hard to stall that way as reads. (2, 4, 8 and 16 served as many
/// durable steps a second, within the noise.)
pub const STEP_RESPONDERS: usize = WORKERS_DEFAULT;

/// Default and largest number of steps that share one fdatasync. One fsync costs about as much
/// as thousands of in-memory steps, so a large batch is nearly free; `--batch-max 1` turns
/// group commit off for comparison.
pub const BATCH_OPS_DEFAULT: usize = 1024;
pub const BATCH_OPS_MAX: usize = STEP_QUEUE_MAX;

/// Default for `--idle-timeout-ms`: a connection with no bytes from the client for this long is
/// closed (SO_RCVTIMEO), so idle keep-alive and stalled clients cannot hold a thread and a file
/// descriptor forever. Long enough for keep-alive to pay off, short enough to recycle quickly.
pub const IDLE_TIMEOUT_MS_DEFAULT: u64 = 15_000;
/// Range of `--idle-timeout-ms`: below 100 ms ordinary clients would be cut off between
/// requests; above an hour an idle client is indistinguishable from a leak.
pub const IDLE_TIMEOUT_MS_MIN: u64 = 100;
pub const IDLE_TIMEOUT_MS_MAX: u64 = 3_600_000;
/// A write to a client that stops reading its replies fails after this long without progress
/// (SO_SNDTIMEO, per write call), and until shutdown begins, a reply still being written this
/// long after its write began is hung up on (`hang_up.rs`), freeing the writing thread and
/// abandoning the connection (during shutdown, the grace period bounds it). A reply fits the
/// socket's send buffer unless the client left earlier ones unread, so no client that reads is
/// cut off. It is short so a stuck client cannot hold up shutdown for long either.
pub const SEND_TIMEOUT_MS: u64 = 1_500;

/// Requests one connection may pipeline behind the one it has in flight. Clients that pipeline
/// send a handful, benchmarks a few dozen; a connection that sends more than this without
/// reading its replies is abandoned rather than held in memory.
pub const PIPELINED_PER_CONNECTION_MAX: usize = 128;
/// Pipelined requests waiting across all connections, however many connections pipeline at
/// once; `PIPELINED_HEAD_BYTES_MAX` bounds what they hold.
pub const PIPELINED_TOTAL_MAX: usize = 8_192;
/// Bytes of the heads (target and header fields) of those waiting requests together. A
/// waiting request holds its whole head in tiny_http's strings, one past the head limits too
/// (it waits for its refusal): 8,192 at the limits alone (about 24 KiB) would hold hundreds of
/// MiB. A pipelined request of a dozen fields weighs about 1.5 KiB (its fields, and tiny_http's
/// overhead for each, `http_edge::HEADER_FIELD_OVERHEAD_BYTES`), so for such requests this
/// binds before the count, at about 5,500 waiting; both are far above what clients pipeline.
pub const PIPELINED_HEAD_BYTES_MAX: usize = 8 * 1024 * 1024;
/// An abandoned connection is remembered (so its further requests are dropped or refused at
/// once, never served) until none arrived for this many idle timeouts: by then the idle
/// timeout has closed it, unless the client ignored the `Connection: close` it was sent.
pub const ABANDONED_IDLE_TIMEOUTS: u32 = 2;
/// ... and for this many idle timeouts at most (two minutes by default), however busy it
/// stays: a client that keeps its port for new connections is then served again, and only a
/// client that ignored `Connection: close` could still be on the connection it was sent on.
pub const ABANDONED_WATCH_IDLE_TIMEOUTS_MAX: u32 = 8;
/// Abandoned connections remembered at once, 1/16 of it in each shard of the table: at 120
/// bytes an entry, the shards' hash tables peak near 16 MiB under a flood (tens of thousands
/// a second, each remembered for up to four idle timeouts: `ABANDONED_IDLE_TIMEOUTS` without
/// news, and as long again until the next sweep); past it, the quietest are forgotten early.
pub const ABANDONED_REMEMBERED_MAX: usize = 65_536;

/// Connections waiting to be hung up on (`hang_up.rs`): as many as the connection table
/// remembers abandoned connections, so that none it still watches is left out.
pub const HANG_UPS_WANTED_MAX: usize = ABANDONED_REMEMBERED_MAX;
/// How often the hang-up thread looks for replies that have taken `SEND_TIMEOUT_MS` to write;
/// it also bounds how late shutdown reaches it.
pub const HANG_UP_POLL_MS: u64 = 50;
/// The hang-up thread rests this many times as long as its last scan took: a scan reads every
/// descriptor, two per open connection (16 ms of CPU with 3,000 connections open, measured),
/// and a stream of abandoned connections must not keep it busy for more than a fifth of the core.
pub const HANG_UP_REST_PER_SCAN: u32 = 4;

/// How often the queue-lag gauge writes a marker (`queue_lag.rs`): how soon a lag is seen. Fifty
/// markers a second are a few thousandths of what the acceptor takes.
pub const QUEUE_LAG_MARKER_INTERVAL_MS: u64 = 20;
/// The gauge's marker is late once it has waited this long in tiny_http's queue (tiny_http
/// times the gauge's connection out after an idle timeout, so a `--idle-timeout-ms` under
/// about three times this never sees a marker late): clients that
/// wait for their replies, even thousands of new connections at once, are served sooner.
/// Seeing it soon matters: a flood grows the queue by hundreds of MiB a second.
pub const QUEUE_LAG_MAX_MS: u64 = 100;
/// ... if the acceptors took at least this many pipelined requests meanwhile
/// (`queue_lag::Judge`); a starved acceptor under a flood takes about 5,000 in 0.1 s. Fewer
/// mean a process short of the core, or a burst of ordinary clients, not a flood.
pub const QUEUE_LAG_PIPELINED_MIN: u64 = 1_000;
/// Late looks in a row (one per marker interval) that make the acceptor far behind, when the
/// edge hangs up on every connection but its own, those with only a request in flight and those
/// that sent little (`PURGE_SPARES_RECEIVED_BYTES_MAX`): a flood is seen about 0.12 s after it
/// begins.
pub const QUEUE_LAG_LATE_LOOKS_MIN: u32 = 2;
/// A purge spares a connection whose client has sent at most this many bytes since it
/// connected (`hang_up.rs`): room for one request from curl or a script with a few header
/// fields (curl's is about 90 bytes), so an ordinary client whose request still waits in
/// tiny_http's queue is answered when the acceptor reaches it, however long fibd stays behind.
/// Such a connection can have queued a few dozen requests at most (34 of the smallest tiny_http
/// parses, 15 bytes), too few to be what filled the queue; a flooder passes it in its first
/// burst.
pub const PURGE_SPARES_RECEIVED_BYTES_MAX: u64 = 512;
/// How long the hang-up thread waits, once, for the kernel to count four bytes sent over
/// loopback (`hang_up::kernel_counts_bytes_received`): it takes microseconds, and a second
/// allows for a start-up short of the core.
pub const BYTES_RECEIVED_CHECK_WAIT_MS: u64 = 1_000;
/// The gauge's connect timeout, and its wait before connecting again after a failed connect or
/// a connection that ended before any of its markers was taken.
pub const QUEUE_LAG_RECONNECT_MS: u64 = 1_000;

/// Connections kept open forever because a request on them announced a body that tiny_http
/// would otherwise read through on our threads (see `http_edge::body_left_unread`); each holds
/// a thread and two descriptors, so past this many the process exits and its supervisor starts
/// a clean one.
pub const KEPT_CONNECTIONS_MAX: usize = 128;

/// Connections the kernel holds, handshake done, until fibd accepts them. A burst larger than
/// this has its surplus SYNs dropped and retried a second later; std's default of 128 is less
/// than the 300 connections the seed load test opens at once, or than the pool of a load
/// balancer reconnecting after a restart. fibd accepts several thousand connections a second,
/// so this is well under a second of waiting; the kernel caps it at `net.core.somaxconn`.
pub const LISTEN_BACKLOG: u32 = 1024;
/// Each connection's receive buffer (SO_RCVBUF; the kernel doubles it for its bookkeeping).
/// Requests are small (a head past 24 KiB is refused anyway) and a client waiting for its
/// replies sends a few at a time, so this never holds up an ordinary client; it bounds what
/// a client that pipelines without reading has buffered when it is hung up on, which
/// tiny_http still parses: under a thousand small requests, where the kernel's own tuning
/// lets the buffer grow to `tcp_rmem`'s maximum (32 MiB on the test host).
pub const RECEIVE_BUFFER_BYTES: u32 = 16 * 1024;

/// How often the acceptor checks whether it should stop; this bounds how late shutdown begins.
pub const ACCEPT_POLL_MS: u64 = 50;
/// Back-off between restarts of a failed accept loop, doubling from the first value up to
/// the second, so running out of file descriptors does not turn into a busy loop.
pub const ACCEPT_RETRY_FIRST_MS: u64 = 10;
pub const ACCEPT_RETRY_MAX_MS: u64 = 1_000;
/// Connections accepted and closed at once when file descriptors or threads run out, so the backlog
/// drains with a clear refusal instead of hanging; bounded so shedding cannot starve serving.
pub const SHED_CONNECTIONS_MAX: u64 = 1024;
/// Accept loops that failed but may still have live connections. Each keeps one thread until
/// its connections have gone idle; past this many, something is badly wrong and we exit so the
/// supervisor starts a clean process.
pub const RETIRED_ACCEPT_LOOPS_MAX: usize = 64;
/// A retired accept loop whose connections sent nothing for this many idle timeouts has most
/// likely none left alive (an idle one would have timed out), so its thread can end. One that
/// trickles its request a byte at a time outlives any such period, so the loop is then
/// buried: polled, rarely, by one thread for all of them.
pub const RETIRED_IDLE_TIMEOUTS: u32 = 2;
/// Buried accept loops kept. Each is a few hundred bytes; loops retire only when descriptors
/// or threads run out, a few per such event. Past this many, the oldest is let go, and
/// tiny_http answers 500 to any request one of its connections still sends.
pub const BURIED_ACCEPT_LOOPS_MAX: usize = 1024;
/// How often the buried accept loops are polled: a request on one waits this long at most,
/// and arrives rarely, from a connection quiet for two idle timeouts.
pub const BURIED_POLL_MS: u64 = 100;

/// The watchdog probes our own listening socket this often, or every third of the idle
/// timeout if that is shorter: the probe also keeps `accept` from ever sitting idle for a whole
/// idle timeout, which SO_RCVTIMEO on the listening socket would turn into an error.
pub const PROBE_INTERVAL_MS: u64 = 1_000;
/// A probe that gets no HTTP answer within this long, connect included, has failed. With
/// `PROBE_INTERVAL_MS` it keeps the watchdog's rounds at most 6 s apart, inside the systemd
/// unit's `WatchdogSec=10s`, which each round feeds.
pub const PROBE_TIMEOUT_MS: u64 = 5_000;
/// The process declares itself deaf and exits non-zero, for its supervisor to restart it, when
/// over a window of this many idle timeouts plus one probe timeout (stretched to hold at least
/// the last `PROBE_FAILURES_DEAF_MIN` probes) at least that many probes failed, making up at
/// least `PROBE_FAILED_PERCENT_DEAF` percent of them. The window is long because running out of
/// descriptors heals itself once idle connections time out, and a burst of load must not be
/// mistaken for death; a share, not a streak, because a starved server still answers the odd
/// probe while refusing most clients.
pub const PROBE_FAILING_IDLE_TIMEOUTS: u32 = 2;
pub const PROBE_FAILURES_DEAF_MIN: u32 = 5;
pub const PROBE_FAILED_PERCENT_DEAF: usize = 80;

/// How often the nudger frees a connection that tiny_http's thread pool left queued
/// (`nudger.rs`) when nothing suggests one is: each nudge costs the idle server about 0.4 ms
/// of CPU, so this keeps it near 0.2% of a core.
pub const NUDGE_INTERVAL_MS: u64 = 200;
/// How often the nudger reads the thread and descriptor counts, which tell it that
/// connections arrived in a burst: a connection tiny_http left queued waits about this long for
/// its nudge (it waited up to `NUDGE_INTERVAL_MS` when the count was read once per round). A
/// reading, wake-up included, costs about 35 µs of CPU here, so this is under 0.2% of a core.
pub const NUDGE_POLL_INTERVAL_MS: u64 = 20;
/// A nudge that cannot connect within this long is skipped: the backlog is full, and the
/// watchdog, not the nudger, judges that.
pub const NUDGE_CONNECT_TIMEOUT_MS: u64 = 100;
/// Most nudges in one round. A round nudges once more per thread gained, so a flood of new
/// connections costs at most twice what it would without the nudger; this caps even that at
/// 400 nudges a second (8 per reading of the thread count), which still frees a queued burst
/// of hundreds within a second.
pub const NUDGES_PER_ROUND_MAX: usize = 8;
/// Most nudges in one round for connections estimated to be queued (`nudger.rs`). The estimate
/// counts only connections without a thread, so each nudge frees one, and a round can free a
/// burst of dozens at once; the cap bounds what a wrong estimate could cost.
pub const QUEUED_NUDGES_PER_ROUND_MAX: usize = 64;
/// Threads tiny_http 0.12's pool starts with and keeps however idle (its `MIN_THREADS`); each
/// can serve a connection, so the nudger counts them when it estimates queued connections.
pub const TINY_HTTP_POOL_MIN_THREADS: usize = 4;

/// Names tried for the private temporary file a new state file is built in. Each name is
/// fresh (process id and clock), so a clash means another process is creating the file at the
/// same moment; a few tries get past that, and more would only hide a directory gone wrong.
pub const TEMP_NAME_ATTEMPTS_MAX: u32 = 8;

/// After SIGTERM, the process exits by this time even if some client is slow to take its
/// last reply; every acknowledged step is already durable, so nothing is lost by leaving.
pub const SHUTDOWN_GRACE_MS: u64 = 1_500;
/// A commit that has run this long means a stalled disk: `/readyz` answers 503 and new steps
/// are refused 503 until it returns, and a stop whose grace period ends with it still running
/// exits 1. Commits take well under 10 ms on a working disk (p99 0.5-1 ms in the benchmark),
/// so only a disk in trouble is caught, not one caught mid-commit by chance.
pub const COMMIT_STALLED_MS: u64 = 1_000;

/// Lines a second for each event that clients can cause at their own pace (an abandoned
/// connection, a panic of a tiny_http connection thread); the rest are counted, and the next
/// line written says how many were not. A flood must not fill the disk, nor spend journald's
/// rate limit (10,000 lines in 30 s by default, after which it drops lines) on itself, losing
/// the lines that matter.
pub const CLIENT_EVENT_LOG_LINES_PER_S_MAX: u32 = 10;

/// Characters of a request target written to the access log; a long URL is cut, so a hostile
/// client cannot make log lines, or our memory use for them, grow without bound.
pub const LOGGED_TARGET_CHARS_MAX: usize = 256;
/// Characters of a request method written to the access log, for the same reason: tiny_http
/// takes any token as a method, and the longest registered one has 17 characters.
pub const LOGGED_METHOD_CHARS_MAX: usize = 32;

/// Longest request target (path and query) served; longer ones get 414. Real targets here are
/// under 30 bytes, and a bounded echo in error messages needs a bounded input to be cheap.
pub const TARGET_BYTES_MAX: usize = 8 * 1024;
/// Most header bytes (names and values) and header fields in one request; more gets 431.
/// Browsers and proxies send a few KiB at most.
pub const HEADER_BYTES_MAX: usize = 16 * 1024;
pub const HEADER_FIELDS_MAX: usize = 100;
