//! Faults through the running service and a real SQLite file: readings and ticks raise
//! them, the handle acknowledges and clears them (tenant by tenant), the store keeps them,
//! and a restarted controller lists what is still open, acknowledgement included.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::{Duration, Instant};

use lamplighter_controller::core::{ControllerConfig, ControllerCore};
use lamplighter_controller::faults::{FaultConfig, FaultError, FaultKind, FaultState};
use lamplighter_controller::service::{self, ControllerHandle, ServiceConfig};
use lamplighter_controller::store::{NewNode, Store, StoreThread, StoreWriter};
use lamplighter_protocol::lorawan::{self, DataFrame, FCtrl, MType};
use lamplighter_protocol::payload::*;
use lamplighter_protocol::time::ScaledClock;
use lamplighter_protocol::{topics, LampId, TenantId, UnixMs, ZoneId};
use tokio::task::JoinHandle;

const START: UnixMs = UnixMs(1_734_739_200_000); // 2024-12-21T00:00:00Z: night in Bath

fn config() -> ControllerConfig {
    ControllerConfig {
        report_interval_s: 60,
        faults: FaultConfig {
            comms_loss_after_periods: 2,
            raise_after_s: 60,
            ..FaultConfig::default()
        },
        ..ControllerConfig::default()
    }
}

fn unused_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn start(dir: &std::path::Path) -> (ControllerHandle, Vec<JoinHandle<()>>, StoreThread) {
    let store = Store::open(dir).unwrap();
    let nodes = store.nodes().unwrap().into_iter().map(|s| s.node).collect();
    let core = ControllerCore::new(config(), nodes).unwrap();
    let (writer, thread) = StoreWriter::start(store);
    // No broker: the service retries its MQTT link in the background, which is all this
    // test needs of it; uplinks go to the core through the handle.
    let (handle, tasks) = service::start(
        core,
        writer,
        ScaledClock::starting_at(START, 100.0),
        ServiceConfig {
            mqtt_host: "127.0.0.1".into(),
            mqtt_port: unused_port(),
            mqtt_client_id: "test".into(),
            mqtt_username: "test".into(),
            mqtt_password: "test".into(),
            tick_interval: Duration::from_millis(20),
            uplinks_subscribed: Arc::new(AtomicBool::new(false)),
        },
    );
    (handle, tasks, thread)
}

/// Stops as `System::shutdown` does: the store's thread must finish while handles (the
/// dashboard's, this one) are still held.
async fn stop(handle: ControllerHandle, tasks: Vec<JoinHandle<()>>, thread: StoreThread) {
    for t in &tasks {
        t.abort();
    }
    for t in tasks {
        let _ = t.await;
    }
    tokio::time::timeout(
        Duration::from_secs(30),
        tokio::task::spawn_blocking(move || thread.join()),
    )
    .await
    .expect("the store's writer thread ends while a handle is held")
    .unwrap();
    drop(handle);
}

