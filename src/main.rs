//! The fibd binary: reads the configuration, opens the state, and wires the state owner, the
//! HTTP edge and the watchdog together; then waits for a signal or a fatal event.

use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::thread;
use std::time::{Duration, Instant};

use crossbeam_channel::{RecvTimeoutError, bounded};

use fibd::config::{self, Command, Config};
use fibd::http_edge::{self, Edge};
use fibd::limits;
use fibd::log;
use fibd::metrics::{Metrics, TINY_HTTP_PANICS};
use fibd::notify::Notifier;
use fibd::nudger;
use fibd::probe;
use fibd::state_file::StateFile;
use fibd::state_owner::{self, Published};
use fibd::watchdog;

/// Bounds the `tiny_http_panic` lines of tiny_http's connection threads, which clients can
/// cause at their own pace.
static CONNECTION_PANIC_LOG: log::Throttle =
    log::Throttle::new(limits::CLIENT_EVENT_LOG_LINES_PER_S_MAX);

/// Why the process is shutting down.
enum Event {
    Signal,
    /// Storage failed or the server went deaf: exit non-zero for the supervisor to restart us.
    Fatal(&'static str, String),
}

fn main() -> ExitCode {
    std::panic::set_hook(Box::new(|info| {
        let message = info.payload_as_str().unwrap_or("(no message)");
        let file = info.location().map_or("", |l| l.file());
        let thread = std::thread::current();
        let name = thread.name().unwrap_or("");
        match judge_panic(thread.name(), http_edge::starting_accept_loop()) {
            Panic::AcceptLoopStart => {
                TINY_HTTP_PANICS.fetch_add(1, Ordering::Relaxed);
                log::warn("tiny_http_panic", &[("thread", &name), ("message", &info)]);
            }
            Panic::Ours => {
                log::error("panic", &[("thread", &name), ("message", &info)]);
                std::process::abort();
            }
            Panic::TinyHttp => {
                TINY_HTTP_PANICS.fetch_add(1, Ordering::Relaxed);
                let accept = http_edge::tiny_http_panicked(file, message);
                let fields: [(&str, &dyn std::fmt::Display); 2] =
                    [("accept_thread", &accept), ("message", &info)];
                // A connection thread's panic is a client's doing (one that resets its
                // connection before tiny_http reads its address panics one), so it is logged
                // at a bounded rate; an accept thread's is rare, and each one matters.
                if accept {
                    log::warn("tiny_http_panic", &fields);
                } else {
                    CONNECTION_PANIC_LOG.event(log::Level::Warn, "tiny_http_panic", &fields);
                }
            }
        }
    }));
    let args = std::env::args().skip(1);
    match config::parse(args, |key| std::env::var(key).ok()) {
        Ok(Command::Help) => {
            print!("{}", config::USAGE);
            ExitCode::SUCCESS
        }
        Ok(Command::Version) => {
            println!(
                "fibd {} ({})",
                env!("CARGO_PKG_VERSION"),
                env!("FIBD_REVISION")
            );
            ExitCode::SUCCESS
        }
        Ok(Command::Serve(config)) => serve(config),
        Ok(Command::Probe { url, timeout_ms }) => probe_command(&url, timeout_ms),
        Err(reason) => {
            eprintln!("fibd: {reason} (see fibd --help)");
            ExitCode::from(2)
        }
    }
}

/// Whose panic the panic hook is looking at.
#[derive(Debug, PartialEq)]
enum Panic {
    /// tiny_http could not spawn its accept thread as the acceptor started it: threads ran
    /// out. The acceptor catches this and retries, as for any failed accept loop.
    AcceptLoopStart,
    /// Every thread of ours has a name. A panic there is a broken invariant: the process
    /// aborts, and the supervisor restarts it from the durable state.
    Ours,
    /// tiny_http's threads have none. A panic in one of its connection threads ends that
    /// connection only; one in its accept thread is handled like an accept error.
    TinyHttp,
}

fn judge_panic(thread_name: Option<&str>, starting_accept_loop: bool) -> Panic {
    match thread_name {
        Some(_) if starting_accept_loop => Panic::AcceptLoopStart,
        Some(_) => Panic::Ours,
        None => Panic::TinyHttp,
    }
}

/// `fibd probe URL`: exit 0 when URL answers 2xx within the timeout.
fn probe_command(url: &str, timeout_ms: u64) -> ExitCode {
    // A bare path probes this host's own fibd, at the address FIBD_LISTEN names.
    let resolved;
    let url = if url.starts_with('/') {
        let listen = match std::env::var("FIBD_LISTEN") {
            Ok(value) if !value.is_empty() => match value.parse() {
                Ok(listen) => listen,
                Err(_) => {
                    eprintln!("fibd probe: FIBD_LISTEN: {value:?} is not an IP:PORT address");
                    return ExitCode::from(2);
                }
            },
            _ => config::LISTEN_DEFAULT,
        };
        resolved = format!("http://{}{url}", watchdog::probe_address(listen));
        resolved.as_str()
    } else {
        url
    };
    let target = match probe::Target::parse(url) {
        Ok(target) => target,
        Err(reason) => {
            eprintln!("fibd probe: {reason}");
            return ExitCode::from(2);
        }
    };
    match probe::get_status(target.addr, &target.path, Duration::from_millis(timeout_ms)) {
        Ok(status) if (200..300).contains(&status) => ExitCode::SUCCESS,
        Ok(status) => {
            eprintln!("fibd probe: {url} answered {status}");
            ExitCode::FAILURE
        }
        Err(err) => {
            eprintln!("fibd probe: {url}: {err}");
            ExitCode::FAILURE
        }
    }
}

fn serve(config: Config) -> ExitCode {
    let started = Instant::now();
    let (state, recovered) = match StateFile::open(&config.state_file) {
        Ok(opened) => opened,
        Err(err) => {
            log::error("state_file_unusable", &[("error", &err)]);
            return ExitCode::FAILURE;
        }
    };
    if let Some(err) = &recovered.other_slot_error {
        // A torn slot is expected after a crash in the middle of a write: worth a line, not a
        // refusal. An older slot written whole with what fibd never writes is no crash's doing,
        // and is named apart, though the start-up commit has rewritten it all the same.
        let (event, note) = if err.written_whole() {
            (
                "state_slot_damaged",
                "the older slot's checksum holds over what fibd never writes, which no crash \
                 leaves: check the disk and what else writes the file; it has been rewritten",
            )
        } else {
            (
                "state_slot_invalid",
                "as a crash in the middle of a write leaves it; it has been rewritten",
            )
        };
        log::warn(
            event,
            &[
                ("state_file", &config.state_file.display()),
                ("error", err),
                ("recovered_sequence", &recovered.slot.sequence),
                ("note", &note),
            ],
        );
    }
    for (slot, offset) in recovered.padding_faults.iter().enumerate() {
        let Some(offset) = offset else { continue };
        // No crash writes there, so the disk changed bytes it had stored: worth an operator's
        // look at the disk, though the slot's record was whole and nothing was lost.
        log::warn(
            "state_slot_padding_damaged",
            &[
                ("state_file", &config.state_file.display()),
                ("slot", &slot),
                ("offset", offset),
                (
                    "note",
                    &"the slot's record passed its checksum and was read; the zeros after it \
                      did not survive, which no crash causes: check the disk",
                ),
            ],
        );
    }
    let idle_timeout = Duration::from_millis(config.idle_timeout_ms);
    let listener = match http_edge::bind(config.listen, idle_timeout) {
        Ok(listener) => listener,
        Err(err) => {
            log::error(
                "listen_failed",
                &[("address", &config.listen), ("error", &err)],
            );
            return ExitCode::FAILURE;
        }
    };
    let local_addr = listener.local_addr().unwrap_or(config.listen);

    let (events_tx, events_rx) = bounded::<Event>(16);
    let signal_tx = events_tx.clone();
    // Only the first signal is queued. The rest change nothing, and a queue full of them would
    // leave no room for a failure while stopping, which must still end the process non-zero.
    let mut signalled = false;
    if let Err(err) = ctrlc::set_handler(move || {
        if !std::mem::replace(&mut signalled, true) {
            let _ = signal_tx.try_send(Event::Signal);
        }
    }) {
        log::error("signal_handler_failed", &[("error", &err)]);
        return ExitCode::FAILURE;
    }
    let fatal = move |what: &'static str| {
        let tx = events_tx.clone();
        move |reason: String| {
            let _ = tx.try_send(Event::Fatal(what, reason));
        }
    };

