//! Writing: batches of events in one transaction each, on the store's own writer thread.

use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use lamplighter_protocol::LampId;
use rusqlite::{params, OptionalExtension};

use super::schema::rollup_upsert_sql;
use super::{faults, FaultsAtStart, Retention, Store, StoreError};
use crate::core::Event;
use crate::faults::FaultEvent;

impl Store {
    /// Writes a batch of events in one transaction. Readings already stored (same node and
    /// FCnt) are ignored, so a resent frame is kept once; a reading that is new also goes into
    /// its lamp's 15-minute and daily rollups (and the InfluxDB spool, if on) in the same
    /// transaction, so rollups and spool count every reading exactly once, whatever crashes.
    /// Returns the readings newly stored, `(lamp, fcnt)`: what may now be acknowledged.
    pub fn write_events(&mut self, events: &[Event]) -> Result<Vec<(LampId, u32)>, StoreError> {
        self.write_batch(events, &[], &[])
    }

    /// Queues line-protocol points for the InfluxDB sink (zone demand and forecasts). Does
    /// nothing unless the spool is on.
    pub fn spool_lines(&mut self, lines: &[String]) -> Result<(), StoreError> {
        self.write_batch(&[], lines, &[]).map(|_| ())
    }

    /// Turns the InfluxDB spool on: from now on every new reading, command and zone point is
    /// also queued (in the same transaction) for the sink.
    pub fn set_influx_spool(&mut self, on: bool) {
        self.influx_spool = on;
    }

    fn lamp_zone(&mut self, lamp: u32) -> Result<Option<(String, u32)>, StoreError> {
        if let Some(z) = self.zone_of.get(&lamp) {
            return Ok(Some(z.clone()));
        }
        let z: Option<(String, u32)> = self
            .conn
            .query_row(
                "SELECT tenant, zone FROM nodes WHERE lamp_id = ?1",
                [lamp],
                |r| Ok((r.get(0)?, r.get(1)?)),
            )
            .optional()
            .map_err(self.sql())?;
        if let Some(z) = &z {
            self.zone_of.insert(lamp, z.clone());
        }
        Ok(z)
    }

