//! Run windows: when a run may start shards. `[schedule] windows =
//! ["Mon-Fri 01:00-05:00"]` in a time zone (`time_zone = "Europe/Berlin"`,
//! UTC by default), or `--window` on the command line. Outside every window
//! the run waits: the shards in hand finish and nothing new starts; it goes
//! on inside the next window, the next night if need be.
//!
//! A window is `[DAYS ]START-END`: DAYS a comma-separated list of days or
//! day ranges (`Mon-Fri`, `Sat,Sun`, `Mon,Wed-Fri`; every day when left
//! out), START and END `HH:MM` or `HH:MM:SS` in the zone's wall-clock time
//! (`24:00` is the end of the day). An END at or before START ends the next
//! day (`Mon-Fri 22:00-04:00` opens Monday 22:00 and closes Tuesday 04:00).
//! The days name the day a window opens. Time zones come from the tz
//! database bundled by `jiff`; a time that a daylight-saving change skips
//! is moved on by the length of the gap (02:30 on the night clocks go from
//! 02:00 to 03:00 is 03:30), a repeated one is its first occurrence.

use jiff::civil::{Date, Time, Weekday};
use jiff::tz::TimeZone;
use jiff::Timestamp;
use std::time::Duration;

/// Day names, Monday first (the index is `Weekday::to_monday_zero_offset`).
const DAYS: [(&str, Weekday); 7] = [
    ("mon", Weekday::Monday),
    ("tue", Weekday::Tuesday),
    ("wed", Weekday::Wednesday),
    ("thu", Weekday::Thursday),
    ("fri", Weekday::Friday),
    ("sat", Weekday::Saturday),
    ("sun", Weekday::Sunday),
];

/// One window as written.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Window {
    /// Monday first.
    days: [bool; 7],
    start: Time,
    end: Time,
    text: String,
}

impl Window {
    /// Parses `[DAYS ]START-END`.
    pub fn parse(text: &str) -> Result<Window, String> {
        let t = text.trim();
        let (days, times) = match t.rsplit_once(char::is_whitespace) {
            Some((d, times)) => (parse_days(d.trim())?, times),
            None => ([true; 7], t),
        };
        let (start, end) = times
            .split_once('-')
            .ok_or_else(|| format!("`{t}`: expected START-END, such as 01:00-05:00"))?;
        let start = parse_time(start)?;
        let end = parse_time(end)?;
        Ok(Window {
            days,
            start,
            end,
            text: t.to_string(),
        })
    }

    pub fn text(&self) -> &str {
        &self.text
    }

    fn opens_on(&self, d: Weekday) -> bool {
        self.days[d.to_monday_zero_offset() as usize]
    }
}

fn parse_days(text: &str) -> Result<[bool; 7], String> {
    let day = |s: &str| -> Result<usize, String> {
        let k = s.trim().to_ascii_lowercase();
        (0..7)
            .find(|&i| k == DAYS[i].0 || k == DAYS_FULL[i])
            .ok_or_else(|| format!("`{s}` is not a day (Mon, Tue, Wed, Thu, Fri, Sat, Sun)"))
    };
    let mut days = [false; 7];
    for part in text.split(',') {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (day(a)?, day(b)?);
                // `Fri-Mon` wraps over the weekend.
                let mut i = a;
                loop {
                    days[i] = true;
                    if i == b {
                        break;
                    }
                    i = (i + 1) % 7;
                }
            }
            None => days[day(part)?] = true,
        }
    }
    Ok(days)
}

const DAYS_FULL: [&str; 7] = [
    "monday",
    "tuesday",
    "wednesday",
    "thursday",
    "friday",
    "saturday",
    "sunday",
];

fn parse_time(text: &str) -> Result<Time, String> {
    let bad = || format!("`{text}` is not a time of day (HH:MM or HH:MM:SS)");
    let parts: Vec<&str> = text.trim().split(':').collect();
    if !(2..=3).contains(&parts.len()) || parts.iter().any(|p| p.is_empty() || p.len() > 2) {
        return Err(bad());
    }
    let num = |s: &str| s.parse::<i8>().map_err(|_| bad());
    let (h, m) = (num(parts[0])?, num(parts[1])?);
    let s = match parts.get(2) {
        Some(s) => num(s)?,
        None => 0,
    };
    // 24:00 is the end of the day.
    if (h, m, s) == (24, 0, 0) {
        return Ok(Time::MAX);
    }
    Time::new(h, m, s, 0).map_err(|_| bad())
}

