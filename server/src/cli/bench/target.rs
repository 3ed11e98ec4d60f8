//! Where a benchmark stores: a fresh SQLite file or a fresh Postgres database, and the
//! latency of a minimal durable commit there (`commit_floor_ms`).

use std::{
    path::{Path, PathBuf},
    time::Instant,
};

use anyhow::Context;

/// The database a benchmark runs on.
pub(super) enum Target {
    Sqlite(PathBuf),
    Postgres {
        /// The fresh database's URL.
        url: String,
        /// The server's URL the bench was given, to drop the database afterwards.
        admin: String,
        name: String,
    },
}

impl Target {
    /// A fresh database on the Postgres server `admin` names.
    pub(super) async fn postgres(admin: &str) -> anyhow::Result<Self> {
        use sqlx::Connection;
        let name = format!("cairn_bench_{}", uuid::Uuid::new_v4().simple());
        let mut conn = sqlx::PgConnection::connect(admin)
            .await
            .context("connecting to the Postgres server (--database-url)")?;
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .context("creating the benchmark's database")?;
        let base = admin.split('?').next().unwrap_or(admin);
        let base = base.rsplit_once('/').map(|(b, _)| b).unwrap_or(base);
        Ok(Target::Postgres {
            url: format!("{base}/{name}"),
            admin: admin.to_string(),
            name,
        })
    }

    pub(super) fn url(&self) -> String {
        match self {
            Target::Sqlite(db) => format!("sqlite://{}", db.display()),
            Target::Postgres { url, .. } => url.clone(),
        }
    }

    pub(super) fn kind(&self) -> &'static str {
        match self {
            Target::Sqlite(_) => "sqlite",
            Target::Postgres { .. } => "postgres",
        }
    }

    pub(super) async fn drop_database(&self) {
        use sqlx::Connection;
        if let Target::Postgres { admin, name, .. } = self
            && let Ok(mut conn) = sqlx::PgConnection::connect(admin).await
        {
            let drop = format!("DROP DATABASE IF EXISTS {name} WITH (FORCE)");
            if let Err(e) = sqlx::query(sqlx::AssertSqlSafe(drop))
                .execute(&mut conn)
                .await
            {
                eprintln!("could not drop the benchmark's database {name}: {e}");
            }
        }
    }

    /// The latency of a minimal durable commit with the store's settings: the p50 of a few
    /// hundred one-row transactions, on a file beside the benchmark's or in its database.
    pub(super) async fn commit_floor_ms(&self) -> anyhow::Result<f64> {
        match self {
            Target::Sqlite(db) => commit_floor_ms(db).await,
            Target::Postgres { url, .. } => {
                let pool = sqlx::PgPool::connect(url).await?;
                sqlx::query(
                    "CREATE TABLE public.floor (id BIGSERIAL PRIMARY KEY, at TEXT NOT NULL)",
                )
                .execute(&pool)
                .await?;
                let mut samples = Vec::with_capacity(300);
                for _ in 0..300 {
                    let t = Instant::now();
                    let mut tx = pool.begin().await?;
                    sqlx::query("INSERT INTO public.floor (at) VALUES ($1)")
                        .bind(chrono::Utc::now().to_rfc3339())
                        .execute(&mut *tx)
                        .await?;
                    tx.commit().await?;
                    samples.push(t.elapsed().as_secs_f64() * 1000.0);
                }
                pool.close().await;
                samples.sort_by(f64::total_cmp);
                Ok(samples[samples.len() / 2])
            }
        }
    }
}

/// SQLite's commit floor: one-row transactions on a fresh file beside the benchmark's.
async fn commit_floor_ms(db: &Path) -> anyhow::Result<f64> {
    let floor = db.with_file_name("floor.db");
    let store =
        crate::store::SqliteStore::connect(&format!("sqlite://{}", floor.display())).await?;
    // The store's own write connection, as its checkpoints use it.
    let mut conn = store.writer().await?;
    sqlx::query("CREATE TABLE floor (id INTEGER PRIMARY KEY, at TEXT NOT NULL)")
        .execute(&mut *conn)
        .await?;
    let mut samples = Vec::with_capacity(300);
    for _ in 0..300 {
        let t = Instant::now();
        let mut tx = sqlx::Connection::begin(&mut *conn).await?;
        sqlx::query("INSERT INTO floor (at) VALUES (?)")
            .bind(chrono::Utc::now().to_rfc3339())
            .execute(&mut *tx)
            .await?;
        tx.commit().await?;
        samples.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    samples.sort_by(f64::total_cmp);
    Ok(samples[samples.len() / 2])
}
