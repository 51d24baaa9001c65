//! What the links to councils' own networks must remember across a restart, in its own small
//! SQLite file, `external.sqlite` in the data directory (opened through `lamplighter-sqlite`,
//! like the other files there):
//!
//! ```sql
//! -- This installation's random ID: the external link's MQTT client ID is
//! -- lamplighter-{tenant}-{instance}, the same after every restart (so the network's broker
//! -- keeps the persistent session) and different for every data directory (so two
//! -- instances never take each other's session).
//! CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
//! -- Per node on an external network: the network's own device ID (The Things Stack names
//! -- devices freely; provisioning may set it, uplinks and joins learn it), the base added to
//! -- the network's FCnt in the current session, and the last counters passed each way.
//! CREATE TABLE devices (tenant TEXT NOT NULL, dev_eui TEXT NOT NULL, device_id TEXT,
//!                       fcnt_base INTEGER NOT NULL, last_fcnt_up INTEGER,
//!                       last_fcnt_down INTEGER, PRIMARY KEY (tenant, dev_eui));
//! ```
//!
//! Why the base: a network restarts a device's FCnt at 0 after each OTAA join, but the
//! controller checks counters strictly (a lower one is a replay). The adapter seals each uplink
//! with `fcnt_base + network FCnt` and moves the base past the last counter it sealed at each
//! join, so the controller's check keeps its meaning inside a session and a new session is not
//! refused. Without the stored base a restart would begin again at 0 and lose every reading
//! until the counter caught up.

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use lamplighter_protocol::{DevEui, TenantId};
use rusqlite::{params, Connection, OptionalExtension};

pub const DB_FILE: &str = "external.sqlite";

/// One node's remembered state on its external network.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct DeviceState {
    /// The network's device ID (The Things Stack), if known.
    pub device_id: Option<String>,
    /// Added to the network's FCnt to make the application-session counter.
    pub fcnt_base: u32,
    /// The last application-session counter sealed for the controller.
    pub last_fcnt_up: Option<u32>,
    /// The last downlink counter of the controller's frames passed on.
    pub last_fcnt_down: Option<u32>,
}

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("cannot create the data directory {0}: {1}")]
    Dir(PathBuf, std::io::Error),
    #[error("external network state {path}: {source}")]
    Sql {
        path: PathBuf,
        source: rusqlite::Error,
    },
    #[error("external network state {path}: bad DevEUI {value:?} in the devices table")]
    BadRow { path: PathBuf, value: String },
}

pub struct ExternalState {
    conn: Connection,
    path: PathBuf,
}

