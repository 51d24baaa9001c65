//! What operators set that a restart must apply again: overrides in force and zones' policy
//! settings, in the store's file (`lamplighter.sqlite`) beside the rest of the controller's
//! state.
//!
//! Like the forecasters' state it is written on its own connection, when an operator acts,
//! not through the writer thread's queue: an operator is told at once whether it was kept.
//!
//! ```sql
//! CREATE TABLE operator_overrides (target TEXT NOT NULL, tenant TEXT NOT NULL,
//!     level_pct INTEGER NOT NULL, lamps INTEGER NOT NULL, from_ms INTEGER NOT NULL,
//!     until_ms INTEGER NOT NULL, username TEXT NOT NULL, reason TEXT NOT NULL,
//!     PRIMARY KEY (target, tenant));
//! CREATE TABLE operator_zone_settings (tenant TEXT NOT NULL, zone INTEGER NOT NULL,
//!     settings TEXT NOT NULL, updated_ms INTEGER NOT NULL, username TEXT NOT NULL,
//!     PRIMARY KEY (tenant, zone));
//! ```
//!
//! `target` is the override's target as JSON; `tenant` is '' for an operator of every
//! tenant. A row that no longer reads (edited by hand) is skipped with a warning.
//! Before this store kept them, the dashboard's accounts file did; `serve` moves such rows
//! here once, at start.

use std::path::{Path, PathBuf};

use lamplighter_protocol::{TenantId, ZoneId};
use rusqlite::{params, Connection};

use crate::overrides::{ActiveOverride, OverrideRow, OverrideTarget};

#[derive(Debug, thiserror::Error)]
#[error("operator state in {path}: {source}")]
pub struct OperatorStoreError {
    path: PathBuf,
    source: rusqlite::Error,
}

pub struct OperatorStore {
    conn: Connection,
    path: PathBuf,
}

impl OperatorStore {
    /// Opens the store's file in `data_dir`, which must exist (creating the tables if
    /// needed).
    pub fn open(data_dir: &Path) -> Result<Self, OperatorStoreError> {
        let path = data_dir.join(super::DB_FILE);
        let sql = |source| OperatorStoreError {
            path: path.clone(),
            source,
        };
        let conn = lamplighter_sqlite::open_shared(&path, std::time::Duration::from_secs(10))
            .map_err(sql)?;
        conn.execute_batch(
            "CREATE TABLE IF NOT EXISTS operator_overrides (
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
             CREATE TABLE IF NOT EXISTS operator_zone_settings (
                tenant TEXT NOT NULL,
                zone INTEGER NOT NULL,
                settings TEXT NOT NULL,
                updated_ms INTEGER NOT NULL,
                username TEXT NOT NULL,
                PRIMARY KEY (tenant, zone)
             );",
        )
        .map_err(sql)?;
        Ok(OperatorStore { conn, path })
    }

