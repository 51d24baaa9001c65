//! The InfluxDB sink: every reading, command and zone point also goes to an InfluxDB v2
//! server (or anything that speaks its write API, such as VictoriaMetrics), and none is lost
//! or written twice while that server is down, slow or restarting.
//!
//! How: the store writes each point's line protocol into the `influx_spool` table **in the
//! same transaction** as the reading or command it describes (readings already stored are
//! skipped there, so a resent frame makes no second point). A thread of its own reads the
//! spool oldest first, posts up to [`InfluxConfig::batch_points`] lines per request through
//! the influxdb2 crate, and deletes them from the spool only when the server answered 204.
//! A failed or timed-out request is retried with exponential backoff (0.5 s doubling to
//! 30 s, with jitter); meanwhile the spool grows on disk, and survives a restart. A point
//! is resent only if the process dies between the server's 204 and the spool delete; its
//! series, timestamp and values are identical, which InfluxDB stores once (a point is keyed
//! by series and time; VictoriaMetrics needs `-dedup.minScrapeInterval=1ms` for the same).
//!
//! ## Line protocol
//!
//! | measurement | tags | fields | timestamp |
//! |---|---|---|---|
//! | `reading` | `tenant`, `zone`, `lamp` | `level_pct`i, `target_level_pct`i, `power_w`, `energy_meter_dwh`i (the node's cumulative meter, 0.1 Wh), `energy_dwh`i (used since the node's previous report, 0.1 Wh), `ambient_lux`i, `pedestrians`i, `cyclists`i, `vehicles`i, `faults`i (bit flags), `fcnt`i | the node's reading time (s) + `fcnt` mod 10^9 ns |
//! | `command` | `tenant`, `zone`, `lamp`, `reason` | `level_pct`i, `ramp_ms`i, `fcnt_down`i | when sent (ms) + `fcnt_down` mod 10^6 ns |
//! | `zone` | `tenant`, `zone` | `lamps_online`i, `mean_level_pct`, `power_w`, `energy_wh` (since start), `demand_per_h`, `forecast_per_h`, `forecast_q10_per_h`, `forecast_q90_per_h` (the last four only when known) | controller time, once a minute |
//!
//! Timestamps are nanoseconds; the small offsets keep two readings (or commands) of one lamp
//! in the same second two points, and are the same on every resend.
//!
//! ## The spool's bound
//!
//! An outage of the server must not fill the disk the store lives on. The spool holds at
//! most [`InfluxConfig::spool_max_bytes`] of line protocol (default
//! [`DEFAULT_SPOOL_MAX_BYTES`], 256 MiB: about a day of a 10,000-lamp town reporting every
//! 5 minutes). The sink measures it at most once a second and while it is over the bound
//! deletes the **oldest** points until it is at 90 % of it, counting them
//! (`lamplighter_influx_points_dropped_total`) and logging each drop. The readings and
//! commands themselves stay in the store (the spool is only a copy of them for InfluxDB),
//! so a gap can be filled later from `lamplighter export`. Depth (bytes and points) is in
//! `/metrics`.

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use lamplighter_protocol::payload::StatusReport;
use lamplighter_protocol::{LampId, UnixMs};
use rand::Rng;
use rusqlite::{params, Connection};

use crate::core::ZoneView;

/// Where the sink writes.
#[derive(Clone, PartialEq)]
pub struct InfluxConfig {
    /// Base URL, e.g. `http://127.0.0.1:8086`.
    pub url: String,
    pub org: String,
    pub bucket: String,
    /// API token (empty: no Authorization header).
    pub token: String,
    /// Lines per write request.
    pub batch_points: usize,
    /// The most line protocol the spool holds, bytes; beyond it the oldest points go.
    pub spool_max_bytes: u64,
}

/// The spool's default bound: 256 MiB.
pub const DEFAULT_SPOOL_MAX_BYTES: u64 = 256 * 1024 * 1024;

impl std::fmt::Debug for InfluxConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("InfluxConfig")
            .field("url", &self.url)
            .field("org", &self.org)
            .field("bucket", &self.bucket)
            .field("spool_max_bytes", &self.spool_max_bytes)
            .field("token", &"..")
            .finish()
    }
}