    pub(super) fn write_batch(
        &mut self,
        events: &[Event],
        lines: &[String],
        faults: &[FaultEvent],
    ) -> Result<Vec<(LampId, u32)>, StoreError> {
        // Zones first, outside the transaction's statements (cached after the first look).
        let mut zones = Vec::with_capacity(events.len());
        for e in events {
            zones.push(match e {
                Event::Reading { lamp, .. } | Event::CommandSent { lamp, .. } => {
                    self.lamp_zone(lamp.0)?
                }
                Event::Rejected { .. } => None,
            });
        }
        let spool = self.influx_spool;
        let path = self.path.clone();
        let sql = move |source| StoreError::Sqlite {
            path: path.clone(),
            source,
        };
        let mut stored = Vec::new();
        let tx = self.conn.transaction().map_err(&sql)?;
        {
            let mut reading = tx
                .prepare_cached(
                    "INSERT OR IGNORE INTO readings VALUES
                     (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16)",
                )
                .map_err(&sql)?;
            let mut rollup_15m = tx
                .prepare_cached(&rollup_upsert_sql("rollup_15m"))
                .map_err(&sql)?;
            let mut rollup_1d = tx
                .prepare_cached(&rollup_upsert_sql("rollup_1d"))
                .map_err(&sql)?;
            let mut spool_line = tx
                .prepare_cached("INSERT INTO influx_spool (line) VALUES (?1)")
                .map_err(&sql)?;
            let mut up_counters = tx
                .prepare_cached(
                    "UPDATE nodes SET last_fcnt_up = ?2, last_energy_dwh = ?3 WHERE lamp_id = ?1",
                )
                .map_err(&sql)?;
            let mut command = tx
                .prepare_cached(
                    "INSERT INTO commands (lamp_id, sent_ms, level_pct, ramp_ms, reason, fcnt_down)
                     VALUES (?1, ?2, ?3, ?4, ?5, ?6)",
                )
                .map_err(&sql)?;
            let mut down_counter = tx
                .prepare_cached("UPDATE nodes SET next_fcnt_down = ?2 WHERE lamp_id = ?1")
                .map_err(&sql)?;
            let mut rejection = tx
                .prepare_cached("INSERT INTO rejections (at_ms, kind, detail) VALUES (?1, ?2, ?3)")
                .map_err(&sql)?;
            for (e, zone) in events.iter().zip(&zones) {
                match e {
                    Event::Reading {
                        lamp,
                        received,
                        fcnt,
                        report: r,
                        energy_delta_dwh,
                    } => {
                        let inserted = reading
                            .execute(params![
                                lamp.0,
                                fcnt,
                                received.0 as i64,
                                r.reading_time_s,
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
                                format!("{:?}", r.mode),
                                format!("{:?}", r.trigger),
                            ])
                            .map_err(&sql)?;
                        if inserted == 0 {
                            continue;
                        }
                        stored.push((*lamp, *fcnt));
                        up_counters
                            .execute(params![lamp.0, fcnt, r.energy_dwh])
                            .map_err(&sql)?;
                        let Some((tenant, zone)) = zone else { continue };
                        let t = r.reading_time_s as i64;
                        for (stmt, bucket) in [
                            (&mut rollup_15m, t / 900 * 900),
                            (&mut rollup_1d, t / 86400 * 86400),
                        ] {
                            stmt.execute(params![
                                lamp.0,
                                bucket,
                                tenant,
                                zone,
                                r.level_pct,
                                r.power_w() as f64,
                                energy_delta_dwh,
                                r.presence.pedestrians,
                                r.presence.cyclists,
                                r.presence.vehicles,
                                (r.faults.0 != 0) as i64,
                            ])
                            .map_err(&sql)?;
                        }
                        if spool {
                            let line = crate::influx::reading_line(
                                tenant,
                                *zone,
                                *lamp,
                                *fcnt,
                                r,
                                *energy_delta_dwh,
                            );
                            spool_line.execute([line]).map_err(&sql)?;
                        }
                    }
                    Event::CommandSent {
                        lamp,
                        at,
                        level_pct,
                        ramp_ms,
                        reason,
                        fcnt_down,
                    } => {
                        command
                            .execute(params![
                                lamp.0,
                                at.0 as i64,
                                level_pct,
                                ramp_ms,
                                reason.as_str(),
                                fcnt_down
                            ])
                            .map_err(&sql)?;
                        down_counter
                            .execute(params![lamp.0, fcnt_down.wrapping_add(1)])
                            .map_err(&sql)?;
                        if let (true, Some((tenant, zone))) = (spool, zone) {
                            let line = crate::influx::command_line(
                                tenant,
                                *zone,
                                *lamp,
                                *at,
                                *level_pct,
                                *ramp_ms,
                                reason.as_str(),
                                *fcnt_down,
                            );
                            spool_line.execute([line]).map_err(&sql)?;
                        }
                    }
                    Event::Rejected { at, kind, detail } => {
                        rejection
                            .execute(params![at.0 as i64, kind, detail])
                            .map_err(&sql)?;
                    }
                }
            }
            if spool {
                for l in lines {
                    spool_line.execute([l]).map_err(&sql)?;
                }
            }
            faults::write_fault_events(&tx, faults).map_err(&sql)?;
        }
        tx.commit().map_err(&sql)?;
        Ok(stored)
    }
}

/// What the writer thread is asked to write.
enum WriteMsg {
    Events(Vec<Event>),
    Lines(Vec<String>),
    Faults(Vec<FaultEvent>),
}

/// Readings newly and durably stored, `(lamp, fcnt)`, one message per committed batch.
pub type Committed = Vec<(LampId, u32)>;

/// The sending side of the store's writer thread. Events sent here are written in batches
/// of whatever has queued up, one transaction each; a failed batch is logged and retried,
/// never dropped silently. After each commit the readings it stored are announced to
/// whoever subscribed ([`StoreWriter::subscribe_commits`]): the controller acknowledges
/// them to their nodes only then. Between batches the thread applies the retention policy
/// (at most once an hour, in small chunks).
#[derive(Clone)]
pub struct StoreWriter {
    tx: mpsc::Sender<WriteMsg>,
    commits: Arc<Mutex<Option<tokio::sync::mpsc::UnboundedSender<Committed>>>>,
    influx: bool,
    /// The faults the store held open when the writer started, and the next fault id.
    faults_at_start: Arc<FaultsAtStart>,
}

/// The writer thread itself: once every [`StoreWriter`] is dropped it writes what is queued
/// and ends; [`StoreThread::join`] waits for that.
pub struct StoreThread(
    Option<std::thread::JoinHandle<()>>,
    Option<crate::influx::Sink>,
);

/// How the store runs: retention, and an optional InfluxDB sink. `[store]` in the config
/// file (the sink only from flags: its token comes from the environment).
#[derive(Debug, Clone, Default, PartialEq, serde::Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreOptions {
    pub retention: Retention,
    #[serde(skip)]
    pub influx: Option<crate::influx::InfluxConfig>,
}

