//! Faults in the store: one row per fault, from raised to cleared (table `faults`,
//! migration 3), written by the writer thread from the tracker's events
//! ([`crate::faults::FaultEvent`]), read by the dashboard and at start.
//!
//! The acknowledgement and the clear carry who, when and why, so the rows are also the
//! audit trail of what people did to faults (the audit export lists them).

use lamplighter_protocol::{LampId, TenantId, UnixMs};
use rusqlite::{params, OptionalExtension, Transaction};

use super::{Store, StoreError};
use crate::faults::{Action, Fault, FaultEvent, FaultId};

/// What the fault tracker is restored from when the controller starts.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct FaultsAtStart {
    /// Faults not cleared (open or acknowledged).
    pub open: Vec<Fault>,
    /// An id no fault in the store has.
    pub next_id: u64,
}

const COLUMNS: &str = "id, tenant, lamp_id, dev_eui, kind, raised_at_ms, detail, acknowledged_by,
    acknowledged_at_ms, acknowledged_note, cleared_at_ms, cleared_by, cleared_note";

/// Writes fault events inside the writer's transaction, in order. A raised fault whose id
/// is already stored is skipped (ids come from the tracker, restored from the store; a
/// collision would be a bug, and must not wedge the writer in retries). An acknowledgement
/// or clear of a fault already acknowledged or cleared keeps the first.
pub(super) fn write_fault_events(
    tx: &Transaction<'_>,
    events: &[FaultEvent],
) -> rusqlite::Result<()> {
    if events.is_empty() {
        return Ok(());
    }
    let mut raise = tx.prepare_cached(
        "INSERT OR IGNORE INTO faults (id, tenant, lamp_id, dev_eui, kind, raised_at_ms, detail,
            acknowledged_by, acknowledged_at_ms, acknowledged_note, cleared_at_ms, cleared_by,
            cleared_note)
         VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13)",
    )?;
    let mut ack = tx.prepare_cached(
        "UPDATE faults SET acknowledged_by = ?2, acknowledged_at_ms = ?3, acknowledged_note = ?4
         WHERE id = ?1 AND acknowledged_at_ms IS NULL",
    )?;
    let mut clear = tx.prepare_cached(
        "UPDATE faults SET cleared_by = ?2, cleared_at_ms = ?3, cleared_note = ?4
         WHERE id = ?1 AND cleared_at_ms IS NULL",
    )?;
    for e in events {
        match e {
            FaultEvent::Raised(f) => {
                let a = f.acknowledged.as_ref();
                let c = f.cleared.as_ref();
                let n = raise.execute(params![
                    f.id.0 as i64,
                    f.tenant.as_str(),
                    f.lamp.0,
                    f.dev_eui.to_string(),
                    f.kind.as_str(),
                    f.raised_at.0 as i64,
                    f.detail,
                    a.and_then(|a| a.by.as_deref()),
                    a.map(|a| a.at.0 as i64),
                    a.map(|a| a.note.as_str()),
                    c.map(|c| c.at.0 as i64),
                    c.and_then(|c| c.by.as_deref()),
                    c.map(|c| c.note.as_str()),
                ])?;
                if n == 0 {
                    tracing::error!(
                        id = f.id.0,
                        "fault id already stored; raised fault not written"
                    );
                }
            }
            FaultEvent::Acknowledged { id, action } => {
                ack.execute(params![
                    id.0 as i64,
                    action.by.as_deref(),
                    action.at.0 as i64,
                    action.note
                ])?;
            }
            FaultEvent::Cleared { id, action } => {
                clear.execute(params![
                    id.0 as i64,
                    action.by.as_deref(),
                    action.at.0 as i64,
                    action.note
                ])?;
            }
        }
    }
    Ok(())
}

