//! The overrides in force, with who set them and why.
//!
//! The controller applies overrides, but this list is the dashboard's until the
//! controller keeps one: the page lists it, and the accounts file keeps a copy so that a
//! restart applies them again ([`Overrides::restore`]). Everything that reads or changes
//! the list in memory is here; the API that changes it is `routes/overrides.rs`.

use std::sync::{Mutex, MutexGuard};

use lamplighter_protocol::TenantId;

use crate::accounts::Accounts;
use crate::{ActiveOverride, LiveSource, OverrideTarget};

#[derive(Default)]
pub(crate) struct Overrides(Mutex<Vec<ActiveOverride>>);

impl Overrides {
    /// The overrides still in force when the dashboard last stopped, applied again: an
    /// operator's incident override does not end with a restart.
    pub(crate) fn restore(source: &dyn LiveSource, accounts: &mut Accounts) -> Overrides {
        let restored = Overrides::default();
        let saved = match accounts.saved_overrides(source.now_ms()) {
            Ok(saved) => saved,
            Err(e) => {
                tracing::error!(error = %e, "saved overrides not read");
                return restored;
            }
        };
        let mut list = restored.lock();
        for o in saved {
            match source.set_override(o.tenant.as_ref(), &o.target, Some(o.level_pct), o.until_ms) {
                Ok(lamps) => {
                    tracing::info!(target = %o.target, level_pct = o.level_pct, lamps, until_ms = o.until_ms, "override restored");
                    list.push(ActiveOverride { lamps, ..o });
                }
                Err(e) => {
                    tracing::warn!(target = %o.target, error = %e, "saved override not applied")
                }
            }
        }
        drop(list);
        restored
    }

    /// The list, still usable after a panic elsewhere held it.
    fn lock(&self) -> MutexGuard<'_, Vec<ActiveOverride>> {
        self.0.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Adds `active`, replacing the one on the same target set for the same tenant;
    /// expired ones go.
    pub(crate) fn put(&self, active: ActiveOverride) {
        let mut list = self.lock();
        list.retain(|o| {
            o.until_ms > active.from_ms && !(o.target == active.target && o.tenant == active.tenant)
        });
        list.push(active);
    }

    /// Drops the override on `target` set for `tenant`, and the expired ones.
    pub(crate) fn remove(&self, target: &OverrideTarget, tenant: Option<&TenantId>, now_ms: u64) {
        self.lock().retain(|o| {
            o.until_ms > now_ms && !(&o.target == target && o.tenant.as_ref() == tenant)
        });
    }

    /// Those in force at `now_ms` that a caller limited to `tenant` may see: the ones set
    /// for that tenant, and any on one of its zones.
    pub(crate) fn visible(&self, tenant: Option<&TenantId>, now_ms: u64) -> Vec<ActiveOverride> {
        let mut list = self.lock();
        list.retain(|o| o.until_ms > now_ms);
        list.iter()
            .filter(|o| match tenant {
                None => true,
                Some(t) => {
                    o.tenant.as_ref() == Some(t)
                        || matches!(&o.target, OverrideTarget::Zone { tenant, .. } if tenant == t)
                }
            })
            .cloned()
            .collect()
    }
}
