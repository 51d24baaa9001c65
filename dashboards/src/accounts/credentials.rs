//! API tokens and browser sessions. The file keeps only their SHA-256, so a copy of it
//! gives no one a working token or session.

use std::time::Duration;

use lamplighter_protocol::TenantId;
use rusqlite::{params, OptionalExtension};

use super::{
    random_hex, sha256_hex, tenant_of, Accounts, AccountsError, Principal, Role, TOKEN_PREFIX,
};

impl Accounts {
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
}
