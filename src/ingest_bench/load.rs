//! The load generator: one OS thread per MQTT connection (named `bench-load-N`, so the CPU
//! it takes shows apart from the system's threads), each with its own single-threaded
//! runtime, publishing its pre-sealed frames over real TCP at its share of the rate.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use rumqttc::{AsyncClient, Event, MqttOptions, Outgoing, Packet, QoS};

use super::frames::ConnectionFrames;

/// How long a connection keeps trying to be let in (the system lets nodes in once the
/// controller listens).
const CONNECT_TIMEOUT: Duration = Duration::from_secs(30);
/// How long, after its last publish, a connection waits for its queue to reach the socket
/// and (QoS 1) for the broker's PubAcks.
pub const DRAIN_TIMEOUT: Duration = Duration::from_secs(10);

/// What one run of the load did, summed over its connections.
#[derive(Debug, Default, Clone, Copy)]
pub struct LoadReport {
    /// Publishes handed to the MQTT client.
    pub queued: u64,
    /// Publishes the client wrote to its connection (rumqttc's `Outgoing::Publish`).
    pub sent: u64,
    /// PubAcks from the broker (QoS 1 only).
    pub acks: u64,
    /// Connection errors seen while the load ran (each may have lost what was in flight).
    pub connection_errors: u64,
    /// From the start signal to the last publish handed to a client.
    pub window_s: f64,
    /// Whether a connection ran out of sealed frames before the duration was up.
    pub budget_exhausted: bool,
    /// CPU seconds the load's threads took (each reads its own just before it ends).
    pub cpu_s: f64,
}

#[derive(Default)]
struct Counters {
    queued: AtomicU64,
    sent: AtomicU64,
    acks: AtomicU64,
    errors: AtomicU64,
    exhausted: AtomicBool,
    /// Nanoseconds from the start to this connection's last publish.
    last_publish_ns: AtomicU64,
    /// The thread's CPU time when it ended, in microseconds.
    cpu_us: AtomicU64,
}

pub struct LoadOptions {
    pub broker: SocketAddr,
    pub qos: QoS,
    /// Frames per second over all connections; `None`: as fast as each client takes them.
    pub rate: Option<f64>,
    pub duration: Duration,
    /// A prefix for the connections' client ids (unique per run).
    pub client_prefix: String,
}

/// Runs the load: connects every connection, starts them together, publishes for
/// `duration` (or until the frames run out), then waits for each to drain. `started` is
/// called once every connection is in, just before the clock starts.
pub fn run(
    frames: Arc<Vec<ConnectionFrames>>,
    options: &LoadOptions,
    started: impl FnOnce(),
) -> Result<LoadReport> {
    let connections = frames.len();
    let counters: Arc<Vec<Counters>> =
        Arc::new((0..connections).map(|_| Counters::default()).collect());
    // Every connection, and this thread, meet here once connected (or failed).
    let ready = Arc::new(Barrier::new(connections + 1));
    let go = Arc::new(Barrier::new(connections + 1));
    let failed = Arc::new(AtomicBool::new(false));
    let rate_each = options.rate.map(|r| r / connections as f64);
    let mut threads = Vec::with_capacity(connections);
    for c in 0..connections {
        let (frames, counters) = (frames.clone(), counters.clone());
        let (ready, go, failed) = (ready.clone(), go.clone(), failed.clone());
        let job = Job {
            c,
            broker: options.broker,
            qos: options.qos,
            rate: rate_each,
            duration: options.duration,
            client_id: format!("{}-{c}", options.client_prefix),
        };
        threads.push(
            std::thread::Builder::new()
                .name(format!("bench-load-{c}"))
                .spawn(move || -> Result<()> {
                    let rt = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build()
                        .context("cannot start a load runtime")?;
                    let result =
                        rt.block_on(job.run(&frames[c], &counters[c], &ready, &go, &failed));
                    let cpu = super::procstat::this_thread_cpu().unwrap_or(0.0);
                    counters[c]
                        .cpu_us
                        .store((cpu * 1e6) as u64, Ordering::Relaxed);
                    result
                })
                .context("cannot start a load thread")?,
        );
    }
    ready.wait();
    if !failed.load(Ordering::SeqCst) {
        started();
    }
    go.wait();
    let mut first_error = None;
    for t in threads {
        let result = t
            .join()
            .map_err(|_| anyhow::anyhow!("a load thread panicked"))
            .and_then(|r| r);
        if let Err(e) = result {
            first_error.get_or_insert(e);
        }
    }
    if let Some(e) = first_error {
        return Err(e);
    }
    let sum = |f: fn(&Counters) -> u64| counters.iter().map(f).sum::<u64>();
    Ok(LoadReport {
        queued: sum(|c| c.queued.load(Ordering::Relaxed)),
        sent: sum(|c| c.sent.load(Ordering::Relaxed)),
        acks: sum(|c| c.acks.load(Ordering::Relaxed)),
        connection_errors: sum(|c| c.errors.load(Ordering::Relaxed)),
        window_s: counters
            .iter()
            .map(|c| c.last_publish_ns.load(Ordering::Relaxed))
            .max()
            .unwrap_or(0) as f64
            / 1e9,
        budget_exhausted: counters.iter().any(|c| c.exhausted.load(Ordering::Relaxed)),
        cpu_s: sum(|c| c.cpu_us.load(Ordering::Relaxed)) as f64 / 1e6,
    })
}

