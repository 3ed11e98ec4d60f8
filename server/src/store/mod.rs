//! The database behind cairn.
//!
//! The default is an embedded SQLite file in WAL mode with `synchronous=FULL`: a commit is on
//! disk before it is acknowledged. The URL chooses the backend; the schema comes from the
//! append-only files in `migrations/`, applied at start-up.

mod sqlite;

pub use sqlite::SqliteStore;

use anyhow::bail;

/// An open, migrated database.
#[derive(Clone, Debug)]
pub enum Store {
    /// An embedded SQLite file owned by this process.
    Sqlite(SqliteStore),
}

impl Store {
    /// Opens (creating if needed) and migrates the database named by `url`.
    pub async fn connect(url: &str) -> anyhow::Result<Self> {
        if url.starts_with("sqlite:") {
            return Ok(Self::Sqlite(SqliteStore::connect(url).await?));
        }
        if url.starts_with("postgres://") || url.starts_with("postgresql://") {
            bail!(
                "this build of cairn stores in SQLite only; use --database-url sqlite://PATH \
                 (Postgres support is planned)"
            );
        }
        bail!("unsupported database URL {url:?}: use sqlite://PATH")
    }

    /// The backend's name, as `/api/health` reports it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Sqlite(_) => "sqlite",
        }
    }

    /// Checks that the database answers.
    pub async fn ping(&self) -> anyhow::Result<()> {
        match self {
            Self::Sqlite(s) => s.ping().await,
        }
    }
}