    let index = recovered.slot.cursor.index();
    let sequence = state.sequence();
    let published = Arc::new(Published::new(recovered.slot.cursor));
    let metrics = Arc::new(Metrics::new());
    let edge = Edge::new(
        Arc::clone(&published),
        Arc::clone(&metrics),
        config.access_log,
        idle_timeout,
        Box::new(fatal("unread_bodies")),
    );
    let http_edge::Started {
        threads,
        steps,
        replies,
    } = match http_edge::start(&edge, listener, config.workers, fatal("deaf")) {
        Ok(started) => started,
        Err(err) => {
            log::error("start_failed", &[("error", &err)]);
            return ExitCode::FAILURE;
        }
    };
    let on_storage_failure = fatal("storage_failed");
    let batch_ops_max = config.batch_ops_max;
    let owner = thread::Builder::new()
        .name("state-owner".into())
        .spawn(move || {
            let deliver = |ticket, outcome| replies.deliver(ticket, outcome);
            state_owner::run(
                state,
                &published,
                &metrics,
                steps,
                batch_ops_max,
                deliver,
                |err| {
                    log::error("storage_failed", &[("error", err)]);
                    on_storage_failure(err.to_string());
                },
            )
        });
    let owner = match owner {
        Ok(handle) => handle,
        Err(err) => {
            log::error("start_failed", &[("error", &err)]);
            return ExitCode::FAILURE;
        }
    };
    let on_deaf = fatal("deaf");
    let watched = Arc::clone(&edge);
    let notifier = Arc::new(Notifier::from_env());
    let alive = Arc::clone(&notifier);
    let watchdog = thread::Builder::new()
        .name("watchdog".into())
        .spawn(move || {
            // systemd's watchdog is fed after every probe of our own socket that does not
            // find the server deaf; a deaf server exits 1 by itself, and a process too stuck
            // to probe stops feeding it, so systemd restarts a hung server, not just a dead one.
            watchdog::run(
                watchdog::probe_address(local_addr),
                &watched.queue_lag().watchdog,
                watchdog::interval(idle_timeout),
                watchdog::deaf_after(idle_timeout),
                || watched.is_stopping(),
                || alive.send("WATCHDOG=1"),
                on_deaf,
            )
        });

