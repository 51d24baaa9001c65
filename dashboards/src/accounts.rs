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

use std::path::{Path, PathBuf};
use std::str::FromStr;
use std::time::Duration;

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use lamplighter_protocol::TenantId;
use rand::RngCore;
use rusqlite::{params, Connection, OptionalExtension};
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

/// The accounts database's file name inside the data directory.
pub const ACCOUNTS_FILE: &str = "accounts.sqlite";

/// The prefix of every API token, so a leaked one is recognisable in logs and scanners.
pub const TOKEN_PREFIX: &str = "llt_";

/// Shortest password accepted.
pub const MIN_PASSWORD_CHARS: usize = 10;
/// Longest password accepted (argon2 takes any length; this bounds the work per attempt).
pub const MAX_PASSWORD_BYTES: usize = 1024;

const SCHEMA_VERSION: i64 = 2;

const SCHEMA: &str = "
CREATE TABLE users (
    id INTEGER PRIMARY KEY,
    username TEXT NOT NULL UNIQUE,
    password_hash TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    tenant TEXT,
    created_ms INTEGER NOT NULL
);
CREATE TABLE tokens (
    id INTEGER PRIMARY KEY,
    token_sha256 TEXT NOT NULL UNIQUE,
    label TEXT NOT NULL,
    role TEXT NOT NULL CHECK (role IN ('viewer', 'operator', 'admin')),
    tenant TEXT,
    created_ms INTEGER NOT NULL
);
CREATE TABLE sessions (
    session_sha256 TEXT PRIMARY KEY,
    user_id INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    csrf_token TEXT NOT NULL,
    created_ms INTEGER NOT NULL,
    expires_ms INTEGER NOT NULL
);
CREATE INDEX sessions_expiry ON sessions(expires_ms);
CREATE TABLE audit (
    id INTEGER PRIMARY KEY,
    at_ms INTEGER NOT NULL,
    username TEXT NOT NULL,
    tenant TEXT,
    action TEXT NOT NULL,
    target TEXT NOT NULL,
    detail TEXT NOT NULL,
    reason TEXT NOT NULL
);
CREATE INDEX audit_time ON audit(at_ms);
CREATE TABLE zone_settings (
    tenant TEXT NOT NULL,
    zone INTEGER NOT NULL,
    settings TEXT NOT NULL,
    updated_ms INTEGER NOT NULL,
    username TEXT NOT NULL,
    PRIMARY KEY (tenant, zone)
);
";

/// Version 2: overrides in force, so that a restart applies them again. `target` is the
/// target as JSON; `tenant` is '' for an account of every tenant.
const SCHEMA_2: &str = "
CREATE TABLE overrides (
    target TEXT NOT NULL,
    tenant TEXT NOT NULL,
    level_pct INTEGER NOT NULL,
    lamps INTEGER NOT NULL,
    from_ms INTEGER NOT NULL,
    until_ms INTEGER NOT NULL,
    username TEXT NOT NULL,
    reason TEXT NOT NULL,
    PRIMARY KEY (target, tenant)
);
";

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

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at_ms: i64,
    pub username: String,
    pub tenant: Option<String>,
    pub action: String,
    pub target: String,
    /// What was set, as the API received it (JSON text).
    pub detail: String,
    pub reason: String,
}

/// A new audit line.
#[derive(Debug, Clone)]
pub struct NewAudit<'a> {
    pub at_ms: i64,
    pub username: &'a str,
    pub tenant: Option<&'a TenantId>,
    pub action: &'a str,
    pub target: &'a str,
    pub detail: &'a str,
    pub reason: &'a str,
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

fn hash_password(password: &str) -> Result<String, AccountsError> {
    let salt = SaltString::generate(&mut OsRng);
    Argon2::default()
        .hash_password(password.as_bytes(), &salt)
        .map(|h| h.to_string())
        .map_err(|e| AccountsError::Hash(e.to_string()))
}

