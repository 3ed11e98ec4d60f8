//! `cairn token create | list | revoke`: the tokens a server asks for, written straight to its
//! database (no server needs to run). Only a hash is stored; `create` prints the token once.

use chrono::Utc;

use crate::{
    auth::{self, Scope, TokenInfo},
    store::Store,
};

/// What to do with tokens.
#[derive(Debug, clap::Subcommand)]
pub enum TokenCommand {
    /// Make a token and print it, alone on stdout. It is shown this once.
    Create {
        /// The workspace its requests act in (its workflows, and only those).
        #[arg(long)]
        workspace: String,
        /// Who or what holds it; controls it makes record it as `by`.
        #[arg(long)]
        label: Option<String>,
        /// read (see), run (also start and control workflows) or admin (also /metrics).
        #[arg(long, default_value = "run")]
        scope: Scope,
        /// How long it works, such as 30d or 12h (forever if left out).
        #[arg(long, value_parser = super::parse_age)]
        expires: Option<std::time::Duration>,
        #[command(flatten)]
        database: super::Database,
    },
    /// List tokens (never the tokens themselves).
    List {
        /// One JSON document.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        database: super::Database,
    },
    /// Revoke a token by its id (from `list`): its next request is refused.
    Revoke {
        /// The token's id.
        id: String,
        #[command(flatten)]
        database: super::Database,
    },
}

impl clap::builder::ValueParserFactory for Scope {
    type Parser = clap::builder::ValueParser;
    fn value_parser() -> Self::Parser {
        clap::builder::ValueParser::new(|s: &str| s.parse::<Scope>())
    }
}

/// Runs a token command.
pub async fn run(command: TokenCommand) -> anyhow::Result<()> {
    match command {
        TokenCommand::Create {
            workspace,
            label,
            scope,
            expires,
            database,
        } => {
            auth::check_workspace(&workspace).map_err(anyhow::Error::msg)?;
            let new = auth::mint()?;
            let label = label.unwrap_or_else(|| format!("token-{}", new.id));
            auth::check_label(&label).map_err(anyhow::Error::msg)?;
            let now = Utc::now();
            let expires_at = expires
                .map(|e| chrono::Duration::from_std(e).map(|e| now + e))
                .transpose()
                .map_err(|_| anyhow::anyhow!("--expires is too far away"))?;
            let info = TokenInfo {
                id: new.id.clone(),
                workspace,
                label,
                scope,
                created_at: now,
                expires_at,
                revoked_at: None,
            };
            let store = Store::connect(&database.url).await?;
            store.create_token(&info, &new.hash).await?;
            eprintln!(
                "token {} for workspace {:?} ({}, scope {}{}); it is shown once, keep it now:",
                info.id,
                info.workspace,
                info.label,
                info.scope,
                info.expires_at
                    .map(|e| format!(", expires {}", e.format("%Y-%m-%d %H:%M UTC")))
                    .unwrap_or_default()
            );
            println!("{}", new.token);
            Ok(())
        }
        TokenCommand::List { json, database } => {
            let store = Store::connect(&database.url).await?;
            let tokens = store.tokens().await?;
            let now = Utc::now();
            if json {
                let list: Vec<_> = tokens
                    .iter()
                    .map(|t| {
                        let mut v = serde_json::to_value(t).unwrap_or_default();
                        v["state"] = t.state(now).into();
                        v
                    })
                    .collect();
                println!("{}", serde_json::json!({ "tokens": list }));
                return Ok(());
            }
            if tokens.is_empty() {
                println!("no tokens: the server is open, on a loopback address only");
                return Ok(());
            }
            println!(
                "{:<14} {:<20} {:<24} {:<6} {:<8} {:<17} EXPIRES",
                "ID", "WORKSPACE", "LABEL", "SCOPE", "STATE", "CREATED"
            );
            let when = |t: chrono::DateTime<Utc>| t.format("%Y-%m-%d %H:%M").to_string();
            for t in &tokens {
                println!(
                    "{:<14} {:<20} {:<24} {:<6} {:<8} {:<17} {}",
                    t.id,
                    t.workspace,
                    t.label,
                    t.scope,
                    t.state(now),
                    when(t.created_at),
                    t.expires_at.map(when).unwrap_or_else(|| "never".into())
                );
            }
            Ok(())
        }
        TokenCommand::Revoke { id, database } => {
            let store = Store::connect(&database.url).await?;
            match store.revoke_token(&id, Utc::now()).await? {
                Some(t) => {
                    println!(
                        "revoked {} ({}, workspace {:?}); requests with it are refused now",
                        t.id, t.label, t.workspace
                    );
                    Ok(())
                }
                None => anyhow::bail!("no token {id:?} (see `cairn token list`)"),
            }
        }
    }
}
