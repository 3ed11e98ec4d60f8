//! The live fan-out: one publisher per instance reads the committed log in id order and
//! publishes every event on the store's broadcast channel.
//!
//! Live events come from the log itself, not from whoever wrote them, so an instance streams
//! every committed event in the order of their ids, whichever writer committed them. The
//! writer only wakes the publisher after each commit; the live feeds (`crate::live`) stay gap-free
//! because an event is published after its commit, in log order, exactly once.

use std::{sync::Arc, time::Duration};

use tokio::sync::{broadcast, mpsc};

use super::{postgres::PgStore, sqlite::SqliteStore, types::LiveEvent};

/// Events read per page while catching up with the log.
const PAGE: u32 = 1000;

/// How often the log is read without a wake-up: what another writer of the same database
/// committed reaches this instance's streams within this time at the latest.
const POLL: Duration = Duration::from_secs(1);

/// Where the publisher reads the log.
#[derive(Clone, Debug)]
pub(super) enum Log {
    /// An SQLite file.
    Sqlite(SqliteStore),
    /// A Postgres database (woken by notifications of every instance's checkpoints).
    Postgres(PgStore),
}

impl Log {
    async fn after(&self, id: i64) -> anyhow::Result<Vec<LiveEvent>> {
        let all = super::EventScope::default();
        match self {
            Log::Sqlite(s) => s.events_after(all, id, PAGE).await,
            Log::Postgres(p) => p.events_after(all, id, PAGE).await,
        }
    }
}

/// Starts the publisher after event `from`. It reads on every wake-up (one per commit, merged
/// while it is busy) and at least every [`POLL`], and ends when the wake-up channel closes,
/// that is when the writer stops.
pub(super) fn start(
    log: Log,
    from: i64,
    mut wake: mpsc::Receiver<()>,
    events: broadcast::Sender<Arc<LiveEvent>>,
) {
    tokio::spawn(async move {
        let mut last = from;
        loop {
            tokio::select! {
                woken = wake.recv() => if woken.is_none() { break },
                _ = tokio::time::sleep(POLL) => {}
            }
            loop {
                let page = match log.after(last).await {
                    Ok(page) => page,
                    Err(e) => {
                        // Nothing is lost: the next wake-up reads from the same place.
                        tracing::error!(error = format!("{e:#}"), "reading the log to publish it");
                        break;
                    }
                };
                let full = page.len() as u32 == PAGE;
                for event in page {
                    last = event.id;
                    // No subscriber is fine; a lagging one catches up from the log.
                    let _ = events.send(Arc::new(event));
                }
                if !full {
                    break;
                }
            }
        }
    });
}