impl InfluxConfig {
    pub fn new(url: &str, org: &str, bucket: &str, token: &str) -> Result<Self, String> {
        if !(url.starts_with("http://") || url.starts_with("https://")) {
            return Err(format!(
                "--influx-url must start with http:// or https://, got {url:?}"
            ));
        }
        if org.is_empty() || bucket.is_empty() {
            return Err("--influx-org and --influx-bucket must not be empty".into());
        }
        Ok(InfluxConfig {
            url: url.trim_end_matches('/').to_string(),
            org: org.into(),
            bucket: bucket.into(),
            token: token.into(),
            batch_points: 5_000,
            spool_max_bytes: DEFAULT_SPOOL_MAX_BYTES,
        })
    }
}

/// Escapes a tag value (commas, spaces, equals signs).
fn tag(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in s.chars() {
        if matches!(c, ',' | ' ' | '=' | '\\') {
            out.push('\\');
        }
        out.push(c);
    }
    out
}

/// The `reading` point of a newly stored reading.
pub fn reading_line(
    tenant: &str,
    zone: u32,
    lamp: LampId,
    fcnt: u32,
    r: &StatusReport,
    energy_delta_dwh: u32,
) -> String {
    let ts_ns = r.reading_time_s as u64 * 1_000_000_000 + (fcnt as u64 % 1_000_000_000);
    format!(
        "reading,tenant={},zone={zone},lamp={} level_pct={}i,target_level_pct={}i,power_w={},energy_meter_dwh={}i,energy_dwh={}i,ambient_lux={}i,pedestrians={}i,cyclists={}i,vehicles={}i,faults={}i,fcnt={}i {ts_ns}",
        tag(tenant),
        lamp.0,
        r.level_pct,
        r.target_level_pct,
        r.power_w(),
        r.energy_dwh,
        energy_delta_dwh,
        r.ambient_lux,
        r.presence.pedestrians,
        r.presence.cyclists,
        r.presence.vehicles,
        r.faults.0,
        fcnt,
    )
}

/// The `command` point of a command sent.
#[allow(clippy::too_many_arguments)]
pub fn command_line(
    tenant: &str,
    zone: u32,
    lamp: LampId,
    at: UnixMs,
    level_pct: u8,
    ramp_ms: u32,
    reason: &str,
    fcnt_down: u32,
) -> String {
    let ts_ns = at.0 * 1_000_000 + fcnt_down as u64 % 1_000_000;
    format!(
        "command,tenant={},zone={zone},lamp={},reason={} level_pct={level_pct}i,ramp_ms={ramp_ms}i,fcnt_down={fcnt_down}i {ts_ns}",
        tag(tenant),
        lamp.0,
        tag(reason),
    )
}

/// The `zone` points of the controller's zones now.
pub fn zone_lines(zones: &[ZoneView], now: UnixMs) -> Vec<String> {
    let ts_ns = now.0 * 1_000_000;
    zones
        .iter()
        .map(|z| {
            let mut fields = format!(
                "lamps_online={}i,mean_level_pct={},power_w={},energy_wh={}",
                z.lamps_online, z.mean_level_pct, z.power_w, z.energy_wh
            );
            let d = &z.demand;
            for (name, v) in [
                ("demand_per_h", d.demand_per_h),
                ("forecast_per_h", d.forecast_per_h),
                ("forecast_q10_per_h", d.forecast_q10_per_h),
                ("forecast_q90_per_h", d.forecast_q90_per_h),
            ] {
                if let Some(v) = v.filter(|v| v.is_finite()) {
                    fields.push_str(&format!(",{name}={v}"));
                }
            }
            format!(
                "zone,tenant={},zone={} {fields} {ts_ns}",
                tag(z.tenant.as_str()),
                z.zone.0
            )
        })
        .collect()
}

/// The sink's counters.
#[derive(Debug, Default)]
pub struct SinkMetrics {
    pub points_written: AtomicU64,
    pub requests_ok: AtomicU64,
    pub requests_failed: AtomicU64,
    /// Points waiting in the spool at the last look.
    pub spooled: AtomicU64,
    /// Bytes of line protocol waiting in the spool at the last look.
    pub spooled_bytes: AtomicU64,
    /// The spool's bound, bytes.
    pub spool_max_bytes: AtomicU64,
    /// Points deleted unsent because the spool was full, and their bytes.
    pub points_dropped: AtomicU64,
    pub bytes_dropped: AtomicU64,
}

