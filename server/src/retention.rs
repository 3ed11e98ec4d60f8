//! Retention: finished workflows older than `[retention] finished_after` are deleted in the
//! background, a small batch at a time, and `cairn prune` does it by hand.
//!
//! Only completed, failed and cancelled workflows whose last change is older than the cut-off
//! go, with their events, steps, outputs, leases and idempotency keys; a running, paused or
//! stalled one is never touched. Live streams carry on; a client that resumes a stream from
//! before the deleted events gets a fresh snapshot of the workspace (see
//! [`crate::store::Store::pruned_through`]).

use std::time::Duration;

use anyhow::Context;
use serde::Deserialize;
use tokio_util::sync::CancellationToken;

use crate::store::{Pruned, Store};

/// The `[retention]` table as written.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RawRetention {
    /// How long a finished workflow is kept: `"30d"`, `"12h"`, `"90m"`.
    finished_after: String,
    /// How often to look: default `"10m"`.
    every: Option<String>,
    /// Workflows deleted per transaction: default 100.
    batch: Option<u32>,
}

/// When and how much retention deletes.
#[derive(Debug, Clone, PartialEq)]
pub struct Retention {
    /// Finished workflows whose last change is older than this go.
    pub finished_after: Duration,
    /// How often the pruner looks.
    pub every: Duration,
    /// Workflows per transaction.
    pub batch: u32,
}

impl RawRetention {
    pub(crate) fn check(self) -> anyhow::Result<Retention> {
        let finished_after = parse_age(&self.finished_after)
            .context("retention.finished_after (e.g. \"30d\", \"12h\")")?;
        let every = match &self.every {
            Some(e) => parse_age(e).context("retention.every (e.g. \"10m\")")?,
            None => Duration::from_secs(600),
        };
        let batch = self.batch.unwrap_or(100);
        if !(1..=10_000).contains(&batch) {
            anyhow::bail!("retention.batch must be from 1 to 10000, got {batch}");
        }
        Ok(Retention {
            finished_after,
            every,
            batch,
        })
    }
}

/// A duration as people write it (`30d`, `7 days`, `12h`, `250ms`), more than zero.
pub fn parse_age(text: &str) -> anyhow::Result<Duration> {
    let d = humantime::parse_duration(text.trim())
        .with_context(|| format!("{text:?} is not a duration like 30d, 12h or 90m"))?;
    if d.is_zero() {
        anyhow::bail!("{text:?}: the duration must be more than zero");
    }
    Ok(d)
}

/// Deletes finished workflows older than `older_than` in batches of `batch` until none is
/// left (or, with `dry_run`, lists them all without deleting).
pub async fn prune_all(
    store: &Store,
    older_than: Duration,
    batch: u32,
    dry_run: bool,
) -> anyhow::Result<Pruned> {
    let before = chrono::Utc::now()
        - chrono::Duration::from_std(older_than).context("the age is too large")?;
    if dry_run {
        // One read of them all: nothing is deleted, so batches would see the same rows.
        return store.prune(before, u32::MAX, true).await;
    }
    let mut total = Pruned::default();
    loop {
        let round = store.prune(before, batch, false).await?;
        let n = round.workflows.len();
        total.workflows.extend(round.workflows);
        total.events += round.events;
        if n < batch as usize {
            return Ok(total);
        }
        // Let checkpoints in between batches.
        tokio::task::yield_now().await;
    }
}

/// The background pruner: every `every`, until `stop`.
pub async fn run(store: Store, retention: Retention, stop: CancellationToken) {
    let mut every = tokio::time::interval(retention.every);
    every.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = stop.cancelled() => return,
            _ = every.tick() => {}
        }
        match prune_all(&store, retention.finished_after, retention.batch, false).await {
            Ok(p) if !p.workflows.is_empty() => tracing::info!(
                workflows = p.workflows.len(),
                events = p.events,
                "retention: deleted finished workflows"
            ),
            Ok(_) => {}
            Err(e) => tracing::warn!(error = format!("{e:#}"), "retention: pruning failed"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ages_read_as_people_write_them_and_zero_or_nonsense_is_refused() {
        assert_eq!(parse_age("30d").unwrap(), Duration::from_secs(30 * 86_400));
        assert_eq!(parse_age("12h").unwrap(), Duration::from_secs(12 * 3600));
        assert_eq!(parse_age(" 250ms ").unwrap(), Duration::from_millis(250));
        assert!(parse_age("0s").is_err());
        assert!(
            parse_age("soon")
                .unwrap_err()
                .to_string()
                .contains("like 30d")
        );
    }

    #[test]
    fn the_table_has_defaults_and_checks_its_batch() {
        let r: RawRetention = toml::from_str("finished_after = \"7d\"").unwrap();
        let r = r.check().unwrap();
        assert_eq!(r.every, Duration::from_secs(600));
        assert_eq!(r.batch, 100);
        let r: RawRetention = toml::from_str("finished_after = \"7d\"\nbatch = 0").unwrap();
        assert!(r.check().is_err());
        assert!(toml::from_str::<RawRetention>("finished = \"7d\"").is_err());
    }
}
