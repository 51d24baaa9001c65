//! What a council is asked for, as CSV, and an online backup: both work while the system
//! runs (WAL: readers never block the writer, the backup copies a consistent snapshot).

use std::io::Write;
use std::path::Path;
use std::time::Duration;

use rusqlite::{params, Connection, OpenFlags};

use lamplighter_protocol::local_time::TimeZone;

use super::{Store, StoreError, DB_FILE, SCHEMA_VERSION};
use crate::csv_export::{text_cell, writer};

/// What to export.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ExportWhat {
    /// Every raw reading (within the raw retention period), by reading time.
    Readings,
    /// Energy per lamp per UTC day, Wh, from the daily rollups (kept for years).
    Energy,
    /// Half-hourly consumption per lamp for unmetered-supply billing (UTC periods here;
    /// [`Store::half_hourly_csv`] takes the deployment's time zone and a tenant).
    HalfHourly,
    /// Commands (level, ramp, reason), rejected uplinks, and faults raised, acknowledged
    /// and cleared (who, and why, in `user` and `detail`; the fault kind in `reason`), by
    /// time.
    Audit,
}

impl std::str::FromStr for ExportWhat {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "readings" => Ok(ExportWhat::Readings),
            "energy" => Ok(ExportWhat::Energy),
            "audit" => Ok(ExportWhat::Audit),
            "half-hourly" => Ok(ExportWhat::HalfHourly),
            _ => Err(format!(
                "expected readings, energy or audit, or half-hourly, got {s:?}"
            )),
        }
    }
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`.
pub fn iso8601(t_s: i64) -> String {
    match chrono::DateTime::from_timestamp(t_s, 0) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%SZ").to_string(),
        // Beyond chrono's range (about 262,000 years): no reading carries such a time.
        None => format!("{t_s}s"),
    }
}

/// Unix milliseconds as `YYYY-MM-DDTHH:MM:SS.mmmZ`.
fn iso8601_ms(t_ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(t_ms) {
        Some(t) => t.format("%Y-%m-%dT%H:%M:%S%.3fZ").to_string(),
        None => format!("{t_ms}ms"),
    }
}

impl Store {
    /// Opens an existing store read-only (export, backup, queries from another process
    /// while the system runs). Refuses a store newer than this build; never migrates.
    pub fn open_read_only(data_dir: &Path) -> Result<Store, StoreError> {
        let path = data_dir.join(DB_FILE);
        let sql = |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let conn = Connection::open_with_flags(
            &path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )
        .map_err(sql)?;
        conn.busy_timeout(Duration::from_secs(10)).map_err(sql)?;
        let version: i64 = conn
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .map_err(sql)?;
        if version > SCHEMA_VERSION {
            return Err(StoreError::TooNew {
                path,
                found: version,
            });
        }
        Ok(Store {
            conn,
            path,
            zone_of: Default::default(),
            influx_spool: false,
            retention: Default::default(),
            last_retention: None,
        })
    }

    /// Writes `what` between `from_s` and `to_s` (Unix seconds, `[from, to)`) as CSV with a
    /// header line. Returns the rows written (without the header).
    pub fn export_csv(
        &self,
        what: ExportWhat,
        from_s: i64,
        to_s: i64,
        mut out: impl Write,
    ) -> Result<u64, StoreError> {
        let mut n = 0u64;
        match what {
            ExportWhat::HalfHourly => {
                return self
                    .half_hourly_csv(None, from_s, to_s, TimeZone::UTC, out)
                    .map_err(|e| match e {
                        super::EnergyError::Store(e) => e,
                        e => StoreError::Invalid(e.to_string()),
                    });
            }
            ExportWhat::Readings => {
                let mut w = writer(&mut out);
                w.write_record([
                    "reading_time",
                    "received_time",
                    "tenant",
                    "zone",
                    "lamp_id",
                    "dev_eui",
                    "fcnt",
                    "level_pct",
                    "target_level_pct",
                    "power_w",
                    "energy_meter_wh",
                    "energy_wh",
                    "ambient_lux",
                    "pedestrians",
                    "cyclists",
                    "vehicles",
                    "faults",
                    "mode",
                    "trigger",
                ])?;
                let mut stmt = self
                    .conn
                    .prepare(
                        "SELECT r.reading_time_s, r.received_ms, n.tenant, n.zone, r.lamp_id,
                            n.dev_eui, r.fcnt, r.level_pct, r.target_level_pct, r.power_w,
                            r.energy_dwh, r.energy_delta_dwh, r.ambient_lux, r.pedestrians,
                            r.cyclists, r.vehicles, r.faults, r.mode, r.trigger
                         FROM readings r JOIN nodes n ON n.lamp_id = r.lamp_id
                         WHERE r.reading_time_s >= ?1 AND r.reading_time_s < ?2
                         ORDER BY r.lamp_id, r.reading_time_s, r.fcnt",
                    )
                    .map_err(self.sql())?;
                let mut rows = stmt.query(params![from_s, to_s]).map_err(self.sql())?;
                while let Some(r) = rows.next().map_err(self.sql())? {
                    let g = |i| r.get::<_, i64>(i).map(|v| v.to_string());
                    let dwh = |i| {
                        r.get::<_, i64>(i)
                            .map(|v| format!("{:.1}", v as f64 / 10.0))
                    };
                    let row = (|| -> rusqlite::Result<[String; 19]> {
                        Ok([
                            iso8601(r.get(0)?),
                            iso8601(r.get::<_, i64>(1)? / 1000),
                            text_cell(&r.get::<_, String>(2)?).into_owned(),
                            g(3)?,
                            g(4)?,
                            r.get(5)?,
                            g(6)?,
                            g(7)?,
                            g(8)?,
                            format!("{:.1}", r.get::<_, f64>(9)?),
                            dwh(10)?,
                            dwh(11)?,
                            g(12)?,
                            g(13)?,
                            g(14)?,
                            g(15)?,
                            g(16)?,
                            r.get(17)?,
                            r.get(18)?,
                        ])
                    })()
                    .map_err(self.sql())?;
                    w.write_record(&row)?;
                    n += 1;
                }
                w.flush()?;
            }
            ExportWhat::Energy => {
                let mut w = writer(&mut out);
                w.write_record([
                    "date",
                    "tenant",
                    "zone",
                    "lamp_id",
                    "dev_eui",
                    "energy_wh",
                    "readings",
                    "mean_level_pct",
                ])?;
                let mut stmt = self
                    .conn
                    .prepare(
                        "SELECT d.bucket_s, d.tenant, d.zone, d.lamp_id, n.dev_eui, d.energy_dwh,
                            d.readings, d.level_pct_sum * 1.0 / d.readings
                         FROM rollup_1d d LEFT JOIN nodes n ON n.lamp_id = d.lamp_id
                         WHERE d.bucket_s >= ?1 AND d.bucket_s < ?2
                         ORDER BY d.bucket_s, d.lamp_id",
                    )
                    .map_err(self.sql())?;
                let mut rows = stmt
                    .query(params![from_s.div_euclid(86_400) * 86_400, to_s])
                    .map_err(self.sql())?;
                while let Some(r) = rows.next().map_err(self.sql())? {
                    let row = (|| -> rusqlite::Result<[String; 8]> {
                        Ok([
                            iso8601(r.get(0)?)[..10].to_string(),
                            text_cell(&r.get::<_, String>(1)?).into_owned(),
                            r.get::<_, i64>(2)?.to_string(),
                            r.get::<_, i64>(3)?.to_string(),
                            r.get::<_, Option<String>>(4)?.unwrap_or_default(),
                            format!("{:.1}", r.get::<_, i64>(5)? as f64 / 10.0),
                            r.get::<_, i64>(6)?.to_string(),
                            format!("{:.1}", r.get::<_, f64>(7)?),
                        ])
                    })()
                    .map_err(self.sql())?;
                    w.write_record(&row)?;
                    n += 1;
                }
                w.flush()?;
            }
            ExportWhat::Audit => {
                let mut w = writer(&mut out);
                w.write_record([
                    "time",
                    "kind",
                    "tenant",
                    "zone",
                    "lamp_id",
                    "dev_eui",
                    "level_pct",
                    "ramp_ms",
                    "reason",
                    "fcnt_down",
                    "detail",
                    "user",
                ])?;
                let mut stmt = self
                    .conn
                    .prepare(
                        "SELECT c.sent_ms AS t, 'command', n.tenant, n.zone, c.lamp_id, n.dev_eui,
                            c.level_pct, c.ramp_ms, c.reason, c.fcnt_down, '', ''
                         FROM commands c LEFT JOIN nodes n ON n.lamp_id = c.lamp_id
                         WHERE c.sent_ms >= ?1 AND c.sent_ms < ?2
                         UNION ALL
                         SELECT at_ms, 'rejected', '', NULL, NULL, '', NULL, NULL, kind, NULL, detail,
                            ''
                         FROM rejections WHERE at_ms >= ?1 AND at_ms < ?2
                         UNION ALL
                         SELECT f.raised_at_ms, 'fault-raised', f.tenant, n.zone, f.lamp_id,
                            f.dev_eui, NULL, NULL, f.kind, NULL,
                            'fault ' || f.id || ': ' || f.detail, ''
                         FROM faults f LEFT JOIN nodes n ON n.lamp_id = f.lamp_id
                         WHERE f.raised_at_ms >= ?1 AND f.raised_at_ms < ?2
                         UNION ALL
                         SELECT f.acknowledged_at_ms, 'fault-acknowledged', f.tenant, n.zone,
                            f.lamp_id, f.dev_eui, NULL, NULL, f.kind, NULL,
                            'fault ' || f.id || ': ' || coalesce(f.acknowledged_note, ''),
                            coalesce(f.acknowledged_by, '')
                         FROM faults f LEFT JOIN nodes n ON n.lamp_id = f.lamp_id
                         WHERE f.acknowledged_at_ms >= ?1 AND f.acknowledged_at_ms < ?2
                         UNION ALL
                         SELECT f.cleared_at_ms, 'fault-cleared', f.tenant, n.zone, f.lamp_id,
                            f.dev_eui, NULL, NULL, f.kind, NULL,
                            'fault ' || f.id || ': ' || coalesce(f.cleared_note, ''),
                            coalesce(f.cleared_by, '')
                         FROM faults f LEFT JOIN nodes n ON n.lamp_id = f.lamp_id
                         WHERE f.cleared_at_ms >= ?1 AND f.cleared_at_ms < ?2
                         ORDER BY t",
                    )
                    .map_err(self.sql())?;
                let mut rows = stmt
                    .query(params![from_s * 1000, to_s * 1000])
                    .map_err(self.sql())?;
                let opt = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
                let text = |v: String| text_cell(&v).into_owned();
                while let Some(r) = rows.next().map_err(self.sql())? {
                    let row = (|| -> rusqlite::Result<[String; 12]> {
                        Ok([
                            iso8601_ms(r.get(0)?),
                            r.get(1)?,
                            text(r.get::<_, Option<String>>(2)?.unwrap_or_default()),
                            opt(r.get(3)?),
                            opt(r.get(4)?),
                            r.get::<_, Option<String>>(5)?.unwrap_or_default(),
                            opt(r.get(6)?),
                            opt(r.get(7)?),
                            text(r.get(8)?),
                            opt(r.get(9)?),
                            text(r.get(10)?),
                            text(r.get(11)?),
                        ])
                    })()
                    .map_err(self.sql())?;
                    w.write_record(&row)?;
                    n += 1;
                }
                w.flush()?;
            }
        }
        out.flush()?;
        Ok(n)
    }
}

/// Copies the store in `data_dir` to `dest` with SQLite's online backup API, 1,024 pages
/// at a time with a short pause between steps, so the running system's writer is never held
/// up for long; the copy is one consistent snapshot. `dest` is written to a temporary file
/// beside it and renamed into place when complete. Returns the pages copied.
pub fn backup(data_dir: &Path, dest: &Path) -> Result<u64, StoreError> {
    let src = Store::open_read_only(data_dir)?;
    let tmp = dest.with_extension("partial");
    let _ = std::fs::remove_file(&tmp);
    let sql = |source| StoreError::Sqlite {
        path: dest.to_path_buf(),
        source,
    };
    let pages;
    {
        let mut dst = Connection::open(&tmp).map_err(sql)?;
        let b = rusqlite::backup::Backup::new(&src.conn, &mut dst).map_err(sql)?;
        b.run_to_completion(1024, Duration::from_millis(5), None)
            .map_err(sql)?;
        pages = b.progress().pagecount as u64;
    }
    // The copy is a plain rollback-journal database: one self-contained file.
    {
        let dst = Connection::open(&tmp).map_err(sql)?;
        dst.pragma_update(None, "journal_mode", "DELETE")
            .map_err(sql)?;
        let ok: String = dst
            .query_row("PRAGMA quick_check", [], |r| r.get(0))
            .map_err(sql)?;
        if ok != "ok" {
            return Err(StoreError::Corrupt {
                table: "backup",
                detail: ok,
            });
        }
    }
    std::fs::rename(&tmp, dest)?;
    Ok(pages)
}
