//! The embedded store: one SQLite file (WAL) under the data directory.
//!
//! It holds what must survive a restart: the provisioned nodes with their credentials and
//! session counters (replay protection depends on them), and the record: readings keyed by
//! node and FCnt (so a resent frame is stored once), commands with their reasons, and
//! rejected uplinks. The schema is versioned; a database newer than this build is refused.
//!
//! Writes go through [`StoreWriter`]: a thread of its own that takes events in batches and
//! writes each batch in one transaction, off the controller's hot path.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use rusqlite::{Connection, TransactionBehavior};

mod nodes;
pub use nodes::{NewNode, StoredNode};
mod schema;
use schema::MIGRATIONS;
mod writer;
pub use writer::{Committed, StoreOptions, StoreThread, StoreWriter};
mod history;
pub use history::{CommandSent, HistoryPoint, Resolution, Retention};
mod export;
pub use export::{backup, ExportWhat};
mod energy;
pub use energy::{
    period_starts, EnergyError, EnergyPeriod, EnergySummary, Savings, Tariff, TariffError,
    BASELINES,
};
mod faults;
pub use faults::FaultsAtStart;
mod forecasts;
pub use forecasts::{ForecastStore, ForecastStoreError};
mod operator;
pub use operator::{OperatorStore, OperatorStoreError, Overrides};
#[cfg(test)]
mod tests_energy;
#[cfg(test)]
mod tests_faults;

#[cfg(test)]
mod tests_history;