impl StoreWriter {
    /// Starts the writer with the retention policy and, if configured, the InfluxDB sink
    /// (which runs until [`StoreThread::join`]).
    pub fn start_with(mut store: Store, options: &StoreOptions) -> (StoreWriter, StoreThread) {
        store.set_retention(options.retention);
        let sink = options.influx.clone().and_then(|config| {
            store.set_influx_spool(true);
            match crate::influx::Sink::start(store.path(), config) {
                Ok(s) => Some(s),
                Err(e) => {
                    tracing::error!(error = %e, "cannot start the InfluxDB sink thread; points stay spooled");
                    None
                }
            }
        });
        let (writer, mut thread) = StoreWriter::start(store);
        thread.1 = sink;
        (writer, thread)
    }

    pub fn start(mut store: Store) -> (StoreWriter, StoreThread) {
        let influx = store.influx_spool;
        let faults_at_start = Arc::new(store.faults_at_start());
        let (tx, rx) = mpsc::channel::<WriteMsg>();
        let commits: Arc<Mutex<Option<tokio::sync::mpsc::UnboundedSender<Committed>>>> =
            Arc::default();
        let listeners = commits.clone();
        let thread = std::thread::Builder::new()
            .name("store-writer".into())
            .spawn(move || {
                while let Ok(first) = rx.recv() {
                    let (mut events, mut lines, mut faults) = (Vec::new(), Vec::new(), Vec::new());
                    let mut take = |m: WriteMsg| match m {
                        WriteMsg::Events(e) => events.extend(e),
                        WriteMsg::Lines(l) => lines.extend(l),
                        WriteMsg::Faults(f) => faults.extend(f),
                    };
                    take(first);
                    while let Ok(more) = rx.try_recv() {
                        take(more);
                    }
                    let mut attempt = 0u32;
                    let stored = loop {
                        match store.write_batch(&events, &lines, &faults) {
                            Ok(stored) => break stored,
                            Err(e) => {
                                attempt += 1;
                                if attempt == 1 {
                                    tracing::error!(error = %e, events = events.len(), "store write failed; retrying");
                                }
                                std::thread::sleep(Duration::from_millis(
                                    200 * attempt.min(25) as u64,
                                ));
                            }
                        }
                    };
                    if !stored.is_empty() {
                        let mut l = listeners.lock().unwrap_or_else(|p| p.into_inner());
                        if l.as_ref().is_some_and(|s| s.send(stored).is_err()) {
                            *l = None;
                        }
                    }
                    if let Err(e) = store.maybe_apply_retention() {
                        tracing::error!(error = %e, "retention failed; will retry");
                    }
                }
            })
            .ok();
        if thread.is_none() {
            tracing::error!("cannot start the store writer thread");
        }
        (
            StoreWriter {
                tx,
                commits,
                influx,
                faults_at_start,
            },
            StoreThread(thread, None),
        )
    }

    pub fn write(&self, events: Vec<Event>) {
        if !events.is_empty() && self.tx.send(WriteMsg::Events(events)).is_err() {
            tracing::error!("store writer has stopped; events not written");
        }
    }

    /// Queues fault events (raised, acknowledged, cleared), written in order with the
    /// events around them.
    pub fn write_faults(&self, faults: Vec<FaultEvent>) {
        if !faults.is_empty() && self.tx.send(WriteMsg::Faults(faults)).is_err() {
            tracing::error!("store writer has stopped; fault events not written");
        }
    }

    /// The faults the store held open when this writer started and the next free fault
    /// id: what the fault tracker is restored from.
    pub fn faults_at_start(&self) -> &FaultsAtStart {
        &self.faults_at_start
    }

    /// Queues InfluxDB points (only if the spool is on).
    pub fn spool_lines(&self, lines: Vec<String>) {
        if self.influx && !lines.is_empty() && self.tx.send(WriteMsg::Lines(lines)).is_err() {
            tracing::error!("store writer has stopped; points not written");
        }
    }

    /// Whether an InfluxDB sink is on.
    pub fn influx_enabled(&self) -> bool {
        self.influx
    }

    /// From now on, the readings each commit stored are sent here (replacing any earlier
    /// subscriber).
    pub fn subscribe_commits(&self) -> tokio::sync::mpsc::UnboundedReceiver<Committed> {
        let (tx, rx) = tokio::sync::mpsc::unbounded_channel();
        *self.commits.lock().unwrap_or_else(|p| p.into_inner()) = Some(tx);
        rx
    }
}

impl StoreThread {
    /// Waits until everything queued is written. Call after dropping every writer.
    pub fn join(mut self) {
        if let Some(t) = self.0.take() {
            let _ = t.join();
        }
        if let Some(sink) = self.1.take() {
            sink.stop();
        }
    }

    /// The InfluxDB sink's counters, if it runs.
    pub fn influx_metrics(&self) -> Option<std::sync::Arc<crate::influx::SinkMetrics>> {
        self.1.as_ref().map(|s| s.metrics.clone())
    }
}
