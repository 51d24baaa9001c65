//! The accounts file's tables, and opening it: created on first use, migrated forward
//! one version at a time, refused when a newer build wrote it.

use std::path::Path;
use std::time::Duration;

use super::{Accounts, AccountsError, ACCOUNTS_FILE};

pub(super) const SCHEMA_VERSION: i64 = 2;

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
}

#[cfg(test)]
mod migration_tests {
    use rusqlite::Connection;

    use super::*;

    #[test]
    fn a_version_1_file_gains_the_overrides_table_keeps_its_users_and_hands_over_its_state() {
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
        a.conn
            .execute(
                "INSERT INTO overrides VALUES ('{\"scope\":\"town\"}', '', 80, 3, 10, 2000, 'ada',
                    'festival')",
                [],
            )
            .unwrap();
        a.conn
            .execute(
                "INSERT INTO zone_settings VALUES ('bath', 2, '{}', 5, 'ada')",
                [],
            )
            .unwrap();
        // Read for handing over, then forgotten.
        let earlier = a.operator_state(1_000).unwrap();
        assert_eq!(earlier.overrides, vec![o]);
        assert_eq!(
            earlier.zone_settings,
            vec![("bath".into(), 2, "{}".into(), "ada".into())]
        );
        assert!(
            a.operator_state(2_000).unwrap().overrides.is_empty(),
            "expired"
        );
        a.forget_operator_state().unwrap();
        assert_eq!(a.operator_state(1_000).unwrap(), Default::default());
        drop(a);
        let version: i64 = Connection::open(dir.path().join(ACCOUNTS_FILE))
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(version, SCHEMA_VERSION);
    }
}