impl SinkMetrics {
    /// The sink's counters in Prometheus text.
    pub fn prometheus(&self) -> String {
        let mut out = String::new();
        for (name, kind, help, v) in [
            (
                "lamplighter_influx_spool_points",
                "gauge",
                "Points waiting in the InfluxDB spool.",
                &self.spooled,
            ),
            (
                "lamplighter_influx_spool_bytes",
                "gauge",
                "Bytes of line protocol waiting in the InfluxDB spool.",
                &self.spooled_bytes,
            ),
            (
                "lamplighter_influx_spool_max_bytes",
                "gauge",
                "The InfluxDB spool's bound; beyond it the oldest points are dropped.",
                &self.spool_max_bytes,
            ),
            (
                "lamplighter_influx_points_dropped_total",
                "counter",
                "Points dropped unsent from the full InfluxDB spool (they stay in the store).",
                &self.points_dropped,
            ),
            (
                "lamplighter_influx_points_written_total",
                "counter",
                "Points the InfluxDB server accepted.",
                &self.points_written,
            ),
            (
                "lamplighter_influx_requests_failed_total",
                "counter",
                "Write requests to the InfluxDB server that failed.",
                &self.requests_failed,
            ),
        ] {
            out.push_str(&format!(
                "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {}\n",
                v.load(Ordering::Relaxed)
            ));
        }
        out
    }
}

/// Measures the spool and, if it holds more than `max_bytes`, deletes its oldest points
/// until it holds at most 90 % of that. Returns the points deleted.
pub fn bound_spool(
    conn: &Connection,
    max_bytes: u64,
    metrics: &SinkMetrics,
) -> rusqlite::Result<u64> {
    metrics.spool_max_bytes.store(max_bytes, Ordering::Relaxed);
    // octet_length reads the size from the record header, not the line itself.
    let (points, bytes): (i64, i64) = conn.query_row(
        "SELECT COUNT(*), COALESCE(SUM(octet_length(line)), 0) FROM influx_spool",
        [],
        |r| Ok((r.get(0)?, r.get(1)?)),
    )?;
    let (mut points, mut bytes) = (points as u64, bytes as u64);
    let mut dropped = 0;
    if bytes > max_bytes {
        let to_free = bytes - max_bytes / 10 * 9;
        let mut freed = 0u64;
        let mut cut = None;
        {
            let mut stmt =
                conn.prepare("SELECT id, octet_length(line) FROM influx_spool ORDER BY id")?;
            let mut rows = stmt.query([])?;
            while let Some(row) = rows.next()? {
                let (id, len): (i64, i64) = (row.get(0)?, row.get(1)?);
                freed += len as u64;
                dropped += 1;
                cut = Some(id);
                if freed >= to_free {
                    break;
                }
            }
        }
        if let Some(cut) = cut {
            conn.execute("DELETE FROM influx_spool WHERE id <= ?1", params![cut])?;
            metrics.points_dropped.fetch_add(dropped, Ordering::Relaxed);
            metrics.bytes_dropped.fetch_add(freed, Ordering::Relaxed);
            tracing::warn!(
                points = dropped,
                bytes = freed,
                max_bytes,
                "influx sink: spool full; dropped its oldest points (they stay in the store)"
            );
            points -= dropped;
            bytes -= freed.min(bytes);
        }
    }
    metrics.spooled.store(points, Ordering::Relaxed);
    metrics.spooled_bytes.store(bytes, Ordering::Relaxed);
    Ok(dropped)
}

