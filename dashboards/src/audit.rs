//! Writing the audit log from a handler: who did what, to which target, and why.

use lamplighter_protocol::TenantId;

use crate::accounts::NewAudit;
use crate::auth::Auth;
use crate::error::ApiError;
use crate::state::AppState;
use crate::wall_ms;

/// One action to audit; the caller and the time are added by [`record`].
pub(crate) struct AuditEvent<'a> {
    /// The tenant the line belongs to (`None`: every tenant's).
    pub tenant: Option<&'a TenantId>,
    /// e.g. `override`, `user-add`.
    pub action: &'a str,
    /// e.g. `zone north/3`.
    pub target: &'a str,
    /// What was set, as JSON.
    pub detail: serde_json::Value,
    /// The caller's reason; empty where none is asked for.
    pub reason: &'a str,
}

/// Writes `event` as done by `by`, now. An action that cannot be audited must not pass as
/// done, so failing to write is a 500 (logged) for the handler to return.
pub(crate) fn record(state: &AppState, by: &Auth, event: AuditEvent<'_>) -> Result<(), ApiError> {
    state
        .accounts()
        .audit(&NewAudit {
            at_ms: wall_ms(),
            username: by.username(),
            tenant: event.tenant,
            action: event.action,
            target: event.target,
            detail: &event.detail.to_string(),
            reason: event.reason,
        })
        .map(|_| ())
        .map_err(|e| {
            ApiError::internal(
                "cannot write the audit log",
                "cannot write the audit log",
                e,
            )
        })
}
