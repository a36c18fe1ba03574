//! Structured logging to stderr: one line per event, `key=value` pairs, values quoted when
//! they contain spaces or quotes, so `grep event=start` and log shippers both work.

use std::fmt::{Display, Write as _};
use std::io::Write as _;
use std::sync::Mutex;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Clone, Copy, Debug)]
pub enum Level {
    Info,
    Warn,
    Error,
}

impl Level {
    fn as_str(self) -> &'static str {
        match self {
            Level::Info => "info",
            Level::Warn => "warn",
            Level::Error => "error",
        }
    }
}

/// Writes one event line. The line is built first and written with one call, so lines from
/// different threads never interleave.
pub fn event(level: Level, event: &str, fields: &[(&str, &dyn Display)]) {
    let mut line = String::with_capacity(128);
    let _ = write!(
        line,
        "ts={} level={} event={}",
        timestamp(),
        level.as_str(),
        event
    );
    for (key, value) in fields {
        line.push(' ');
        line.push_str(key);
        line.push('=');
        push_value(&mut line, &value.to_string());
    }
    line.push('\n');
    let _ = std::io::stderr().lock().write_all(line.as_bytes());
}

pub fn info(name: &str, fields: &[(&str, &dyn Display)]) {
    event(Level::Info, name, fields);
}

pub fn warn(name: &str, fields: &[(&str, &dyn Display)]) {
    event(Level::Warn, name, fields);
}

pub fn error(name: &str, fields: &[(&str, &dyn Display)]) {
    event(Level::Error, name, fields);
}

/// Bounds the lines an event may write: at most `lines_max` in any one-second window. What it
/// holds back is counted, and the next line admitted reports the count, so a reader of the log
/// learns that lines are missing and how many (the metrics count every event).
#[derive(Debug)]
pub struct Throttle {
    lines_max: u32,
    window: Mutex<Window>,
}

#[derive(Debug)]
struct Window {
    started: Option<Instant>,
    written: u32,
    suppressed: u64,
}

impl Throttle {
    pub const fn new(lines_max: u32) -> Throttle {
        Throttle {
            lines_max,
            window: Mutex::new(Window {
                started: None,
                written: 0,
                suppressed: 0,
            }),
        }
    }

    /// Writes one event line, as `event` does, if the throttle admits it now; the first line
    /// after lines were held back says how many (`lines_suppressed=N`).
    pub fn event(&self, level: Level, name: &str, fields: &[(&str, &dyn Display)]) {
        let Some(suppressed) = self.admit(Instant::now()) else {
            return;
        };
        if suppressed == 0 {
            return event(level, name, fields);
        }
        let mut with_count = fields.to_vec();
        with_count.push(("lines_suppressed", &suppressed));
        event(level, name, &with_count);
    }

    /// Whether a line may be written at `now`: `Some` with the number of lines held back since
    /// the last one written, or `None`, counting this one as held back.
    fn admit(&self, now: Instant) -> Option<u64> {
        // Nothing under this lock can panic, but the panic hook takes it too, where a second
        // panic would abort the process: a poisoned lock is taken as it is.
        let mut window = self
            .window
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let expired = window
            .started
            .is_none_or(|started| now.saturating_duration_since(started) >= Duration::from_secs(1));
        if expired {
            window.started = Some(now);
            window.written = 0;
        }
        if window.written < self.lines_max {
            window.written += 1;
            Some(std::mem::take(&mut window.suppressed))
        } else {
            window.suppressed += 1;
            None
        }
    }
}

fn push_value(line: &mut String, value: &str) {
    let plain = !value.is_empty()
        && value
            .chars()
            .all(|c| c.is_ascii_graphic() && c != '"' && c != '=' && c != '\\');
    if plain {
        line.push_str(value);
        return;
    }
    line.push('"');
    for c in value.chars() {
        match c {
            '"' => line.push_str("\\\""),
            '\\' => line.push_str("\\\\"),
            '\n' => line.push_str("\\n"),
            c if c.is_control() => {
                let _ = write!(line, "\\x{:02x}", c as u32);
            }
            c => line.push(c),
        }
    }
    line.push('"');
}

/// The current time as RFC 3339 UTC with milliseconds, e.g. `2026-11-23T09:30:00.123Z`.
pub fn timestamp() -> String {
    timestamp_at(
        SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .unwrap_or_default(),
    )
}

