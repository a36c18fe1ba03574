//! The process and its state file: restart after kill -9, refusal of a corrupt file, the lock,
//! signals, configuration errors. Each test runs the real binary.

mod common;

use std::os::unix::fs::PermissionsExt;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::{BIN, Server, TempDir, field, write_state};

#[test]
fn kill_9_then_restart_keeps_every_acknowledged_step() {
    let dir = TempDir::new("kill9");
    let state = dir.join("fibd.state");
    let mut server = Server::start(&state, &[]);
    for expected in ["1", "1", "2", "3", "5", "8"] {
        assert_eq!(server.value("/next"), expected);
    }
    assert_eq!(server.value("/previous"), "5");
    server.kill9();

    let server = Server::start(&state, &[]);
    assert_eq!(server.value("/current"), "5");
    let start = server.log.lock().unwrap()[0].clone();
    assert_eq!(field(&start, "index"), Some("5"), "{start}");
    assert_eq!(server.value("/next"), "8");
}

#[test]
fn a_new_state_file_is_private_and_exactly_two_slots() {
    let dir = TempDir::new("newfile");
    let state = dir.join("fibd.state");
    let server = Server::start(&state, &[]);
    let meta = std::fs::metadata(&state).unwrap();
    assert_eq!(meta.permissions().mode() & 0o777, 0o600);
    assert_eq!(meta.len(), fibd::slot::FILE_BYTES as u64);
    drop(server);
    let names: Vec<_> = std::fs::read_dir(&dir.0)
        .unwrap()
        .map(|e| e.unwrap().file_name())
        .collect();
    assert_eq!(names, ["fibd.state"], "no temporary files left behind");
}

#[test]
fn a_corrupt_state_file_is_refused_and_left_byte_for_byte_unchanged() {
    let dir = TempDir::new("corrupt");
    let state = dir.join("fibd.state");
    write_state(&state, 42);
    let mut bytes = std::fs::read(&state).unwrap();
    // Damage the checksum of both slots.
    bytes[30] ^= 0x40;
    bytes[fibd::slot::SLOT_BYTES + 30] ^= 0x40;
    std::fs::write(&state, &bytes).unwrap();

    let (status, log) = match Server::try_start(&state, &[]) {
        Ok(_) => panic!("fibd started on a corrupt state file"),
        Err(failure) => failure,
    };
    let status = status.expect("fibd exits");
    assert_eq!(status.code(), Some(1));
    let log = log.join("\n");
    assert!(
        log.contains(&state.display().to_string()),
        "names the file: {log}"
    );
    assert!(
        log.contains("checksum mismatch"),
        "says what is wrong: {log}"
    );
    assert_eq!(std::fs::read(&state).unwrap(), bytes, "file untouched");

    // A truncated file and an empty one are refused the same way.
    for len in [0, 100, fibd::slot::SLOT_BYTES] {
        std::fs::write(&state, &bytes[..len]).unwrap();
        let log = refused_start(&state);
        assert!(log.contains(&format!("file is {len} bytes")), "{log}");
        assert_eq!(std::fs::read(&state).unwrap().len(), len);
    }
}

#[test]
fn a_slot_written_by_another_format_version_refuses_the_file_untouched() {
    let dir = TempDir::new("version");
    let state = dir.join("fibd.state");
    write_state(&state, 42);
    // Slot 1 as a newer fibd would leave it: version 2, its envelope's checksum intact.
    let bytes = reseal(&state, 1, 8, &2u32.to_le_bytes());

    let log = refused_start(&state);
    assert!(
        log.contains("slot 1: unsupported format version 2 (this fibd reads 1)"),
        "{log}"
    );
    assert!(
        log.contains("restore the backup taken before the upgrade"),
        "{log}"
    );
    assert_eq!(std::fs::read(&state).unwrap(), bytes, "file untouched");
}

#[test]
fn a_newer_slot_written_whole_but_holding_what_fibd_never_writes_refuses_the_file_untouched() {
    // A crash can tear a slot, but never leave one whose checksum holds over an index past
    // the table. Serving the older slot would write over the newer one and could lose the
    // steps acknowledged since.
    let dir = TempDir::new("damaged");
    let state = dir.join("fibd.state");
    write_state(&state, 42);
    let bytes = reseal(&state, 1, 20, &200u64.to_le_bytes());

    let log = refused_start(&state);
    assert!(
        log.contains("slot 1: cursor index 200 is past F(186), though its checksum holds"),
        "{log}"
    );
    assert!(log.contains("not torn by a crash"), "{log}");
    assert_eq!(std::fs::read(&state).unwrap(), bytes, "file untouched");
}

