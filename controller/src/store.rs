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
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use lamplighter_protocol::lorawan::{AesKey, SessionKeys};
use lamplighter_protocol::{DevAddr, DevEui, LampId, TenantId, ZoneId};
use rand::distributions::Alphanumeric;
use rand::{Rng, RngCore};
use rusqlite::{params, Connection, OptionalExtension, TransactionBehavior};

use crate::core::{Event, ProvisionedNode};
use crate::faults::FaultEvent;

mod history;
pub use history::{HistoryPoint, Resolution, Retention};
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

/// Upserts one reading into a rollup table (`{table}` is `rollup_15m` or `rollup_1d`).
fn rollup_upsert_sql(table: &str) -> String {
    format!(
        "INSERT INTO {table} (lamp_id, bucket_s, tenant, zone, readings, level_pct_sum,
            level_pct_min, level_pct_max, power_w_sum, energy_dwh, pedestrians, cyclists,
            vehicles, fault_readings)
         VALUES (?1, ?2, ?3, ?4, 1, ?5, ?5, ?5, ?6, ?7, ?8, ?9, ?10, ?11)
         ON CONFLICT (lamp_id, bucket_s) DO UPDATE SET
            readings = readings + 1,
            level_pct_sum = level_pct_sum + excluded.level_pct_sum,
            level_pct_min = min(level_pct_min, excluded.level_pct_min),
            level_pct_max = max(level_pct_max, excluded.level_pct_max),
            power_w_sum = power_w_sum + excluded.power_w_sum,
            energy_dwh = energy_dwh + excluded.energy_dwh,
            pedestrians = pedestrians + excluded.pedestrians,
            cyclists = cyclists + excluded.cyclists,
            vehicles = vehicles + excluded.vehicles,
            fault_readings = fault_readings + excluded.fault_readings"
    )
}

