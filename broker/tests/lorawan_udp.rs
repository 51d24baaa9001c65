//! The bridge over real UDP on loopback: simulated gateways speak GWMP to it.

use std::time::Duration;

use lamplighter_broker::bridge::{self, BridgeConfig, DownlinkRequest};
use lamplighter_broker::gateways::GatewayRegistry;
use lamplighter_broker::gwmp::{self, GatewayEui, Packet, Rxpk};
use lamplighter_broker::netserver::{Activation, DeviceClass, DeviceProfile, NsConfig, Priority};
use lamplighter_broker::simgw::{self, AirFrame};
use lamplighter_protocol::lorawan::radio::DataRate;
use lamplighter_protocol::lorawan::{self, AesKey, DataFrame, FCtrl, MType, SessionKeys};
use lamplighter_protocol::time::ScaledClock;
use lamplighter_protocol::{DevAddr, DevEui, TenantId};
use tokio::net::UdpSocket;
use tokio::sync::{broadcast, mpsc};

fn device() -> DeviceProfile {
    DeviceProfile {
        tenant: TenantId::new("town").unwrap(),
        dev_eui: DevEui(0xE1),
        class: DeviceClass::C,
        dev_addr: DevAddr(0x2600_0001),
        app_keys: SessionKeys {
            nwk_s_key: AesKey([1; 16]),
            app_s_key: AesKey([2; 16]),
        },
        activation: Activation::Abp,
        last_fcnt_up: None,
    }
}

fn frame(d: &DeviceProfile, mtype: MType, fcnt: u32) -> Vec<u8> {
    lorawan::encode_data_frame(
        &DataFrame {
            mtype,
            dev_addr: d.dev_addr,
            fctrl: FCtrl::default(),
            fcnt,
            fopts: vec![],
            fport: Some(10),
            frm_payload: vec![7; 22],
        },
        &d.app_keys,
    )
    .unwrap()
}

async fn recv(sock: &UdpSocket) -> Vec<u8> {
    let mut buf = vec![0u8; 65_536];
    let (n, _) = tokio::time::timeout(Duration::from_secs(5), sock.recv_from(&mut buf))
        .await
        .expect("no answer from the bridge")
        .unwrap();
    buf.truncate(n);
    buf
}

