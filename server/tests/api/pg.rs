//! A fresh Postgres database per test, dropped afterwards.
//!
//! The server that `CAIRN_TEST_POSTGRES` names (default: the local one, trust auth) must be
//! running: `scripts/test.sh` starts it. Each test creates a database of its own, so tests
//! run in parallel without seeing each other, and drops it (with any connection still open)
//! when it ends, failed or not.

use sqlx::{Connection, PgConnection};

/// The server's maintenance database, where test databases are created.
fn admin_url() -> String {
    std::env::var("CAIRN_TEST_POSTGRES")
        .unwrap_or_else(|_| "postgres://postgres@127.0.0.1:5432/postgres".into())
}

/// A database that lives as long as this value.
pub struct TestDb {
    /// The database's URL, for [`server::store::Store::connect`] or `cairn serve`.
    pub url: String,
    name: String,
}

impl TestDb {
    /// Creates an empty database with a unique name.
    pub async fn new() -> Self {
        let admin = admin_url();
        let name = format!("cairn_test_{}", uuid::Uuid::new_v4().simple());
        let mut conn = PgConnection::connect(&admin).await.unwrap_or_else(|e| {
            panic!(
                "cannot reach Postgres at {admin} ({e}); start it (pg_ctlcluster 15 main start) \
                 or point CAIRN_TEST_POSTGRES at one"
            )
        });
        sqlx::query(sqlx::AssertSqlSafe(format!("CREATE DATABASE {name}")))
            .execute(&mut conn)
            .await
            .expect("creating a test database");
        let base = admin.rsplit_once('/').map(|(b, _)| b).unwrap_or(&admin);
        Self {
            url: format!("{base}/{name}"),
            name,
        }
    }

    /// A direct connection to the test database.
    pub async fn connect(&self) -> PgConnection {
        PgConnection::connect(&self.url).await.expect("connecting")
    }
}

impl Drop for TestDb {
    fn drop(&mut self) {
        let name = self.name.clone();
        // Drop runs outside any runtime's reach: a thread with its own.
        let _ = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime");
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&admin_url()).await {
                    let _ = sqlx::query(sqlx::AssertSqlSafe(format!(
                        "DROP DATABASE IF EXISTS {name} WITH (FORCE)"
                    )))
                    .execute(&mut conn)
                    .await;
                }
            })
        })
        .join();
    }
}