/// The windows of a run and their time zone.
#[derive(Debug, Clone, PartialEq)]
pub struct Schedule {
    pub windows: Vec<Window>,
    pub time_zone: String,
    tz: TimeZone,
}

/// Where a run stands against its windows.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum WindowState {
    /// Inside a window that closes in this long.
    Open { closes_in: Duration },
    /// Outside every window; the next opens in this long (`None`: never,
    /// which a valid schedule cannot be).
    Closed { opens_in: Option<Duration> },
}

impl WindowState {
    pub fn is_open(&self) -> bool {
        matches!(self, WindowState::Open { .. })
    }

    /// `waiting for window, opens in 3 h 12 min`, or `None` when open.
    pub fn waiting(&self) -> Option<String> {
        match self {
            WindowState::Open { .. } => None,
            WindowState::Closed { opens_in: Some(d) } => {
                Some(format!("waiting for window, opens in {}", span_text(*d)))
            }
            WindowState::Closed { opens_in: None } => {
                Some("waiting for window, none opens again".into())
            }
        }
    }
}

/// `3 h 12 min`, `12 min 5 s`, `40 s`.
pub fn span_text(d: Duration) -> String {
    let s = d.as_secs_f64().ceil() as u64;
    let (h, m, sec) = (s / 3600, s % 3600 / 60, s % 60);
    match (h, m) {
        (0, 0) => format!("{sec} s"),
        (0, _) if sec > 0 => format!("{m} min {sec} s"),
        (0, _) => format!("{m} min"),
        _ if h >= 48 => format!("{} d {} h", h / 24, h % 24),
        _ => format!("{h} h {m} min"),
    }
}

impl Schedule {
    /// The windows in a time zone (IANA name such as `Europe/Berlin`, or
    /// `UTC`). Errors name the window or the zone that is wrong.
    pub fn new(windows: &[String], time_zone: &str) -> Result<Schedule, (Option<usize>, String)> {
        if windows.is_empty() {
            return Err((None, "at least one window is needed".into()));
        }
        let windows = windows
            .iter()
            .enumerate()
            .map(|(i, w)| Window::parse(w).map_err(|e| (Some(i), e)))
            .collect::<Result<Vec<_>, _>>()?;
        // The bundled database by name, not the process-wide one: with
        // jiff's default features (which jaq-std turns on) that one reads
        // the system's zoneinfo first, and a schedule must mean the same
        // on every host.
        let tz = jiff::tz::TimeZoneDatabase::bundled()
            .get(time_zone)
            .map_err(|_| (None, format!("`{time_zone}` is not a time zone of the tz database (such as Europe/Berlin or UTC)")))?;
        Ok(Schedule {
            windows,
            time_zone: time_zone.to_string(),
            tz,
        })
    }

    /// How the ledger records a run's windows (its run row's `schedule`):
    /// `{"windows": [...], "time_zone": "..."}`.
    pub fn ledger_text(&self) -> String {
        serde_json::json!({
            "windows": self.windows.iter().map(Window::text).collect::<Vec<_>>(),
            "time_zone": self.time_zone,
        })
        .to_string()
    }

    /// Reads what [`Schedule::ledger_text`] wrote. The error says what is wrong.
    pub fn from_ledger_text(text: &str) -> Result<Schedule, String> {
        #[derive(serde::Deserialize)]
        struct Stored {
            windows: Vec<String>,
            time_zone: String,
        }
        let s: Stored =
            serde_json::from_str(text).map_err(|e| format!("its windows cannot be read: {e}"))?;
        Schedule::new(&s.windows, &s.time_zone).map_err(|(_, e)| format!("its windows: {e}"))
    }

    /// The schedule as one line (`Mon-Fri 01:00-05:00; Sat 00:00-06:00 (Europe/Berlin)`).
    pub fn describe(&self) -> String {
        let w: Vec<&str> = self.windows.iter().map(Window::text).collect();
        format!("{} ({})", w.join("; "), self.time_zone)
    }

