//! Faults in a real SQLite file: raised, acknowledged and cleared rows survive a reopen,
//! through the writer thread as the running controller writes them.

use lamplighter_protocol::{DevEui, LampId, TenantId, UnixMs};

use super::*;
use crate::faults::{Action, Fault, FaultEvent, FaultId, FaultKind, FaultState};

fn fault(id: u64, tenant: &str, lamp: u32, kind: FaultKind, raised_s: u64) -> Fault {
    Fault {
        id: FaultId(id),
        tenant: TenantId::new(tenant).unwrap(),
        lamp: LampId(lamp),
        dev_eui: DevEui(0x70B3_D5E0_0000_0000 + lamp as u64),
        kind,
        raised_at: UnixMs(raised_s * 1000),
        detail: format!("{kind} seen, \"quoted\", with a comma"),
        acknowledged: None,
        cleared: None,
    }
}

fn action(by: Option<&str>, at_s: u64, note: &str) -> Action {
    Action {
        by: by.map(str::to_string),
        at: UnixMs(at_s * 1000),
        note: note.to_string(),
    }
}

#[test]
fn faults_survive_a_reopen_with_acknowledgements_and_clears() {
    let dir = tempfile::tempdir().unwrap();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.next_fault_id().unwrap(), 1);
    // Through the writer thread, as the service writes them.
    let (writer, thread) = StoreWriter::start(store);
    assert_eq!(
        writer.faults_at_start(),
        &FaultsAtStart {
            open: vec![],
            next_id: 1
        }
    );
    writer.write_faults(vec![
        FaultEvent::Raised(fault(1, "bath", 10, FaultKind::DriverFault, 100)),
        FaultEvent::Raised(fault(2, "bath", 11, FaultKind::CommsLoss, 200)),
        FaultEvent::Raised(fault(3, "wells", 20, FaultKind::LampFailure, 300)),
    ]);
    writer.write_faults(vec![
        FaultEvent::Acknowledged {
            id: FaultId(1),
            action: action(Some("alice"), 400, "crew booked"),
        },
        FaultEvent::Cleared {
            id: FaultId(2),
            action: action(None, 500, "condition absent for 900 s"),
        },
        // A second acknowledgement does not overwrite the first.
        FaultEvent::Acknowledged {
            id: FaultId(1),
            action: action(Some("mallory"), 450, ""),
        },
    ]);
    drop(writer);
    thread.join();

    let mut store = Store::open(dir.path()).unwrap();
    let bath = TenantId::new("bath").unwrap();
    let open = store.open_faults(Some(&bath)).unwrap();
    assert_eq!(open.len(), 1);
    let f = &open[0];
    assert_eq!(
        (f.id, f.kind, f.lamp),
        (FaultId(1), FaultKind::DriverFault, LampId(10))
    );
    assert_eq!(f.state(), FaultState::Acknowledged);
    assert_eq!(
        f.acknowledged,
        Some(action(Some("alice"), 400, "crew booked"))
    );
    assert_eq!(f.detail, "driver-fault seen, \"quoted\", with a comma");
    assert_eq!(f.dev_eui, DevEui(0x70B3_D5E0_0000_000A));
    assert_eq!(store.open_faults(None).unwrap().len(), 2);

    let recent = store.recent_faults(Some(&bath), UnixMs(0), 10).unwrap();
    assert_eq!(
        recent
            .iter()
            .map(|f| (f.id.0, f.state()))
            .collect::<Vec<_>>(),
        vec![(2, FaultState::Cleared), (1, FaultState::Acknowledged)]
    );
    assert_eq!(
        recent[0].cleared,
        Some(action(None, 500, "condition absent for 900 s"))
    );
    // Cleared before `since` and raised before it: not recent; still-open ones always are.
    let later = store
        .recent_faults(Some(&bath), UnixMs(600_000), 10)
        .unwrap();
    assert_eq!(later.iter().map(|f| f.id.0).collect::<Vec<_>>(), vec![1]);
    assert_eq!(store.next_fault_id().unwrap(), 4);

    // A manual clear, written directly.
    store
        .write_faults(&[FaultEvent::Cleared {
            id: FaultId(1),
            action: action(Some("alice"), 700, "driver replaced"),
        }])
        .unwrap();
    let f1 = store.fault(FaultId(1)).unwrap().unwrap();
    assert_eq!(f1.state(), FaultState::Cleared);
    assert_eq!(
        f1.cleared,
        Some(action(Some("alice"), 700, "driver replaced"))
    );
    assert_eq!(f1.acknowledged.unwrap().by.as_deref(), Some("alice"));
    assert!(store.open_faults(Some(&bath)).unwrap().is_empty());

    // What the next start restores: wells' open fault and the next id.
    drop(store);
    let store = Store::open(dir.path()).unwrap();
    let (writer, thread) = StoreWriter::start(store);
    let at_start = writer.faults_at_start().clone();
    assert_eq!(at_start.next_id, 4);
    assert_eq!(
        at_start.open.iter().map(|f| f.id.0).collect::<Vec<_>>(),
        vec![3]
    );
    // A raised fault with an id already stored is skipped, not retried for ever.
    writer.write_faults(vec![FaultEvent::Raised(fault(
        3,
        "wells",
        99,
        FaultKind::Cycling,
        900,
    ))]);
    drop(writer);
    thread.join();
    let store = Store::open(dir.path()).unwrap();
    assert_eq!(store.fault(FaultId(3)).unwrap().unwrap().lamp, LampId(20));
    assert_eq!(store.count("faults").unwrap(), 3);

    // The audit export says who did what to which fault, when and why.
    let mut csv = Vec::new();
    store
        .export_csv(ExportWhat::Audit, 0, 1000, &mut csv)
        .unwrap();
    let csv = String::from_utf8(csv).unwrap();
    let lines: Vec<&str> = csv.lines().collect();
    assert!(lines[0].ends_with(",detail,user"), "{csv}");
    assert_eq!(lines.len(), 1 + 3 + 1 + 2, "{csv}");
    assert!(
        lines.contains(
            &"1970-01-01T00:06:40.000Z,fault-acknowledged,bath,,10,70B3D5E00000000A,,,driver-fault,,fault 1: crew booked,alice"
        ),
        "{csv}"
    );
    assert!(
        lines.contains(
            &"1970-01-01T00:11:40.000Z,fault-cleared,bath,,10,70B3D5E00000000A,,,driver-fault,,fault 1: driver replaced,alice"
        ),
        "{csv}"
    );
    assert!(csv.contains(",fault-cleared,bath,,11,"), "{csv}");
}
