//! The gateway registry: which gateways the bridge listens to.
//!
//! It lives in its own small SQLite file, `lorawan.sqlite` in the data directory, owned by
//! this crate (the controller's store is another file with another owner). Two tables:
//!
//! ```sql
//! CREATE TABLE gateways (eui TEXT PRIMARY KEY, added_ms INTEGER NOT NULL, note TEXT);
//! -- Every DevNonce an OTAA device joined with: the network server refuses them again,
//! -- also after a restart, so a recorded JoinRequest cannot be replayed.
//! CREATE TABLE dev_nonces (dev_eui TEXT NOT NULL, dev_nonce INTEGER NOT NULL,
//!                          used_ms INTEGER NOT NULL, PRIMARY KEY (dev_eui, dev_nonce));
//! -- One multicast group per zone: its McAddr, keys, and the last group FCnt sent.
//! CREATE TABLE zone_groups (tenant TEXT NOT NULL, zone INTEGER NOT NULL,
//!                           mc_addr INTEGER NOT NULL UNIQUE, nwk_s_key TEXT NOT NULL,
//!                           app_s_key TEXT NOT NULL, last_fcnt INTEGER,
//!                           PRIMARY KEY (tenant, zone));
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

/// Zone groups' McAddrs count up from here: NetID type 7 space, never a node's DevAddr
/// (the store gives nodes addresses below 0x0200_0000).
pub const ZONE_GROUP_ADDR_BASE: u32 = 0xFE00_0000;

