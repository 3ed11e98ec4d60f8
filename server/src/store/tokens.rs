//! The `tokens` table on both backends: only hashes, never tokens (see [`crate::auth`]).

use anyhow::Context;
use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{Backend, Store, sqlite_ops};
use crate::auth::{Scope, TokenInfo};

fn scope(text: &str) -> anyhow::Result<Scope> {
    text.parse()
        .map_err(|e: String| anyhow::anyhow!("a stored token: {e}"))
}

fn sqlite_time(text: Option<String>) -> anyhow::Result<Option<DateTime<Utc>>> {
    text.as_deref().map(sqlite_ops::parse_ts).transpose()
}

fn from_sqlite(row: &sqlx::sqlite::SqliteRow) -> anyhow::Result<(TokenInfo, String)> {
    Ok((
        TokenInfo {
            id: row.get("id"),
            workspace: row.get("workspace"),
            label: row.get("label"),
            scope: scope(row.get("scope"))?,
            created_at: sqlite_ops::parse_ts(row.get("created_at"))?,
            expires_at: sqlite_time(row.get("expires_at"))?,
            revoked_at: sqlite_time(row.get("revoked_at"))?,
        },
        row.get("hash"),
    ))
}

fn from_pg(row: &sqlx::postgres::PgRow) -> anyhow::Result<(TokenInfo, String)> {
    Ok((
        TokenInfo {
            id: row.get("id"),
            workspace: row.get("workspace"),
            label: row.get("label"),
            scope: scope(row.get("scope"))?,
            created_at: row.get("created_at"),
            expires_at: row.get("expires_at"),
            revoked_at: row.get("revoked_at"),
        },
        row.get("hash"),
    ))
}

impl Store {
    /// Stores a new token's record and hash.
    pub async fn create_token(&self, info: &TokenInfo, hash: &str) -> anyhow::Result<()> {
        match &self.backend {
            Backend::Sqlite(s, _) => sqlx::query(
                "INSERT INTO tokens (id, hash, workspace, label, scope, created_at, expires_at) \
                     VALUES (?, ?, ?, ?, ?, ?, ?)",
            )
            .bind(&info.id)
            .bind(hash)
            .bind(&info.workspace)
            .bind(&info.label)
            .bind(info.scope.as_str())
            .bind(sqlite_ops::ts(info.created_at))
            .bind(info.expires_at.map(sqlite_ops::ts))
            .execute(&mut *s.writer().await?)
            .await
            .map(|_| ()),
            Backend::Postgres(p, _) => sqlx::query(
                "INSERT INTO tokens (id, hash, workspace, label, scope, created_at, expires_at) \
                     VALUES ($1, $2, $3, $4, $5, $6, $7)",
            )
            .bind(&info.id)
            .bind(hash)
            .bind(&info.workspace)
            .bind(&info.label)
            .bind(info.scope.as_str())
            .bind(info.created_at)
            .bind(info.expires_at)
            .execute(p.pool())
            .await
            .map(|_| ()),
        }
        .context("storing a token")?;
        Ok(())
    }

    /// Every token, oldest first.
    pub async fn tokens(&self) -> anyhow::Result<Vec<TokenInfo>> {
        let sql = "SELECT id, hash, workspace, label, scope, created_at, expires_at, revoked_at \
                   FROM tokens ORDER BY created_at, id";
        let rows = match &self.backend {
            Backend::Sqlite(s, _) => sqlx::query(sql)
                .fetch_all(s.pool())
                .await
                .context("listing tokens")?
                .iter()
                .map(from_sqlite)
                .collect::<anyhow::Result<Vec<_>>>()?,
            Backend::Postgres(p, _) => sqlx::query(sql)
                .fetch_all(p.pool())
                .await
                .context("listing tokens")?
                .iter()
                .map(from_pg)
                .collect::<anyhow::Result<Vec<_>>>()?,
        };
        Ok(rows.into_iter().map(|(info, _)| info).collect())
    }

    /// A token's record and stored hash, by its public id.
    pub async fn token(&self, id: &str) -> anyhow::Result<Option<(TokenInfo, String)>> {
        match &self.backend {
            Backend::Sqlite(s, _) => {
                let sql = "SELECT id, hash, workspace, label, scope, created_at, expires_at, \
                           revoked_at FROM tokens WHERE id = ?";
                let row = sqlx::query(sql)
                    .bind(id)
                    .fetch_optional(s.pool())
                    .await
                    .context("reading a token")?;
                row.as_ref().map(from_sqlite).transpose()
            }
            Backend::Postgres(p, _) => {
                let sql = "SELECT id, hash, workspace, label, scope, created_at, expires_at, \
                           revoked_at FROM tokens WHERE id = $1";
                let row = sqlx::query(sql)
                    .bind(id)
                    .fetch_optional(p.pool())
                    .await
                    .context("reading a token")?;
                row.as_ref().map(from_pg).transpose()
            }
        }
    }

    /// Revokes a token at `now`; the record as it is afterwards, `None` if there is no such
    /// token. Revoking twice keeps the first time.
    pub async fn revoke_token(
        &self,
        id: &str,
        now: DateTime<Utc>,
    ) -> anyhow::Result<Option<TokenInfo>> {
        match &self.backend {
            Backend::Sqlite(s, _) => {
                sqlx::query("UPDATE tokens SET revoked_at = COALESCE(revoked_at, ?) WHERE id = ?")
                    .bind(sqlite_ops::ts(now))
                    .bind(id)
                    .execute(&mut *s.writer().await?)
                    .await
                    .map(|_| ())
            }
            Backend::Postgres(p, _) => {
                sqlx::query("UPDATE tokens SET revoked_at = COALESCE(revoked_at, $1) WHERE id = $2")
                    .bind(now)
                    .bind(id)
                    .execute(p.pool())
                    .await
                    .map(|_| ())
            }
        }
        .context("revoking a token")?;
        Ok(self.token(id).await?.map(|(info, _)| info))
    }

    /// Whether any token was ever made (revoked and expired ones count): then every request
    /// needs one.
    pub async fn has_tokens(&self) -> anyhow::Result<bool> {
        let sql = "SELECT EXISTS (SELECT 1 FROM tokens)";
        match &self.backend {
            Backend::Sqlite(s, _) => sqlx::query_scalar::<_, bool>(sql).fetch_one(s.pool()).await,
            Backend::Postgres(p, _) => sqlx::query_scalar::<_, bool>(sql).fetch_one(p.pool()).await,
        }
        .context("looking for tokens")
    }
}