/// `since_epoch` as RFC 3339 UTC with milliseconds.
fn timestamp_at(since_epoch: Duration) -> String {
    let secs = since_epoch.as_secs();
    let (year, month, day) = civil_from_days((secs / 86_400) as i64);
    let rem = secs % 86_400;
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem / 60 % 60,
        rem % 60,
        since_epoch.subsec_millis()
    )
}

/// Converts days since 1970-01-01 to a (year, month, day) of the proleptic Gregorian calendar,
/// counting in 400-year eras of 146,097 days that start on March 1st.
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let day_of_era = z.rem_euclid(146_097);
    let year_of_era =
        (day_of_era - day_of_era / 1_460 + day_of_era / 36_524 - day_of_era / 146_096) / 365;
    let day_of_year = day_of_era - (365 * year_of_era + year_of_era / 4 - year_of_era / 100);
    let month_index = (5 * day_of_year + 2) / 153; // 0 = March
    let day = (day_of_year - (153 * month_index + 2) / 5 + 1) as u32;
    let month = if month_index < 10 {
        month_index + 3
    } else {
        month_index - 9
    } as u32;
    let year = year_of_era + era * 400 + i64::from(month <= 2);
    (year, month, day)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn calendar_conversion() {
        assert_eq!(civil_from_days(0), (1970, 1, 1));
        assert_eq!(civil_from_days(59), (1970, 3, 1));
        assert_eq!(civil_from_days(11_016), (2000, 2, 29));
        assert_eq!(civil_from_days(20_780), (2026, 11, 23));
        assert_eq!(civil_from_days(-1), (1969, 12, 31));
    }

    #[test]
    fn a_throttle_admits_its_lines_per_second_and_reports_what_it_held_back() {
        let throttle = Throttle::new(3);
        let start = Instant::now();
        let at = |ms| start + Duration::from_millis(ms);
        let admitted: Vec<_> = (0..5).map(|i| throttle.admit(at(i * 10))).collect();
        assert_eq!(admitted, [Some(0), Some(0), Some(0), None, None]);
        // Still inside the first second: held back.
        assert_eq!(throttle.admit(at(999)), None);
        // A new window: the first line carries the three held back, and the count restarts.
        assert_eq!(throttle.admit(at(1_000)), Some(3));
        assert_eq!(throttle.admit(at(1_001)), Some(0));
        assert_eq!(throttle.admit(at(1_002)), Some(0));
        assert_eq!(throttle.admit(at(1_003)), None);
        // A window opens at the first line after a quiet spell, not on a fixed grid.
        assert_eq!(throttle.admit(at(5_500)), Some(1));
        assert_eq!(throttle.admit(at(6_400)), Some(0));
        assert_eq!(throttle.admit(at(6_450)), Some(0));
        assert_eq!(throttle.admit(at(6_499)), None);
        assert_eq!(throttle.admit(at(6_500)), Some(1));
    }

    #[test]
    fn timestamps_are_rfc_3339_utc_with_milliseconds() {
        assert_eq!(
            timestamp_at(Duration::new(1_795_426_205, 123_456_789)),
            "2026-11-23T09:30:05.123Z"
        );
        assert_eq!(timestamp_at(Duration::ZERO), "1970-01-01T00:00:00.000Z");
        // The last millisecond of a leap day.
        assert_eq!(
            timestamp_at(Duration::new(951_868_799, 999_999_999)),
            "2000-02-29T23:59:59.999Z"
        );
    }

    #[test]
    fn control_characters_are_escaped_so_a_client_cannot_write_raw_bytes_to_the_log() {
        let mut line = String::new();
        push_value(&mut line, "a\u{1}\u{1b}[2J\r\tb");
        assert_eq!(line, r#""a\x01\x1b[2J\x0d\x09b""#);
    }

    #[test]
    fn values_are_quoted_only_when_needed() {
        let mut line = String::new();
        push_value(&mut line, "127.0.0.1:80");
        line.push(' ');
        push_value(&mut line, "no such \"file\"\n");
        line.push(' ');
        push_value(&mut line, "");
        assert_eq!(line, "127.0.0.1:80 \"no such \\\"file\\\"\\n\" \"\"");
    }
}