async fn wait_for(what: &str, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

fn uplink(handle: &ControllerHandle, lamp: LampId, fcnt: u32, faults: FaultFlags) {
    handle.with_core(|core, now| {
        let node = core.node(lamp).unwrap().clone();
        let report = StatusReport {
            level_pct: 100,
            target_level_pct: 100,
            power_dw: 488,
            energy_dwh: fcnt * 10,
            ambient_lux: 0,
            presence: Presence::default(),
            faults,
            mode: NodeMode::Commanded,
            trigger: ReportTrigger::Periodic,
            reading_time_s: now.as_secs() as u32,
            applied_fcnt_down: 0,
        };
        let frame = DataFrame {
            mtype: MType::UnconfirmedDataUp,
            dev_addr: node.dev_addr,
            fctrl: FCtrl::default(),
            fcnt,
            fopts: Vec::new(),
            fport: Some(FPORT_STATUS),
            frm_payload: report.encode(),
        };
        let phy = lorawan::encode_data_frame(&frame, &node.keys).unwrap();
        core.handle_uplink(now, &topics::uplink(&node.tenant, node.dev_eui), &phy)
            .unwrap();
    });
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn faults_are_raised_acknowledged_stored_and_restored() {
    let dir = tempfile::tempdir().unwrap();
    let bath = TenantId::new("bath").unwrap();
    let wells = TenantId::new("wells").unwrap();
    {
        let mut store = Store::open(dir.path()).unwrap();
        let node = |i: u32, tenant: &TenantId| NewNode {
            lamp: LampId(i),
            tenant: tenant.clone(),
            zone: ZoneId(0),
            lat: 51.38 + i as f64 * 0.0003,
            lon: -2.36,
            rated_power_w: 40.0,
        };
        store
            .provision(&[node(0, &bath), node(1, &bath), node(2, &wells)])
            .unwrap();
    }

    let (handle, tasks, thread) = start(dir.path());
    // Lamp 0 reports a driver fault three times over 80 s (clock time, 100 times real
    // time); lamps 1 and 2 never report.
    for fcnt in 0..3 {
        if fcnt > 0 {
            tokio::time::sleep(Duration::from_millis(400)).await;
        }
        uplink(&handle, LampId(0), fcnt, FaultFlags::DRIVER);
    }
    wait_for("driver fault and comms loss", || {
        let f = handle.faults(Some(&bath));
        f.iter()
            .any(|f| f.kind == FaultKind::DriverFault && f.lamp == LampId(0))
            && f.iter()
                .any(|f| f.kind == FaultKind::CommsLoss && f.lamp == LampId(1))
    })
    .await;
    assert!(handle.faults(Some(&bath)).iter().all(|f| f.tenant == bath));
    let faults = handle.faults(Some(&bath));
    let driver = faults
        .iter()
        .find(|f| f.kind == FaultKind::DriverFault)
        .unwrap()
        .clone();
    let lost = faults
        .iter()
        .find(|f| f.kind == FaultKind::CommsLoss && f.lamp == LampId(1))
        .unwrap()
        .clone();

    // Another tenant's user can not touch bath's faults.
    let now = handle.now();
    assert_eq!(
        handle.acknowledge_fault(Some(&wells), driver.id, "eve", "", now),
        Err(FaultError::NotOpen(driver.id))
    );
    let acked = handle
        .acknowledge_fault(Some(&bath), driver.id, "alice", "crew booked", now)
        .unwrap();
    assert_eq!(acked.state(), FaultState::Acknowledged);
    let cleared = handle
        .clear_fault(Some(&bath), lost.id, "bob", "column knocked down", now)
        .unwrap();
    assert_eq!(cleared.state(), FaultState::Cleared);
    let counts = handle.fault_counts(Some(&bath));
    assert_eq!(counts.by_kind[&FaultKind::DriverFault].acknowledged, 1);
    assert!(handle
        .prometheus()
        .contains("lamplighter_faults{kind=\"driver-fault\",state=\"acknowledged\"} 1"));
    stop(handle, tasks, thread).await;

    // On disk: the acknowledgement and the manual clear, with who, when and why.
    let store = Store::open(dir.path()).unwrap();
    let d = store.fault(driver.id).unwrap().unwrap();
    let ack = d.acknowledged.unwrap();
    assert_eq!(
        (ack.by.as_deref(), ack.note.as_str(), ack.at),
        (Some("alice"), "crew booked", now)
    );
    assert_eq!(d.cleared, None);
    let l = store.fault(lost.id).unwrap().unwrap();
    let clear = l.cleared.unwrap();
    assert_eq!(
        (clear.by.as_deref(), clear.note.as_str()),
        (Some("bob"), "column knocked down")
    );
    assert!(store
        .open_faults(Some(&wells))
        .unwrap()
        .iter()
        .any(|f| f.kind == FaultKind::CommsLoss && f.lamp == LampId(2)));
    drop(store);
    let max_before = store_max_id(dir.path());

    // A restarted controller lists the open ones again, acknowledgement included, and
    // numbers new faults after the stored ones.
    let (handle, tasks, thread) = start(dir.path());
    let restored = handle.faults(Some(&bath));
    let d = restored.iter().find(|f| f.id == driver.id).unwrap();
    assert_eq!(d.state(), FaultState::Acknowledged);
    assert_eq!(
        d.acknowledged.as_ref().unwrap().by.as_deref(),
        Some("alice")
    );
    assert!(restored.iter().all(|f| f.id != lost.id));
    wait_for("comms loss raised again for lamp 1", || {
        handle
            .faults(Some(&bath))
            .iter()
            .any(|f| f.kind == FaultKind::CommsLoss && f.lamp == LampId(1))
    })
    .await;
    let again = handle.faults(Some(&bath));
    let again = again
        .iter()
        .find(|f| f.kind == FaultKind::CommsLoss && f.lamp == LampId(1))
        .unwrap();
    assert!(again.id.0 > max_before, "{:?} after {max_before}", again.id);
    stop(handle, tasks, thread).await;
}

fn store_max_id(dir: &std::path::Path) -> u64 {
    Store::open_read_only(dir).unwrap().next_fault_id().unwrap() - 1
}
