//! Configuration from command-line flags and `FIBD_*` environment variables, flags winning.
//! Parsing is a pure function of the arguments and an environment lookup, so it is unit-tested
//! without touching the process environment.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::limits;

/// What the process was asked to do.
#[derive(Debug, PartialEq, Eq)]
pub enum Command {
    Serve(Config),
    /// `fibd probe URL [--timeout-ms N]`: exit 0 if URL answers 2xx in time.
    Probe {
        url: String,
        timeout_ms: u64,
    },
    Help,
    Version,
}

/// Default listen address: loopback, so exposing the server is an explicit choice.
pub const LISTEN_DEFAULT: SocketAddr = SocketAddr::V4(std::net::SocketAddrV4::new(
    std::net::Ipv4Addr::LOCALHOST,
    8080,
));

/// Default deadline of `fibd probe`, well inside the usual 3-5 s health-check timeouts.
pub const PROBE_TIMEOUT_MS_DEFAULT: u64 = 2_000;

#[derive(Debug, PartialEq, Eq)]
pub struct Config {
    pub listen: SocketAddr,
    pub state_file: PathBuf,
    pub workers: usize,
    pub batch_ops_max: usize,
    /// One log line per request; off by default because it costs a write per request.
    pub access_log: bool,
    pub idle_timeout_ms: u64,
}

pub const USAGE: &str = "\
Usage: fibd [OPTIONS]
       fibd probe URL [--timeout-ms N]

A durable cursor over the Fibonacci numbers F(0)..F(186), served over HTTP.

Options (each also read from the environment variable shown; flags win):
  --listen ADDR       IP:PORT to listen on; port 0 picks a free port   [FIBD_LISTEN]
                      (default 127.0.0.1:8080)
  --state-file PATH   the state file, created if missing              [FIBD_STATE_FILE]
                      (default ./fibd.state)
  --workers N         worker threads, 1..=256 (default 16)            [FIBD_WORKERS]
  --batch-max N       most steps per fdatasync, 1..=4096 (default 1024) [FIBD_BATCH_MAX]
  --idle-timeout-ms N close connections silent this long, 100..=3600000 [FIBD_IDLE_TIMEOUT_MS]
                      (default 15000)
  --access-log        log one line per request (also FIBD_ACCESS_LOG=1) [FIBD_ACCESS_LOG]
  -h, --help          print this help and exit
  -V, --version       print the version and exit

