//! The audit log: who did what, when, to which target, and why; and its CSV export.

use lamplighter_controller::csv_export::{text_cell, writer};
use lamplighter_protocol::TenantId;
use rusqlite::params;
use serde::{Deserialize, Serialize};

use super::{Accounts, AccountsError};

/// One line of the audit log.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct AuditEntry {
    pub id: i64,
    pub at_ms: i64,
    pub username: String,
    pub tenant: Option<String>,
    pub action: String,
    pub target: String,
    /// What was set, as the API received it (JSON text).
    pub detail: String,
    pub reason: String,
}

/// A new audit line.
#[derive(Debug, Clone)]
pub struct NewAudit<'a> {
    pub at_ms: i64,
    pub username: &'a str,
    pub tenant: Option<&'a TenantId>,
    pub action: &'a str,
    pub target: &'a str,
    pub detail: &'a str,
    pub reason: &'a str,
}

impl Accounts {
    /// Appends a line to the audit log.
    pub fn audit(&mut self, entry: &NewAudit<'_>) -> Result<i64, AccountsError> {
        self.conn
            .execute(
                "INSERT INTO audit (at_ms, username, tenant, action, target, detail, reason)
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7)",
                params![
                    entry.at_ms,
                    entry.username,
                    entry.tenant.map(|t| t.as_str()),
                    entry.action,
                    entry.target,
                    entry.detail,
                    entry.reason
                ],
            )
            .map_err(self.sql())?;
        Ok(self.conn.last_insert_rowid())
    }

    /// Audit lines in `[from_ms, to_ms)`, newest first, at most `limit`; a tenant sees its
    /// own lines only.
    pub fn audit_entries(
        &self,
        tenant: Option<&TenantId>,
        from_ms: i64,
        to_ms: i64,
        limit: u32,
    ) -> Result<Vec<AuditEntry>, AccountsError> {
        let mut stmt = self
            .conn
            .prepare(
                "SELECT id, at_ms, username, tenant, action, target, detail, reason FROM audit
                 WHERE (?1 IS NULL OR tenant = ?1) AND at_ms >= ?2 AND at_ms < ?3
                 ORDER BY at_ms DESC, id DESC LIMIT ?4",
            )
            .map_err(self.sql())?;
        let rows = stmt
            .query_map(
                params![tenant.map(|t| t.as_str()), from_ms, to_ms, limit],
                |r| {
                    Ok(AuditEntry {
                        id: r.get(0)?,
                        at_ms: r.get(1)?,
                        username: r.get(2)?,
                        tenant: r.get(3)?,
                        action: r.get(4)?,
                        target: r.get(5)?,
                        detail: r.get(6)?,
                        reason: r.get(7)?,
                    })
                },
            )
            .map_err(self.sql())?;
        rows.collect::<Result<_, _>>().map_err(self.sql())
    }
}

/// Unix seconds as `YYYY-MM-DDTHH:MM:SSZ`; empty beyond chrono's range (about 262,000
/// years either way).
fn iso8601(t_s: i64) -> String {
    chrono::DateTime::from_timestamp(t_s, 0)
        .map(|t| t.format("%Y-%m-%dT%H:%M:%SZ").to_string())
        .unwrap_or_default()
}

/// The audit lines as CSV, oldest first, with a header line. Every text a person chose is
/// guarded against spreadsheet formulas.
pub fn audit_csv(entries: &[AuditEntry]) -> Result<String, AccountsError> {
    let mut w = writer(Vec::new());
    w.write_record([
        "time", "at_ms", "username", "tenant", "action", "target", "detail", "reason",
    ])
    .map_err(std::io::Error::from)?;
    for e in entries.iter().rev() {
        w.write_record([
            iso8601(e.at_ms.div_euclid(1000)).as_str(),
            &e.at_ms.to_string(),
            &text_cell(&e.username),
            &text_cell(e.tenant.as_deref().unwrap_or("")),
            &text_cell(&e.action),
            &text_cell(&e.target),
            &text_cell(&e.detail),
            &text_cell(&e.reason),
        ])
        .map_err(std::io::Error::from)?;
    }
    let bytes = w.into_inner().map_err(|e| e.into_error())?;
    // Every field was a `&str`, so the bytes are UTF-8.
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> i64 {
        1_700_000_000_000
    }

    #[test]
    fn audit_is_scoped_to_the_tenant_and_exports_as_csv() {
        let dir = tempfile::tempdir().unwrap();
        let mut a = Accounts::open(dir.path()).unwrap();
        let north = TenantId::new("north").unwrap();
        let south = TenantId::new("south").unwrap();
        for (t, reason) in [(&north, "burst main, \"crew\" on site"), (&south, "=cmd()")] {
            a.audit(&NewAudit {
                at_ms: now(),
                username: "ann",
                tenant: Some(t),
                action: "override",
                target: "zone 3",
                detail: "{\"level_pct\":100}",
                reason,
            })
            .unwrap();
        }
        let n = a.audit_entries(Some(&north), 0, i64::MAX, 100).unwrap();
        assert_eq!(n.len(), 1);
        assert_eq!(n[0].tenant.as_deref(), Some("north"));
        let all = a.audit_entries(None, 0, i64::MAX, 100).unwrap();
        assert_eq!(all.len(), 2);
        let csv = audit_csv(&all).unwrap();
        assert!(
            csv.contains("\"burst main, \"\"crew\"\" on site\""),
            "{csv}"
        );
        assert!(csv.contains(",'=cmd()"), "formula neutralised: {csv}");
        assert!(csv.starts_with("time,at_ms,username"));
    }

    /// The format the hand-written conversion had, kept now that chrono does it.
    #[test]
    fn times_are_utc_seconds_in_iso_8601() {
        assert_eq!(iso8601(0), "1970-01-01T00:00:00Z");
        assert_eq!(iso8601(1_700_000_000), "2023-11-14T22:13:20Z");
        assert_eq!(iso8601(951_782_400), "2000-02-29T00:00:00Z");
        assert_eq!(iso8601(-1), "1969-12-31T23:59:59Z");
        assert_eq!(iso8601(253_402_300_799), "9999-12-31T23:59:59Z");
    }
}
