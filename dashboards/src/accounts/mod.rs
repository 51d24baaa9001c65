//! Accounts: local users, API tokens, browser sessions and the operators' audit log, in a
//! SQLite file of their own (`<data-dir>/accounts.sqlite`, WAL), apart from the readings
//! store so that neither's migrations touch the other.
//!
//! - **Users** have a username, an argon2id password hash (PHC string, per-user salt), a
//!   [`Role`] and optionally a tenant. A user with a tenant sees only that tenant's lamps and
//!   zones; a user without one sees every tenant (the operator of the whole system).
//! - **API tokens** are 32 random bytes shown once (`llt_` + hex); the file keeps only their
//!   SHA-256, so a copy of the file gives no one a working token.
//! - **Sessions** are 32 random bytes in an HttpOnly cookie; the file keeps their SHA-256, the
//!   user, the expiry and the session's CSRF token.
//! - **Audit**: who did what, when, to which target, and why (overrides, zone settings,
//!   faults acknowledged or cleared, users and tokens created).
//! - **Zone settings** engineers saved, applied again when the system starts.
//!
//! The server reads users, tokens and sessions from the file on every request, so
//! `lamplighter users add` and `tokens add` from another process take effect at once while
//! the system runs (WAL lets that writer and the server's reads proceed together).
//!
//! One file per part: `schema.rs` (opening and migrating the file), `users.rs`,
//! `credentials.rs` (API tokens and sessions), `audit.rs` (the log and its CSV export) and
//! `saved.rs` (zone settings and overrides kept across restarts).

use std::path::{Path, PathBuf};
use std::str::FromStr;

use lamplighter_protocol::TenantId;
use rand::RngCore;
use rusqlite::Connection;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

mod audit;
mod credentials;
mod saved;
mod schema;
mod users;

pub use audit::{audit_csv, AuditEntry, NewAudit};
pub use saved::OperatorState;
use schema::SCHEMA_VERSION;

/// The accounts database's file name inside the data directory.
pub const ACCOUNTS_FILE: &str = "accounts.sqlite";

/// The prefix of every API token, so a leaked one is recognisable in logs and scanners.
pub const TOKEN_PREFIX: &str = "llt_";

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longest password accepted (argon2 takes any length; this bounds the work per attempt).
pub const MAX_PASSWORD_BYTES: usize = 1024;

/// What an account may do. Each role may do everything the ones before it may.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    /// Sees lamps, zones, history, audit.
    Viewer,
    /// And sets overrides, acknowledges faults.
    Operator,
    /// And manages users, tokens and zone settings.
    Admin,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::Viewer => "viewer",
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

impl FromStr for Role {
    type Err = AccountsError;
    fn from_str(s: &str) -> Result<Self, AccountsError> {
        match s {
            "viewer" => Ok(Role::Viewer),
            "operator" => Ok(Role::Operator),
            "admin" => Ok(Role::Admin),
            _ => Err(AccountsError::BadRole(s.to_string())),
        }
    }
}

impl std::fmt::Display for Role {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
pub enum AccountsError {
    #[error("cannot create the data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("accounts database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("accounts database {path} has schema version {found}, newer than this build ({SCHEMA_VERSION})")]
    TooNew { path: PathBuf, found: i64 },
    #[error(
        "a username is 1 to 64 characters of letters, digits, '.', '_', '-' or '@'; got {0:?}"
    )]
    BadUsername(String),
    #[error("a password must have at least {MIN_PASSWORD_CHARS} characters and at most {MAX_PASSWORD_BYTES} bytes")]
    BadPassword,
    #[error("user {0:?} already exists")]
    UserExists(String),
    #[error("unknown role {0:?}; expected viewer, operator or admin")]
    BadRole(String),
    #[error("cannot hash the password: {0}")]
    Hash(String),
    #[error("a label is at most 100 characters without control characters")]
    BadLabel,
    #[error("cannot write CSV: {0}")]
    Io(#[from] std::io::Error),
}

/// Who is asking, once their session or token checked out.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Principal {
    /// The username, or `token:<id>:<label>` for an API token.
    pub username: String,
    pub role: Role,
    /// `None`: every tenant.
    pub tenant: Option<TenantId>,
    /// The session's CSRF token (`None` for an API token, which no browser sends by itself).
    #[serde(skip)]
    pub csrf_token: Option<String>,
}

/// A user as listed (never with the hash).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UserInfo {
    pub id: i64,
    pub username: String,
    pub role: Role,
    pub tenant: Option<TenantId>,
    pub created_ms: i64,
}

pub fn sha256_hex(s: &str) -> String {
    hex::encode(Sha256::digest(s.as_bytes()))
}

fn random_hex(bytes: usize) -> String {
    let mut b = vec![0u8; bytes];
    rand::rngs::OsRng.fill_bytes(&mut b);
    hex::encode(b)
}