    let nudged = Arc::clone(&edge);
    let nudger = thread::Builder::new()
        .name("nudger".into())
        .spawn(move || nudger::run(watchdog::probe_address(local_addr), || nudged.is_stopping()));
    // Without the watchdog nothing would notice a deaf server, or keep `accept` from idling
    // into its receive timeout; without the nudger, bursts of connections could wait for
    // minutes. A box that cannot spare two threads at start-up is better restarted.
    if let Err(err) = watchdog.and(nudger) {
        log::error("start_failed", &[("error", &err)]);
        return ExitCode::FAILURE;
    }

    log::info(
        "start",
        &[
            ("version", &env!("CARGO_PKG_VERSION")),
            ("revision", &env!("FIBD_REVISION")),
            ("listen", &local_addr),
            ("state_file", &config.state_file.display()),
            ("index", &index),
            ("sequence", &sequence),
            ("workers", &config.workers),
            ("batch_max", &config.batch_ops_max),
            ("access_log", &config.access_log),
            ("idle_timeout_ms", &config.idle_timeout_ms),
            (
                "startup_ms",
                &format!("{:.1}", started.elapsed().as_secs_f64() * 1e3),
            ),
        ],
    );

    notifier.send("READY=1");

    let failed = match events_rx.recv() {
        Ok(Event::Signal) | Err(_) => {
            log::info("shutdown", &[("reason", &"signal")]);
            false
        }
        Ok(Event::Fatal(what, reason)) => {
            log::error("shutdown", &[("reason", &what), ("detail", &reason)]);
            true
        }
    };
    notifier.send("STOPPING=1");
    edge.stop();

