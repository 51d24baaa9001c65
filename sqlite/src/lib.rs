//! How Lamplighter opens a SQLite file that several of its processes may open at once.
//!
//! The store, the accounts file and the gateway registry are each opened by the server and
//! by the command-line tools an operator runs beside it (`nodes export`, `users add`,
//! `gateways add`), often on a fresh data folder in the same second. Every file is used in
//! WAL mode, so readers never wait for the writer.
//!
//! Switching a new file to WAL takes a lock SQLite does not wait for: the busy handler set
//! by `busy_timeout` is not called, and the loser of the race gets "database is locked" at
//! once. [`open_shared`] therefore retries the switch while the file is busy, up to the same
//! wait as the busy timeout. Schema changes stay with each caller, which should make them in
//! an `IMMEDIATE` transaction (or with `IF NOT EXISTS`) for the same reason.

use std::path::Path;
use std::time::{Duration, Instant};

use rusqlite::{Connection, ErrorCode};

/// Pause between attempts to switch a busy file to WAL.
const WAL_RETRY_PAUSE: Duration = Duration::from_millis(20);

/// Opens (creating if needed) the SQLite file at `path` in WAL mode, waiting up to `wait`
/// for other connections: as its busy timeout, and for the switch to WAL.
pub fn open_shared(path: &Path, wait: Duration) -> rusqlite::Result<Connection> {
    let conn = Connection::open(path)?;
    conn.busy_timeout(wait)?;
    let deadline = Instant::now() + wait;
    loop {
        match conn.pragma_update(None, "journal_mode", "WAL") {
            Err(rusqlite::Error::SqliteFailure(e, _))
                if e.code == ErrorCode::DatabaseBusy && Instant::now() < deadline =>
            {
                std::thread::sleep(WAL_RETRY_PAUSE);
            }
            r => return r.map(|()| conn),
        }
    }
}

/// Test support for the crates whose files open through [`open_shared`].
#[cfg(any(test, feature = "testing"))]
pub mod testing {
    use std::fmt::Display;
    use std::path::Path;

    /// Twenty times, opens a new, empty data folder from two threads at the same moment, as
    /// the server and an operator's command do, and panics unless both opened it each time.
    pub fn assert_both_open_a_new_folder_at_once<E: Display>(
        open: impl Fn(&Path) -> Result<(), E> + Sync,
    ) {
        for round in 0..20 {
            let dir = tempfile::tempdir().expect("a temporary folder");
            let start = std::sync::Barrier::new(2);
            let opened: Vec<Result<(), String>> = std::thread::scope(|s| {
                let open = || {
                    start.wait();
                    open(dir.path()).map_err(|e| e.to_string())
                };
                let a = s.spawn(open);
                let b = s.spawn(open);
                [a, b]
                    .map(|t| t.join().expect("an opening thread panicked"))
                    .into()
            });
            assert_eq!(opened, [Ok(()), Ok(())], "round {round}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn journal_mode(conn: &Connection) -> String {
        conn.query_row("PRAGMA journal_mode", [], |r| r.get(0))
            .unwrap()
    }

    /// Two processes opening one new file at the same moment both get it, in WAL mode.
    /// Without the retry, one of them gets "database is locked" in most rounds.
    #[test]
    fn two_connections_opening_a_new_file_at_once_both_get_it_in_wal_mode() {
        testing::assert_both_open_a_new_folder_at_once(|dir| {
            let conn = open_shared(&dir.join("shared.sqlite"), Duration::from_secs(10))
                .map_err(|e| e.to_string())?;
            match journal_mode(&conn).as_str() {
                "wal" => Ok(()),
                other => Err(format!("journal mode {other}")),
            }
        });
    }

    /// A file another connection holds a write lock on: the switch waits no longer than
    /// asked, then says the file is busy.
    #[test]
    fn a_file_locked_longer_than_the_wait_is_reported_busy() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("held.sqlite");
        let holder = Connection::open(&path).unwrap();
        holder
            .execute_batch("BEGIN EXCLUSIVE; CREATE TABLE t (x);")
            .unwrap();
        let t0 = Instant::now();
        let err = open_shared(&path, Duration::from_millis(200)).unwrap_err();
        assert_eq!(
            err.sqlite_error_code(),
            Some(ErrorCode::DatabaseBusy),
            "{err}"
        );
        assert!(
            t0.elapsed() >= Duration::from_millis(200),
            "{:?}",
            t0.elapsed()
        );
        holder.execute_batch("COMMIT").unwrap();
        let conn = open_shared(&path, Duration::from_secs(1)).unwrap();
        assert_eq!(journal_mode(&conn), "wal");
    }
}