/// A hash of a password no one knows, checked when the username does not exist so that a
/// wrong username costs as long as a wrong password.
fn dummy_hash() -> &'static str {
    static DUMMY: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    DUMMY.get_or_init(|| hash_password(&random_password()).unwrap_or_default())
}

fn verify(password: &str, phc: &str) -> bool {
    match PasswordHash::new(phc) {
        Ok(parsed) => Argon2::default()
            .verify_password(password.as_bytes(), &parsed)
            .is_ok(),
        Err(_) => false,
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
    /// Opens (creating if needed) `<data_dir>/accounts.sqlite`.
    pub fn open(data_dir: &Path) -> Result<Accounts, AccountsError> {
        std::fs::create_dir_all(data_dir).map_err(|source| AccountsError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(ACCOUNTS_FILE);
        let sql = |source| AccountsError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = lamplighter_sqlite::open_shared(&path, Duration::from_secs(10)).map_err(sql)?;
        conn.pragma_update(None, "foreign_keys", "ON")
            .map_err(sql)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql)?;
        if version > SCHEMA_VERSION {
            return Err(AccountsError::TooNew {
                path,
                found: version,
            });
        }
        for (to, schema) in [(1, SCHEMA), (2, SCHEMA_2)] {
            if version >= to {
                continue;
            }
            // IMMEDIATE: two processes opening the file at once do not both migrate.
            conn.execute_batch(&format!(
                "BEGIN IMMEDIATE; {schema} PRAGMA user_version = {to}; COMMIT;"
            ))
            .or_else(|e| {
                let _ = conn.execute_batch("ROLLBACK");
                // Someone else migrated first?
                let v: i64 = conn
                    .query_row("PRAGMA user_version", [], |r| r.get(0))
                    .map_err(sql)?;
                if v >= to {
                    Ok(())
                } else {
                    Err(sql(e))
                }
            })?;
        }
        Ok(Accounts { conn, path })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> AccountsError + '_ {
        |source| AccountsError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    /// Adds a user. The password is hashed with argon2id and a fresh salt.
    pub fn add_user(
        &mut self,
        username: &str,
        password: &str,
        role: Role,
        tenant: Option<&TenantId>,
        now_ms: i64,
    ) -> Result<i64, AccountsError> {
        validate_username(username)?;
        validate_password(password)?;
        let hash = hash_password(password)?;
        let result = self.conn.execute(
            "INSERT INTO users (username, password_hash, role, tenant, created_ms)
             VALUES (?1, ?2, ?3, ?4, ?5)",
            params![
                username,
                hash,
                role.as_str(),
                tenant.map(|t| t.as_str()),
                now_ms
            ],
        );
        match result {
            Ok(_) => Ok(self.conn.last_insert_rowid()),
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == rusqlite::ErrorCode::ConstraintViolation =>
            {
                Err(AccountsError::UserExists(username.to_string()))
            }
            Err(e) => Err(self.sql()(e)),
        }
    }

    /// One user, by name.
    pub fn user(&self, username: &str) -> Result<Option<UserInfo>, AccountsError> {
        Ok(self
            .users(None)?
            .into_iter()
            .find(|u| u.username == username))
    }

    /// Changes a user's role and/or password (hashed afresh). A new password ends the
    /// user's sessions, so whoever held the old one is logged out. Returns false for an
    /// unknown user.
    pub fn update_user(
        &mut self,
        username: &str,
        role: Option<Role>,
        password: Option<&str>,
    ) -> Result<bool, AccountsError> {
        let hash = match password {
            Some(p) => {
                validate_password(p)?;
                Some(hash_password(p)?)
            }
            None => None,
        };
        let tx = self
            .conn
            .transaction()
            .map_err(|source| AccountsError::Sqlite {
                path: self.path.clone(),
                source,
            })?;
        let sql = |source| AccountsError::Sqlite {
            path: self.path.clone(),
            source,
        };
        let found = tx
            .execute(
                "UPDATE users SET role = coalesce(?2, role),
                    password_hash = coalesce(?3, password_hash)
                 WHERE username = ?1",
                params![username, role.map(|r| r.as_str()), hash],
            )
            .map_err(sql)?
            > 0;
        if found && hash.is_some() {
            tx.execute(
                "DELETE FROM sessions WHERE user_id = (SELECT id FROM users WHERE username = ?1)",
                params![username],
            )
            .map_err(sql)?;
        }
        tx.commit().map_err(sql)?;
        Ok(found)
    }

    /// Removes a user and ends their sessions. Returns false for an unknown user.
    pub fn remove_user(&mut self, username: &str) -> Result<bool, AccountsError> {
        // Sessions go with the user (ON DELETE CASCADE).
        let n = self
            .conn
            .execute("DELETE FROM users WHERE username = ?1", params![username])
            .map_err(self.sql())?;
        Ok(n > 0)
    }

    /// The users, all or one tenant's.
    pub fn users(&self, tenant: Option<&TenantId>) -> Result<Vec<UserInfo>, AccountsError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, username, role, tenant, created_ms FROM users
                 WHERE ?1 IS NULL OR tenant = ?1 ORDER BY username",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map(params![tenant.map(|t| t.as_str())], |r| {
                Ok((
                    r.get::<_, i64>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, Option<String>>(3)?,
                    r.get::<_, i64>(4)?,
                ))
            })
            .map_err(self.sql())?;
        let mut out = Vec::new();
        for row in rows {
            let (id, username, role, tenant, created_ms) = row.map_err(self.sql())?;
            out.push(UserInfo {
                id,
                username,
                role: role.parse()?,
                tenant: tenant_of(tenant),
                created_ms,
            });
        }
        Ok(out)
    }

    /// Checks a username and password. `Ok(None)` for an unknown user or a wrong password
    /// (the two take the same time: an unknown user is checked against a dummy hash).
    pub fn check_password(
        &self,
        username: &str,
        password: &str,
    ) -> Result<Option<(i64, Principal)>, AccountsError> {
        if password.len() > MAX_PASSWORD_BYTES {
            return Ok(None);
        }
        let row = self
            .conn
            .query_row(
                "SELECT id, password_hash, role, tenant FROM users WHERE username = ?1",
                params![username],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(self.sql())?;
        match row {
            None => {
                let _ = verify(password, dummy_hash());
                Ok(None)
            }
            Some((id, hash, role, tenant)) => {
                if !verify(password, &hash) {
                    return Ok(None);
                }
                Ok(Some((
                    id,
                    Principal {
                        username: username.to_string(),
                        role: role.parse()?,
                        tenant: tenant_of(tenant),
                        csrf_token: None,
                    },
                )))
            }
        }
    }

    /// Adds an API token and returns it; it is never shown again (the file keeps its SHA-256).
    pub fn add_token(
        &mut self,
        role: Role,
        tenant: Option<&TenantId>,
        label: &str,
        now_ms: i64,
    ) -> Result<String, AccountsError> {
        if label.chars().count() > 100 || label.chars().any(char::is_control) {
            return Err(AccountsError::BadLabel);
        }
        let token = format!("{TOKEN_PREFIX}{}", random_hex(32));
        self.conn
            .execute(
                "INSERT INTO tokens (token_sha256, label, role, tenant, created_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    sha256_hex(&token),
                    label,
                    role.as_str(),
                    tenant.map(|t| t.as_str()),
                    now_ms
                ],
            )
            .map_err(self.sql())?;
        Ok(token)
    }

    /// Who an API token belongs to, if it is one of ours.
    pub fn token_principal(&self, token: &str) -> Result<Option<Principal>, AccountsError> {
        if !token.starts_with(TOKEN_PREFIX) || token.len() > 200 {
            return Ok(None);
        }
        // Looked up by the hash: equal hashes mean equal tokens, and a timing difference in
        // comparing hashes tells nothing about the token.
        let row = self
            .conn
            .query_row(
                "SELECT id, label, role, tenant FROM tokens WHERE token_sha256 = ?1",
                params![sha256_hex(token)],
                |r| {
                    Ok((
                        r.get::<_, i64>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, String>(2)?,
                        r.get::<_, Option<String>>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(self.sql())?;
        let Some((id, label, role, tenant)) = row else {
            return Ok(None);
        };
        Ok(Some(Principal {
            username: if label.is_empty() {
                format!("token:{id}")
            } else {
                format!("token:{id}:{label}")
            },
            role: role.parse()?,
            tenant: tenant_of(tenant),
            csrf_token: None,
        }))
    }

    /// Starts a session for a user; returns the cookie value and the session's CSRF token.
    pub fn create_session(
        &mut self,
        user_id: i64,
        now_ms: i64,
        ttl: Duration,
    ) -> Result<(String, String), AccountsError> {
        let session = random_hex(32);
        let csrf = random_hex(32);
        self.conn
            .execute(
                "DELETE FROM sessions WHERE expires_ms <= ?1",
                params![now_ms],
            )
            .map_err(self.sql())?;
        self.conn
            .execute(
                "INSERT INTO sessions (session_sha256, user_id, csrf_token, created_ms, expires_ms)
                 VALUES (?1, ?2, ?3, ?4, ?5)",
                params![
                    sha256_hex(&session),
                    user_id,
                    csrf,
                    now_ms,
                    now_ms.saturating_add(ttl.as_millis() as i64)
                ],
            )
            .map_err(self.sql())?;
        Ok((session, csrf))
    }

    /// Who a session cookie belongs to, if it is current. The user's role and tenant are
    /// read afresh, so a change applies to open sessions at once.
    pub fn session_principal(
        &self,
        session: &str,
        now_ms: i64,
    ) -> Result<Option<Principal>, AccountsError> {
        if session.len() != 64 {
            return Ok(None);
        }
        let row = self
            .conn
            .query_row(
                "SELECT u.username, u.role, u.tenant, s.csrf_token
                 FROM sessions s JOIN users u ON u.id = s.user_id
                 WHERE s.session_sha256 = ?1 AND s.expires_ms > ?2",
                params![sha256_hex(session), now_ms],
                |r| {
                    Ok((
                        r.get::<_, String>(0)?,
                        r.get::<_, String>(1)?,
                        r.get::<_, Option<String>>(2)?,
                        r.get::<_, String>(3)?,
                    ))
                },
            )
            .optional()
            .map_err(self.sql())?;
        let Some((username, role, tenant, csrf)) = row else {
            return Ok(None);
        };
        Ok(Some(Principal {
            username,
            role: role.parse()?,
            tenant: tenant_of(tenant),
            csrf_token: Some(csrf),
        }))
    }

    pub fn delete_session(&mut self, session: &str) -> Result<(), AccountsError> {
        self.conn
            .execute(
                "DELETE FROM sessions WHERE session_sha256 = ?1",
                params![sha256_hex(session)],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// Appends a line to the audit log.
    pub fn audit(&mut self, entry: &NewAudit<'_>) -> Result<i64, AccountsError> {
        self.conn
            .execute(
                "INSERT INTO audit (at_ms, username, tenant, action, target, detail, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    entry.at_ms,
                    entry.username,
                    entry.tenant.map(|t| t.as_str()),
                    entry.action,
                    entry.target,
                    entry.detail,
                    entry.reason
                ],
            )
            .map_err(self.sql())?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Audit lines in `[from_ms, to_ms)`, newest first, at most `limit`; a tenant sees its
    /// own lines only.
    pub fn audit_entries(
        &self,
        tenant: Option<&TenantId>,
        from_ms: i64,
        to_ms: i64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, AccountsError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, at_ms, username, tenant, action, target, detail, reason FROM audit
                 WHERE (?1 IS NULL OR tenant = ?1) AND at_ms >= ?2 AND at_ms < ?3
                 ORDER BY at_ms DESC, id DESC LIMIT ?4",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map(
                params![tenant.map(|t| t.as_str()), from_ms, to_ms, limit],
                |r| {
                    Ok(AuditEntry {
                        id: r.get(0)?,
                        at_ms: r.get(1)?,
                        username: r.get(2)?,
                        tenant: r.get(3)?,
                        action: r.get(4)?,
                        target: r.get(5)?,
                        detail: r.get(6)?,
                        reason: r.get(7)?,
                    })
                },
            )
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }
}

impl Accounts {
    /// Keeps a zone's policy settings (JSON), so a restart applies them again.
    pub fn save_zone_settings(
        &mut self,
        tenant: &TenantId,
        zone: u32,
        settings_json: &str,
        username: &str,
        now_ms: i64,
    ) -> Result<(), AccountsError> {
        self.conn
            .execute(
                "INSERT INTO zone_settings (tenant, zone, settings, updated_ms, username)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant, zone) DO UPDATE SET settings = excluded.settings,
                    updated_ms = excluded.updated_ms, username = excluded.username",
                params![tenant.as_str(), zone, settings_json, now_ms, username],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// Every zone's saved settings: (tenant, zone, JSON).
    pub fn saved_zone_settings(&self) -> Result<Vec<(String, u32, String)>, AccountsError> {
        let mut stmt = self
            .conn
            .prepare("SELECT tenant, zone, settings FROM zone_settings ORDER BY tenant, zone")
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }
}

impl Accounts {
    /// Keeps an override in force (replacing one on the same target for the same tenant),
    /// so that a restart applies it again.
    pub fn save_override(&mut self, o: &crate::ActiveOverride) -> Result<(), AccountsError> {
        let target = serde_json::to_string(&o.target).unwrap_or_default();
        let tenant = o.tenant.as_ref().map_or("", |t| t.as_str());
        self.conn
            .execute(
                "INSERT OR REPLACE INTO overrides
                    (target, tenant, level_pct, lamps, from_ms, until_ms, username, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    target,
                    tenant,
                    o.level_pct,
                    o.lamps as i64,
                    o.from_ms as i64,
                    o.until_ms as i64,
                    o.username,
                    o.reason
                ],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// Forgets the override on `target` set for `tenant` (cleared).
    pub fn delete_override(
        &mut self,
        target: &crate::OverrideTarget,
        tenant: Option<&TenantId>,
    ) -> Result<(), AccountsError> {
        let target = serde_json::to_string(target).unwrap_or_default();
        self.conn
            .execute(
                "DELETE FROM overrides WHERE target = ?1 AND tenant = ?2",
                params![target, tenant.map_or("", |t| t.as_str())],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// The overrides kept that are still in force at `now_ms`; expired ones are forgotten.
    /// A row that no longer reads (edited by hand) is skipped with a warning.
    pub fn saved_overrides(
        &mut self,
        now_ms: u64,
    ) -> Result<Vec<crate::ActiveOverride>, AccountsError> {
        self.conn
            .execute(
                "DELETE FROM overrides WHERE until_ms <= ?1",
                params![now_ms as i64],
            )
            .map_err(self.sql())?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT target, tenant, level_pct, lamps, from_ms, until_ms, username, reason
                 FROM overrides ORDER BY from_ms",
            )
            .map_err(self.sql())?;
        type Row = (String, String, u8, i64, i64, i64, String, String);
        let rows: Vec<Row> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })
            .map_err(self.sql())?
            .collect::<Result<_, _>>()
            .map_err(self.sql())?;
        let mut out = Vec::new();
        for (target, tenant, level_pct, lamps, from_ms, until_ms, username, reason) in rows {
            let target = serde_json::from_str(&target).map_err(|e| e.to_string());
            let tenant = match tenant.as_str() {
                "" => Ok(None),
                t => TenantId::new(t).map(Some).map_err(|e| e.to_string()),
            };
            match (target, tenant) {
                (Ok(target), Ok(tenant)) => out.push(crate::ActiveOverride {
                    target,
                    tenant,
                    level_pct: level_pct.min(100),
                    lamps: lamps.max(0) as usize,
                    from_ms: from_ms.max(0) as u64,
                    until_ms: until_ms.max(0) as u64,
                    username,
                    reason,
                }),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(file = %self.path.display(), error = %e, "saved override skipped")
                }
            }
        }
        Ok(out)
    }
}

/// A CSV field: quoted when it holds a comma, quote or line break; a leading `=`, `+`, `-`
/// or `@` is prefixed with `'` so a spreadsheet never runs it as a formula.
pub fn csv_field(s: &str) -> String {
    let s = if s.starts_with(['=', '+', '-', '@']) {
        format!("'{s}")
    } else {
        s.to_string()
    };
    if s.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", s.replace('"', "\"\""))
    } else {
        s
    }
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ` (Howard Hinnant's civil_from_days).
pub fn iso8601(t_s: i64) -> String {
    let days = t_s.div_euclid(86_400);
    let secs = t_s.rem_euclid(86_400);
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + (m <= 2) as i64;
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        secs / 3600,
        secs / 60 % 60,
        secs % 60
    )
}

/// The audit lines as CSV, oldest first, with a header line.
pub fn audit_csv(entries: &[AuditEntry]) -> String {
    let mut out = String::from("time,at_ms,username,tenant,action,target,detail,reason\n");
    for e in entries.iter().rev() {
        out.push_str(&format!(
            "{},{},{},{},{},{},{},{}\n",
            iso8601(e.at_ms.div_euclid(1000)),
            e.at_ms,
            csv_field(&e.username),
            csv_field(e.tenant.as_deref().unwrap_or("")),
            csv_field(&e.action),
            csv_field(&e.target),
            csv_field(&e.detail),
            csv_field(&e.reason),
        ));
    }
    out
}

#[cfg(test)]
mod tests {
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

    #[test]
    fn audit_is_scoped_to_the_tenant_and_exports_as_csv() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Accounts::open(dir.path()).unwrap();
        let north = TenantId::new("north").unwrap();
        let south = TenantId::new("south").unwrap();
        for (t, reason) in [(&north, "burst main, \"crew\" on site"), (&south, "=cmd()")] {
            a.audit(&NewAudit {
                at_ms: now(),
                username: "ann",
                tenant: Some(t),
                action: "override",
                target: "zone 3",
                detail: "{\"level_pct\":100}",
                reason,
            })
            .unwrap();
        }
        let n = a.audit_entries(Some(&north), 0, i64::MAX, 100).unwrap();
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].tenant.as_deref(), Some("north"));
        let all = a.audit_entries(None, 0, i64::MAX, 100).unwrap();
        assert_eq!(all.len(), 2);
        let csv = audit_csv(&all);
        assert!(
            csv.contains("\"burst main, \"\"crew\"\" on site\""),
            "{csv}"
        );
        assert!(csv.contains(",'=cmd()"), "formula neutralised: {csv}");
        assert!(csv.starts_with("time,at_ms,username"));
    }
}

#[cfg(test)]
mod migration_tests {
    use super::*;

    #[test]
    fn a_version_1_file_gains_the_overrides_table_and_keeps_its_users() {
        let dir = tempfile::tempdir().unwrap();
        {
            let conn = Connection::open(dir.path().join(ACCOUNTS_FILE)).unwrap();
            conn.execute_batch(&format!("{SCHEMA} PRAGMA user_version = 1;"))
                .unwrap();
            conn.execute(
                "INSERT INTO users (username, password_hash, role, tenant, created_ms)
                 VALUES ('ada', 'x', 'admin', NULL, 0)",
                [],
            )
            .unwrap();
        }
        let mut a = Accounts::open(dir.path()).unwrap();
        assert_eq!(a.users(None).unwrap().len(), 1);
        let o = crate::ActiveOverride {
            target: crate::OverrideTarget::Town,
            tenant: None,
            level_pct: 80,
            lamps: 3,
            from_ms: 10,
            until_ms: 2_000,
            username: "ada".into(),
            reason: "festival".into(),
        };
        a.save_override(&o).unwrap();
        assert_eq!(a.saved_overrides(1_000).unwrap(), vec![o]);
        // Expired: forgotten.
        assert!(a.saved_overrides(2_000).unwrap().is_empty());
        drop(a);
        let version: i64 = Connection::open(dir.path().join(ACCOUNTS_FILE))
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }
}
