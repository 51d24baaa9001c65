//! What the engineers set that must outlive a restart: zone settings and overrides in
//! force.

use lamplighter_protocol::TenantId;
use rusqlite::params;

use super::{Accounts, AccountsError};

impl Accounts {
    /// Keeps a zone's policy settings (JSON), so a restart applies them again.
    pub fn save_zone_settings(
        &mut self,
        tenant: &TenantId,
        zone: u32,
        settings_json: &str,
        username: &str,
        now_ms: i64,
    ) -> Result<(), AccountsError> {
        self.conn
            .execute(
                "INSERT INTO zone_settings (tenant, zone, settings, updated_ms, username)
                 VALUES (?1, ?2, ?3, ?4, ?5)
                 ON CONFLICT (tenant, zone) DO UPDATE SET settings = excluded.settings,
                    updated_ms = excluded.updated_ms, username = excluded.username",
                params![tenant.as_str(), zone, settings_json, now_ms, username],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// Every zone's saved settings: (tenant, zone, JSON).
    pub fn saved_zone_settings(&self) -> Result<Vec<(String, u32, String)>, AccountsError> {
        let mut stmt = self
            .conn
            .prepare("SELECT tenant, zone, settings FROM zone_settings ORDER BY tenant, zone")
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?)))
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }
}

impl Accounts {
    /// Keeps an override in force (replacing one on the same target for the same tenant),
    /// so that a restart applies it again.
    pub fn save_override(&mut self, o: &crate::ActiveOverride) -> Result<(), AccountsError> {
        let target = serde_json::to_string(&o.target).unwrap_or_default();
        let tenant = o.tenant.as_ref().map_or("", |t| t.as_str());
        self.conn
            .execute(
                "INSERT OR REPLACE INTO overrides
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
        target: &crate::OverrideTarget,
        tenant: Option<&TenantId>,
    ) -> Result<(), AccountsError> {
        let target = serde_json::to_string(target).unwrap_or_default();
        self.conn
            .execute(
                "DELETE FROM overrides WHERE target = ?1 AND tenant = ?2",
                params![target, tenant.map_or("", |t| t.as_str())],
            )
            .map_err(self.sql())?;
        Ok(())
    }

    /// The overrides kept that are still in force at `now_ms`; expired ones are forgotten.
    /// A row that no longer reads (edited by hand) is skipped with a warning.
    pub fn saved_overrides(
        &mut self,
        now_ms: u64,
    ) -> Result<Vec<crate::ActiveOverride>, AccountsError> {
        self.conn
            .execute(
                "DELETE FROM overrides WHERE until_ms <= ?1",
                params![now_ms as i64],
            )
            .map_err(self.sql())?;
        let mut stmt = self
            .conn
            .prepare(
                "SELECT target, tenant, level_pct, lamps, from_ms, until_ms, username, reason
                 FROM overrides ORDER BY from_ms",
            )
            .map_err(self.sql())?;
        type Row = (String, String, u8, i64, i64, i64, String, String);
        let rows: Vec<Row> = stmt
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
        for (target, tenant, level_pct, lamps, from_ms, until_ms, username, reason) in rows {
            let target = serde_json::from_str(&target).map_err(|e| e.to_string());
            let tenant = match tenant.as_str() {
                "" => Ok(None),
                t => TenantId::new(t).map(Some).map_err(|e| e.to_string()),
            };
            match (target, tenant) {
                (Ok(target), Ok(tenant)) => out.push(crate::ActiveOverride {
                    target,
                    tenant,
                    level_pct: level_pct.min(100),
                    lamps: lamps.max(0) as usize,
                    from_ms: from_ms.max(0) as u64,
                    until_ms: until_ms.max(0) as u64,
                    username,
                    reason,
                }),
                (Err(e), _) | (_, Err(e)) => {
                    tracing::warn!(file = %self.path.display(), error = %e, "saved override skipped")
                }
            }
        }
        Ok(out)
    }
}
