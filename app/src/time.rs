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
        return format!("{:.1}s", ms as f64 / 1000.0);
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
    t.format("%H:%M:%S").to_string()
}