async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
    for _ in 0..500 {
        if f() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("timed out waiting for {what}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gwmp_over_loopback_acks_dedups_provisions_at_runtime_and_sends_downlinks() {
    let dir = tempfile::tempdir().unwrap();
    let gw1: GatewayEui = "AA555A0000000001".parse().unwrap();
    let gw2: GatewayEui = "AA555A0000000002".parse().unwrap();
    let registry = GatewayRegistry::open(dir.path()).unwrap();
    registry.add(gw1, 0, None).unwrap();
    let d = device();
    let mut b = bridge::start(
        BridgeConfig {
            udp_listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            ns: NsConfig::default(),
            mqtt: None,
        },
        vec![d.clone()],
        vec![],
        ScaledClock::system(),
    )
    .await
    .unwrap();
    let addr = b.handle.udp_addr;
    let mut uplinks = b.uplinks.take().unwrap();
    let downlinks = b.downlinks.take().unwrap();

    // A raw gateway: PUSH_DATA is acknowledged with the same token and version.
    let raw = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let phy = frame(&d, MType::UnconfirmedDataUp, 1);
    let dr = DataRate::eu868(5).unwrap();
    let rx = Rxpk::for_frame(&phy, 1000, 868_100_000, dr, -80, 3.0);
    let mut push = gwmp::push_data(0xBEEF, gw1, std::slice::from_ref(&rx));
    push[0] = 1; // v1
    raw.send_to(&push, addr).await.unwrap();
    assert_eq!(recv(&raw).await, vec![1, 0xBE, 0xEF, gwmp::PUSH_ACK]);
    // PULL_DATA gets PULL_ACK, and makes this address the gateway's downlink path.
    raw.send_to(&gwmp::pull_data(0x0102, gw1), addr)
        .await
        .unwrap();
    assert_eq!(recv(&raw).await, vec![2, 0x01, 0x02, gwmp::PULL_ACK]);

    // The same frame from a second, not yet provisioned, gateway is dropped and counted.
    let other = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let rx_better = Rxpk::for_frame(&phy, 2000, 868_100_000, dr, -60, 9.0);
    other
        .send_to(
            &gwmp::push_data(1, gw2, std::slice::from_ref(&rx_better)),
            addr,
        )
        .await
        .unwrap();
    let u = tokio::time::timeout(Duration::from_secs(5), uplinks.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((u.fcnt, u.gateways, u.best.gateway), (1, 1, gw1));
    assert_eq!(u.phy, phy);
    eventually("unknown gateway counted", || {
        b.handle.report().unknown_gateway == 1
    })
    .await;

    // Garbage is counted by reason and the loop goes on.
    for junk in [
        &b""[..],
        b"\x02\x00",
        b"\x09\x00\x00\x00",
        b"\x02\x00\x00\x00\x01\x02\x03\x04\x05\x06\x07\x08{bad",
        b"\x02\x00\x00\x01",
    ] {
        raw.send_to(junk, addr).await.unwrap();
    }
    eventually("bad datagrams counted", || {
        b.handle.report().bad_datagrams == 5
    })
    .await;

    // Provisioned while running: gw2 is heard within a second or so, no restart.
    registry.add(gw2, 0, None).unwrap();
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let phy2 = frame(&d, MType::UnconfirmedDataUp, 2);
    for (sock, eui, snr) in [(&raw, gw1, 1.0), (&other, gw2, 8.0)] {
        let rx = Rxpk::for_frame(&phy2, 3000, 868_100_000, dr, -70, snr);
        sock.send_to(&gwmp::push_data(2, eui, &[rx]), addr)
            .await
            .unwrap();
    }
    let u = tokio::time::timeout(Duration::from_secs(5), uplinks.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!((u.fcnt, u.gateways, u.best.gateway), (2, 2, gw2));
    // The first frame heard again within seconds is a late copy, not a second uplink.
    raw.send_to(&gwmp::push_data(3, gw1, std::slice::from_ref(&rx)), addr)
        .await
        .unwrap();

    // A Class C downlink: gw2 is best but never sent PULL_DATA; after it does, it gets the
    // PULL_RESP.
    other.send_to(&gwmp::pull_data(9, gw2), addr).await.unwrap();
    let _pull_ack = recv(&other).await;
    let _push_ack = recv(&other).await;
    let mut dframe = frame(&d, MType::UnconfirmedDataDown, 0);
    dframe = {
        let f = lorawan::decode_data_frame(&dframe, &d.app_keys, 0).unwrap();
        lorawan::encode_data_frame(
            &DataFrame {
                fport: Some(11),
                ..f
            },
            &d.app_keys,
        )
        .unwrap()
    };
    downlinks
        .send(DownlinkRequest::Unicast {
            tenant: d.tenant.clone(),
            dev_eui: d.dev_eui,
            phy: dframe.clone(),
            priority: Priority::Normal,
        })
        .await
        .unwrap();
    let resp = recv(&other).await;
    let Packet::PullResp { token, txpk, .. } = gwmp::parse(&resp).unwrap() else {
        panic!("expected PULL_RESP, got {resp:?}")
    };
    assert_eq!(txpk.phy().unwrap(), dframe);
    assert!(txpk.imme && txpk.ipol);
    // The gateway could not send it: the error is recorded.
    other
        .send_to(&gwmp::tx_ack(token, gw2, Some("TOO_LATE")), addr)
        .await
        .unwrap();
    eventually("TX_ACK error recorded", || {
        b.handle
            .report()
            .network_server
            .tx_ack_errors
            .get("TOO_LATE")
            == Some(&1)
    })
    .await;
    let r = b.handle.report();
    assert_eq!(r.network_server.late_duplicates, 1, "{r:?}");
    assert_eq!(r.network_server.uplinks_accepted, 2);
    assert_eq!(r.pull_resp_sent, 1);
    assert!(r.duty_cycle.contains_key(&gw2.to_string()));
    for t in b.tasks {
        t.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn simulated_gateway_round_trip() {
    let dir = tempfile::tempdir().unwrap();
    let eui: GatewayEui = "AA555A00000000FF".parse().unwrap();
    GatewayRegistry::open(dir.path())
        .unwrap()
        .add(eui, 0, None)
        .unwrap();
    let d = device();
    let mut b = bridge::start(
        BridgeConfig {
            udp_listen: "127.0.0.1:0".parse().unwrap(),
            data_dir: dir.path().to_path_buf(),
            ns: NsConfig::default(),
            mqtt: None,
        },
        vec![d.clone()],
        vec![],
        ScaledClock::system(),
    )
    .await
    .unwrap();
    let (air_tx, air_rx) = mpsc::channel(64);
    let (down_tx, mut down_rx) = broadcast::channel(64);
    let gw = simgw::spawn(
        eui,
        b.handle.udp_addr,
        air_rx,
        down_tx,
        Duration::from_millis(200),
    )
    .await
    .unwrap();
    let dr = DataRate::eu868(5).unwrap();
    for fcnt in 1..=20 {
        air_tx
            .send(AirFrame {
                phy: frame(&d, MType::UnconfirmedDataUp, fcnt),
                freq_hz: 868_300_000,
                datr: dr,
                rssi_dbm: -100,
                snr_db: 2.0,
            })
            .await
            .unwrap();
    }
    let mut uplinks = b.uplinks.take().unwrap();
    for fcnt in 1..=20 {
        let u = tokio::time::timeout(Duration::from_secs(5), uplinks.recv())
            .await
            .unwrap()
            .unwrap();
        assert_eq!(u.fcnt, fcnt);
    }
    eventually("PULL_ACK", || {
        gw.stats
            .pull_acks
            .load(std::sync::atomic::Ordering::Relaxed)
            > 0
    })
    .await;
    let f = lorawan::decode_data_frame(&frame(&d, MType::UnconfirmedDataDown, 0), &d.app_keys, 0)
        .unwrap();
    let dframe = lorawan::encode_data_frame(
        &DataFrame {
            fport: Some(11),
            ..f
        },
        &d.app_keys,
    )
    .unwrap();
    b.downlinks
        .as_ref()
        .unwrap()
        .send(DownlinkRequest::Unicast {
            tenant: d.tenant.clone(),
            dev_eui: d.dev_eui,
            phy: dframe.clone(),
            priority: Priority::Normal,
        })
        .await
        .unwrap();
    let got = tokio::time::timeout(Duration::from_secs(5), down_rx.recv())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got, dframe);
    eventually("TX_ACK", || b.handle.report().tx_ack == 1).await;
    assert!(b.handle.report().network_server.tx_ack_errors.is_empty());
    gw.task.abort();
    for t in b.tasks {
        t.abort();
    }
}