fn fault_row(r: &rusqlite::Row<'_>) -> rusqlite::Result<Result<Fault, String>> {
    let action = |by: Option<String>, at: Option<i64>, note: Option<String>| {
        at.map(|at| Action {
            by,
            at: UnixMs(at.max(0) as u64),
            note: note.unwrap_or_default(),
        })
    };
    let tenant: String = r.get(1)?;
    let dev_eui: String = r.get(3)?;
    let kind: String = r.get(4)?;
    let id: i64 = r.get(0)?;
    let parsed = (|| -> Result<Fault, String> {
        Ok(Fault {
            id: FaultId(id as u64),
            tenant: TenantId::new(&tenant).map_err(|e| e.to_string())?,
            lamp: LampId(r.get(2).map_err(|e| e.to_string())?),
            dev_eui: dev_eui.parse().map_err(|e| format!("{e}"))?,
            kind: kind.parse().map_err(|e| format!("{e}"))?,
            raised_at: UnixMs(r.get::<_, i64>(5).map_err(|e| e.to_string())?.max(0) as u64),
            detail: r.get(6).map_err(|e| e.to_string())?,
            acknowledged: action(
                r.get(7).map_err(|e| e.to_string())?,
                r.get(8).map_err(|e| e.to_string())?,
                r.get(9).map_err(|e| e.to_string())?,
            ),
            cleared: action(
                r.get(11).map_err(|e| e.to_string())?,
                r.get(10).map_err(|e| e.to_string())?,
                r.get(12).map_err(|e| e.to_string())?,
            ),
        })
    })();
    Ok(parsed.map_err(|e| format!("fault {id}: {e}")))
}

impl Store {
    fn query_faults(
        &self,
        sql: &str,
        params: impl rusqlite::Params,
    ) -> Result<Vec<Fault>, StoreError> {
        let mut stmt = self.conn.prepare_cached(sql).map_err(self.sql())?;
        let rows = stmt.query_map(params, fault_row).map_err(self.sql())?;
        let mut out = Vec::new();
        for row in rows {
            out.push(
                row.map_err(self.sql())?
                    .map_err(|detail| StoreError::Corrupt {
                        table: "faults",
                        detail,
                    })?,
            );
        }
        Ok(out)
    }

    /// Faults not cleared (open and acknowledged), of one tenant or all, newest first.
    pub fn open_faults(&self, tenant: Option<&TenantId>) -> Result<Vec<Fault>, StoreError> {
        self.query_faults(
            &format!(
                "SELECT {COLUMNS} FROM faults
                 WHERE cleared_at_ms IS NULL AND (?1 IS NULL OR tenant = ?1)
                 ORDER BY raised_at_ms DESC, id DESC"
            ),
            params![tenant.map(|t| t.as_str())],
        )
    }

    /// Faults raised, or not yet cleared, at or after `since` (open ones, and those cleared
    /// recently), of one tenant or all, newest first, at most `limit`.
    pub fn recent_faults(
        &self,
        tenant: Option<&TenantId>,
        since: UnixMs,
        limit: u32,
    ) -> Result<Vec<Fault>, StoreError> {
        self.query_faults(
            &format!(
                "SELECT {COLUMNS} FROM faults
                 WHERE (?1 IS NULL OR tenant = ?1)
                   AND (cleared_at_ms IS NULL OR cleared_at_ms >= ?2 OR raised_at_ms >= ?2)
                 ORDER BY raised_at_ms DESC, id DESC LIMIT ?3"
            ),
            params![tenant.map(|t| t.as_str()), since.0 as i64, limit],
        )
    }

    /// One fault, whatever its state.
    pub fn fault(&self, id: FaultId) -> Result<Option<Fault>, StoreError> {
        Ok(self
            .query_faults(
                &format!("SELECT {COLUMNS} FROM faults WHERE id = ?1"),
                params![id.0 as i64],
            )?
            .pop())
    }

    /// An id no stored fault has.
    pub fn next_fault_id(&self) -> Result<u64, StoreError> {
        let max: Option<i64> = self
            .conn
            .query_row("SELECT MAX(id) FROM faults", [], |r| r.get(0))
            .optional()
            .map_err(self.sql())?
            .flatten();
        Ok(max.map_or(1, |m| m.max(0) as u64 + 1))
    }

    /// Writes fault events now, in one transaction (the writer thread does this for the
    /// running controller; tools and tests call it directly).
    pub fn write_faults(&mut self, events: &[FaultEvent]) -> Result<(), StoreError> {
        self.write_batch(&[], &[], events).map(|_| ())
    }

    /// What the tracker is restored from. A store that can not be read yields no open
    /// faults and an id past the current time in milliseconds, which no earlier fault can
    /// have had (ids are small counters), so nothing collides; the error is logged.
    pub(super) fn faults_at_start(&self) -> FaultsAtStart {
        match (self.open_faults(None), self.next_fault_id()) {
            (Ok(open), Ok(next_id)) => FaultsAtStart { open, next_id },
            (a, b) => {
                let e = a.err().or(b.err()).map(|e| e.to_string());
                tracing::error!(error = ?e, "cannot read open faults; starting without them");
                let now_ms = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(u64::MAX / 2, |d| d.as_millis() as u64);
                FaultsAtStart {
                    open: Vec::new(),
                    next_id: now_ms,
                }
            }
        }
    }
}
