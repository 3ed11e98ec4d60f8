//! Clock and human-friendly times.
//!
//! The browser keeps a clock signal that ticks every second (countdowns, elapsed times);
//! the server renders with its own clock. Text may differ by a second between the two,
//! the structure never does.

use chrono::{DateTime, Utc};
use leptos::prelude::*;

/// Now, on whichever side this runs.
pub fn now() -> DateTime<Utc> {
    #[cfg(feature = "hydrate")]
    {
        DateTime::from_timestamp_millis(js_sys::Date::now() as i64).unwrap_or_default()
    }
    #[cfg(all(not(feature = "hydrate"), feature = "ssr"))]
    {
        Utc::now()
    }
    #[cfg(all(not(feature = "hydrate"), not(feature = "ssr")))]
    {
        DateTime::default()
    }
}

/// The ticking clock every view reads.
#[derive(Clone, Copy)]
pub struct Clock(pub ReadSignal<DateTime<Utc>>);

/// Provides the clock; in the browser it ticks every second.
pub fn provide_clock() {
    let (now_sig, set_now) = signal(now());
    #[cfg(feature = "hydrate")]
    {
        let handle = set_interval_with_handle(
            move || set_now.set(now()),
            std::time::Duration::from_secs(1),
        );
        if let Ok(h) = handle {
            on_cleanup(move || h.clear());
        }
    }
    #[cfg(not(feature = "hydrate"))]
    let _ = set_now;
    provide_context(Clock(now_sig));
}

/// The clock signal (falls back to a still clock outside the app).
pub fn use_clock() -> ReadSignal<DateTime<Utc>> {
    use_context::<Clock>()
        .map(|c| c.0)
        .unwrap_or_else(|| signal(now()).0)
}

/// `1.2s`, `3m 05s`, `2h 10m`.
pub fn duration_ms(ms: i64) -> String {
    let ms = ms.max(0);
    if ms < 1000 {
        return format!("{ms}ms");
    }
    let s = ms / 1000;
    if s < 60 {
        // Tenths by integer maths: no float formatting code in the browser's bundle.
        return format!("{s}.{}s", (ms % 1000) / 100);
    }
    if s < 3600 {
        return format!("{}m {:02}s", s / 60, s % 60);
    }
    format!("{}h {:02}m", s / 3600, (s % 3600) / 60)
}

/// `just now`, `12s ago`, `5m ago`, `3h ago`, `2d ago`.
pub fn ago(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (now - t).num_seconds();
    match s {
        i64::MIN..=4 => "just now".into(),
        5..=59 => format!("{s}s ago"),
        60..=3599 => format!("{}m ago", s / 60),
        3600..=86399 => format!("{}h ago", s / 3600),
        _ => format!("{}d ago", s / 86400),
    }
}

/// `in 12s`, or `now` once due.
pub fn until(t: DateTime<Utc>, now: DateTime<Utc>) -> String {
    let s = (t - now).num_milliseconds();
    if s <= 0 {
        "now".into()
    } else {
        format!("in {}", duration_ms(s))
    }
}

/// `14:02:11` (UTC) for timestamps in lists.
pub fn clock_time(t: DateTime<Utc>) -> String {
    use chrono::Timelike;
    format!("{:02}:{:02}:{:02}", t.hour(), t.minute(), t.second())
}

/// `done` of `total` as a whole percentage for a progress bar (0 when there is nothing to do).
pub fn percent(done: usize, total: usize) -> usize {
    (done * 100).checked_div(total).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: &str) -> DateTime<Utc> {
        s.parse().unwrap()
    }

    #[test]
    fn durations_read_as_people_say_them() {
        assert_eq!(duration_ms(-5), "0ms");
        assert_eq!(duration_ms(999), "999ms");
        assert_eq!(duration_ms(1_000), "1.0s");
        assert_eq!(duration_ms(1_290), "1.2s");
        assert_eq!(duration_ms(59_999), "59.9s");
        assert_eq!(duration_ms(185_000), "3m 05s");
        assert_eq!(duration_ms(7_800_000), "2h 10m");
    }

    #[test]
    fn relative_times() {
        let now = at("2026-01-01T12:00:00Z");
        assert_eq!(ago(at("2026-01-01T11:59:58Z"), now), "just now");
        assert_eq!(ago(at("2026-01-01T11:59:48Z"), now), "12s ago");
        assert_eq!(ago(at("2026-01-01T09:00:00Z"), now), "3h ago");
        assert_eq!(until(at("2026-01-01T12:00:12Z"), now), "in 12.0s");
        assert_eq!(until(at("2026-01-01T11:00:00Z"), now), "now");
        assert_eq!(clock_time(at("2026-01-01T07:05:09.900Z")), "07:05:09");
    }

    #[test]
    fn progress_percentages() {
        assert_eq!(percent(0, 0), 0);
        assert_eq!(percent(1, 3), 33);
        assert_eq!(percent(2, 3), 66);
        assert_eq!(percent(3, 3), 100);
    }
}
