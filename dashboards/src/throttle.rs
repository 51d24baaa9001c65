//! Login throttling: per username and per client address, a few free failures in a window,
//! then exponential backoff (1 s, 2 s, 4 s, ... up to 15 minutes) during which every attempt
//! on that key, right or wrong, answers 429 with `Retry-After`.
//!
//! In memory: a restart forgets failures, which costs an attacker a restart of our process,
//! not a bypass. Sans-clock: callers pass `now`.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Failures allowed per username within [`WINDOW`] before backoff starts.
pub const FREE_FAILURES_PER_USER: u32 = 5;
/// Failures allowed per client address within [`WINDOW`] (several users behind one NAT).
pub const FREE_FAILURES_PER_IP: u32 = 20;
/// How long failures are remembered after the last one.
pub const WINDOW: Duration = Duration::from_secs(15 * 60);
/// The longest lock-out.
pub const MAX_LOCK: Duration = Duration::from_secs(15 * 60);

/// Keys kept at most; beyond, the stale ones are dropped first (bounded memory under a
/// spray of usernames).
const MAX_KEYS: usize = 100_000;

#[derive(Debug, Clone, Copy)]
struct Entry {
    failures: u32,
    last_failure: Instant,
    locked_until: Option<Instant>,
}

#[derive(Debug, Default)]
pub struct Throttle {
    entries: Mutex<HashMap<String, Entry>>,
}

impl Throttle {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<String, Entry>> {
        self.entries.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// `Err(wait)` while `key` is locked out.
    pub fn check(&self, key: &str, now: Instant) -> Result<(), Duration> {
        let map = self.lock();
        match map.get(key).and_then(|e| e.locked_until) {
            Some(until) if until > now => Err(until - now),
            _ => Ok(()),
        }
    }

    /// Records a failure on `key`, which allows `free` failures per window.
    pub fn fail(&self, key: &str, free: u32, now: Instant) {
        let mut map = self.lock();
        if map.len() >= MAX_KEYS {
            map.retain(|_, e| now.duration_since(e.last_failure) < WINDOW);
        }
        if map.len() >= MAX_KEYS {
            // Still full of fresh keys: forget the oldest half rather than grow.
            let mut times: Vec<Instant> = map.values().map(|e| e.last_failure).collect();
            times.sort();
            let cut = times[times.len() / 2];
            map.retain(|_, e| e.last_failure > cut);
        }
        let e = map.entry(key.to_string()).or_insert(Entry {
            failures: 0,
            last_failure: now,
            locked_until: None,
        });
        if now.duration_since(e.last_failure) >= WINDOW {
            e.failures = 0;
        }
        e.failures = e.failures.saturating_add(1);
        e.last_failure = now;
        if e.failures > free {
            let exp = (e.failures - free - 1).min(20);
            let lock = Duration::from_secs(1u64 << exp).min(MAX_LOCK);
            e.locked_until = Some(now + lock);
        }
    }

    /// A success forgets `key`'s failures.
    pub fn succeed(&self, key: &str) {
        self.lock().remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_failures_then_doubling_lockouts_capped_and_forgotten_after_the_window() {
        let t = Throttle::new();
        let t0 = Instant::now();
        for i in 0..FREE_FAILURES_PER_USER {
            assert!(t.check("ann", t0).is_ok(), "failure {i} is free");
            t.fail("ann", FREE_FAILURES_PER_USER, t0);
        }
        assert!(t.check("ann", t0).is_ok());
        t.fail("ann", FREE_FAILURES_PER_USER, t0);
        assert_eq!(t.check("ann", t0), Err(Duration::from_secs(1)));
        assert!(t.check("bob", t0).is_ok(), "other keys are not affected");
        let t1 = t0 + Duration::from_secs(1);
        assert!(t.check("ann", t1).is_ok());
        t.fail("ann", FREE_FAILURES_PER_USER, t1);
        assert_eq!(t.check("ann", t1), Err(Duration::from_secs(2)));
        for _ in 0..30 {
            t.fail("ann", FREE_FAILURES_PER_USER, t1);
        }
        assert_eq!(t.check("ann", t1), Err(MAX_LOCK));
        // A quiet window later the count starts again.
        let later = t1 + WINDOW + MAX_LOCK;
        assert!(t.check("ann", later).is_ok());
        t.fail("ann", FREE_FAILURES_PER_USER, later);
        assert!(t.check("ann", later).is_ok());
        t.succeed("ann");
        assert!(t.check("ann", later).is_ok());
    }
}