    // Every acknowledged step is already durable, so waiting is only for in-flight replies
    // and the commit that will answer some of them; the grace period bounds it.
    let (done_tx, done_rx) = bounded::<()>(1);
    let grace = Duration::from_millis(limits::SHUTDOWN_GRACE_MS);
    let joiner = thread::Builder::new().name("joiner".into()).spawn(move || {
        for handle in threads {
            let _ = handle.join();
        }
        let _ = owner.join();
        let _ = done_tx.send(());
    });
    let done = match joiner {
        Ok(_) => done_rx.recv_timeout(grace),
        // No thread to wait with (threads have run out): give in-flight replies the whole
        // grace period, then go on as if it had run out.
        Err(err) => {
            log::warn("joiner_failed", &[("error", &err)]);
            thread::sleep(grace);
            Err(RecvTimeoutError::Timeout)
        }
    };
    // A failure while draining (a commit of the last steps failing, say) still ends the
    // process non-zero: a supervisor that restarts only failed services must see it.
    let failed_while_draining = events_rx.try_iter().find_map(|event| match event {
        Event::Fatal(what, reason) => Some((what, reason)),
        Event::Signal => None,
    });
    if let Some((what, reason)) = &failed_while_draining {
        log::error(
            "failed_while_stopping",
            &[("reason", what), ("detail", reason)],
        );
    }
    // The steps of a commit that has not returned were never acknowledged, so exiting loses
    // nothing; but the disk under the state file has stalled, and an exit 0 would tell the
    // supervisor and the operator that all was well. (The process itself ends only once the
    // stalled call returns: the kernel does not end a thread inside a system call that cannot
    // be interrupted.)
    let stalled = done
        .is_err()
        .then(|| edge.metrics.commit_in_flight())
        .flatten()
        .filter(|running| *running >= Duration::from_millis(limits::COMMIT_STALLED_MS));
    let failed = failed || failed_while_draining.is_some() || stalled.is_some();
    let exit = u8::from(failed);
    let index = edge.durable_index();
    let in_flight_ms = stalled.map(|running| running.as_millis());
    let mut fields: Vec<(&str, &dyn std::fmt::Display)> = vec![("index", &index)];
    if let Some(ms) = &in_flight_ms {
        fields.push(("commit_in_flight_ms", ms));
        fields.push((
            "note",
            &"grace period over with a commit still running: the disk is stalled",
        ));
    } else if done.is_err() {
        fields.push(("note", &"grace period over; in-flight replies dropped"));
    }
    fields.push(("exit", &exit));
    // One line says how the process ends. Its level is the worst of what happened, so that a
    // search for errors finds every exit non-zero.
    let level = match (failed, done) {
        (true, _) => log::Level::Error,
        (false, Err(_)) => log::Level::Warn,
        (false, Ok(())) => log::Level::Info,
    };
    log::event(level, "stopped", &fields);
    ExitCode::from(exit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_panic_on_a_thread_of_ours_aborts_unless_tiny_http_could_not_start() {
        for ours in [
            "state-owner",
            "worker-3",
            "responder-0",
            "acceptor",
            "hang-up",
            "main",
        ] {
            assert_eq!(judge_panic(Some(ours), false), Panic::Ours, "{ours}");
        }
        assert_eq!(judge_panic(Some("acceptor"), true), Panic::AcceptLoopStart);
        assert_eq!(judge_panic(None, false), Panic::TinyHttp);
        assert_eq!(judge_panic(None, true), Panic::TinyHttp);
    }
}
