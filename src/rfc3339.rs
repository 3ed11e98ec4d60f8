//! Timestamps as they travel: RFC 3339 text, as chrono writes it (`2026-01-01T12:00:00.5Z`).
//!
//! chrono's own `Deserialize` reads a relaxed form through its general format parser; strict
//! RFC 3339 only needs its dedicated parser, which leaves a few kilobytes of parser out of the
//! browser's WASM. Everything cairn writes is strict RFC 3339, so it reads back the same.
//! The readers in `crate::wire` take every timestamp through [`parse`].

use chrono::{DateTime, Utc};

/// Reads an RFC 3339 timestamp (any offset) as UTC.
pub fn parse(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("invalid timestamp `{text}`: {e}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn what_chrono_writes_reads_back_the_same() {
        let t = DateTime::from_timestamp_millis(1_767_269_405_123).unwrap();
        let text = serde_json::to_value(t).unwrap();
        assert_eq!(parse(text.as_str().unwrap()), Ok(t));
        let offset = parse("2026-01-01T14:00:00+02:00").unwrap();
        assert_eq!(offset, parse("2026-01-01T12:00:00Z").unwrap());
    }

    #[test]
    fn text_that_is_not_a_timestamp_is_an_error_naming_it() {
        let err = parse("yesterday").unwrap_err();
        assert!(err.contains("`yesterday`"), "{err}");
        assert!(parse("2026-01-01").is_err());
    }
}