const MIGRATIONS: &[&str] = &[
    // 1: nodes, readings, commands, rejections.
    "CREATE TABLE nodes (
        lamp_id INTEGER PRIMARY KEY,
        tenant TEXT NOT NULL,
        dev_eui TEXT NOT NULL UNIQUE,
        dev_addr INTEGER NOT NULL UNIQUE,
        zone INTEGER NOT NULL,
        lat REAL NOT NULL,
        lon REAL NOT NULL,
        rated_power_w REAL NOT NULL,
        mqtt_username TEXT NOT NULL UNIQUE,
        mqtt_password TEXT NOT NULL,
        nwk_s_key TEXT NOT NULL,
        app_s_key TEXT NOT NULL,
        last_fcnt_up INTEGER,
        next_fcnt_down INTEGER NOT NULL DEFAULT 0,
        last_energy_dwh INTEGER
     );
     CREATE INDEX nodes_tenant_zone ON nodes(tenant, zone);
     CREATE TABLE readings (
        lamp_id INTEGER NOT NULL,
        fcnt INTEGER NOT NULL,
        received_ms INTEGER NOT NULL,
        reading_time_s INTEGER NOT NULL,
        level_pct INTEGER NOT NULL,
        target_level_pct INTEGER NOT NULL,
        power_w REAL NOT NULL,
        energy_dwh INTEGER NOT NULL,
        energy_delta_dwh INTEGER NOT NULL,
        ambient_lux INTEGER NOT NULL,
        pedestrians INTEGER NOT NULL,
        cyclists INTEGER NOT NULL,
        vehicles INTEGER NOT NULL,
        faults INTEGER NOT NULL,
        mode TEXT NOT NULL,
        trigger TEXT NOT NULL,
        PRIMARY KEY (lamp_id, fcnt)
     ) WITHOUT ROWID;
     CREATE INDEX readings_time ON readings(received_ms);
     CREATE TABLE commands (
        id INTEGER PRIMARY KEY,
        lamp_id INTEGER NOT NULL,
        sent_ms INTEGER NOT NULL,
        level_pct INTEGER NOT NULL,
        ramp_ms INTEGER NOT NULL,
        reason TEXT NOT NULL,
        fcnt_down INTEGER NOT NULL
     );
     CREATE INDEX commands_lamp_time ON commands(lamp_id, sent_ms);
     CREATE TABLE rejections (
        id INTEGER PRIMARY KEY,
        at_ms INTEGER NOT NULL,
        kind TEXT NOT NULL,
        detail TEXT NOT NULL
     );",
    // 2: history. A lamp's readings by the reading's own time; 15-minute and daily rollups
    // per lamp (kept for years after the raw readings go), with the zone in each row so a
    // zone's history is one index range; the spool of points for an InfluxDB sink; an index
    // for the audit export.
    "CREATE INDEX readings_lamp_time ON readings(lamp_id, reading_time_s);
     CREATE TABLE rollup_15m (
        lamp_id INTEGER NOT NULL,
        bucket_s INTEGER NOT NULL,
        tenant TEXT NOT NULL,
        zone INTEGER NOT NULL,
        readings INTEGER NOT NULL,
        level_pct_sum INTEGER NOT NULL,
        level_pct_min INTEGER NOT NULL,
        level_pct_max INTEGER NOT NULL,
        power_w_sum REAL NOT NULL,
        energy_dwh INTEGER NOT NULL,
        pedestrians INTEGER NOT NULL,
        cyclists INTEGER NOT NULL,
        vehicles INTEGER NOT NULL,
        fault_readings INTEGER NOT NULL,
        PRIMARY KEY (lamp_id, bucket_s)
     ) WITHOUT ROWID;
     CREATE INDEX rollup_15m_zone ON rollup_15m(tenant, zone, bucket_s);
     CREATE TABLE rollup_1d (
        lamp_id INTEGER NOT NULL,
        bucket_s INTEGER NOT NULL,
        tenant TEXT NOT NULL,
        zone INTEGER NOT NULL,
        readings INTEGER NOT NULL,
        level_pct_sum INTEGER NOT NULL,
        level_pct_min INTEGER NOT NULL,
        level_pct_max INTEGER NOT NULL,
        power_w_sum REAL NOT NULL,
        energy_dwh INTEGER NOT NULL,
        pedestrians INTEGER NOT NULL,
        cyclists INTEGER NOT NULL,
        vehicles INTEGER NOT NULL,
        fault_readings INTEGER NOT NULL,
        PRIMARY KEY (lamp_id, bucket_s)
     ) WITHOUT ROWID;
     CREATE INDEX rollup_1d_zone ON rollup_1d(tenant, zone, bucket_s);
     INSERT INTO rollup_15m
        SELECT r.lamp_id, r.reading_time_s / 900 * 900, n.tenant, n.zone, COUNT(*),
               SUM(r.level_pct), MIN(r.level_pct), MAX(r.level_pct), SUM(r.power_w),
               SUM(r.energy_delta_dwh), SUM(r.pedestrians), SUM(r.cyclists), SUM(r.vehicles),
               SUM(r.faults != 0)
        FROM readings r JOIN nodes n ON n.lamp_id = r.lamp_id
        GROUP BY r.lamp_id, r.reading_time_s / 900;
     INSERT INTO rollup_1d
        SELECT r.lamp_id, r.reading_time_s / 86400 * 86400, n.tenant, n.zone, COUNT(*),
               SUM(r.level_pct), MIN(r.level_pct), MAX(r.level_pct), SUM(r.power_w),
               SUM(r.energy_delta_dwh), SUM(r.pedestrians), SUM(r.cyclists), SUM(r.vehicles),
               SUM(r.faults != 0)
        FROM readings r JOIN nodes n ON n.lamp_id = r.lamp_id
        GROUP BY r.lamp_id, r.reading_time_s / 86400;
     CREATE INDEX commands_time ON commands(sent_ms);
     CREATE INDEX rejections_time ON rejections(at_ms);
     CREATE TABLE influx_spool (
        id INTEGER PRIMARY KEY,
        line TEXT NOT NULL
     );",
    // 3: faults, from raised to cleared, with who acknowledged and who cleared them and why
    // (an automatic clear has no user). Open faults are those without cleared_at_ms.
    "CREATE TABLE faults (
        id INTEGER PRIMARY KEY,
        tenant TEXT NOT NULL,
        lamp_id INTEGER NOT NULL,
        dev_eui TEXT NOT NULL,
        kind TEXT NOT NULL,
        raised_at_ms INTEGER NOT NULL,
        detail TEXT NOT NULL,
        acknowledged_by TEXT,
        acknowledged_at_ms INTEGER,
        acknowledged_note TEXT,
        cleared_at_ms INTEGER,
        cleared_by TEXT,
        cleared_note TEXT
     );
     CREATE INDEX faults_tenant_raised ON faults(tenant, raised_at_ms);
     CREATE INDEX faults_open ON faults(cleared_at_ms) WHERE cleared_at_ms IS NULL;
     CREATE INDEX faults_acknowledged ON faults(acknowledged_at_ms);
     CREATE INDEX faults_cleared ON faults(cleared_at_ms);",
    // 4: the energy summary reads a tenant's month from this index alone, however long the
    // history kept.
    "CREATE INDEX rollup_15m_tenant_time ON rollup_15m(tenant, bucket_s, lamp_id, energy_dwh);",
];

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
        writeln!(
            out,
            "node_id,tenant,dev_eui,dev_addr,zone,latitude,longitude,rated_power_w,mqtt_username,mqtt_password,nwk_s_key,app_s_key,uplink_topic,command_topic"
        )?;
        for s in &nodes {
            let n = &s.node;
            writeln!(
                out,
                "{},{},{},{},{},{:.7},{:.7},{},{},{},{},{},{},{}",
                n.lamp,
                n.tenant,
                n.dev_eui,
                n.dev_addr,
                n.zone,
                n.lat,
                n.lon,
                n.rated_power_w,
                s.mqtt_username,
                s.mqtt_password,
                n.keys.nwk_s_key,
                n.keys.app_s_key,
                lamplighter_protocol::topics::uplink(&n.tenant, n.dev_eui),
                lamplighter_protocol::topics::downlink(&n.tenant, n.dev_eui),
            )?;
        }
        Ok(nodes.len())
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

    /// Writes a batch of events in one transaction. Readings already stored (same node and
    /// FCnt) are ignored, so a resent frame is kept once; a reading that is new also goes into
    /// its lamp's 15-minute and daily rollups (and the InfluxDB spool, if on) in the same
    /// transaction, so rollups and spool count every reading exactly once, whatever crashes.
    /// Returns the readings newly stored, `(lamp, fcnt)`: what may now be acknowledged.
    pub fn write_events(&mut self, events: &[Event]) -> Result<Vec<(LampId, u32)>, StoreError> {
        self.write_batch(events, &[], &[])
    }

    /// Queues line-protocol points for the InfluxDB sink (zone demand and forecasts). Does
    /// nothing unless the spool is on.
    pub fn spool_lines(&mut self, lines: &[String]) -> Result<(), StoreError> {
        self.write_batch(&[], lines, &[]).map(|_| ())
    }

    /// Turns the InfluxDB spool on: from now on every new reading, command and zone point is
    /// also queued (in the same transaction) for the sink.
    pub fn set_influx_spool(&mut self, on: bool) {
        self.influx_spool = on;
    }

    fn lamp_zone(&mut self, lamp: u32) -> Result<Option<(String, u32)>, StoreError> {
        if let Some(z) = self.zone_of.get(&lamp) {
            return Ok(Some(z.clone()));
        }
        let z: Option<(String, u32)> = self
            .conn
            .query_row(
                "SELECT tenant, zone FROM nodes WHERE lamp_id = ?1",
                [lamp],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.sql())?;
        if let Some(z) = &z {
            self.zone_of.insert(lamp, z.clone());
        }
        Ok(z)
    }

    fn write_batch(
        &mut self,
        events: &[Event],
        lines: &[String],
        faults: &[FaultEvent],
    ) -> Result<Vec<(LampId, u32)>, StoreError> {
        // Zones first, outside the transaction's statements (cached after the first look).
        let mut zones = Vec::with_capacity(events.len());
        for e in events {
            zones.push(match e {
                Event::Reading { lamp, .. } | Event::CommandSent { lamp, .. } => {
                    self.lamp_zone(lamp.0)?
                }
                Event::Rejected { .. } => None,
            });
        }
        let spool = self.influx_spool;
        let path = self.path.clone();
        let sql = move |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let mut stored = Vec::new();
        let tx = self.conn.transaction().map_err(&sql)?;
        {
            let mut reading = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO readings VALUES
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                )
                .map_err(&sql)?;
            let mut rollup_15m = tx
                .prepare_cached(&rollup_upsert_sql("rollup_15m"))
                .map_err(&sql)?;
            let mut rollup_1d = tx
                .prepare_cached(&rollup_upsert_sql("rollup_1d"))
                .map_err(&sql)?;
            let mut spool_line = tx
                .prepare_cached("INSERT INTO influx_spool (line) VALUES (?1)")
                .map_err(&sql)?;
            let mut up_counters = tx
                .prepare_cached(
                    "UPDATE nodes SET last_fcnt_up = ?2, last_energy_dwh = ?3 WHERE lamp_id = ?1",
                )
                .map_err(&sql)?;
            let mut command = tx
                .prepare_cached(
                    "INSERT INTO commands (lamp_id, sent_ms, level_pct, ramp_ms, reason, fcnt_down)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(&sql)?;
            let mut down_counter = tx
                .prepare_cached("UPDATE nodes SET next_fcnt_down = ?2 WHERE lamp_id = ?1")
                .map_err(&sql)?;
            let mut rejection = tx
                .prepare_cached("INSERT INTO rejections (at_ms, kind, detail) VALUES (?1, ?2, ?3)")
                .map_err(&sql)?;
            for (e, zone) in events.iter().zip(&zones) {
                match e {
                    Event::Reading {
                        lamp,
                        received,
                        fcnt,
                        report: r,
                        energy_delta_dwh,
                    } => {
                        let inserted = reading
                            .execute(params![
                                lamp.0,
                                fcnt,
                                received.0 as i64,
                                r.reading_time_s,
                                r.level_pct,
                                r.target_level_pct,
                                r.power_w(),
                                r.energy_dwh,
                                energy_delta_dwh,
                                r.ambient_lux,
                                r.presence.pedestrians,
                                r.presence.cyclists,
                                r.presence.vehicles,
                                r.faults.0,
                                format!("{:?}", r.mode),
                                format!("{:?}", r.trigger),
                            ])
                            .map_err(&sql)?;
                        if inserted == 0 {
                            continue;
                        }
                        stored.push((*lamp, *fcnt));
                        up_counters
                            .execute(params![lamp.0, fcnt, r.energy_dwh])
                            .map_err(&sql)?;
                        let Some((tenant, zone)) = zone else { continue };
                        let t = r.reading_time_s as i64;
                        for (stmt, bucket) in [
                            (&mut rollup_15m, t / 900 * 900),
                            (&mut rollup_1d, t / 86400 * 86400),
                        ] {
                            stmt.execute(params![
                                lamp.0,
                                bucket,
                                tenant,
                                zone,
                                r.level_pct,
                                r.power_w() as f64,
                                energy_delta_dwh,
                                r.presence.pedestrians,
                                r.presence.cyclists,
                                r.presence.vehicles,
                                (r.faults.0 != 0) as i64,
                            ])
                            .map_err(&sql)?;
                        }
                        if spool {
                            let line = crate::influx::reading_line(
                                tenant,
                                *zone,
                                *lamp,
                                *fcnt,
                                r,
                                *energy_delta_dwh,
                            );
                            spool_line.execute([line]).map_err(&sql)?;
                        }
                    }
                    Event::CommandSent {
                        lamp,
                        at,
                        level_pct,
                        ramp_ms,
                        reason,
                        fcnt_down,
                    } => {
                        command
                            .execute(params![
                                lamp.0,
                                at.0 as i64,
                                level_pct,
                                ramp_ms,
                                reason.as_str(),
                                fcnt_down
                            ])
                            .map_err(&sql)?;
                        down_counter
                            .execute(params![lamp.0, fcnt_down.wrapping_add(1)])
                            .map_err(&sql)?;
                        if let (true, Some((tenant, zone))) = (spool, zone) {
                            let line = crate::influx::command_line(
                                tenant,
                                *zone,
                                *lamp,
                                *at,
                                *level_pct,
                                *ramp_ms,
                                reason.as_str(),
                                *fcnt_down,
                            );
                            spool_line.execute([line]).map_err(&sql)?;
                        }
                    }
                    Event::Rejected { at, kind, detail } => {
                        rejection
                            .execute(params![at.0 as i64, kind, detail])
                            .map_err(&sql)?;
                    }
                }
            }
            if spool {
                for l in lines {
                    spool_line.execute([l]).map_err(&sql)?;
                }
            }
            faults::write_fault_events(&tx, faults).map_err(&sql)?;
        }
        tx.commit().map_err(&sql)?;
        Ok(stored)
    }
}

fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    if a.len() != b.len() {
        return false;
    }
    a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// What the writer thread is asked to write.
enum WriteMsg {
    Events(Vec<Event>),
    Lines(Vec<String>),
    Faults(Vec<FaultEvent>),
}

/// Readings newly and durably stored, `(lamp, fcnt)`, one message per committed batch.
pub type Committed = Vec<(LampId, u32)>;

/// The sending side of the store's writer thread. Events sent here are written in batches
/// of whatever has queued up, one transaction each; a failed batch is logged and retried,
/// never dropped silently. After each commit the readings it stored are announced to
/// whoever subscribed ([`StoreWriter::subscribe_commits`]): the controller acknowledges
/// them to their nodes only then. Between batches the thread applies the retention policy
/// (at most once an hour, in small chunks).
#[derive(Clone)]
pub struct StoreWriter {
    tx: mpsc::Sender<WriteMsg>,
    commits: Arc<Mutex<Option<tokio::sync::mpsc::UnboundedSender<Committed>>>>,
    influx: bool,
    /// The faults the store held open when the writer started, and the next fault id.
    faults_at_start: Arc<FaultsAtStart>,
}

/// The writer thread itself: once every [`StoreWriter`] is dropped it writes what is queued
/// and ends; [`StoreThread::join`] waits for that.
pub struct StoreThread(
    Option<std::thread::JoinHandle<()>>,
    Option<crate::influx::Sink>,
);

