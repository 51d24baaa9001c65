//! Users: argon2id password hashes, roles and tenants.

use argon2::password_hash::rand_core::OsRng;
use argon2::password_hash::{PasswordHash, PasswordHasher, PasswordVerifier, SaltString};
use argon2::Argon2;
use lamplighter_protocol::TenantId;
use rusqlite::{params, OptionalExtension};

use super::{
    random_password, tenant_of, validate_password, validate_username, Accounts, AccountsError,
    Principal, Role, UserInfo, MAX_PASSWORD_BYTES,
};

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

impl Accounts {
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
}