    fn sql(&self) -> impl Fn(rusqlite::Error) -> OperatorStoreError + '_ {
        move |source| OperatorStoreError {
            path: self.path.clone(),
            source,
        }
    }

    /// Keeps an override in force, replacing one on the same target for the same tenant.
    pub fn save_override(&mut self, o: &ActiveOverride) -> Result<(), OperatorStoreError> {
        let target = serde_json::to_string(&o.target).unwrap_or_default();
        let tenant = o.tenant.as_ref().map_or("", |t| t.as_str());
        self.conn
            .execute(
                "INSERT OR REPLACE INTO operator_overrides
                    (target, tenant, level_pct, lamps, from_ms, until_ms, username, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8)",
                params![
                    target,
                    tenant,
                    o.level_pct,
                    o.lamps as i64,
                    o.from_ms as i64,
                    o.until_ms as i64,
                    o.username,
                    o.reason
                ],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// Forgets the override on `target` set for `tenant` (cleared).
    pub fn delete_override(
        &mut self,
        target: &OverrideTarget,
        tenant: Option<&TenantId>,
    ) -> Result<(), OperatorStoreError> {
        let target = serde_json::to_string(target).unwrap_or_default();
        self.conn
            .execute(
                "DELETE FROM operator_overrides WHERE target = ?1 AND tenant = ?2",
                params![target, tenant.map_or("", |t| t.as_str())],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// The overrides kept that are still in force at `now_ms`, oldest first; expired ones
    /// are forgotten.
    pub fn saved_overrides(
        &mut self,
        now_ms: u64,
    ) -> Result<Vec<ActiveOverride>, OperatorStoreError> {
        self.conn
            .execute(
                "DELETE FROM operator_overrides WHERE until_ms <= ?1",
                params![now_ms as i64],
            )
            .map_err(self.sql())?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT target, tenant, level_pct, lamps, from_ms, until_ms, username, reason
                 FROM operator_overrides ORDER BY from_ms, target",
            )
            .map_err(self.sql())?;
        let rows: Vec<OverrideRow> = stmt
            .query_map([], |r| {
                Ok((
                    r.get(0)?,
                    r.get(1)?,
                    r.get(2)?,
                    r.get(3)?,
                    r.get(4)?,
                    r.get(5)?,
                    r.get(6)?,
                    r.get(7)?,
                ))
            })
            .map_err(self.sql())?
            .collect::<Result<_, _>>()
            .map_err(self.sql())?;
        let mut out = Vec::new();
        for row in rows {
            match ActiveOverride::from_row(row) {
                Ok(o) => out.push(o),
                Err(e) => tracing::warn!(error = %e, "saved override does not read; skipped"),
            }
        }
        Ok(out)
    }

    /// Keeps a zone's policy settings (their JSON), so a restart applies them again.
    pub fn save_zone_settings(
        &mut self,
        tenant: &TenantId,
        zone: ZoneId,
        settings_json: &str,
        username: &str,
        now_ms: u64,
    ) -> Result<(), OperatorStoreError> {
        self.conn
            .execute(
                "INSERT INTO operator_zone_settings (tenant, zone, settings, updated_ms, username)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant, zone) DO UPDATE SET settings = excluded.settings,
                    updated_ms = excluded.updated_ms, username = excluded.username",
                params![
                    tenant.as_str(),
                    zone.0,
                    settings_json,
                    now_ms as i64,
                    username
                ],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// Every zone's saved settings: (tenant, zone, JSON), by tenant and zone.
    pub fn saved_zone_settings(&self) -> Result<Vec<(String, u32, String)>, OperatorStoreError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT tenant, zone, settings FROM operator_zone_settings ORDER BY tenant, zone",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }
}

/// The overrides in force, kept in the store when there is one.
pub struct Overrides {
    list: Vec<ActiveOverride>,
    store: Option<OperatorStore>,
}

impl Default for Overrides {
    fn default() -> Self {
        Overrides::in_memory()
    }
}

impl Overrides {
    /// A list that a restart forgets (tests and tools without a data directory).
    pub fn in_memory() -> Self {
        Overrides {
            list: Vec::new(),
            store: None,
        }
    }

    /// A list written through to `store`, holding nothing yet: [`Overrides::saved`] says what
    /// to apply again, and [`Overrides::record`] each one applied.
    pub fn with_store(store: OperatorStore) -> Self {
        Overrides {
            list: Vec::new(),
            store: Some(store),
        }
    }

    /// The overrides the store kept that are still in force at `now_ms`.
    pub fn saved(&mut self, now_ms: u64) -> Result<Vec<ActiveOverride>, OperatorStoreError> {
        match &mut self.store {
            Some(s) => s.saved_overrides(now_ms),
            None => Ok(Vec::new()),
        }
    }

    /// Records `o`, which replaces an override on the same target for the same tenant.
    /// The list holds it even when the store cannot: the error says a restart would end it.
    pub fn record(&mut self, o: ActiveOverride) -> Result<(), OperatorStoreError> {
        let now_ms = o.from_ms;
        self.list
            .retain(|x| x.until_ms > now_ms && !x.same_as(&o.target, o.tenant.as_ref()));
        let saved = match &mut self.store {
            Some(s) => s.save_override(&o),
            None => Ok(()),
        };
        self.list.push(o);
        saved
    }

    /// Forgets the override on `target` set for `tenant` (cleared at `now_ms`).
    pub fn forget(
        &mut self,
        target: &OverrideTarget,
        tenant: Option<&TenantId>,
        now_ms: u64,
    ) -> Result<(), OperatorStoreError> {
        self.list
            .retain(|x| x.until_ms > now_ms && !x.same_as(target, tenant));
        match &mut self.store {
            Some(s) => s.delete_override(target, tenant),
            None => Ok(()),
        }
    }

    /// The overrides in force at `now_ms` that `viewer` may see, oldest first.
    pub fn in_force(&mut self, now_ms: u64, viewer: Option<&TenantId>) -> Vec<ActiveOverride> {
        self.list.retain(|o| o.until_ms > now_ms);
        self.list
            .iter()
            .filter(|o| o.visible_to(viewer))
            .cloned()
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lamplighter_protocol::LampId;

    #[test]
    fn zone_settings_are_kept_and_the_latest_wins() {
        let dir = tempfile::tempdir().unwrap();
        let bath = TenantId::new("bath").unwrap();
        {
            let mut s = OperatorStore::open(dir.path()).unwrap();
            s.save_zone_settings(&bath, ZoneId(2), r#"{"a":1}"#, "ops", 10)
                .unwrap();
            s.save_zone_settings(&bath, ZoneId(2), r#"{"a":2}"#, "ops", 20)
                .unwrap();
            s.save_zone_settings(&bath, ZoneId(1), r#"{"a":3}"#, "ops", 30)
                .unwrap();
        }
        let s = OperatorStore::open(dir.path()).unwrap();
        assert_eq!(
            s.saved_zone_settings().unwrap(),
            vec![
                ("bath".to_string(), 1, r#"{"a":3}"#.to_string()),
                ("bath".to_string(), 2, r#"{"a":2}"#.to_string()),
            ]
        );
    }

    #[test]
    fn an_override_row_that_does_not_read_is_skipped() {
        let dir = tempfile::tempdir().unwrap();
        let mut s = OperatorStore::open(dir.path()).unwrap();
        s.conn
            .execute(
                "INSERT INTO operator_overrides VALUES ('not json', '', 5, 1, 0, 99999, 'x', 'y')",
                [],
            )
            .unwrap();
        assert!(s.saved_overrides(1).unwrap().is_empty());
    }

    fn set(
        target: OverrideTarget,
        tenant: Option<&str>,
        level_pct: u8,
        from_ms: u64,
    ) -> ActiveOverride {
        ActiveOverride {
            target,
            tenant: tenant.map(|t| TenantId::new(t).unwrap()),
            level_pct,
            lamps: 3,
            from_ms,
            until_ms: from_ms + 60_000,
            username: "ops".into(),
            reason: "incident".into(),
        }
    }

    fn zone(t: &str, z: u32) -> OverrideTarget {
        OverrideTarget::Zone {
            tenant: TenantId::new(t).unwrap(),
            zone: ZoneId(z),
        }
    }

    #[test]
    fn the_last_override_on_a_target_wins_and_each_tenant_sees_its_own() {
        let mut o = Overrides::in_memory();
        let bath = TenantId::new("bath").unwrap();
        o.record(set(zone("bath", 1), Some("bath"), 20, 0)).unwrap();
        o.record(set(zone("bath", 1), Some("bath"), 80, 1_000))
            .unwrap();
        o.record(set(OverrideTarget::Town, Some("york"), 50, 1_000))
            .unwrap();
        // An operator of every tenant on bath's zone: visible to bath by its target.
        o.record(set(zone("bath", 2), None, 10, 1_000)).unwrap();
        let all = o.in_force(2_000, None);
        assert_eq!(all.len(), 3);
        let bath_sees: Vec<u8> = o
            .in_force(2_000, Some(&bath))
            .iter()
            .map(|x| x.level_pct)
            .collect();
        assert_eq!(bath_sees, [80, 10]);
        // A cleared one is gone; expired ones too.
        o.forget(
            &OverrideTarget::Town,
            Some(&TenantId::new("york").unwrap()),
            2_000,
        )
        .unwrap();
        assert_eq!(o.in_force(2_000, None).len(), 2);
        assert_eq!(o.in_force(60_999, None).len(), 2);
        assert!(o.in_force(61_000, None).is_empty());
    }

    #[test]
    fn overrides_kept_in_the_store_survive_reopening_until_they_expire() {
        let dir = tempfile::tempdir().unwrap();
        let bath = TenantId::new("bath").unwrap();
        {
            let mut o = Overrides::with_store(OperatorStore::open(dir.path()).unwrap());
            o.record(set(zone("bath", 1), Some("bath"), 20, 0)).unwrap();
            o.record(set(OverrideTarget::Lamp { lamp: LampId(7) }, None, 0, 0))
                .unwrap();
            o.forget(&OverrideTarget::Lamp { lamp: LampId(7) }, None, 10)
                .unwrap();
        }
        let mut o = Overrides::with_store(OperatorStore::open(dir.path()).unwrap());
        let saved = o.saved(30_000).unwrap();
        assert_eq!(saved, vec![set(zone("bath", 1), Some("bath"), 20, 0)]);
        assert!(saved[0].visible_to(Some(&bath)));
        assert!(o.saved(60_000).unwrap().is_empty(), "expired at until_ms");
    }
}