`fibd probe URL` sends GET URL (http://IP:PORT/PATH) and exits 0 if the answer is 2xx within
the timeout (--timeout-ms, 1..=600000, default 2000), 1 otherwise, 2 when the URL or
FIBD_LISTEN cannot be parsed: a health check for images without curl. A bare /PATH probes
the address in FIBD_LISTEN (wildcards mean loopback; default 127.0.0.1:8080).

Exit codes: 0 after SIGTERM/SIGINT/SIGHUP, 1 on a runtime failure (state file unusable or
locked, storage error, address in use, unable to accept connections), 2 on bad
configuration; a panic (a broken invariant) aborts (SIGABRT).
";

/// Parses `args` (without the program name); `env` looks up an environment variable.
/// The error is a one-line reason for the operator.
pub fn parse(
    args: impl IntoIterator<Item = String>,
    env: impl Fn(&str) -> Option<String>,
) -> Result<Command, String> {
    let mut listen = None;
    let mut state_file = None;
    let mut workers = None;
    let mut batch = None;
    let mut idle = None;
    let mut args = args.into_iter().peekable();
    if args.peek().map(String::as_str) == Some("probe") {
        args.next();
        return parse_probe(args);
    }
    let mut access_log = None;
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => {
                (flag.to_string(), Some(value.to_string()))
            }
            _ => (arg.clone(), None),
        };
        let slot = match flag.as_str() {
            "-h" | "--help" => return Ok(Command::Help),
            "-V" | "--version" => return Ok(Command::Version),
            "--access-log" if inline.is_none() => {
                access_log = Some(true);
                continue;
            }
            "--listen" => &mut listen,
            "--state-file" => &mut state_file,
            "--workers" => &mut workers,
            "--batch-max" => &mut batch,
            "--idle-timeout-ms" => &mut idle,
            _ => return Err(format!("unknown argument {arg:?}")),
        };
        let value = match inline {
            Some(value) => value,
            None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        *slot = Some((flag, value));
    }
    let pick = |flag: Option<(String, String)>, var: &str| -> Option<(String, String)> {
        flag.or_else(|| {
            env(var)
                .filter(|v| !v.is_empty())
                .map(|v| (var.to_string(), v))
        })
    };

    let listen = match pick(listen, "FIBD_LISTEN") {
        None => LISTEN_DEFAULT,
        Some((name, value)) => value.parse().map_err(|_| {
            format!(
                "{name}: {value:?} is not an IP:PORT address (e.g. 127.0.0.1:8080 or [::]:8080)"
            )
        })?,
    };
    // An empty variable means the default, as for every setting; an empty flag is a mistake
    // (a shell variable that was never set, say), caught here rather than at the file.
    let state_file = match pick(state_file, "FIBD_STATE_FILE") {
        None => PathBuf::from("fibd.state"),
        Some((name, value)) if value.is_empty() => {
            return Err(format!("{name}: the path is empty"));
        }
        Some((_, value)) => PathBuf::from(value),
    };
    let workers = number(
        pick(workers, "FIBD_WORKERS"),
        limits::WORKERS_DEFAULT,
        limits::WORKERS_MAX,
    )?;
    let batch_ops_max = number(
        pick(batch, "FIBD_BATCH_MAX"),
        limits::BATCH_OPS_DEFAULT,
        limits::BATCH_OPS_MAX,
    )?;
    let idle_timeout_ms = match pick(idle, "FIBD_IDLE_TIMEOUT_MS") {
        None => limits::IDLE_TIMEOUT_MS_DEFAULT,
        Some((name, value)) => match value.parse::<u64>() {
            Ok(ms) if (limits::IDLE_TIMEOUT_MS_MIN..=limits::IDLE_TIMEOUT_MS_MAX).contains(&ms) => {
                ms
            }
            _ => {
                return Err(format!(
                    "{name}: {value:?} is not a whole number of milliseconds from {} to {}",
                    limits::IDLE_TIMEOUT_MS_MIN,
                    limits::IDLE_TIMEOUT_MS_MAX
                ));
            }
        },
    };
    let access_log = match access_log {
        Some(on) => on,
        None => match env("FIBD_ACCESS_LOG").as_deref() {
            None | Some("" | "0" | "false" | "no" | "off") => false,
            Some("1" | "true" | "yes" | "on") => true,
            Some(other) => {
                return Err(format!(
                    "FIBD_ACCESS_LOG: {other:?} is not one of 1, true, yes, on, 0, false, no, off"
                ));
            }
        },
    };
    Ok(Command::Serve(Config {
        listen,
        state_file,
        workers,
        batch_ops_max,
        access_log,
        idle_timeout_ms,
    }))
}

fn parse_probe(mut args: impl Iterator<Item = String>) -> Result<Command, String> {
    let mut url = None;
    let mut timeout_ms = PROBE_TIMEOUT_MS_DEFAULT;
    while let Some(arg) = args.next() {
        // `--timeout-ms=N` as well as `--timeout-ms N`, as fibd's own flags take both.
        let inline = arg.strip_prefix("--timeout-ms=").map(str::to_string);
        if arg == "--timeout-ms" || inline.is_some() {
            let value = match inline {
                Some(value) => value,
                None => args.next().ok_or("--timeout-ms needs a value")?,
            };
            timeout_ms = match value.parse::<u64>() {
                Ok(ms) if (1..=600_000).contains(&ms) => ms,
                _ => return Err(format!("--timeout-ms: {value:?} is not from 1 to 600000")),
            };
        } else if arg == "-h" || arg == "--help" {
            return Ok(Command::Help);
        } else if url.is_none() && !arg.starts_with('-') {
            url = Some(arg);
        } else {
            return Err(format!("probe: unexpected argument {arg:?}"));
        }
    }
    let url = url.ok_or("probe needs a URL, e.g. fibd probe http://127.0.0.1:8080/healthz")?;
    Ok(Command::Probe { url, timeout_ms })
}

