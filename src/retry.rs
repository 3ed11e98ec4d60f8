//! Retry maths for [`RetryPolicy`]: how long to wait, whether an error is worth retrying,
//! and the decision that combines both.
//!
//! Pure: randomness comes in as a number in `[0, 1)` so tests (and replays) are exact.

use serde::{Deserialize, Serialize};

use crate::spec::RetryPolicy;

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
