//! Tokens, scopes and workspaces: who a request comes from and what it may do.
//!
//! A token is `cairn_<id>_<secret>`: `id` is its public name (listed, revoked by), `secret`
//! 32 random bytes. Only the SHA-256 of the whole token is stored, and a presented token is
//! compared with it in constant time. Each token belongs to one workspace and has one scope:
//!
//! | scope   | may                                                                 |
//! |---------|---------------------------------------------------------------------|
//! | `read`  | read workflows, their history and outputs, follow both streams      |
//! | `run`   | that, and start workflows and control them (resume, retry, skip, cancel) |
//! | `admin` | that, and read `/metrics` (which counts every workspace's work)      |

use std::{fmt, str::FromStr};

use chrono::{DateTime, Utc};
use serde::Serialize;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

/// What a token may do; each scope includes the ones before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Scope {
    /// Read workflows and follow streams.
    Read,
    /// Also start and control workflows.
    Run,
    /// Also read the server's metrics.
    Admin,
}

impl Scope {
    /// The scope's name, as stored and as `--scope` takes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Scope::Read => "read",
            Scope::Run => "run",
            Scope::Admin => "admin",
        }
    }
}

impl fmt::Display for Scope {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl FromStr for Scope {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "read" => Ok(Scope::Read),
            "run" => Ok(Scope::Run),
            "admin" => Ok(Scope::Admin),
            other => Err(format!("unknown scope {other:?}: one of read, run, admin")),
        }
    }
}

/// A token as stored (never the token itself).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct TokenInfo {
    /// The public part, which `cairn token revoke` names.
    pub id: String,
    /// The workspace its requests act in.
    pub workspace: String,
    /// Who or what holds it; recorded as `by` on what it starts and controls.
    pub label: String,
    /// What it may do.
    pub scope: Scope,
    /// When it was made.
    pub created_at: DateTime<Utc>,
    /// When it stops working, if ever.
    pub expires_at: Option<DateTime<Utc>>,
    /// When it was revoked, if it was.
    pub revoked_at: Option<DateTime<Utc>>,
}

impl TokenInfo {
    /// `active`, `expired` or `revoked` at `now`.
    pub fn state(&self, now: DateTime<Utc>) -> &'static str {
        if self.revoked_at.is_some() {
            "revoked"
        } else if self.expires_at.is_some_and(|e| e <= now) {
            "expired"
        } else {
            "active"
        }
    }
}

/// A freshly made token: the text to hand out (once) and what to store.
pub struct NewToken {
    /// The whole token, `cairn_<id>_<secret>`.
    pub token: String,
    /// Its public part.
    pub id: String,
    /// What is stored: the SHA-256 of `token`, in hex.
    pub hash: String,
}

impl fmt::Debug for NewToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("NewToken")
            .field("id", &self.id)
            .finish_non_exhaustive()
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Makes a token from the operating system's random source.
pub fn mint() -> anyhow::Result<NewToken> {
    let mut id = [0u8; 6];
    let mut secret = [0u8; 32];
    getrandom::fill(&mut id).map_err(|e| anyhow::anyhow!("no random source: {e}"))?;
    getrandom::fill(&mut secret).map_err(|e| anyhow::anyhow!("no random source: {e}"))?;
    let id = hex(&id);
    let token = format!("cairn_{id}_{}", hex(&secret));
    Ok(NewToken {
        hash: digest(&token),
        token,
        id,
    })
}

/// The SHA-256 of a token, in hex, as stored.
pub fn digest(token: &str) -> String {
    hex(&Sha256::digest(token.as_bytes()))
}

/// The public part of a presented token, if it has a token's shape.
pub fn token_id(token: &str) -> Option<&str> {
    let rest = token.strip_prefix("cairn_")?;
    let (id, secret) = rest.split_once('_')?;
    let hexish = |s: &str| !s.is_empty() && s.bytes().all(|b| b.is_ascii_hexdigit());
    (hexish(id) && id.len() <= 32 && hexish(secret)).then_some(id)
}

/// Whether `token` is the one whose digest is `stored`, in time that does not depend on
/// where the two differ.
pub fn matches(token: &str, stored: &str) -> bool {
    digest(token).as_bytes().ct_eq(stored.as_bytes()).into()
}

/// Checks a workspace name: 1 to 64 of `a-z`, `0-9`, `-`, `_` and `.`, starting with a
/// letter or digit (it appears in URLs, logs and the page).
pub fn check_workspace(name: &str) -> Result<(), String> {
    let ok_chars = name
        .bytes()
        .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'_' | b'.'));
    let starts_well = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit());
    if name.len() > 64 || !ok_chars || !starts_well {
        return Err(format!(
            "the workspace {name:?} must be 1 to 64 of a-z, 0-9, '-', '_' and '.', starting with a letter or digit"
        ));
    }
    Ok(())
}

/// Checks a token's label: 1 to 100 characters, none of them control characters.
pub fn check_label(label: &str) -> Result<(), String> {
    if label.trim().is_empty() || label.chars().count() > 100 || label.chars().any(char::is_control)
    {
        return Err(format!(
            "the label {label:?} must be 1 to 100 characters without control characters"
        ));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_minted_token_matches_its_digest_and_no_other_text() {
        let t = mint().unwrap();
        assert!(t.token.starts_with("cairn_"));
        assert_eq!(token_id(&t.token), Some(t.id.as_str()));
        assert!(matches(&t.token, &t.hash));
        let mut other = t.token.clone();
        other.pop();
        other.push('x');
        assert!(!matches(&other, &t.hash));
        assert_ne!(mint().unwrap().token, t.token, "two tokens differ");
        assert!(!format!("{t:?}").contains(&t.token), "Debug never shows it");
    }

    #[test]
    fn only_a_tokens_shape_has_an_id() {
        for bad in [
            "",
            "cairn_",
            "cairn__ab",
            "cairn_ab_",
            "cairn_zz_ab",
            "Bearer x",
            "cairn_ab",
        ] {
            assert_eq!(token_id(bad), None, "{bad:?}");
        }
        assert_eq!(token_id("cairn_0a1b_ff"), Some("0a1b"));
    }

    #[test]
    fn workspace_names_are_plain_words() {
        for ok in ["default", "team-a", "ml.research", "a", "x_1"] {
            assert!(check_workspace(ok).is_ok(), "{ok}");
        }
        for bad in ["", "Team", "-a", "a b", "a/b", "é", &"a".repeat(65)] {
            assert!(check_workspace(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn scopes_include_the_smaller_ones() {
        assert!(Scope::Admin > Scope::Run && Scope::Run > Scope::Read);
        assert_eq!("run".parse::<Scope>(), Ok(Scope::Run));
        assert!(
            "write"
                .parse::<Scope>()
                .unwrap_err()
                .contains("read, run, admin")
        );
    }
}
