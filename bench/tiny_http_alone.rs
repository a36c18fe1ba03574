//! tiny_http alone: the peak-read benchmark's third server, which does no work of its own. It
//! answers every request with the same bytes, recorded from fibd's own `/current` reply, so
//! that the benchmark can split the gap between fibd and nginx into what tiny_http costs and
//! what fibd adds on top of it (docs/BENCHMARKS.md, "Peak read").
//!
//! Usage: `tiny_http_alone IP:PORT THREADS REPLY_FILE`. Each of THREADS threads takes
//! requests straight from tiny_http's queue and writes the reply through the request's own
//! writer, as fibd's workers do; there is no routing, no hand-off and no clock.
//! Built by `scripts/bench.sh` with fibd's release profile; not part of the service.

use std::io::Write;
use std::process::ExitCode;
use std::sync::{Arc, mpsc};
use std::{env, fs, thread};

/// More threads than this would measure the scheduler rather than tiny_http.
const THREADS_MAX: usize = 64;

/// The whole reply, status line to body: a reply recorded from fibd is a few hundred bytes.
const REPLY_BYTES_MAX: u64 = 4096;

fn main() -> ExitCode {
    match run() {
        Ok(()) => ExitCode::SUCCESS,
        Err(message) => {
            eprintln!("tiny_http_alone: {message}");
            ExitCode::FAILURE
        }
    }
}

fn run() -> Result<(), String> {
    let args: Vec<String> = env::args().skip(1).collect();
    let [listen, threads, reply_file] = args.as_slice() else {
        return Err("usage: tiny_http_alone IP:PORT THREADS REPLY_FILE".to_string());
    };
    let threads: usize = threads
        .parse()
        .ok()
        .filter(|n| (1..=THREADS_MAX).contains(n))
        .ok_or(format!(
            "THREADS must be 1..={THREADS_MAX}, not {threads:?}"
        ))?;
    let size = fs::metadata(reply_file)
        .map_err(|e| format!("cannot stat reply file {reply_file}: {e}"))?
        .len();
    if size == 0 || size > REPLY_BYTES_MAX {
        return Err(format!(
            "reply file {reply_file} holds {size} bytes, not 1..={REPLY_BYTES_MAX}"
        ));
    }
    let reply: Arc<[u8]> = fs::read(reply_file)
        .map_err(|e| format!("cannot read reply file {reply_file}: {e}"))?
        .into();
    let server = Arc::new(
        tiny_http::Server::http(listen.as_str())
            .map_err(|e| format!("cannot listen on {listen}: {e}"))?,
    );
    // A thread ends only when tiny_http's accept loop has failed (tiny_http tells one
    // thread, once); the first to end ends the process.
    let (ended_tx, ended_rx) = mpsc::channel();
    for _ in 0..threads {
        let (server, reply, ended) = (Arc::clone(&server), Arc::clone(&reply), ended_tx.clone());
        thread::Builder::new()
            .name("serve".to_string())
            .spawn(move || ended.send(serve(&server, &reply)))
            .map_err(|e| format!("cannot start a serving thread: {e}"))?;
    }
    let ended = ended_rx
        .recv()
        .map_err(|_| "every serving thread is gone")?;
    Err(format!("tiny_http stopped: {ended}"))
}

/// Answers requests until tiny_http reports that its accept loop has failed.
fn serve(server: &tiny_http::Server, reply: &[u8]) -> String {
    loop {
        match server.recv() {
            Ok(request) => {
                let mut writer = request.into_writer();
                // A client that went away is not this server's concern; the next request is.
                let _ = writer.write_all(reply).and_then(|()| writer.flush());
            }
            Err(err) => return err.to_string(),
        }
    }
}