#[test]
fn an_older_slot_written_whole_with_what_fibd_never_writes_is_rewritten_and_named_apart() {
    let dir = TempDir::new("olddamaged");
    let state = dir.join("fibd.state");
    write_state(&state, 42);
    // Slot 0 holds the older sequence (10).
    reseal(&state, 0, 20, &200u64.to_le_bytes());

    let server = Server::start(&state, &[]);
    assert_eq!(server.value("/current"), fibd::fib::decimal(42).unwrap());
    let log = server.log_text();
    assert!(
        log.contains("event=state_slot_damaged") && log.contains("cursor index 200"),
        "{log}"
    );
    assert!(!log.contains("state_slot_invalid"), "{log}");
}

#[test]
fn a_slot_whose_padding_is_damaged_is_still_read_and_the_damage_logged() {
    // The record is covered by its checksum; the zeros after it are not, and a flipped bit
    // there must not send fibd back to the older slot, losing the newer one's step.
    let dir = TempDir::new("padding");
    let state = dir.join("fibd.state");
    write_state(&state, 42);
    // Slot 1 holds the newer sequence; give it the newer index, then damage its padding.
    let mut bytes = reseal(&state, 1, 20, &43u64.to_le_bytes());
    bytes[fibd::slot::SLOT_BYTES + 2000] ^= 0x08;
    std::fs::write(&state, &bytes).unwrap();

    let server = Server::start(&state, &[]);
    assert_eq!(server.value("/current"), fibd::fib::decimal(43).unwrap());
    let log = server.log_text();
    assert!(
        log.contains("event=state_slot_padding_damaged") && log.contains(" slot=1 offset=2000 "),
        "{log}"
    );
    assert!(!log.contains("state_slot_invalid"), "{log}");
}

/// Starts fibd on `state`, which it must refuse, exiting 1; returns what it logged.
fn refused_start(state: &std::path::Path) -> String {
    let (status, log) = Server::try_start(state, &[])
        .err()
        .expect("fibd refused to start");
    assert_eq!(status.and_then(|s| s.code()), Some(1), "{log:?}");
    log.join("\n")
}

/// Writes `value` at `offset` of slot `position` of the state file and seals the slot's
/// checksum again, as a writer that meant it would; returns the file's new bytes.
fn reseal(state: &std::path::Path, position: usize, offset: usize, value: &[u8]) -> Vec<u8> {
    let mut bytes = std::fs::read(state).unwrap();
    let slot = &mut bytes[position * fibd::slot::SLOT_BYTES..][..fibd::slot::SLOT_BYTES];
    slot[offset..offset + value.len()].copy_from_slice(value);
    let checksum = crc32c(&slot[..28]);
    slot[28..32].copy_from_slice(&checksum.to_le_bytes());
    std::fs::write(state, &bytes).unwrap();
    bytes
}

/// CRC-32C, bit by bit: the test's own, so that it does not trust the code it checks.
fn crc32c(bytes: &[u8]) -> u32 {
    let mut crc = !0u32;
    for &byte in bytes {
        crc ^= u32::from(byte);
        for _ in 0..8 {
            crc = if crc & 1 == 1 {
                (crc >> 1) ^ 0x82F6_3B78
            } else {
                crc >> 1
            };
        }
    }
    !crc
}

#[test]
fn one_torn_slot_recovers_from_the_other_and_says_so() {
    let dir = TempDir::new("torn");
    let state = dir.join("fibd.state");
    write_state(&state, 42);
    let mut bytes = std::fs::read(&state).unwrap();
    // Slot 1 holds the newer sequence (11); tear it as a crash mid-write would.
    for b in &mut bytes[fibd::slot::SLOT_BYTES + 12..fibd::slot::SLOT_BYTES + 20] {
        *b = 0xAA;
    }
    std::fs::write(&state, &bytes).unwrap();
    let server = Server::start(&state, &[]);
    assert_eq!(server.value("/current"), fibd::fib::decimal(42).unwrap());
    assert!(
        server.log_text().contains("event=state_slot_invalid"),
        "{}",
        server.log_text()
    );
    // The next commit overwrites the torn slot, and a restart sees it.
    assert_eq!(server.value("/next"), fibd::fib::decimal(43).unwrap());
    drop(server);
    let server = Server::start(&state, &[]);
    assert_eq!(server.value("/current"), fibd::fib::decimal(43).unwrap());
    assert!(!server.log_text().contains("state_slot_invalid"));
}

