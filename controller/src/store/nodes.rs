//! Provisioning: the nodes, their session keys and MQTT credentials, and the installers'
//! CSV of them.

use std::io::Write;

use lamplighter_protocol::lorawan::{AesKey, SessionKeys};
use lamplighter_protocol::{DevAddr, DevEui, LampId, TenantId, ZoneId};
use rand::distributions::Alphanumeric;
use rand::{Rng, RngCore};
use rusqlite::{params, OptionalExtension};

use super::{Store, StoreError};
use crate::core::ProvisionedNode;

/// A lamp to provision: where it is and what it is.
#[derive(Debug, Clone, PartialEq)]
pub struct NewNode {
    pub lamp: LampId,
    pub tenant: TenantId,
    pub zone: ZoneId,
    pub lat: f64,
    pub lon: f64,
    pub rated_power_w: f32,
}

impl NewNode {
    /// A town's lamp (real or procedural), provisioned for `tenant`.
    pub fn from_town(tenant: &TenantId, lamp: &lamplighter_town::Lamp) -> Self {
        NewNode {
            lamp: LampId(lamp.id.0),
            tenant: tenant.clone(),
            zone: lamp.zone,
            lat: lamp.lat,
            lon: lamp.lon,
            rated_power_w: lamp.rated_power_w,
        }
    }
}

/// A provisioned node with the MQTT credentials it connects with.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredNode {
    pub node: ProvisionedNode,
    pub mqtt_username: String,
    pub mqtt_password: String,
}