impl ExternalState {
    /// Opens (creating if needed) `external.sqlite` in `data_dir`.
    pub fn open(data_dir: &Path) -> Result<Self, StateError> {
        std::fs::create_dir_all(data_dir)
            .map_err(|e| StateError::Dir(data_dir.to_path_buf(), e))?;
        let path = data_dir.join(DB_FILE);
        let sql = |source| StateError::Sql {
            path: path.clone(),
            source,
        };
        let conn = lamplighter_sqlite::open_shared(&path, std::time::Duration::from_secs(5))
            .map_err(sql)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
             CREATE TABLE IF NOT EXISTS devices (
                tenant TEXT NOT NULL,
                dev_eui TEXT NOT NULL,
                device_id TEXT,
                fcnt_base INTEGER NOT NULL,
                last_fcnt_up INTEGER,
                last_fcnt_down INTEGER,
                PRIMARY KEY (tenant, dev_eui)
             ) WITHOUT ROWID;",
        )
        .map_err(sql)?;
        // Durable at each commit: a counter is stored before its frame is passed on.
        conn.pragma_update(None, "synchronous", "FULL")
            .map_err(sql)?;
        Ok(ExternalState { conn, path })
    }

    fn sql(&self, source: rusqlite::Error) -> StateError {
        StateError::Sql {
            path: self.path.clone(),
            source,
        }
    }

    /// This installation's random ID (16 hex digits), made the first time it is asked for.
    pub fn instance_id(&self) -> Result<String, StateError> {
        let fresh = format!("{:016x}", rand::random::<u64>());
        self.conn
            .execute(
                "INSERT OR IGNORE INTO meta (key, value) VALUES ('instance_id', ?1)",
                params![fresh],
            )
            .map_err(|e| self.sql(e))?;
        self.conn
            .query_row(
                "SELECT value FROM meta WHERE key = 'instance_id'",
                [],
                |r| r.get(0),
            )
            .map_err(|e| self.sql(e))
    }

    /// Every node's state of `tenant`.
    pub fn devices(&self, tenant: &TenantId) -> Result<HashMap<DevEui, DeviceState>, StateError> {
        let mut stmt = self
            .conn
            .prepare_cached(
                "SELECT dev_eui, device_id, fcnt_base, last_fcnt_up, last_fcnt_down
                 FROM devices WHERE tenant = ?1",
            )
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![tenant.as_str()], |r| {
                Ok((
                    r.get::<_, String>(0)?,
                    DeviceState {
                        device_id: r.get(1)?,
                        fcnt_base: r.get(2)?,
                        last_fcnt_up: r.get(3)?,
                        last_fcnt_down: r.get(4)?,
                    },
                ))
            })
            .map_err(|e| self.sql(e))?;
        let mut out = HashMap::new();
        for row in rows {
            let (eui, state) = row.map_err(|e| self.sql(e))?;
            let dev_eui = eui.parse().map_err(|_| StateError::BadRow {
                path: self.path.clone(),
                value: eui.clone(),
            })?;
            out.insert(dev_eui, state);
        }
        Ok(out)
    }

    /// Stores a node's state (replacing what was there).
    pub fn save(
        &self,
        tenant: &TenantId,
        dev_eui: DevEui,
        state: &DeviceState,
    ) -> Result<(), StateError> {
        self.conn
            .prepare_cached(
                "INSERT INTO devices (tenant, dev_eui, device_id, fcnt_base, last_fcnt_up,
                                      last_fcnt_down)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6)
                 ON CONFLICT (tenant, dev_eui) DO UPDATE SET device_id = ?3, fcnt_base = ?4,
                    last_fcnt_up = ?5, last_fcnt_down = ?6",
            )
            .and_then(|mut s| {
                s.execute(params![
                    tenant.as_str(),
                    dev_eui.to_string(),
                    state.device_id,
                    state.fcnt_base,
                    state.last_fcnt_up,
                    state.last_fcnt_down
                ])
            })
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Provisioning: sets a node's device ID on its network (The Things Stack), keeping its
    /// counters. Takes effect when `serve` next starts.
    pub fn set_device_id(
        &self,
        tenant: &TenantId,
        dev_eui: DevEui,
        device_id: &str,
    ) -> Result<(), StateError> {
        self.conn
            .execute(
                "INSERT INTO devices (tenant, dev_eui, device_id, fcnt_base)
                 VALUES (?1, ?2, ?3, 0)
                 ON CONFLICT (tenant, dev_eui) DO UPDATE SET device_id = ?3",
                params![tenant.as_str(), dev_eui.to_string(), device_id],
            )
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// A node's device ID, if set or learnt.
    pub fn device_id(
        &self,
        tenant: &TenantId,
        dev_eui: DevEui,
    ) -> Result<Option<String>, StateError> {
        self.conn
            .query_row(
                "SELECT device_id FROM devices WHERE tenant = ?1 AND dev_eui = ?2",
                params![tenant.as_str(), dev_eui.to_string()],
                |r| r.get::<_, Option<String>>(0),
            )
            .optional()
            .map(Option::flatten)
            .map_err(|e| self.sql(e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_and_instance_id_survive_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let tenant = TenantId::new("town").unwrap();
        let (id, eui) = {
            let s = ExternalState::open(dir.path()).unwrap();
            s.set_device_id(&tenant, DevEui(7), "lamp-7").unwrap();
            s.save(
                &tenant,
                DevEui(8),
                &DeviceState {
                    device_id: None,
                    fcnt_base: 12,
                    last_fcnt_up: Some(20),
                    last_fcnt_down: Some(3),
                },
            )
            .unwrap();
            (s.instance_id().unwrap(), DevEui(8))
        };
        let s = ExternalState::open(dir.path()).unwrap();
        assert_eq!(s.instance_id().unwrap(), id);
        assert_eq!(id.len(), 16);
        let devices = s.devices(&tenant).unwrap();
        assert_eq!(devices[&DevEui(7)].device_id.as_deref(), Some("lamp-7"));
        assert_eq!(devices[&eui].fcnt_base, 12);
        assert_eq!(devices[&eui].last_fcnt_up, Some(20));
        // Setting a device ID keeps the counters.
        s.set_device_id(&tenant, eui, "lamp-8").unwrap();
        let devices = s.devices(&tenant).unwrap();
        assert_eq!(devices[&eui].last_fcnt_up, Some(20));
        assert_eq!(
            s.device_id(&tenant, eui).unwrap().as_deref(),
            Some("lamp-8")
        );
        // Another data directory is another instance.
        let other = tempfile::tempdir().unwrap();
        assert_ne!(
            ExternalState::open(other.path())
                .unwrap()
                .instance_id()
                .unwrap(),
            id
        );
    }

    #[test]
    fn both_open_a_new_folder_at_once() {
        lamplighter_sqlite::testing::assert_both_open_a_new_folder_at_once(|dir| {
            ExternalState::open(dir).map(|_| ())
        });
    }
}
