//! What a runner does with output past the role's `max_output_bytes`, and decoding what a program printed.

use super::*;

/// The final error of an attempt whose output went past `max_output_bytes` with
/// `on_output_overflow = "fail"`: producing as much again on a retry cannot help.
pub(super) fn overflow_error(limit: &OutputLimit) -> RunError {
    RunError::final_(format!(
        "output exceeded {} (max_output_bytes)",
        human(limit.max_bytes as u64)
    ))
}

/// The line appended to an output cut at `max_output_bytes`: `kept` bytes of `total`.
pub(super) fn truncation_marker(kept: usize, total: u64) -> String {
    format!(
        "\n[cairn] output truncated: kept {} of {}",
        human(kept as u64),
        human(total)
    )
}

/// Applies `limit` to an output already in memory (simulate, http): within the limit it is
/// kept as it is; past it, the attempt fails for good or the output is cut at a character
/// boundary and marked.
pub(super) fn bound_output(mut output: String, limit: &OutputLimit) -> Result<String, RunError> {
    if output.len() <= limit.max_bytes {
        return Ok(output);
    }
    match limit.on_overflow {
        OnOverflow::Fail => Err(overflow_error(limit)),
        OnOverflow::Truncate => {
            let total = output.len() as u64;
            output.truncate(output.floor_char_boundary(limit.max_bytes));
            let marker = truncation_marker(output.len(), total);
            output.push_str(&marker);
            Ok(output)
        }
    }
}

/// `bytes` without a character cut in two at its end (when they are the head of a longer
/// text), so that decoding does not turn the half character into U+FFFD.
pub(super) fn without_partial_char(bytes: &[u8]) -> &[u8] {
    let from = bytes.len().saturating_sub(4);
    let Some(start) = bytes[from..].iter().rposition(|b| b & 0xC0 != 0x80) else {
        return bytes;
    };
    let start = from + start;
    match std::str::from_utf8(&bytes[start..]) {
        Err(e) if e.error_len().is_none() => &bytes[..start],
        _ => bytes,
    }
}

/// Decodes what a program printed, lossily, without copying it when it is valid UTF-8.
pub(super) fn decode(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned())
}

/// Decodes the first bytes of a longer text (lossily, as everything a program prints), at most
/// `max` bytes of it, ending at a character boundary.
pub(super) fn decode_head(bytes: &[u8], max: usize) -> String {
    let mut text = String::from_utf8_lossy(without_partial_char(bytes)).into_owned();
    text.truncate(text.floor_char_boundary(max));
    text
}

/// A byte count for people: "512 bytes", "64 KiB", "16 MiB", "286.1 MiB".
pub(super) fn human(bytes: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    for (size, unit) in UNITS {
        if bytes >= size {
            return if bytes.is_multiple_of(size) {
                format!("{} {unit}", bytes / size)
            } else {
                format!("{:.1} {unit}", bytes as f64 / size as f64)
            };
        }
    }
    match bytes {
        1 => "1 byte".to_string(),
        n => format!("{n} bytes"),
    }
}
