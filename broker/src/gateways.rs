//! The gateway registry: which gateways the bridge listens to.
//!
//! It lives in its own small SQLite file, `lorawan.sqlite` in the data directory, owned by
//! this crate (the controller's store is another file with another owner). One table:
//!
//! ```sql
//! CREATE TABLE gateways (eui TEXT PRIMARY KEY, added_ms INTEGER NOT NULL, note TEXT);
//! ```
//!
//! `lamplighter gateways add --eui HEX --data-dir DIR` writes a row; the running bridge
//! re-reads the table every few seconds and at once (at most once a second) when a datagram
//! comes from a gateway it does not know, so a new gateway works within a second of being
//! added, without a restart. SQLite's WAL mode lets the CLI write while the bridge reads.

use std::collections::HashSet;
use std::path::{Path, PathBuf};

use rusqlite::{params, Connection};

use crate::gwmp::GatewayEui;

pub const DB_FILE: &str = "lorawan.sqlite";

#[derive(Debug, thiserror::Error)]
pub enum RegistryError {
    #[error("cannot create the data directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("gateway registry {path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
}

pub struct GatewayRegistry {
    conn: Connection,
    path: PathBuf,
}

impl GatewayRegistry {
    /// Opens (creating if needed) the registry in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, RegistryError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| RegistryError::Dir(data_dir.to_path_buf(), e))?;
        let path = data_dir.join(DB_FILE);
        let sql = |source| RegistryError::Sql {
            path: path.clone(),
            source,
        };
        let conn = Connection::open(&path).map_err(sql)?;
        conn.busy_timeout(std::time::Duration::from_secs(5))
            .map_err(sql)?;
        conn.pragma_update(None, "journal_mode", "WAL")
            .map_err(sql)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS gateways (
                eui TEXT PRIMARY KEY,
                added_ms INTEGER NOT NULL,
                note TEXT
            );",
        )
        .map_err(sql)?;
        Ok(GatewayRegistry { conn, path })
    }

    fn sql(&self, source: rusqlite::Error) -> RegistryError {
        RegistryError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    /// Adds a gateway; true if it was new.
    pub fn add(
        &self,
        eui: GatewayEui,
        now_ms: u64,
        note: Option<&str>,
    ) -> Result<bool, RegistryError> {
        let n = self
            .conn
            .execute(
                "INSERT OR IGNORE INTO gateways (eui, added_ms, note) VALUES (?1, ?2, ?3)",
                params![eui.to_string(), now_ms as i64, note],
            )
            .map_err(|e| self.sql(e))?;
        Ok(n == 1)
    }

    pub fn remove(&self, eui: GatewayEui) -> Result<bool, RegistryError> {
        let n = self
            .conn
            .execute(
                "DELETE FROM gateways WHERE eui = ?1",
                params![eui.to_string()],
            )
            .map_err(|e| self.sql(e))?;
        Ok(n == 1)
    }

    /// Every gateway. Rows that are not an EUI (edited by hand) are skipped with a warning.
    pub fn all(&self) -> Result<HashSet<GatewayEui>, RegistryError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT eui FROM gateways")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| r.get::<_, String>(0))
            .map_err(|e| self.sql(e))?;
        let mut out = HashSet::new();
        for row in rows {
            let text = row.map_err(|e| self.sql(e))?;
            match text.parse() {
                Ok(eui) => {
                    out.insert(eui);
                }
                Err(e) => tracing::warn!(row = %text, error = %e, "skipping a bad gateway row"),
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn add_list_remove() {
        let dir = tempfile::tempdir().unwrap();
        let reg = GatewayRegistry::open(dir.path()).unwrap();
        let eui: GatewayEui = "AA555A0000000101".parse().unwrap();
        assert!(reg.add(eui, 1, None).unwrap());
        assert!(!reg.add(eui, 2, Some("again")).unwrap());
        let other = GatewayRegistry::open(dir.path()).unwrap();
        assert_eq!(other.all().unwrap(), HashSet::from([eui]));
        assert!(reg.remove(eui).unwrap());
        assert!(other.all().unwrap().is_empty());
    }
}
