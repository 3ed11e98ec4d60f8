//! Timestamps as they travel: RFC 3339 text, as chrono writes it (`2026-01-01T12:00:00.5Z`).
//!
//! chrono's own `Deserialize` reads a relaxed form through its general format parser; strict
//! RFC 3339 only needs its dedicated parser, which leaves a few kilobytes of parser out of the
//! browser's WASM. Everything cairn writes is strict RFC 3339, so it reads back the same.
//! Use with `#[serde(deserialize_with = "crate::rfc3339::deserialize")]`, or
//! `#[serde(default, deserialize_with = "crate::rfc3339::option")]` for an optional one.

use chrono::{DateTime, Utc};
use serde::{Deserialize, Deserializer, de::Error as _};

/// Reads an RFC 3339 timestamp (any offset) as UTC.
pub fn parse(text: &str) -> Result<DateTime<Utc>, String> {
    DateTime::parse_from_rfc3339(text)
        .map(|t| t.with_timezone(&Utc))
        .map_err(|e| format!("invalid timestamp `{text}`: {e}"))
}

/// Deserializes a timestamp.
pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<DateTime<Utc>, D::Error> {
    parse(&String::deserialize(d)?).map_err(D::Error::custom)
}

/// Deserializes an optional timestamp (`null` is `None`).
pub fn option<'de, D: Deserializer<'de>>(d: D) -> Result<Option<DateTime<Utc>>, D::Error> {
    Option::<String>::deserialize(d)?
        .map(|t| parse(&t))
        .transpose()
        .map_err(D::Error::custom)
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