pub const DB_FILE: &str = "lamplighter.sqlite";
/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("cannot create data directory {path}: {source}")]
    DataDir {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("database {path}: {source}")]
    Sqlite {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("database {path} has schema version {found}, newer than this build's {SCHEMA_VERSION}; upgrade lamplighter")]
    TooNew { path: PathBuf, found: i64 },
    #[error("corrupt row in {table}: {detail}")]
    Corrupt { table: &'static str, detail: String },
    #[error("writing CSV: {0}")]
    Io(#[from] std::io::Error),
    #[error("{0}")]
    Invalid(String),
}

impl From<csv::Error> for StoreError {
    fn from(e: csv::Error) -> Self {
        StoreError::Io(e.into())
    }
}
pub struct Store {
    conn: Connection,
    path: PathBuf,
    /// Each lamp's tenant and zone, for the rollups (filled on first use).
    zone_of: HashMap<u32, (String, u32)>,
    /// Whether readings, commands and zone points also go to the InfluxDB spool.
    influx_spool: bool,
    retention: Retention,
    last_retention: Option<std::time::Instant>,
}

impl Store {
    /// Opens (creating if needed) the database under `data_dir` and brings its schema up to
    /// date.
    pub fn open(data_dir: &Path) -> Result<Store, StoreError> {
        std::fs::create_dir_all(data_dir).map_err(|source| StoreError::DataDir {
            path: data_dir.to_path_buf(),
            source,
        })?;
        let path = data_dir.join(DB_FILE);
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = lamplighter_sqlite::open_shared(&path, Duration::from_secs(10)).map_err(sql)?;
        conn.pragma_update(None, "synchronous", "NORMAL")
            .map_err(sql)?;
        let mut store = Store {
            conn,
            path,
            zone_of: HashMap::new(),
            influx_spool: false,
            retention: Retention::default(),
            last_retention: None,
        };
        store.migrate()?;
        Ok(store)
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> StoreError + '_ {
        move |source| StoreError::Sqlite {
            path: self.path.clone(),
            source,
        }
    }

    fn migrate(&mut self) -> Result<(), StoreError> {
        let path = self.path.clone();
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        // The version is read inside a write transaction: two processes opening a new store
        // at once (the demo and an installer's `nodes export`) would otherwise both read 0
        // and both create the tables. The second waits for the first (busy timeout) and
        // finds the schema made.
        let tx = self
            .conn
            .transaction_with_behavior(TransactionBehavior::Immediate)
            .map_err(sql)?;
        let version: i64 = tx
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path: path.clone(),
                found: version,
            });
        }
        for (i, m) in MIGRATIONS.iter().enumerate().skip(version as usize) {
            tx.execute_batch(m)
                .and_then(|_| tx.pragma_update(None, "user_version", (i + 1) as i64))
                .map_err(sql)?;
        }
        tx.commit().map_err(sql)
    }
    pub fn count(&self, table: &str) -> Result<u64, StoreError> {
        let allowed = ["nodes", "readings", "commands", "rejections", "faults"];
        let table = allowed
            .iter()
            .find(|t| **t == table)
            .ok_or_else(|| StoreError::Corrupt {
                table: "?",
                detail: format!("no table {table}"),
            })?;
        self.conn
            .query_row(&format!("SELECT COUNT(*) FROM {table}"), [], |r| r.get(0))
            .map_err(self.sql())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::core::Event;
    use lamplighter_protocol::{LampId, TenantId, ZoneId};

    fn new_node(i: u32, tenant: &str) -> NewNode {
        NewNode {
            lamp: LampId(i),
            tenant: TenantId::new(tenant).unwrap(),
            zone: ZoneId(i / 5),
            lat: 51.45,
            lon: -2.59 + i as f64 * 0.0004,
            rated_power_w: 40.0,
        }
    }

    /// The demo creating its store while an installer's `nodes export` opens the same new
    /// file: both must open it, whichever creates the tables.
    #[test]
    fn two_processes_opening_a_new_store_at_once_both_succeed() {
        lamplighter_sqlite::testing::assert_both_open_a_new_folder_at_once(|dir| {
            Store::open(dir).and_then(|store| store.nodes().map(|_| ()))
        });
    }

    #[test]
    fn provisioning_is_idempotent_and_gives_each_node_its_own_secrets() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        let nodes: Vec<_> = (0..20).map(|i| new_node(i, "bath")).collect();
        assert_eq!(store.provision(&nodes).unwrap(), 20);
        assert_eq!(store.provision(&nodes).unwrap(), 0);
        let stored = store.nodes().unwrap();
        assert_eq!(stored.len(), 20);
        let mut keys: Vec<_> = stored
            .iter()
            .map(|s| s.node.keys.nwk_s_key.to_string())
            .collect();
        keys.sort();
        keys.dedup();
        assert_eq!(keys.len(), 20);
        let s = &stored[3];
        assert!(store
            .check_mqtt_credentials(&s.mqtt_username, &s.mqtt_password)
            .unwrap());
        assert!(!store
            .check_mqtt_credentials(&s.mqtt_username, "wrong")
            .unwrap());
        assert!(!store
            .check_mqtt_credentials("nobody", &s.mqtt_password)
            .unwrap());

        // Reopening keeps everything.
        drop(store);
        let store = Store::open(dir.path()).unwrap();
        assert_eq!(store.nodes().unwrap(), stored);
        let mut csv = Vec::new();
        assert_eq!(store.export_nodes_csv(&mut csv).unwrap(), 20);
        let csv = String::from_utf8(csv).unwrap();
        assert_eq!(csv.lines().count(), 21);
        assert!(csv.lines().nth(4).unwrap().contains(&s.mqtt_password));
    }

    #[test]
    fn a_newer_database_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(Store::open(dir.path()).unwrap());
        let conn = Connection::open(dir.path().join(DB_FILE)).unwrap();
        conn.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        drop(conn);
        assert!(matches!(
            Store::open(dir.path()),
            Err(StoreError::TooNew { .. })
        ));
    }

    #[test]
    fn readings_are_kept_once_per_node_and_fcnt_and_counters_persist() {
        use crate::core::policy::Reason;
        use lamplighter_protocol::payload::*;
        let dir = tempfile::tempdir().unwrap();
        let mut store = Store::open(dir.path()).unwrap();
        store.provision(&[new_node(0, "bath")]).unwrap();
        let report = StatusReport {
            level_pct: 30,
            target_level_pct: 30,
            power_dw: 100,
            energy_dwh: 77,
            ambient_lux: 0,
            presence: Presence::default(),
            faults: FaultFlags::default(),
            mode: NodeMode::Commanded,
            trigger: ReportTrigger::Periodic,
            reading_time_s: 1,
            applied_fcnt_down: 0,
        };
        let reading = Event::Reading {
            lamp: LampId(0),
            received: lamplighter_protocol::UnixMs(5),
            fcnt: 9,
            report,
            energy_delta_dwh: 77,
        };
        let command = Event::CommandSent {
            lamp: LampId(0),
            at: lamplighter_protocol::UnixMs(6),
            level_pct: 40,
            ramp_ms: 1000,
            reason: Reason::Presence,
            fcnt_down: 3,
        };
        store.write_events(&[reading.clone(), command]).unwrap();
        store.write_events(&[reading]).unwrap();
        assert_eq!(store.count("readings").unwrap(), 1);
        assert_eq!(store.count("commands").unwrap(), 1);
        let n = &store.nodes().unwrap()[0].node;
        assert_eq!(
            (n.last_fcnt_up, n.next_fcnt_down, n.last_energy_dwh),
            (Some(9), 4, Some(77))
        );
    }
}