/// The running sink thread.
pub struct Sink {
    stop: Arc<AtomicBool>,
    pub metrics: Arc<SinkMetrics>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Sink {
    /// Starts the sink on the store file `db` (the store must already be open, so the spool
    /// table exists).
    pub fn start(db: &Path, config: InfluxConfig) -> std::io::Result<Sink> {
        let stop = Arc::new(AtomicBool::new(false));
        let metrics = Arc::new(SinkMetrics::default());
        let (s, m, db) = (stop.clone(), metrics.clone(), db.to_path_buf());
        let thread = std::thread::Builder::new()
            .name("influx-sink".into())
            .spawn(move || run(db, config, s, m))?;
        Ok(Sink {
            stop,
            metrics,
            thread: Some(thread),
        })
    }

    /// Stops once the spool is sent, or after [`STOP_DRAIN`] or the first failed request,
    /// whichever comes first (what is still spooled then is sent on the next start).
    pub fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

impl Drop for Sink {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

/// How long a stopping sink keeps sending what is spooled while the server answers: the
/// store writes its last batch at shutdown, and its points should not wait for the next
/// start when the server is there to take them.
pub const STOP_DRAIN: Duration = Duration::from_secs(10);

fn run(db: PathBuf, config: InfluxConfig, stop: Arc<AtomicBool>, metrics: Arc<SinkMetrics>) {
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            tracing::error!(error = %e, "influx sink: cannot start its runtime");
            return;
        }
    };
    let conn = loop {
        match Connection::open(&db).and_then(|c| {
            c.busy_timeout(Duration::from_secs(30))?;
            Ok(c)
        }) {
            Ok(c) => break c,
            Err(e) => {
                tracing::error!(error = %e, "influx sink: cannot open the store; retrying");
                if stop.load(Ordering::Relaxed) {
                    return;
                }
                std::thread::sleep(Duration::from_secs(5));
            }
        }
    };
    let client = match std::panic::catch_unwind(|| {
        influxdb2::Client::new(
            config.url.as_str(),
            config.org.as_str(),
            config.token.as_str(),
        )
    }) {
        Ok(c) => c,
        Err(_) => {
            tracing::error!(url = %config.url, "influx sink: invalid URL; sink off");
            return;
        }
    };
    let sleep = |d: Duration| {
        // Sleep in small steps so a stop is quick.
        let until = Instant::now() + d;
        while Instant::now() < until && !stop.load(Ordering::Relaxed) {
            std::thread::sleep(Duration::from_millis(50).min(until - Instant::now()));
        }
    };
    let mut backoff = Duration::from_millis(500);
    let mut outage_since: Option<Instant> = None;
    let mut bound_checked: Option<Instant> = None;
    // Set once a stop is asked for: the spool is drained until then.
    let mut drain_until: Option<Instant> = None;
    loop {
        if stop.load(Ordering::Relaxed) {
            let until = *drain_until.get_or_insert_with(|| Instant::now() + STOP_DRAIN);
            if Instant::now() >= until {
                break;
            }
        }
        if bound_checked.is_none_or(|t| t.elapsed() >= SPOOL_CHECK_EVERY) {
            bound_checked = Some(Instant::now());
            if let Err(e) = bound_spool(&conn, config.spool_max_bytes, &metrics) {
                tracing::error!(error = %e, "influx sink: cannot measure the spool");
            }
        }
        let batch: rusqlite::Result<Vec<(i64, String)>> = (|| {
            let mut stmt =
                conn.prepare_cached("SELECT id, line FROM influx_spool ORDER BY id LIMIT ?1")?;
            let rows =
                stmt.query_map([config.batch_points as i64], |r| Ok((r.get(0)?, r.get(1)?)))?;
            rows.collect()
        })();
        let batch = match batch {
            Ok(b) => b,
            Err(e) => {
                tracing::error!(error = %e, "influx sink: cannot read the spool; retrying");
                if drain_until.is_some() {
                    break;
                }
                sleep(Duration::from_secs(1));
                continue;
            }
        };
        if batch.is_empty() {
            metrics.spooled.store(0, Ordering::Relaxed);
            metrics.spooled_bytes.store(0, Ordering::Relaxed);
            if drain_until.is_some() {
                break;
            }
            sleep(Duration::from_millis(250));
            continue;
        }
        if let Ok(n) = conn.query_row("SELECT COUNT(*) FROM influx_spool", [], |r| {
            r.get::<_, i64>(0)
        }) {
            metrics.spooled.store(n as u64, Ordering::Relaxed);
        }
        let last_id = batch.last().map_or(0, |b| b.0);
        let n = batch.len();
        let mut body = String::with_capacity(n * 200);
        for (_, line) in &batch {
            body.push_str(line);
            body.push('\n');
        }
        let timeout = drain_until.map_or(REQUEST_TIMEOUT, |until| {
            until.saturating_duration_since(Instant::now())
        });
        let result = rt.block_on(async {
            tokio::time::timeout(
                timeout,
                client.write_line_protocol(&config.org, &config.bucket, body),
            )
            .await
        });
        // A timeout is a failed request like any other.
        let result = match result {
            Ok(written) => written.map_err(|e| e.to_string()),
            Err(_) => Err(format!(
                "request timed out after {} s",
                timeout.as_secs_f64()
            )),
        };
        match result {
            Ok(()) => {
                metrics.requests_ok.fetch_add(1, Ordering::Relaxed);
                metrics
                    .points_written
                    .fetch_add(n as u64, Ordering::Relaxed);
                if let Some(since) = outage_since.take() {
                    tracing::info!(
                        down_s = since.elapsed().as_secs_f64(),
                        "influx sink: server is back"
                    );
                }
                backoff = Duration::from_millis(500);
                // Written: only now do the points leave the spool.
                let mut attempt = 0;
                while let Err(e) =
                    conn.execute("DELETE FROM influx_spool WHERE id <= ?1", params![last_id])
                {
                    attempt += 1;
                    if attempt == 1 {
                        tracing::error!(error = %e, "influx sink: cannot clear the spool; retrying");
                    }
                    std::thread::sleep(Duration::from_millis(200));
                }
            }
            Err(error) => {
                fail(&metrics, &mut outage_since, &error);
                if drain_until.is_some() {
                    break;
                }
                sleep(backoff + jitter(backoff));
                backoff = (backoff * 2).min(Duration::from_secs(30));
            }
        }
    }
}

/// How often the sink measures the spool against its bound.
const SPOOL_CHECK_EVERY: Duration = Duration::from_secs(1);

/// How long one write may take before it counts as failed.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

fn jitter(d: Duration) -> Duration {
    d.mul_f64(rand::thread_rng().gen_range(0.0..0.25))
}

fn fail(metrics: &SinkMetrics, outage_since: &mut Option<Instant>, error: &str) {
    metrics.requests_failed.fetch_add(1, Ordering::Relaxed);
    if outage_since.is_none() {
        *outage_since = Some(Instant::now());
        tracing::warn!(
            error,
            "influx sink: write failed; points stay spooled on disk, retrying with backoff"
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spool(dir: &Path) -> Connection {
        let c = Connection::open(dir.join("spool.sqlite")).unwrap();
        c.execute_batch("CREATE TABLE influx_spool (id INTEGER PRIMARY KEY, line TEXT NOT NULL);")
            .unwrap();
        c
    }

    fn fill(c: &Connection, from: usize, n: usize) {
        for i in from..from + n {
            // 100 bytes a line.
            c.execute(
                "INSERT INTO influx_spool (line) VALUES (?1)",
                params![format!("reading,lamp={i:06} x=1i {:>75}", i)],
            )
            .unwrap();
        }
    }

    #[test]
    fn a_full_spool_drops_its_oldest_points_to_ninety_percent() {
        let dir = tempfile::tempdir().unwrap();
        let c = spool(dir.path());
        fill(&c, 0, 100);
        let m = SinkMetrics::default();
        assert_eq!(bound_spool(&c, 10_000, &m).unwrap(), 0);
        assert_eq!(m.spooled_bytes.load(Ordering::Relaxed), 10_000);
        fill(&c, 100, 1);
        assert_eq!(bound_spool(&c, 10_000, &m).unwrap(), 11);
        let first: i64 = c
            .query_row("SELECT MIN(id) FROM influx_spool", [], |r| r.get(0))
            .unwrap();
        assert_eq!(first, 12, "the oldest went");
        assert_eq!(m.spooled.load(Ordering::Relaxed), 90);
        assert_eq!(m.spooled_bytes.load(Ordering::Relaxed), 9_000);
        assert_eq!(m.points_dropped.load(Ordering::Relaxed), 11);
        let text = m.prometheus();
        assert!(
            text.contains("lamplighter_influx_spool_bytes 9000"),
            "{text}"
        );
        assert!(
            text.contains("lamplighter_influx_points_dropped_total 11"),
            "{text}"
        );
    }

    /// The running sink, its server away (nothing listens on the port), keeps the spool
    /// within its bound while points keep coming.
    #[test]
    fn the_sink_keeps_the_spool_bounded_while_the_server_is_down() {
        let dir = tempfile::tempdir().unwrap();
        let c = spool(dir.path());
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut config =
            InfluxConfig::new(&format!("http://127.0.0.1:{port}"), "o", "b", "").unwrap();
        config.spool_max_bytes = 20_000;
        let sink = Sink::start(&dir.path().join("spool.sqlite"), config).unwrap();
        for round in 0..5 {
            fill(&c, round * 100, 100);
            std::thread::sleep(Duration::from_millis(1_200));
        }
        let deadline = Instant::now() + Duration::from_secs(10);
        let bytes = || -> i64 {
            c.query_row(
                "SELECT COALESCE(SUM(octet_length(line)), 0) FROM influx_spool",
                [],
                |r| r.get(0),
            )
            .unwrap()
        };
        while bytes() > 20_000 {
            assert!(Instant::now() < deadline, "spool still {} bytes", bytes());
            std::thread::sleep(Duration::from_millis(100));
        }
        let m = sink.metrics.clone();
        sink.stop();
        let kept: i64 = c
            .query_row("SELECT COUNT(*) FROM influx_spool", [], |r| r.get(0))
            .unwrap();
        // Every point is either still spooled or counted as dropped; none was written.
        assert_eq!(m.points_written.load(Ordering::Relaxed), 0);
        assert_eq!(kept as u64 + m.points_dropped.load(Ordering::Relaxed), 500);
        assert!(m.points_dropped.load(Ordering::Relaxed) >= 300);
    }
}