/// How the store runs: retention, and an optional InfluxDB sink. `[store]` in the config
/// file (the sink only from flags: its token comes from the environment).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreOptions {
    pub retention: Retention,
    #[serde(skip)]
    pub influx: Option<crate::influx::InfluxConfig>,
}

impl StoreWriter {
    /// Starts the writer with the retention policy and, if configured, the InfluxDB sink
    /// (which runs until [`StoreThread::join`]).
    pub fn start_with(mut store: Store, options: &StoreOptions) -> (StoreWriter, StoreThread) {
        store.set_retention(options.retention);
        let sink = options.influx.clone().and_then(|config| {
            store.set_influx_spool(true);
            match crate::influx::Sink::start(store.path(), config) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the InfluxDB sink thread; points stay spooled");
                    None
                }
            }
        });
        let (writer, mut thread) = StoreWriter::start(store);
        thread.1 = sink;
        (writer, thread)
    }

    pub fn start(mut store: Store) -> (StoreWriter, StoreThread) {
        let influx = store.influx_spool;
        let faults_at_start = Arc::new(store.faults_at_start());
        let (tx, rx) = mpsc::channel::<WriteMsg>();
        let commits: Arc<Mutex<Option<tokio::sync::mpsc::UnboundedSender<Committed>>>> =
            Arc::default();
        let listeners = commits.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let (mut events, mut lines, mut faults) = (Vec::new(), Vec::new(), Vec::new());
                    let mut take = |m: WriteMsg| match m {
                        WriteMsg::Events(e) => events.extend(e),
                        WriteMsg::Lines(l) => lines.extend(l),
                        WriteMsg::Faults(f) => faults.extend(f),
                    };
                    take(first);
                    while let Ok(more) = rx.try_recv() {
                        take(more);
                    }
                    let mut attempt = 0u32;
                    let stored = loop {
                        match store.write_batch(&events, &lines, &faults) {
                            Ok(stored) => break stored,
                            Err(e) => {
                                attempt += 1;
                                if attempt == 1 {
                                    tracing::error!(error = %e, events = events.len(), "store write failed; retrying");
                                }
                                std::thread::sleep(Duration::from_millis(
                                    200 * attempt.min(25) as u64,
                                ));
                            }
                        }
                    };
                    if !stored.is_empty() {
                        let mut l = listeners.lock().unwrap_or_else(|p| p.into_inner());
                        if l.as_ref().is_some_and(|s| s.send(stored).is_err()) {
                            *l = None;
                        }
                    }
                    if let Err(e) = store.maybe_apply_retention() {
                        tracing::error!(error = %e, "retention failed; will retry");
                    }
                }
            })
            .ok();
        if thread.is_none() {
            tracing::error!("cannot start the store writer thread");
        }
        (
            StoreWriter {
                tx,
                commits,
                influx,
                faults_at_start,
            },
            StoreThread(thread, None),
        )
    }

    pub fn write(&self, events: Vec<Event>) {
        if !events.is_empty() && self.tx.send(WriteMsg::Events(events)).is_err() {
            tracing::error!("store writer has stopped; events not written");
        }
    }

    /// Queues fault events (raised, acknowledged, cleared), written in order with the
    /// events around them.
    pub fn write_faults(&self, faults: Vec<FaultEvent>) {
        if !faults.is_empty() && self.tx.send(WriteMsg::Faults(faults)).is_err() {
            tracing::error!("store writer has stopped; fault events not written");
        }
    }

    /// The faults the store held open when this writer started and the next free fault
    /// id: what the fault tracker is restored from.
    pub fn faults_at_start(&self) -> &FaultsAtStart {
        &self.faults_at_start
    }

    /// Queues InfluxDB points (only if the spool is on).
    pub fn spool_lines(&self, lines: Vec<String>) {
        if self.influx && !lines.is_empty() && self.tx.send(WriteMsg::Lines(lines)).is_err() {
            tracing::error!("store writer has stopped; points not written");
        }
    }

    /// Whether an InfluxDB sink is on.
    pub fn influx_enabled(&self) -> bool {
        self.influx
    }

    /// From now on, the readings each commit stored are sent here (replacing any earlier
    /// subscriber).
    pub fn subscribe_commits(&self) -> tokio::sync::mpsc::UnboundedReceiver<Committed> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *self.commits.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }
}

impl StoreThread {
    /// Waits until everything queued is written. Call after dropping every writer.
    pub fn join(mut self) {
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
        if let Some(sink) = self.1.take() {
            sink.stop();
        }
    }

    /// The InfluxDB sink's counters, if it runs.
    pub fn influx_metrics(&self) -> Option<std::sync::Arc<crate::influx::SinkMetrics>> {
        self.1.as_ref().map(|s| s.metrics.clone())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