/// A zone's multicast group as stored.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ZoneGroup {
    pub tenant: lamplighter_protocol::TenantId,
    pub zone: u32,
    pub mc_addr: lamplighter_protocol::DevAddr,
    pub keys: lamplighter_protocol::lorawan::SessionKeys,
    pub last_fcnt: Option<u32>,
}

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
        let conn = lamplighter_sqlite::open_shared(&path, std::time::Duration::from_secs(5))
            .map_err(sql)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS gateways (
                eui TEXT PRIMARY KEY,
                added_ms INTEGER NOT NULL,
                note TEXT
            );
            CREATE TABLE IF NOT EXISTS dev_nonces (
                dev_eui TEXT NOT NULL,
                dev_nonce INTEGER NOT NULL,
                used_ms INTEGER NOT NULL,
                PRIMARY KEY (dev_eui, dev_nonce)
            ) WITHOUT ROWID;
            CREATE TABLE IF NOT EXISTS zone_groups (
                tenant TEXT NOT NULL,
                zone INTEGER NOT NULL,
                mc_addr INTEGER NOT NULL UNIQUE,
                nwk_s_key TEXT NOT NULL,
                app_s_key TEXT NOT NULL,
                last_fcnt INTEGER,
                PRIMARY KEY (tenant, zone)
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

    /// Records a DevNonce a device joined with (idempotent).
    pub fn record_dev_nonce(
        &self,
        dev_eui: lamplighter_protocol::DevEui,
        dev_nonce: [u8; 2],
        now_ms: u64,
    ) -> Result<(), RegistryError> {
        self.conn
            .prepare_cached(
                "INSERT OR IGNORE INTO dev_nonces (dev_eui, dev_nonce, used_ms) VALUES (?1, ?2, ?3)",
            )
            .and_then(|mut s| {
                s.execute(params![
                    dev_eui.to_string(),
                    u16::from_le_bytes(dev_nonce),
                    now_ms as i64
                ])
            })
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Every DevNonce a device has joined with, in wire order.
    pub fn dev_nonces(
        &self,
        dev_eui: lamplighter_protocol::DevEui,
    ) -> Result<Vec<[u8; 2]>, RegistryError> {
        let mut stmt = self
            .conn
            .prepare_cached("SELECT dev_nonce FROM dev_nonces WHERE dev_eui = ?1")
            .map_err(|e| self.sql(e))?;
        let rows = stmt
            .query_map(params![dev_eui.to_string()], |r| r.get::<_, u16>(0))
            .map_err(|e| self.sql(e))?;
        rows.map(|r| r.map(u16::to_le_bytes).map_err(|e| self.sql(e)))
            .collect()
    }

    /// The multicast group of each `(tenant, zone)`, created with fresh random keys the first
    /// time a zone is asked for. McAddrs are numbered from [`ZONE_GROUP_ADDR_BASE`], a
    /// range the store never gives a node.
    pub fn zone_groups(
        &mut self,
        zones: &[(lamplighter_protocol::TenantId, u32)],
    ) -> Result<Vec<ZoneGroup>, RegistryError> {
        use lamplighter_protocol::lorawan::{AesKey, SessionKeys};
        let path = self.path.clone();
        let sql = |source| RegistryError::Sql {
            path: path.clone(),
            source,
        };
        let tx = self.conn.transaction().map_err(sql)?;
        let mut out = Vec::with_capacity(zones.len());
        {
            let mut get = tx
                .prepare(
                    "SELECT mc_addr, nwk_s_key, app_s_key, last_fcnt FROM zone_groups
                     WHERE tenant = ?1 AND zone = ?2",
                )
                .map_err(sql)?;
            let mut insert = tx
                .prepare(
                    "INSERT INTO zone_groups (tenant, zone, mc_addr, nwk_s_key, app_s_key)
                     VALUES (?1, ?2, (SELECT COALESCE(MAX(mc_addr) + 1, ?3) FROM zone_groups),
                             ?4, ?5)",
                )
                .map_err(sql)?;
            for (tenant, zone) in zones {
                let row = |get: &mut rusqlite::Statement| {
                    get.query_row(params![tenant.as_str(), zone], |r| {
                        Ok((
                            r.get::<_, u32>(0)?,
                            r.get::<_, String>(1)?,
                            r.get::<_, String>(2)?,
                            r.get::<_, Option<u32>>(3)?,
                        ))
                    })
                };
                let found = match row(&mut get) {
                    Ok(r) => r,
                    Err(rusqlite::Error::QueryReturnedNoRows) => {
                        let key = || AesKey(rand::random::<[u8; 16]>()).to_string();
                        insert
                            .execute(params![
                                tenant.as_str(),
                                zone,
                                ZONE_GROUP_ADDR_BASE,
                                key(),
                                key()
                            ])
                            .map_err(sql)?;
                        row(&mut get).map_err(sql)?
                    }
                    Err(e) => return Err(sql(e)),
                };
                let (mc_addr, nwk, app, last_fcnt) = found;
                let parse = |k: &str| {
                    k.parse::<AesKey>().map_err(|e| {
                        sql(rusqlite::Error::FromSqlConversionFailure(
                            1,
                            rusqlite::types::Type::Text,
                            Box::new(e),
                        ))
                    })
                };
                out.push(ZoneGroup {
                    tenant: tenant.clone(),
                    zone: *zone,
                    mc_addr: lamplighter_protocol::DevAddr(mc_addr),
                    keys: SessionKeys {
                        nwk_s_key: parse(&nwk)?,
                        app_s_key: parse(&app)?,
                    },
                    last_fcnt,
                });
            }
        }
        tx.commit().map_err(sql)?;
        Ok(out)
    }

    /// Records the last FCnt a group frame was sent with.
    pub fn record_group_fcnt(
        &self,
        mc_addr: lamplighter_protocol::DevAddr,
        fcnt: u32,
    ) -> Result<(), RegistryError> {
        self.conn
            .prepare_cached(
                "UPDATE zone_groups SET last_fcnt = ?2
                 WHERE mc_addr = ?1 AND (last_fcnt IS NULL OR last_fcnt < ?2)",
            )
            .and_then(|mut s| s.execute(params![mc_addr.0, fcnt]))
            .map_err(|e| self.sql(e))?;
        Ok(())
    }

    /// Every gateway. Rows that are not an EUI (edited by hand) are skipped with a warning.
    /// A number that changes whenever another connection (`lamplighter gateways add`, `sim
    /// live`) has committed to the registry since it was last read: SQLite's
    /// `data_version`, read without touching the tables.
    pub fn data_version(&self) -> Result<i64, RegistryError> {
        self.conn
            .pragma_query_value(None, "data_version", |r| r.get(0))
            .map_err(|e| self.sql(e))
    }

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

    /// Two processes (the server and an operator's `gateways add`) creating the registry
    /// at once: both must open it.
    #[test]
    fn two_processes_opening_a_new_registry_at_once_both_succeed() {
        lamplighter_sqlite::testing::assert_both_open_a_new_folder_at_once(|dir| {
            GatewayRegistry::open(dir).and_then(|reg| reg.all().map(|_| ()))
        });
    }

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

    #[test]
    fn the_data_version_tells_a_reader_that_another_connection_added_a_gateway() {
        let dir = tempfile::tempdir().unwrap();
        let reader = GatewayRegistry::open(dir.path()).unwrap();
        let before = reader.data_version().unwrap();
        assert_eq!(
            reader.data_version().unwrap(),
            before,
            "nothing changed yet"
        );
        let writer = GatewayRegistry::open(dir.path()).unwrap();
        writer
            .add("AA555A0000000102".parse().unwrap(), 1, None)
            .unwrap();
        assert_ne!(reader.data_version().unwrap(), before);
    }

    #[test]
    fn zone_groups_are_created_once_and_keep_their_counter() {
        let dir = tempfile::tempdir().unwrap();
        let t = |s: &str| lamplighter_protocol::TenantId::new(s).unwrap();
        let zones = [(t("a"), 1), (t("a"), 2), (t("b"), 1)];
        let first = GatewayRegistry::open(dir.path())
            .unwrap()
            .zone_groups(&zones)
            .unwrap();
        let addrs: Vec<u32> = first.iter().map(|g| g.mc_addr.0).collect();
        assert_eq!(
            addrs,
            vec![
                ZONE_GROUP_ADDR_BASE,
                ZONE_GROUP_ADDR_BASE + 1,
                ZONE_GROUP_ADDR_BASE + 2
            ]
        );
        assert_ne!(first[0].keys, first[1].keys, "each zone its own keys");
        let mut reg = GatewayRegistry::open(dir.path()).unwrap();
        reg.record_group_fcnt(first[1].mc_addr, 7).unwrap();
        reg.record_group_fcnt(first[1].mc_addr, 3).unwrap();
        let again = reg.zone_groups(&zones[1..2]).unwrap();
        assert_eq!(again[0].keys, first[1].keys);
        assert_eq!(again[0].last_fcnt, Some(7), "the counter never goes back");
    }

    #[test]
    fn dev_nonces_survive_a_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let dev = lamplighter_protocol::DevEui(0x70B3_D57E_D000_0001);
        {
            let reg = GatewayRegistry::open(dir.path()).unwrap();
            reg.record_dev_nonce(dev, [1, 0], 10).unwrap();
            reg.record_dev_nonce(dev, [1, 0], 11).unwrap();
            reg.record_dev_nonce(dev, [0xff, 0x12], 12).unwrap();
            reg.record_dev_nonce(lamplighter_protocol::DevEui(2), [9, 9], 13)
                .unwrap();
        }
        let reg = GatewayRegistry::open(dir.path()).unwrap();
        let mut got = reg.dev_nonces(dev).unwrap();
        got.sort();
        assert_eq!(got, vec![[1, 0], [0xff, 0x12]]);
    }
}
