//! Crash torture: start fibd, drive steps from several concurrent clients that record every
//! acknowledged reply, `kill -9` it at a random moment (often in the middle of a batch),
//! restart, and check that nothing acknowledged was lost and nothing returned was wrong.
//!
//! `kill -9` leaves the page cache to the kernel, so this proves what the process does, not
//! what a power cut leaves on the disk; that is tested against a simulated disk in the unit
//! tests of `state_owner` (a power cut at any point keeps every acknowledged step) and
//! `state_file` (a restart serves only what is on the disk).
//!
//! `FIBD_TORTURE_CYCLES` sets the number of kill cycles (default 200); set it high for a soak.

mod common;

use std::io::{BufReader, Write};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::{Server, TempDir, read_reply};

const CLIENTS: usize = 6;

/// A small deterministic generator (xorshift64*), so a failing run can be replayed from its
/// printed seed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// What the clients saw in one cycle.
#[derive(Default)]
struct Seen {
    /// Indices returned by acknowledged steps.
    acked: Vec<u8>,
    /// Steps sent whose reply never came (the kill cut them off).
    unanswered: usize,
    bound_replies: usize,
}

/// One client: keep-alive connection, the same step over and over until told to stop or the
/// server dies. Every reply's value is checked against the table.
fn client(addr: SocketAddr, path: &'static str, stop: Arc<AtomicBool>, seen: Arc<Mutex<Seen>>) {
    // The server may already be dead by the time this thread runs.
    let Ok(stream) = std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(5)) else {
        return;
    };
    stream
        .set_read_timeout(Some(Duration::from_secs(10)))
        .unwrap();
    let mut writer = stream.try_clone().unwrap();
    let mut reader = BufReader::new(stream);
    while !stop.load(Ordering::Relaxed) {
        let request =
            format!("POST {path} HTTP/1.1\r\nHost: t\r\nAccept: application/json\r\n\r\n");
        if writer.write_all(request.as_bytes()).is_err() {
            return;
        }
        let reply = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            read_reply(&mut reader, false)
        }));
        let Ok(Some(reply)) = reply else {
            // The server was killed after we sent: this step may or may not have happened.
            seen.lock().unwrap().unanswered += 1;
            return;
        };
        let mut seen = seen.lock().unwrap();
        match reply.status {
            200 => {
                let index: u8 = reply
                    .body
                    .split(['"', ':', ','])
                    .nth(3)
                    .unwrap()
                    .parse()
                    .unwrap();
                let value = reply.body.split('"').nth(5).unwrap();
                assert_eq!(
                    Some(value),
                    fibd::fib::decimal(index.into()),
                    "wrong value: {}",
                    reply.body
                );
                seen.acked.push(index);
            }
            409 => seen.bound_replies += 1,
            other => panic!("unexpected status {other}: {}", reply.body),
        }
    }
}

#[test]
fn kill_9_at_random_moments_never_loses_an_acknowledged_step() {
    let cycles: usize = std::env::var("FIBD_TORTURE_CYCLES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(200);
    let seed = std::env::var("FIBD_TORTURE_SEED")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    println!("crash torture: {cycles} cycles, FIBD_TORTURE_SEED={seed}");
    let mut rng = Rng(seed);
    let dir = TempDir::new("torture");
    let state = dir.join("fibd.state");
    let mut index: u8 = 0;
    let mut total_acked = 0;

    for cycle in 0..cycles {
        let mut server = Server::start(&state, &[]);
        let start_line = server.log.lock().unwrap()[0].clone();
        let recovered: u8 = common::field(&start_line, "index")
            .unwrap()
            .parse()
            .unwrap();
        assert_eq!(
            recovered, index,
            "cycle {cycle}: recovered index (seed {seed})"
        );

        // Walk up in the lower half of the table, down in the upper half, so both bounds are
        // approached but every cycle moves the cursor one way only, which makes the expected
        // outcome exact.
        let (path, up) = if index < 93 {
            ("/next", true)
        } else {
            ("/previous", false)
        };
        let stop = Arc::new(AtomicBool::new(false));
        let seen = Arc::new(Mutex::new(Seen::default()));
        let threads: Vec<_> = (0..CLIENTS)
            .map(|_| {
                let (stop, seen, addr) = (Arc::clone(&stop), Arc::clone(&seen), server.addr);
                std::thread::spawn(move || client(addr, path, stop, seen))
            })
            .collect();
        std::thread::sleep(Duration::from_micros(rng.below(25_000)));
        server.kill9();
        stop.store(true, Ordering::Relaxed);
        for t in threads {
            t.join().unwrap();
        }
        let seen = seen.lock().unwrap();
        total_acked += seen.acked.len();

        // Every acknowledged index is distinct and lies on the path from the old index.
        let mut acked = seen.acked.clone();
        acked.sort_unstable();
        let distinct = acked.len();
        acked.dedup();
        assert_eq!(
            acked.len(),
            distinct,
            "cycle {cycle}: an index was returned twice"
        );

        // Restart: the recovered index covers every acknowledged step and at most the
        // unanswered ones beyond that.
        let server = Server::start(&state, &[]);
        let line = server.log.lock().unwrap()[0].clone();
        let after: u8 = common::field(&line, "index").unwrap().parse().unwrap();
        let moved = if up {
            after.checked_sub(index)
        } else {
            index.checked_sub(after)
        };
        let moved = moved
            .unwrap_or_else(|| panic!("cycle {cycle}: cursor moved backwards ({index} -> {after})"))
            as usize;
        assert!(
            moved >= distinct,
            "cycle {cycle}: {distinct} steps acknowledged, only {moved} survived (seed {seed})"
        );
        assert!(
            moved <= distinct + seen.unanswered,
            "cycle {cycle}: moved {moved}, but only {distinct} acknowledged + {} in flight",
            seen.unanswered
        );
        if let (Some(&lo), Some(&hi)) = (acked.first(), acked.last()) {
            let (first, last) = if up {
                (index + 1, after)
            } else {
                (after, index - 1)
            };
            assert!(
                lo >= first && hi <= last,
                "cycle {cycle}: acked {lo}..={hi} outside {first}..={last}"
            );
        }
        index = after;
        drop(server);
    }
    println!("crash torture: {cycles} kill cycles, {total_acked} acknowledged steps checked");
    assert!(total_acked > 0, "the clients never got a step in");
}
