//! What every handler shares: the source, the accounts, the login throttle and the options.

use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use tokio::sync::watch;

use crate::accounts::{Accounts, AccountsError};
use crate::error::ApiError;
use crate::throttle::Throttle;
use crate::LiveSource;

/// How the dashboard serves.
#[derive(Debug, Clone)]
pub struct DashboardOptions {
    /// Mark the session cookie `Secure` (set when served over TLS, directly or behind a
    /// proxy that terminates it).
    pub secure_cookies: bool,
    /// How long a login lasts.
    pub session_ttl: Duration,
}

impl Default for DashboardOptions {
    fn default() -> Self {
        DashboardOptions {
            secure_cookies: false,
            session_ttl: Duration::from_secs(12 * 3600),
        }
    }
}

#[derive(Clone)]
pub(crate) struct AppState {
    pub(crate) source: Arc<dyn LiveSource>,
    pub(crate) accounts: Arc<Mutex<Accounts>>,
    pub(crate) throttle: Arc<Throttle>,
    pub(crate) options: DashboardOptions,
    /// Closed (its sender dropped) when [`crate::serve`] stops; event streams end then.
    /// `None` for a bare [`crate::router`], whose streams end only when the client leaves.
    pub(crate) shutdown: Option<watch::Receiver<()>>,
}

impl AppState {
    pub(crate) fn new(
        source: Arc<dyn LiveSource>,
        accounts: Accounts,
        options: DashboardOptions,
        shutdown: Option<watch::Receiver<()>>,
    ) -> AppState {
        AppState {
            source,
            accounts: Arc::new(Mutex::new(accounts)),
            throttle: Arc::new(Throttle::new()),
            options,
            shutdown,
        }
    }

    /// The accounts, for a quick read or write (argon2 work goes through
    /// [`AppState::accounts_blocking`]). A panic elsewhere does not lock everyone out.
    pub(crate) fn accounts(&self) -> MutexGuard<'_, Accounts> {
        self.accounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Runs `f` on the accounts off the async workers (argon2 is deliberately slow).
    pub(crate) async fn accounts_blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Accounts) -> Result<T, AccountsError> + Send + 'static,
    ) -> Result<T, ApiError> {
        let accounts = self.accounts.clone();
        let done = tokio::task::spawn_blocking(move || {
            let mut a = accounts.lock().unwrap_or_else(|p| p.into_inner());
            f(&mut a)
        })
        .await;
        match done {
            Ok(result) => result.map_err(ApiError::from),
            Err(e) => Err(ApiError::Internal(e.to_string())),
        }
    }
}