#[test]
fn a_second_instance_on_the_same_file_exits_with_a_clear_error() {
    let dir = TempDir::new("lock");
    let state = dir.join("fibd.state");
    let first = Server::start(&state, &[]);
    let log = refused_start(&state);
    assert!(log.contains("another fibd process holds its lock"), "{log}");
    assert!(log.contains(&state.display().to_string()), "{log}");
    assert_eq!(first.value("/current"), "0", "the first keeps serving");
}

#[test]
fn sigterm_sigint_and_sighup_exit_zero_promptly_with_state_durable() {
    // SIGHUP too (ctrlc's `termination` handles it with the others): fibd has no
    // configuration to reload and logs to stderr, so a hang-up means stop, and the docs say so.
    for signal in ["TERM", "INT", "HUP"] {
        let dir = TempDir::new("signal");
        let state = dir.join("fibd.state");
        let mut server = Server::start(&state, &[]);
        server.value("/next");
        server.value("/next");
        let sent = Instant::now();
        server.signal(signal);
        let status = server
            .wait_exit(Duration::from_secs(2))
            .expect("exits within 2 s");
        assert_eq!(status.code(), Some(0), "SIG{signal}");
        assert!(sent.elapsed() < Duration::from_secs(2));
        let log = server.log_text();
        assert!(log.contains("event=shutdown reason=signal"), "{log}");
        assert!(
            log.contains("level=info event=stopped index=2 exit=0"),
            "{log}"
        );
        drop(server);
        let server = Server::start(&state, &[]);
        assert_eq!(server.value("/current"), "1", "F(2) after restart");
    }
}

/// The two slot headers of the state file the first build of fibd (4e3c9ae) wrote after 40
/// steps and a SIGTERM, as `od -A d -t x1` showed them; the rest of each 4 KiB slot is zeros.
/// Slot 0: sequence 40, index 39. Slot 1: sequence 41, index 40.
const FIRST_BUILD_HEADERS: [[u8; 32]; 2] = [
    [
        0x46, 0x49, 0x42, 0x44, 0x53, 0x4c, 0x4f, 0x54, 0x01, 0x00, 0x00, 0x00, 0x28, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x27, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x4a, 0xb6,
        0x55, 0x88,
    ],
    [
        0x46, 0x49, 0x42, 0x44, 0x53, 0x4c, 0x4f, 0x54, 0x01, 0x00, 0x00, 0x00, 0x29, 0x00, 0x00,
        0x00, 0x00, 0x00, 0x00, 0x00, 0x28, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x00, 0x6a, 0xba,
        0x3b, 0xc2,
    ],
];

/// Every state file an earlier build wrote must go on being read as it was meant: the format
/// is a promise to every operator who upgrades. Tests that only round-trip `encode` through
/// `decode` would pass a change that moved a field in both; these bytes, from the first build,
/// would not.
#[test]
fn a_state_file_the_first_build_wrote_is_read_and_written_byte_for_byte_alike() {
    use fibd::cursor::Cursor;
    use fibd::slot::{SLOT_BYTES, Slot, encode};
    let mut file = vec![0u8; 2 * SLOT_BYTES];
    for (slot, header) in FIRST_BUILD_HEADERS.iter().enumerate() {
        file[slot * SLOT_BYTES..][..32].copy_from_slice(header);
    }
    // Written today, the same records are the same bytes (and the rest of a slot zeros).
    for (header, (sequence, index)) in FIRST_BUILD_HEADERS.iter().zip([(40, 39), (41, 40)]) {
        let written = encode(Slot {
            sequence,
            cursor: Cursor::at(index).unwrap(),
        });
        assert_eq!(written[..32], header[..], "sequence {sequence}");
        assert!(written[32..].iter().all(|&b| b == 0), "sequence {sequence}");
    }
    // Served from, and stepped on, after an upgrade.
    let dir = TempDir::new("firstbuild");
    let state = dir.join("fibd.state");
    std::fs::write(&state, &file).unwrap();
    let server = Server::start(&state, &[]);
    let current = server.json("GET", "/current").body;
    assert!(current.contains("\"index\":40"), "{current}");
    let next = server.post("/next");
    assert_eq!(
        (next.status, next.body.trim_end()),
        (200, "165580141"),
        "F(41)"
    );
    drop(server);
    let server = Server::start(&state, &[]);
    let current = server.json("GET", "/current").body;
    assert!(current.contains("\"index\":41"), "{current}");
}