/// A random password for `demo`'s admin: 20 characters of letters and digits.
pub fn random_password() -> String {
    use rand::distributions::{Alphanumeric, Distribution};
    Alphanumeric
        .sample_iter(rand::rngs::OsRng)
        .take(20)
        .map(char::from)
        .collect()
}

pub fn validate_username(name: &str) -> Result<(), AccountsError> {
    let ok = !name.is_empty()
        && name.chars().count() <= 64
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-' | '@'));
    if ok {
        Ok(())
    } else {
        Err(AccountsError::BadUsername(name.to_string()))
    }
}

pub fn validate_password(password: &str) -> Result<(), AccountsError> {
    if password.chars().count() < MIN_PASSWORD_CHARS || password.len() > MAX_PASSWORD_BYTES {
        Err(AccountsError::BadPassword)
    } else {
        Ok(())
    }
}

fn tenant_of(s: Option<String>) -> Option<TenantId> {
    // The CLI and the API validate tenants before they are written; an unparsable one read
    // back (edited by hand) would widen nothing: it matches no lamp.
    s.map(|t| TenantId::new(&t).unwrap_or_else(|_| TenantId::new("invalid").expect("valid")))
}

/// The accounts database.
pub struct Accounts {
    conn: Connection,
    path: PathBuf,
}

impl Accounts {
    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> AccountsError + '_ {
        |source| AccountsError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn now() -> i64 {
        1_700_000_000_000
    }

    /// The server and an operator's `users add` creating the accounts file at once: both
    /// must open it, whichever switches it to WAL and creates the tables.
    #[test]
    fn two_processes_opening_new_accounts_at_once_both_succeed() {
        lamplighter_sqlite::testing::assert_both_open_a_new_folder_at_once(|dir| {
            Accounts::open(dir).map(|_| ())
        });
    }

    #[test]
    fn users_passwords_sessions_and_tokens_round_trip_through_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Accounts::open(dir.path()).unwrap();
        let t = TenantId::new("north").unwrap();
        let id = a
            .add_user(
                "ann",
                "correct horse battery",
                Role::Operator,
                Some(&t),
                now(),
            )
            .unwrap();
        assert!(matches!(
            a.add_user("ann", "another long one", Role::Viewer, None, now()),
            Err(AccountsError::UserExists(_))
        ));
        assert!(matches!(
            a.add_user(
                "bad name",
                "correct horse battery",
                Role::Viewer,
                None,
                now()
            ),
            Err(AccountsError::BadUsername(_))
        ));
        assert!(matches!(
            a.add_user("bob", "short", Role::Viewer, None, now()),
            Err(AccountsError::BadPassword)
        ));
        // The stored hash is argon2id, not the password.
        let stored: String = a
            .conn
            .query_row("SELECT password_hash FROM users", [], |r| r.get(0))
            .unwrap();
        assert!(stored.starts_with("$argon2id$"), "{stored}");
        assert!(!stored.contains("correct horse"));

        assert!(a
            .check_password("ann", "wrong password!")
            .unwrap()
            .is_none());
        assert!(a
            .check_password("nobody", "correct horse battery")
            .unwrap()
            .is_none());
        let (uid, p) = a
            .check_password("ann", "correct horse battery")
            .unwrap()
            .unwrap();
        assert_eq!(
            (uid, p.role, p.tenant.clone()),
            (id, Role::Operator, Some(t.clone()))
        );

        let (cookie, csrf) = a
            .create_session(uid, now(), Duration::from_secs(60))
            .unwrap();
        let p = a.session_principal(&cookie, now() + 1000).unwrap().unwrap();
        assert_eq!(p.csrf_token.as_deref(), Some(csrf.as_str()));
        assert!(
            a.session_principal(&cookie, now() + 61_000)
                .unwrap()
                .is_none(),
            "expired"
        );
        assert!(a
            .session_principal(&"0".repeat(64), now())
            .unwrap()
            .is_none());
        a.delete_session(&cookie).unwrap();
        assert!(a.session_principal(&cookie, now()).unwrap().is_none());

        let token = a
            .add_token(Role::Viewer, Some(&t), "grafana", now())
            .unwrap();
        assert!(token.starts_with(TOKEN_PREFIX));
        // Another process (the server) sees it at once, and only its hash is on disk.
        let b = Accounts::open(dir.path()).unwrap();
        let p = b.token_principal(&token).unwrap().unwrap();
        assert_eq!((p.role, p.tenant), (Role::Viewer, Some(t)));
        let on_disk: String = b
            .conn
            .query_row("SELECT token_sha256 FROM tokens", [], |r| r.get(0))
            .unwrap();
        assert_eq!(on_disk, sha256_hex(&token));
        assert!(b.token_principal("llt_0000").unwrap().is_none());
    }
}