    /// Where `now` stands.
    pub fn state_at(&self, now: Timestamp) -> WindowState {
        let today = now.to_zoned(self.tz.clone()).date();
        let mut next: Option<Timestamp> = None;
        let mut open_until: Option<Timestamp> = None;
        // A window that opened yesterday may still be open; one opens at
        // the latest a week from today.
        for offset in -1i64..=7 {
            let Ok(day) = today.checked_add(jiff::Span::new().days(offset)) else {
                continue;
            };
            for w in self.windows.iter().filter(|w| w.opens_on(day.weekday())) {
                let Some((start, end)) = self.bounds(day, w) else {
                    continue;
                };
                if start <= now && now < end {
                    open_until = Some(open_until.map_or(end, |u| u.max(end)));
                } else if start > now {
                    next = Some(next.map_or(start, |n| n.min(start)));
                }
            }
        }
        let since =
            |t: Timestamp| Duration::from_secs_f64(t.duration_since(now).as_secs_f64().max(0.0));
        match open_until {
            Some(end) => WindowState::Open {
                closes_in: since(end),
            },
            None => WindowState::Closed {
                opens_in: next.map(since),
            },
        }
    }

    /// Now, by the system clock.
    pub fn state_now(&self) -> WindowState {
        self.state_at(Timestamp::now())
    }

