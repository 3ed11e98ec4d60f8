//! SQLite: one file, one owning process, WAL so readers never wait for the writer.
//!
//! Two pools over the same file: readers share several connections, and every write (the
//! checkpoint commits, lease claims and renewals) goes through a pool of exactly one
//! connection. One writer connection means no two transactions ever race to upgrade a read
//! lock to a write lock, which SQLite answers with an immediate `SQLITE_BUSY`.

use std::{str::FromStr, time::Duration};

use anyhow::Context;
use sqlx::{
    SqlitePool,
    sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

/// The schema, compiled into the binary so a deployed `cairn` needs no files beside it.
static MIGRATOR: sqlx::migrate::Migrator = sqlx::migrate!("../migrations/sqlite");

/// A migrated SQLite database.
#[derive(Clone, Debug)]
pub struct SqliteStore {
    pool: SqlitePool,
    write_pool: SqlitePool,
}

impl SqliteStore {
    /// Opens the file named by `url` (`sqlite://PATH`), creating it if missing, and migrates it.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        let options = SqliteConnectOptions::from_str(url)
            .with_context(|| format!("parsing the database URL {url:?}"))?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // FULL: a commit survives power loss, not only a process crash. The checkpoint is
            // the product; it is worth the fsync.
            .synchronous(SqliteSynchronous::Full)
            .busy_timeout(Duration::from_secs(5))
            .foreign_keys(true);
        let write_pool = SqlitePoolOptions::new()
            .max_connections(1)
            .min_connections(1)
            .idle_timeout(None)
            .max_lifetime(None)
            .connect_with(options.clone())
            .await
            .with_context(|| format!("opening the SQLite database {url}"))?;
        MIGRATOR
            .run(&write_pool)
            .await
            .context("migrating the SQLite database")?;
        let pool = SqlitePoolOptions::new()
            .max_connections(8)
            .connect_with(options)
            .await
            .with_context(|| format!("opening the SQLite database {url}"))?;
        Ok(Self { pool, write_pool })
    }

    /// Checks that the database answers a trivial query.
    pub async fn ping(&self) -> anyhow::Result<()> {
        sqlx::query("SELECT 1")
            .execute(&self.pool)
            .await
            .context("pinging SQLite")?;
        Ok(())
    }

    /// The readers' pool.
    pub fn pool(&self) -> &SqlitePool {
        &self.pool
    }

    /// The single-connection pool every write goes through.
    pub fn write_pool(&self) -> &SqlitePool {
        &self.write_pool
    }
}
