//! What earlier versions kept in the accounts file and the controller's store keeps now:
//! zones' policy settings and overrides in force. `serve` takes them from here once, at
//! start ([`Accounts::operator_state`], then [`Accounts::forget_operator_state`] once its
//! store holds them), and keeps them in its store from then on.

use lamplighter_controller::overrides::{ActiveOverride, OverrideRow};
use rusqlite::params;

use super::{Accounts, AccountsError};

/// Zone settings and overrides an earlier version kept here.
#[derive(Debug, Default, PartialEq)]
pub struct OperatorState {
    /// Overrides still in force, oldest first.
    pub overrides: Vec<ActiveOverride>,
    /// (tenant, zone, settings JSON, who set them), by tenant and zone.
    pub zone_settings: Vec<(String, u32, String, String)>,
}

impl Accounts {
    /// The zone settings and overrides (still in force at `now_ms`) an earlier version kept
    /// here.
    pub fn operator_state(&mut self, now_ms: u64) -> Result<OperatorState, AccountsError> {
        Ok(OperatorState {
            overrides: self.saved_overrides(now_ms)?,
            zone_settings: self.saved_zone_settings()?,
        })
    }

    /// Removes them from this file, once they are kept elsewhere.
    pub fn forget_operator_state(&mut self) -> Result<(), AccountsError> {
        self.conn
            .execute_batch("DELETE FROM overrides; DELETE FROM zone_settings;")
            .map_err(self.sql())
    }

    /// Every zone's saved settings: (tenant, zone, JSON, username).
    fn saved_zone_settings(&self) -> Result<Vec<(String, u32, String, String)>, AccountsError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT tenant, zone, settings, username FROM zone_settings ORDER BY tenant, zone",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }

    /// The overrides kept that are still in force at `now_ms`; expired ones are forgotten.
    /// A row that no longer reads (edited by hand) is skipped with a warning.
    fn saved_overrides(&mut self, now_ms: u64) -> Result<Vec<ActiveOverride>, AccountsError> {
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
                Err(e) => {
                    tracing::warn!(file = %self.path.display(), error = %e, "saved override skipped")
                }
            }
        }
        Ok(out)
    }
}