impl Store {
    /// Provisions lamps that are not yet known, each with fresh session keys, a DevAddr and
    /// MQTT credentials. Lamps already provisioned keep theirs. Returns how many were added.
    pub fn provision(&mut self, nodes: &[NewNode]) -> Result<usize, StoreError> {
        let path = self.path.clone();
        let sql = move |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let mut rng = rand::thread_rng();
        let tx = self.conn.transaction().map_err(&sql)?;
        let mut added = 0;
        {
            let mut exists = tx
                .prepare("SELECT 1 FROM nodes WHERE lamp_id = ?1")
                .map_err(&sql)?;
            let mut addr_taken = tx
                .prepare("SELECT 1 FROM nodes WHERE dev_addr = ?1 OR dev_eui = ?2")
                .map_err(&sql)?;
            let mut insert = tx
                .prepare(
                    "INSERT INTO nodes (lamp_id, tenant, dev_eui, dev_addr, zone, lat, lon,
                        rated_power_w, mqtt_username, mqtt_password, nwk_s_key, app_s_key)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12)",
                )
                .map_err(&sql)?;
            for n in nodes {
                if exists.exists([n.lamp.0]).map_err(&sql)? {
                    continue;
                }
                // NetID 0x000000 (experimental) gives DevAddr prefix bits 0000000; pick
                // random addresses until one is free.
                let (dev_eui, dev_addr) = loop {
                    let eui = DevEui(0x70B3_D5E0_0000_0000 | (rng.next_u64() & 0xFFFF_FFFF));
                    let addr = DevAddr(rng.next_u32() & 0x01FF_FFFF);
                    if !addr_taken
                        .exists(params![addr.0, eui.to_string()])
                        .map_err(&sql)?
                    {
                        break (eui, addr);
                    }
                };
                let mut key = || {
                    let mut k = [0u8; 16];
                    rng.fill_bytes(&mut k);
                    AesKey(k).to_string()
                };
                let (nwk, app) = (key(), key());
                let password: String = (&mut rng)
                    .sample_iter(Alphanumeric)
                    .take(24)
                    .map(char::from)
                    .collect();
                insert
                    .execute(params![
                        n.lamp.0,
                        n.tenant.as_str(),
                        dev_eui.to_string(),
                        dev_addr.0,
                        n.zone.0,
                        n.lat,
                        n.lon,
                        n.rated_power_w,
                        format!("node-{dev_eui}"),
                        password,
                        nwk,
                        app,
                    ])
                    .map_err(&sql)?;
                added += 1;
            }
        }
        tx.commit().map_err(&sql)?;
        Ok(added)
    }

    /// Removes a tenant's nodes and their records (the demo does this when the town changes).
    pub fn remove_tenant(&mut self, tenant: &TenantId) -> Result<(), StoreError> {
        let sql = self.sql();
        let sub = "SELECT lamp_id FROM nodes WHERE tenant = ?1";
        for table in ["readings", "commands"] {
            self.conn
                .execute(
                    &format!("DELETE FROM {table} WHERE lamp_id IN ({sub})"),
                    [tenant.as_str()],
                )
                .map_err(&sql)?;
        }
        self.conn
            .execute("DELETE FROM faults WHERE tenant = ?1", [tenant.as_str()])
            .map_err(&sql)?;
        self.conn
            .execute("DELETE FROM nodes WHERE tenant = ?1", [tenant.as_str()])
            .map_err(&sql)?;
        Ok(())
    }

    pub fn nodes(&self) -> Result<Vec<StoredNode>, StoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT lamp_id, tenant, dev_eui, dev_addr, zone, lat, lon, rated_power_w,
                    mqtt_username, mqtt_password, nwk_s_key, app_s_key, last_fcnt_up,
                    next_fcnt_down, last_energy_dwh
                 FROM nodes ORDER BY lamp_id",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| {
                Ok((
                    r.get::<_, u32>(0)?,
                    r.get::<_, String>(1)?,
                    r.get::<_, String>(2)?,
                    r.get::<_, u32>(3)?,
                    r.get::<_, u32>(4)?,
                    r.get::<_, f64>(5)?,
                    r.get::<_, f64>(6)?,
                    r.get::<_, f32>(7)?,
                    r.get::<_, String>(8)?,
                    r.get::<_, String>(9)?,
                    r.get::<_, String>(10)?,
                    r.get::<_, String>(11)?,
                    (
                        r.get::<_, Option<u32>>(12)?,
                        r.get::<_, u32>(13)?,
                        r.get::<_, Option<u32>>(14)?,
                    ),
                ))
            })
            .map_err(self.sql())?;
        let corrupt = |detail: String| StoreError::Corrupt {
            table: "nodes",
            detail,
        };
        let mut out = Vec::new();
        for row in rows {
            let (lamp, tenant, eui, addr, zone, lat, lon, power, user, pass, nwk, app, counters) =
                row.map_err(self.sql())?;
            let (last_fcnt_up, next_fcnt_down, last_energy_dwh) = counters;
            out.push(StoredNode {
                node: ProvisionedNode {
                    lamp: LampId(lamp),
                    tenant: TenantId::new(&tenant).map_err(|e| corrupt(e.to_string()))?,
                    dev_eui: eui
                        .parse()
                        .map_err(|e: lamplighter_protocol::IdError| corrupt(e.to_string()))?,
                    dev_addr: DevAddr(addr),
                    keys: SessionKeys {
                        nwk_s_key: nwk
                            .parse()
                            .map_err(|_| corrupt(format!("lamp {lamp} NwkSKey")))?,
                        app_s_key: app
                            .parse()
                            .map_err(|_| corrupt(format!("lamp {lamp} AppSKey")))?,
                    },
                    zone: ZoneId(zone),
                    lat,
                    lon,
                    rated_power_w: power,
                    last_fcnt_up,
                    next_fcnt_down,
                    last_energy_dwh,
                },
                mqtt_username: user,
                mqtt_password: pass,
            });
        }
        Ok(out)
    }

    /// Whether these MQTT credentials belong to a provisioned node. The comparison takes the
    /// same time wherever the strings differ.
    pub fn check_mqtt_credentials(
        &self,
        username: &str,
        password: &str,
    ) -> Result<bool, StoreError> {
        let stored: Option<String> = self
            .conn
            .query_row(
                "SELECT mqtt_password FROM nodes WHERE mqtt_username = ?1",
                [username],
                |r| r.get(0),
            )
            .optional()
            .map_err(self.sql())?;
        Ok(stored.is_some_and(|s| constant_time_eq(s.as_bytes(), password.as_bytes())))
    }

    /// The provisioned nodes as CSV, for an installer to load real devices.
    pub fn export_nodes_csv(&self, mut out: impl Write) -> Result<usize, StoreError> {
        let nodes = self.nodes()?;
        // Every field is an id, a number, a key or a topic of ours: no formula guard needed.
        let mut w = crate::csv_export::writer(&mut out);
        w.write_record([
            "node_id",
            "tenant",
            "dev_eui",
            "dev_addr",
            "zone",
            "latitude",
            "longitude",
            "rated_power_w",
            "mqtt_username",
            "mqtt_password",
            "nwk_s_key",
            "app_s_key",
            "uplink_topic",
            "command_topic",
        ])?;
        for s in &nodes {
            let n = &s.node;
            w.write_record([
                n.lamp.to_string(),
                n.tenant.to_string(),
                n.dev_eui.to_string(),
                n.dev_addr.to_string(),
                n.zone.to_string(),
                format!("{:.7}", n.lat),
                format!("{:.7}", n.lon),
                n.rated_power_w.to_string(),
                s.mqtt_username.clone(),
                s.mqtt_password.clone(),
                n.keys.nwk_s_key.to_string(),
                n.keys.app_s_key.to_string(),
                lamplighter_protocol::topics::uplink(&n.tenant, n.dev_eui),
                lamplighter_protocol::topics::downlink(&n.tenant, n.dev_eui),
            ])?;
        }
        w.flush()?;
        Ok(nodes.len())
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}
