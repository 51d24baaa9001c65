//! The zones' forecaster state, kept with the store so a restart does not send the adaptive
//! policy back to days of learning (issue 24, item 7).
//!
//! One row per zone in the store's file (`lamplighter.sqlite`), written as JSON (the
//! forecaster's own serde form, a few kilobytes a zone) on its own connection: the state is
//! saved every few minutes and at shutdown by the service, not with each reading, so it does
//! not go through the writer thread's queue. WAL mode lets it write beside the writer.
//!
//! ```sql
//! CREATE TABLE zone_forecasters (tenant TEXT NOT NULL, zone INTEGER NOT NULL,
//!     saved_ms INTEGER NOT NULL, state TEXT NOT NULL, PRIMARY KEY (tenant, zone));
//! ```
//!
//! A row that does not parse (a model changed between versions) is skipped with a warning:
//! that zone starts from nothing, as before.

use std::path::{Path, PathBuf};

use lamplighter_protocol::UnixMs;
use rusqlite::{params, Connection};

use crate::core::demand::ZoneForecasterState;

#[derive(Debug, thiserror::Error)]
pub enum ForecastStoreError {
    #[error("forecaster state in {path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("forecaster state of {tenant}/{zone}: {source}")]
    Json {
        tenant: String,
        zone: u32,
        source: serde_json::Error,
    },
}

pub struct ForecastStore {
    conn: Connection,
    path: PathBuf,
}

impl ForecastStore {
    /// Opens the store's file in `data_dir` (creating the table if needed).
    pub fn open(data_dir: &Path) -> Result<Self, ForecastStoreError> {
        let path = data_dir.join(super::DB_FILE);
        let sql = |source| ForecastStoreError::Sql {
            path: path.clone(),
            source,
        };
        let conn = lamplighter_sqlite::open_shared(&path, std::time::Duration::from_secs(10))
            .map_err(sql)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS zone_forecasters (
                tenant TEXT NOT NULL,
                zone INTEGER NOT NULL,
                saved_ms INTEGER NOT NULL,
                state TEXT NOT NULL,
                PRIMARY KEY (tenant, zone)
             );",
        )
        .map_err(sql)?;
        Ok(ForecastStore { conn, path })
    }

    fn sql(&self, source: rusqlite::Error) -> ForecastStoreError {
        ForecastStoreError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    /// Saves every zone's state in one transaction.
    pub fn save(
        &mut self,
        states: &[ZoneForecasterState],
        now: UnixMs,
    ) -> Result<(), ForecastStoreError> {
        let rows: Vec<(String, u32, String)> = states
            .iter()
            .map(|s| {
                serde_json::to_string(s)
                    .map(|json| (s.tenant.to_string(), s.zone.0, json))
                    .map_err(|source| ForecastStoreError::Json {
                        tenant: s.tenant.to_string(),
                        zone: s.zone.0,
                        source,
                    })
            })
            .collect::<Result<_, _>>()?;
        let path = self.path.clone();
        let sql = |source| ForecastStoreError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        {
            let mut stmt = tx
                .prepare_cached(
                    "INSERT INTO zone_forecasters (tenant, zone, saved_ms, state)
                     VALUES (?1, ?2, ?3, ?4)
                     ON CONFLICT (tenant, zone) DO UPDATE SET saved_ms = ?3, state = ?4",
                )
                .map_err(sql)?;
            for (tenant, zone, json) in &rows {
                stmt.execute(params![tenant, zone, now.0 as i64, json])
                    .map_err(sql)?;
            }
        }
        tx.commit().map_err(sql)
    }

    /// Every saved zone state that parses.
    pub fn load(&self) -> Result<Vec<ZoneForecasterState>, ForecastStoreError> {
        let mut stmt = self
            .conn
            .prepare("SELECT tenant, zone, state FROM zone_forecasters")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    r.get::<_, u32>(1)?,
                    r.get::<_, String>(2)?,
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = Vec::new();
        for row in rows {
            let (tenant, zone, json) = row.map_err(|e| self.sql(e))?;
            match serde_json::from_str::<ZoneForecasterState>(&json) {
                Ok(s) => out.push(s),
                Err(e) => tracing::warn!(%tenant, zone, error = %e,
                    "saved forecaster state does not parse; the zone starts from nothing"),
            }
        }
        Ok(out)
    }
}