#[test]
fn the_start_line_shows_the_real_address_and_the_recovered_index() {
    let dir = TempDir::new("startline");
    let state = dir.join("fibd.state");
    write_state(&state, 7);
    let server = Server::start(&state, &[]);
    let line = server.log.lock().unwrap()[0].clone();
    assert_eq!(field(&line, "event"), Some("start"));
    assert_eq!(field(&line, "version"), Some(env!("CARGO_PKG_VERSION")));
    assert!(
        field(&line, "revision").is_some_and(|r| !r.is_empty()),
        "{line}"
    );
    assert_ne!(server.addr.port(), 0);
    assert_eq!(
        field(&line, "listen"),
        Some(server.addr.to_string().as_str())
    );
    assert_eq!(field(&line, "index"), Some("7"));
    assert!(field(&line, "state_file").unwrap().ends_with("fibd.state"));
    // The sequence shown is the one on disk once fibd is up: the start-up commit's, one past
    // the 11 that `write_state` left, so that it matches what a later look at the file finds.
    let on_disk = fibd::slot::recover(&std::fs::read(&state).unwrap()).unwrap();
    assert_eq!(on_disk.slot.sequence, 12);
    assert_eq!(field(&line, "sequence"), Some("12"));
}

#[test]
fn environment_configures_and_flags_win() {
    let dir = TempDir::new("env");
    let state = dir.join("env.state");
    let mut child = Command::new(BIN)
        .env("FIBD_LISTEN", "127.0.0.1:0")
        .env("FIBD_STATE_FILE", &state)
        .env("FIBD_WORKERS", "2")
        .args(["--workers", "3"])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufRead::read_line(
        &mut std::io::BufReader::new(child.stderr.as_mut().unwrap()),
        &mut line,
    )
    .unwrap();
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(field(&line, "workers"), Some("3"), "{line}");
    assert!(state.exists(), "FIBD_STATE_FILE was used");
}

#[test]
fn bad_configuration_exits_2_with_a_one_line_reason() {
    for args in [
        &["--listen", "not-an-address"][..],
        &["--workers", "0"],
        &["--batch-max", "x"],
        &["--bogus"],
        &["--state-file"],
        &["--state-file", ""],
        &["--state-file="],
    ] {
        let out = Command::new(BIN).args(args).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let stderr = String::from_utf8(out.stderr).unwrap();
        assert_eq!(stderr.lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("fibd: "), "{stderr}");
    }
    let out = Command::new(BIN)
        .env("FIBD_WORKERS", "lots")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
}

#[test]
fn help_and_version() {
    let out = Command::new(BIN).arg("--help").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--listen",
        "--state-file",
        "--workers",
        "--batch-max",
        "FIBD_LISTEN",
    ] {
        assert!(help.contains(flag), "help mentions {flag}");
    }
    // The commit the binary was built from, asked of git here as build.rs asks it, so that
    // an operator can tell builds apart (the runbook names the builds a rollback must mind).
    // Only fibd's own repository counts; without one, the build says "unknown".
    let git = |args: &[&str]| {
        Command::new("git")
            .args(args)
            .current_dir(env!("CARGO_MANIFEST_DIR"))
            .output()
            .ok()
            .filter(|out| out.status.success())
            .map(|out| String::from_utf8(out.stdout).unwrap().trim().to_string())
    };
    let ours = git(&["rev-parse", "--show-toplevel"]).is_some_and(|top| {
        std::fs::canonicalize(top).ok() == std::fs::canonicalize(env!("CARGO_MANIFEST_DIR")).ok()
    });
    let revision = match ours {
        true => git(&["log", "-1", "--format=%h %cs"]).unwrap_or_default(),
        false => "unknown".to_string(),
    };
    let version =
        String::from_utf8(Command::new(BIN).arg("--version").output().unwrap().stdout).unwrap();
    match std::env::var("FIBD_REVISION") {
        // Set at build time, it names the commit itself (build.rs only cleans it).
        Ok(_) => assert!(version.starts_with("fibd "), "{version}"),
        Err(_) => assert_eq!(
            version,
            format!("fibd {} ({revision})\n", env!("CARGO_PKG_VERSION"))
        ),
    }
}

#[test]
fn an_address_in_use_is_a_runtime_error() {
    let dir = TempDir::new("inuse");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let out = Command::new(BIN)
        .args(["--listen", &addr, "--state-file"])
        .arg(dir.join("fibd.state"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(
        String::from_utf8(out.stderr)
            .unwrap()
            .contains("event=listen_failed")
    );
}