struct Job {
    c: usize,
    broker: SocketAddr,
    qos: QoS,
    rate: Option<f64>,
    duration: Duration,
    client_id: String,
}

impl Job {
    async fn run(
        self,
        frames: &ConnectionFrames,
        counters: &Counters,
        ready: &Barrier,
        go: &Barrier,
        failed: &AtomicBool,
    ) -> Result<()> {
        let mut opts = MqttOptions::new(
            &self.client_id,
            self.broker.ip().to_string(),
            self.broker.port(),
        );
        opts.set_credentials(&frames.username, &frames.password);
        opts.set_keep_alive(Duration::from_secs(30));
        opts.set_max_packet_size(64 * 1024, 64 * 1024);
        let (client, mut eventloop) = AsyncClient::new(opts, 1000);

        // Connect before the clock starts; a refusal is retried (the system lets nodes in
        // only once its controller listens).
        let since = Instant::now();
        let connected = loop {
            match eventloop.poll().await {
                Ok(Event::Incoming(Packet::ConnAck(_))) => break Ok(()),
                Ok(_) => {}
                Err(e) if since.elapsed() > CONNECT_TIMEOUT => {
                    break Err(anyhow::anyhow!(
                        "load connection {} could not connect to {}: {e}",
                        self.c,
                        self.broker
                    ))
                }
                Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
            }
        };
        if connected.is_err() {
            failed.store(true, Ordering::SeqCst);
        }
        // Blocking waits: nothing else runs on this thread before the start.
        ready.wait();
        go.wait();
        connected?;
        if failed.load(Ordering::SeqCst) {
            return Ok(());
        }

        let start = Instant::now();
        let publishing = AtomicBool::new(true);
        let poll = async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Outgoing(Outgoing::Publish(_))) => {
                        counters.sent.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Incoming(Packet::PubAck(_))) => {
                        counters.acks.fetch_add(1, Ordering::Relaxed);
                    }
                    Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
                    Ok(_) => {}
                    Err(_) => {
                        counters.errors.fetch_add(1, Ordering::Relaxed);
                        if !publishing.load(Ordering::Relaxed) {
                            return;
                        }
                        tokio::time::sleep(Duration::from_millis(100)).await;
                    }
                }
            }
        };
        let publish = async {
            let total = frames.len();
            let mut k = 0;
            'run: while start.elapsed() < self.duration {
                let due = match self.rate {
                    Some(r) => ((start.elapsed().as_secs_f64() * r) as usize).min(total),
                    None => total,
                };
                while k < due {
                    if start.elapsed() >= self.duration {
                        break 'run;
                    }
                    let (topic, bytes) = frames.frame(k);
                    if client
                        .publish(topic, self.qos, false, bytes.to_vec())
                        .await
                        .is_err()
                    {
                        break 'run;
                    }
                    k += 1;
                    counters.queued.fetch_add(1, Ordering::Relaxed);
                    counters
                        .last_publish_ns
                        .store(start.elapsed().as_nanos() as u64, Ordering::Relaxed);
                }
                if k >= total {
                    counters.exhausted.store(true, Ordering::Relaxed);
                    break;
                }
                if self.rate.is_some() {
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
            }
            // Drain: everything queued on the wire and, at QoS 1, acknowledged.
            let drained = Instant::now();
            let want_acks = self.qos == QoS::AtLeastOnce;
            while drained.elapsed() < DRAIN_TIMEOUT {
                let queued = counters.queued.load(Ordering::Relaxed);
                let sent = counters.sent.load(Ordering::Relaxed);
                let acks = counters.acks.load(Ordering::Relaxed);
                if sent >= queued && (!want_acks || acks >= sent) {
                    break;
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            publishing.store(false, Ordering::Relaxed);
            let _ = client.disconnect().await;
        };
        // The poller ends on the Disconnect it writes (or on an error once publishing is
        // over); give it a moment at most.
        tokio::join!(publish, async {
            let _ =
                tokio::time::timeout(self.duration + DRAIN_TIMEOUT + Duration::from_secs(5), poll)
                    .await;
        });
        Ok(())
    }
}
