//! The retry policy: its shape ([`RetryPolicy`], the partial [`RetryOverrides`] a spec
//! sets, [`OnExhausted`]) and its maths: how long to wait, whether an error is worth
//! retrying, and the decision that combines both.
//!
//! Pure: randomness comes in as a number in `[0, 1)` so tests (and replays) are exact.

use std::fmt;

use serde::{Deserialize, Serialize};

use crate::spec::Limits;

/// The longest wait a retry policy may name, in milliseconds (a day): larger numbers are typos.
pub const MAX_INTERVAL_MS: u64 = 86_400_000;
/// The largest accepted `backoff_factor`.
pub const MAX_BACKOFF_FACTOR: f64 = 100.0;

/// What happens when a step has failed for good (retries exhausted or a final error).
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq, Default)]
#[serde(rename_all = "snake_case")]
pub enum OnExhausted {
    /// Fail the step and then the workflow.
    #[default]
    Fail,
    /// Fail the step but hold the workflow (`paused`) for a person to retry, skip or cancel.
    Pause,
}

impl OnExhausted {
    /// The wire name (`fail` / `pause`).
    pub fn as_str(self) -> &'static str {
        match self {
            OnExhausted::Fail => "fail",
            OnExhausted::Pause => "pause",
        }
    }
}

/// How a step is retried. Resolved per step: step `retry` over spec `defaults.retry` over the
/// server's configured base policy.
// Read back field by field (`crate::wire`).
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct RetryPolicy {
    /// Attempts in total, the first one included (1 = never retry).
    pub max_attempts: u32,
    /// The wait before the second attempt.
    pub initial_interval_ms: u64,
    /// Each later wait is the previous one times this.
    pub backoff_factor: f64,
    /// No wait is longer than this.
    pub max_interval_ms: u64,
    /// Randomise each wait between half and all of it ("equal jitter"), so that many
    /// workflows failing together do not retry in lock-step.
    pub jitter: bool,
    /// Case-insensitive substrings that make an error final (never retried). Empty entries
    /// are ignored.
    pub non_retryable: Vec<String>,
    /// What to do once the step has failed for good.
    pub on_exhausted: OnExhausted,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        RetryPolicy {
            max_attempts: 3,
            initial_interval_ms: 1000,
            backoff_factor: 2.0,
            max_interval_ms: 30_000,
            jitter: true,
            non_retryable: [
                "validation failed",
                "invalid configuration",
                "unauthorized",
                "forbidden",
            ]
            .map(String::from)
            .to_vec(),
            on_exhausted: OnExhausted::Fail,
        }
    }
}

/// A partial [`RetryPolicy`]: what a spec's `defaults.retry` or a step's `retry` sets.
/// `None` keeps the value underneath.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
#[serde(default, deny_unknown_fields)]
pub struct RetryOverrides {
    /// See [`RetryPolicy::max_attempts`].
    pub max_attempts: Option<u32>,
    /// See [`RetryPolicy::initial_interval_ms`].
    pub initial_interval_ms: Option<u64>,
    /// See [`RetryPolicy::backoff_factor`].
    pub backoff_factor: Option<f64>,
    /// See [`RetryPolicy::max_interval_ms`].
    pub max_interval_ms: Option<u64>,
    /// See [`RetryPolicy::jitter`].
    pub jitter: Option<bool>,
    /// See [`RetryPolicy::non_retryable`]; replaces the list underneath, it does not extend it.
    pub non_retryable: Option<Vec<String>>,
    /// See [`RetryPolicy::on_exhausted`].
    pub on_exhausted: Option<OnExhausted>,
}

impl RetryPolicy {
    /// This policy with every field that `o` sets replaced.
    pub fn overlay(&self, o: &RetryOverrides) -> RetryPolicy {
        RetryPolicy {
            max_attempts: o.max_attempts.unwrap_or(self.max_attempts),
            initial_interval_ms: o.initial_interval_ms.unwrap_or(self.initial_interval_ms),
            backoff_factor: o.backoff_factor.unwrap_or(self.backoff_factor),
            max_interval_ms: o.max_interval_ms.unwrap_or(self.max_interval_ms),
            jitter: o.jitter.unwrap_or(self.jitter),
            non_retryable: o
                .non_retryable
                .clone()
                .unwrap_or_else(|| self.non_retryable.clone()),
            on_exhausted: o.on_exhausted.unwrap_or(self.on_exhausted),
        }
    }