    /// A window's opening and closing instants when it opens on `day`.
    fn bounds(&self, day: Date, w: &Window) -> Option<(Timestamp, Timestamp)> {
        let start = day.to_datetime(w.start).to_zoned(self.tz.clone()).ok()?;
        let end_day = if w.end <= w.start {
            day.tomorrow().ok()?
        } else {
            day
        };
        let end = if w.end == Time::MAX {
            end_day.tomorrow().ok()?.to_datetime(Time::midnight())
        } else {
            end_day.to_datetime(w.end)
        }
        .to_zoned(self.tz.clone())
        .ok()?;
        Some((start.timestamp(), end.timestamp()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_ledger_text_reads_back_as_the_same_schedule() {
        let s = Schedule::new(
            &[
                "Mon-Fri 01:00-05:00".to_string(),
                "Sat 00:00-24:00".to_string(),
            ],
            "Europe/Berlin",
        )
        .unwrap();
        let text = s.ledger_text();
        assert_eq!(Schedule::from_ledger_text(&text).unwrap(), s);
        assert!(Schedule::from_ledger_text("{}")
            .unwrap_err()
            .contains("cannot be read"));
        assert!(
            Schedule::from_ledger_text(r#"{"windows": ["Mon 01:00"], "time_zone": "UTC"}"#)
                .unwrap_err()
                .starts_with("its windows: ")
        );
    }

    fn at(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    fn sched(w: &[&str], tz: &str) -> Schedule {
        Schedule::new(&w.iter().map(|s| s.to_string()).collect::<Vec<_>>(), tz).unwrap()
    }

    #[test]
    fn weekday_nights_in_berlin() {
        let s = sched(&["Mon-Fri 01:00-05:00"], "Europe/Berlin");
        // Friday 2026-12-04 10:00 UTC = 11:00 in Berlin: the next window is
        // Monday 01:00 Berlin = Monday 00:00 UTC, 62 h away.
        let st = s.state_at(at("2026-12-04T10:00:00Z"));
        assert_eq!(
            st,
            WindowState::Closed {
                opens_in: Some(Duration::from_secs(62 * 3600))
            }
        );
        assert_eq!(
            st.waiting().unwrap(),
            "waiting for window, opens in 2 d 14 h"
        );
        // Tuesday 02:30 Berlin (01:30 UTC): open, closes at 05:00 Berlin.
        let st = s.state_at(at("2026-12-08T01:30:00Z"));
        assert_eq!(
            st,
            WindowState::Open {
                closes_in: Duration::from_secs(9000)
            }
        );
        assert!(st.is_open() && st.waiting().is_none());
        // Saturday 02:00 Berlin: Saturday is not listed.
        assert!(!s.state_at(at("2026-12-05T01:00:00Z")).is_open());
    }

    #[test]
    fn a_window_over_midnight_belongs_to_the_day_it_opens() {
        let s = sched(&["Fri 22:00-04:00"], "UTC");
        assert!(
            s.state_at(at("2026-12-04T23:00:00Z")).is_open(),
            "Friday night"
        );
        assert!(
            s.state_at(at("2026-12-05T03:59:59Z")).is_open(),
            "Saturday early"
        );
        assert!(
            !s.state_at(at("2026-12-05T04:00:00Z")).is_open(),
            "closed at 04:00"
        );
        assert!(
            !s.state_at(at("2026-12-03T23:00:00Z")).is_open(),
            "Thursday night"
        );
        assert_eq!(
            s.state_at(at("2026-12-04T21:00:00Z")),
            WindowState::Closed {
                opens_in: Some(Duration::from_secs(3600))
            }
        );
    }

    #[test]
    fn seconds_and_every_day_and_several_windows() {
        let s = sched(&["10:00:05-10:00:10", "10:00:20-10:00:40"], "UTC");
        let st = |t: &str| s.state_at(at(t));
        assert_eq!(
            st("2026-12-04T10:00:00Z"),
            WindowState::Closed {
                opens_in: Some(Duration::from_secs(5))
            }
        );
        assert_eq!(
            st("2026-12-04T10:00:07Z"),
            WindowState::Open {
                closes_in: Duration::from_secs(3)
            }
        );
        assert_eq!(
            st("2026-12-04T10:00:12Z"),
            WindowState::Closed {
                opens_in: Some(Duration::from_secs(8))
            }
        );
        assert!(st("2026-12-04T10:00:39Z").is_open());
        // After the last: tomorrow's first.
        assert_eq!(
            st("2026-12-04T10:00:41Z"),
            WindowState::Closed {
                opens_in: Some(Duration::from_secs(86_400 - 36))
            }
        );
    }

    #[test]
    fn daylight_saving_changes_follow_the_zone() {
        // 2026-03-29: Berlin moves from UTC+1 to UTC+2 at 02:00.
        let s = sched(&["Sun 01:00-05:00"], "Europe/Berlin");
        // Opens 01:00 CET = 00:00 UTC; closes 05:00 CEST = 03:00 UTC.
        assert!(s.state_at(at("2026-03-29T00:00:00Z")).is_open());
        assert_eq!(
            s.state_at(at("2026-03-29T02:00:00Z")),
            WindowState::Open {
                closes_in: Duration::from_secs(3600)
            }
        );
        assert!(!s.state_at(at("2026-03-29T03:00:00Z")).is_open());
        // A window opening inside the gap (02:30 does not exist) opens at
        // 03:30 CEST (01:30 UTC).
        let gap = sched(&["Sun 02:30-04:00"], "Europe/Berlin");
        assert!(gap.state_at(at("2026-03-29T01:30:00Z")).is_open());
        assert!(!gap.state_at(at("2026-03-29T01:29:59Z")).is_open());
    }

    #[test]
    fn day_lists_ranges_and_full_names() {
        let w = Window::parse("Mon,Wed-Fri 01:00-02:00").unwrap();
        assert_eq!(w.days, [true, false, true, true, true, false, false]);
        let w = Window::parse("Fri-Mon 01:00-02:00").unwrap();
        assert_eq!(w.days, [true, false, false, false, true, true, true]);
        let w = Window::parse("saturday,SUNDAY 00:00-24:00").unwrap();
        assert_eq!(w.days, [false, false, false, false, false, true, true]);
        let s = sched(&["Sat 00:00-24:00"], "UTC");
        assert!(s.state_at(at("2026-12-05T23:59:59Z")).is_open());
        assert!(!s.state_at(at("2026-12-06T00:00:00Z")).is_open());
    }

    #[test]
    fn bad_windows_and_zones_are_named() {
        for (w, needle) in [
            ("Mon-Fri", "not a time"),
            ("Mon-Fri 01:00", "START-END"),
            ("Mon-Fri 25:00-05:00", "not a time"),
            ("Mon-Fri 1:00-5", "not a time"),
            ("Moon 01:00-05:00", "not a day"),
            ("Mo 01:00-05:00", "not a day"),
            ("Mon-Fri 01:00-05:00:99", "not a time"),
        ] {
            let e = Window::parse(w).unwrap_err();
            assert!(e.contains(needle), "{w}: {e}");
        }
        let e = Schedule::new(&["01:00-02:00".into(), "x".into()], "UTC").unwrap_err();
        assert_eq!(e.0, Some(1));
        let e = Schedule::new(&["01:00-02:00".into()], "Mars/Olympus").unwrap_err();
        assert!(e.0.is_none() && e.1.contains("Mars/Olympus"), "{e:?}");
        assert!(Schedule::new(&[], "UTC").is_err());
    }

    #[test]
    fn spans_read_as_people_say_them() {
        assert_eq!(
            span_text(Duration::from_secs(3 * 3600 + 12 * 60)),
            "3 h 12 min"
        );
        assert_eq!(span_text(Duration::from_secs(40)), "40 s");
        assert_eq!(span_text(Duration::from_secs(725)), "12 min 5 s");
        assert_eq!(span_text(Duration::from_millis(4200)), "5 s");
    }
}