fn number(value: Option<(String, String)>, default: usize, max: usize) -> Result<usize, String> {
    let Some((name, value)) = value else {
        return Ok(default);
    };
    match value.parse::<usize>() {
        Ok(n) if (1..=max).contains(&n) => Ok(n),
        _ => Err(format!(
            "{name}: {value:?} is not a whole number from 1 to {max}"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse_with(args: &[&str], env: &[(&str, &str)]) -> Result<Command, String> {
        let env: Vec<(String, String)> = env
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        parse(args.iter().map(|s| s.to_string()), move |key| {
            env.iter().find(|(k, _)| k == key).map(|(_, v)| v.clone())
        })
    }

    fn config(args: &[&str], env: &[(&str, &str)]) -> Config {
        match parse_with(args, env).unwrap() {
            Command::Serve(config) => config,
            other => panic!("expected serve, got {other:?}"),
        }
    }

    #[test]
    fn defaults() {
        let c = config(&[], &[]);
        assert_eq!(c.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(c.state_file, PathBuf::from("fibd.state"));
        assert_eq!(c.workers, limits::WORKERS_DEFAULT);
        assert_eq!(c.batch_ops_max, limits::BATCH_OPS_DEFAULT);
        assert_eq!(c.idle_timeout_ms, limits::IDLE_TIMEOUT_MS_DEFAULT);
        assert_eq!(
            config(&["--idle-timeout-ms", "500"], &[]).idle_timeout_ms,
            500
        );
        assert!(parse_with(&["--idle-timeout-ms", "5"], &[]).is_err());
        assert_eq!(config(&["--batch-max", "1"], &[]).batch_ops_max, 1);
        assert_eq!(config(&["--batch-max=7"], &[]).batch_ops_max, 7);
        assert_eq!(config(&["--workers=5"], &[]).workers, 5);
    }

    #[test]
    fn flags_win_over_environment() {
        let env = [
            ("FIBD_LISTEN", "0.0.0.0:9000"),
            ("FIBD_WORKERS", "3"),
            ("FIBD_STATE_FILE", "/a"),
        ];
        let c = config(&["--listen", "[::1]:0", "--state-file=/b"], &env);
        assert_eq!(c.listen.to_string(), "[::1]:0");
        assert_eq!(c.state_file, PathBuf::from("/b"));
        assert_eq!(c.workers, 3);
        let c = config(&[], &env);
        assert_eq!(c.listen.to_string(), "0.0.0.0:9000");
        assert_eq!(c.state_file, PathBuf::from("/a"));
    }

    #[test]
    fn bad_values_are_one_line_errors() {
        for (args, env, needle) in [
            (&["--listen", "localhost"][..], &[][..], "--listen"),
            (&["--workers", "0"][..], &[][..], "--workers"),
            (&["--workers"][..], &[][..], "needs a value"),
            (&[][..], &[("FIBD_WORKERS", "many")][..], "FIBD_WORKERS"),
            (
                &[][..],
                &[("FIBD_BATCH_MAX", "99999")][..],
                "FIBD_BATCH_MAX",
            ),
            (&["--frobnicate"][..], &[][..], "unknown argument"),
            // Only long flags take an inline value; a switch takes none.
            (&["-V=1"][..], &[][..], "unknown argument"),
            (&["--access-log=1"][..], &[][..], "unknown argument"),
        ] {
            let err = parse_with(args, env).unwrap_err();
            assert!(err.contains(needle), "{err}");
            assert!(!err.contains('\n'), "{err}");
        }
    }

    #[test]
    fn probe_and_access_log() {
        assert_eq!(
            parse_with(&["probe", "http://127.0.0.1:1/healthz"], &[]),
            Ok(Command::Probe {
                url: "http://127.0.0.1:1/healthz".into(),
                timeout_ms: PROBE_TIMEOUT_MS_DEFAULT
            })
        );
        assert!(parse_with(&["probe"], &[]).is_err());
        assert!(parse_with(&["probe", "u", "v"], &[]).is_err());
        assert!(parse_with(&["probe", "-x"], &[]).is_err());
        assert!(parse_with(&["probe", "u", "--timeout-ms", "0"], &[]).is_err());
        for args in [
            &["probe", "u", "--timeout-ms", "250"][..],
            &["probe", "--timeout-ms=250", "u"],
        ] {
            let expected = Command::Probe {
                url: "u".into(),
                timeout_ms: 250,
            };
            assert_eq!(parse_with(args, &[]), Ok(expected), "{args:?}");
        }
        assert!(parse_with(&["probe", "u", "--timeout-ms="], &[]).is_err());
        // Help is help, wherever it is asked for.
        assert_eq!(parse_with(&["probe", "--help"], &[]), Ok(Command::Help));
        assert_eq!(parse_with(&["probe", "u", "-h"], &[]), Ok(Command::Help));
        assert!(config(&["--access-log"], &[]).access_log);
        assert!(config(&[], &[("FIBD_ACCESS_LOG", "1")]).access_log);
        assert!(!config(&[], &[]).access_log);
        assert!(parse_with(&[], &[("FIBD_ACCESS_LOG", "maybe")]).is_err());
    }

    #[test]
    fn help_and_version() {
        assert_eq!(parse_with(&["--help"], &[]), Ok(Command::Help));
        assert_eq!(parse_with(&["-V"], &[]), Ok(Command::Version));
    }
}