    /// Everything wrong with this policy's numbers, as `(field, message)` pairs; empty when it
    /// is fine. Spec parsing applies the same rules with JSON paths; the server can use this to
    /// check the base policy from its own configuration at start-up.
    pub fn problems(&self, limits: &Limits) -> Vec<(&'static str, String)> {
        let mut out = Vec::new();
        if !(1..=limits.max_attempts).contains(&self.max_attempts) {
            out.push((
                "max_attempts",
                range_message(1, u64::from(limits.max_attempts), self.max_attempts),
            ));
        }
        if self.initial_interval_ms > MAX_INTERVAL_MS {
            out.push((
                "initial_interval_ms",
                range_message(0, MAX_INTERVAL_MS, self.initial_interval_ms),
            ));
        }
        if !(1.0..=MAX_BACKOFF_FACTOR).contains(&self.backoff_factor) {
            out.push(("backoff_factor", factor_message(self.backoff_factor)));
        }
        if self.max_interval_ms > MAX_INTERVAL_MS {
            out.push((
                "max_interval_ms",
                range_message(0, MAX_INTERVAL_MS, self.max_interval_ms),
            ));
        } else if self.max_interval_ms < self.initial_interval_ms {
            out.push(("max_interval_ms", interval_order_message(self)));
        }
        out
    }
}

/// The message for a whole number outside `min..=max`.
pub(crate) fn range_message(min: u64, max: u64, found: impl fmt::Display) -> String {
    format!("expected a whole number between {min} and {max}, found {found}")
}

/// The message for a `backoff_factor` outside its range.
pub(crate) fn factor_message(found: f64) -> String {
    format!("expected a number between 1 and {MAX_BACKOFF_FACTOR}, found {found}")
}

/// The message for `max_interval_ms < initial_interval_ms`.
pub(crate) fn interval_order_message(p: &RetryPolicy) -> String {
    format!(
        "max_interval_ms ({}) is smaller than initial_interval_ms ({})",
        p.max_interval_ms, p.initial_interval_ms
    )
}

/// Whether an error is worth another attempt.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum ErrorClass {
    /// Try again (after the backoff).
    Retryable,
    /// Trying again would fail the same way.
    Final,
}

/// What to do after an attempt failed.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
#[serde(rename_all = "snake_case", tag = "decision")]
pub enum RetryDecision {
    /// Run another attempt after this wait.
    RetryAfter {
        /// The wait, jitter included.
        delay_ms: u64,
    },
    /// The step has used all its attempts.
    Exhausted,
    /// The error is final: do not retry.
    NonRetryable,
}

impl RetryPolicy {
    /// The wait before the attempt that follows failed attempt `attempt` (counted from 1):
    /// `min(initial * factor^(attempt-1), max)`, then with jitter "equal jitter":
    /// `d/2 + unit_random * d/2`.
    ///
    /// `unit_random` should be in `[0, 1)`; values outside are clamped and NaN counts as 0.
    /// Attempt 0 is treated as 1. Never overflows: the growth is computed in floating point
    /// and capped before it is turned back into an integer.
    pub fn delay_ms(&self, attempt: u32, unit_random: f64) -> u64 {
        let cap = self.max_interval_ms as f64;
        let exponent = f64::from(attempt.max(1) - 1);
        let grown = self.initial_interval_ms as f64 * self.backoff_factor.powf(exponent);
        // NaN (a hand-made factor) and infinity both land on the cap.
        let d = if grown.is_finite() {
            grown.clamp(0.0, cap)
        } else {
            cap
        };
        let d = if self.jitter {
            let r = if unit_random.is_nan() {
                0.0
            } else {
                unit_random.clamp(0.0, 1.0)
            };
            d / 2.0 + r * d / 2.0
        } else {
            d
        };
        // `as` saturates; the `min` guards against rounding a hair above the cap.
        (d as u64).min(self.max_interval_ms)
    }

    /// [`ErrorClass::Final`] when the error contains one of the `non_retryable` substrings,
    /// ignoring case; empty entries match nothing.
    pub fn classify(&self, error: &str) -> ErrorClass {
        let error = error.to_lowercase();
        let is_final = self
            .non_retryable
            .iter()
            .filter(|needle| !needle.is_empty())
            .any(|needle| error.contains(&needle.to_lowercase()));
        if is_final {
            ErrorClass::Final
        } else {
            ErrorClass::Retryable
        }
    }

    /// What to do after attempt `attempt` failed with `error`. `runner_says_final` is the
    /// runner's own verdict (an HTTP 4xx, say), which wins over everything.
    pub fn decide(
        &self,
        attempt: u32,
        error: &str,
        runner_says_final: bool,
        unit_random: f64,
    ) -> RetryDecision {
        if runner_says_final || self.classify(error) == ErrorClass::Final {
            RetryDecision::NonRetryable
        } else if attempt >= self.max_attempts {
            RetryDecision::Exhausted
        } else {
            RetryDecision::RetryAfter {
                delay_ms: self.delay_ms(attempt, unit_random),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn no_jitter() -> RetryPolicy {
        RetryPolicy {
            jitter: false,
            ..Default::default()
        }
    }

    #[test]
    fn delays_grow_by_the_factor_until_the_cap() {
        let p = no_jitter();
        let delays: Vec<_> = (1..=7).map(|a| p.delay_ms(a, 0.5)).collect();
        assert_eq!(delays, [1000, 2000, 4000, 8000, 16000, 30000, 30000]);
    }

    #[test]
    fn attempt_zero_waits_like_attempt_one() {
        assert_eq!(no_jitter().delay_ms(0, 0.0), 1000);
    }

    #[test]
    fn a_factor_of_one_keeps_the_delay_constant() {
        let p = RetryPolicy {
            backoff_factor: 1.0,
            ..no_jitter()
        };
        assert_eq!(p.delay_ms(50, 0.0), 1000);
    }

    #[test]
    fn huge_attempt_numbers_do_not_overflow() {
        let p = RetryPolicy {
            backoff_factor: 100.0,
            max_interval_ms: u64::MAX,
            ..no_jitter()
        };
        assert_eq!(p.delay_ms(u32::MAX, 0.0), u64::MAX);
        assert_eq!(RetryPolicy::default().delay_ms(u32::MAX, 0.5), 22_500);
    }

    #[test]
    fn equal_jitter_stays_between_half_and_all_of_the_delay() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay_ms(2, 0.0), 1000);
        assert_eq!(p.delay_ms(2, 0.5), 1500);
        assert_eq!(p.delay_ms(2, 0.999_999), 1999);
    }

    #[test]
    fn out_of_range_randomness_is_clamped() {
        let p = RetryPolicy::default();
        assert_eq!(p.delay_ms(2, -3.0), 1000);
        assert_eq!(p.delay_ms(2, 7.0), 2000);
        assert_eq!(p.delay_ms(2, f64::NAN), 1000);
        assert_eq!(p.delay_ms(2, f64::INFINITY), 2000);
    }

    #[test]
    fn a_hand_made_nan_factor_falls_back_to_the_cap() {
        let p = RetryPolicy {
            backoff_factor: f64::NAN,
            ..no_jitter()
        };
        assert_eq!(p.delay_ms(3, 0.0), 30_000);
        let p = RetryPolicy {
            backoff_factor: -2.0,
            ..no_jitter()
        };
        assert_eq!(p.delay_ms(2, 0.0), 0);
    }

    #[test]
    fn non_retryable_substrings_make_an_error_final_ignoring_case() {
        let p = RetryPolicy::default();
        assert_eq!(p.classify("HTTP 403: Forbidden"), ErrorClass::Final);
        assert_eq!(p.classify("Validation Failed: name"), ErrorClass::Final);
        assert_eq!(p.classify("connection reset"), ErrorClass::Retryable);
        let p = RetryPolicy {
            non_retryable: vec![String::new(), "ÉCHEC".into()],
            ..p
        };
        assert_eq!(p.classify("anything"), ErrorClass::Retryable);
        assert_eq!(p.classify("un échec total"), ErrorClass::Final);
    }

    #[test]
    fn decide_retries_until_the_budget_is_spent() {
        let p = no_jitter();
        assert_eq!(
            p.decide(1, "timeout", false, 0.0),
            RetryDecision::RetryAfter { delay_ms: 1000 }
        );
        assert_eq!(
            p.decide(2, "timeout", false, 0.0),
            RetryDecision::RetryAfter { delay_ms: 2000 }
        );
        assert_eq!(p.decide(3, "timeout", false, 0.0), RetryDecision::Exhausted);
        assert_eq!(p.decide(9, "timeout", false, 0.0), RetryDecision::Exhausted);
    }

    #[test]
    fn decide_stops_at_once_on_a_final_error() {
        let p = no_jitter();
        assert_eq!(
            p.decide(1, "unauthorized", false, 0.0),
            RetryDecision::NonRetryable
        );
        assert_eq!(
            p.decide(1, "timeout", true, 0.0),
            RetryDecision::NonRetryable
        );
        assert_eq!(
            p.decide(3, "forbidden", false, 0.0),
            RetryDecision::NonRetryable
        );
    }

    proptest! {
        #[test]
        fn delays_never_exceed_the_cap_and_jitter_keeps_at_least_half(
            initial in 0u64..=86_400_000,
            factor in 1.0f64..=100.0,
            max_extra in 0u64..=86_400_000,
            attempt in any::<u32>(),
            r in any::<f64>(),
        ) {
            let max = initial.saturating_add(max_extra);
            let p = RetryPolicy {
                initial_interval_ms: initial, backoff_factor: factor, max_interval_ms: max,
                ..Default::default()
            };
            let full = RetryPolicy { jitter: false, ..p.clone() }.delay_ms(attempt, r);
            let jittered = p.delay_ms(attempt, r);
            prop_assert!(full <= max);
            prop_assert!(jittered <= full);
            prop_assert!(jittered >= full / 2);
            if attempt >= 1 {
                prop_assert!(full >= initial.min(max));
            }
        }
    }
}
