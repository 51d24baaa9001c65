//! `lamplighter lorawan bench`: one run of uplinks through the whole LoRaWAN path on
//! loopback. Simulated gateways send real GWMP datagrams to the bridge; the network server
//! de-duplicates and checks them and publishes on the embedded broker; a subscriber on the
//! controller's uplink subscription checks every frame as the controller does (topic,
//! DevAddr, FCnt rebuild, MIC) and counts it. Frames are paced so no more than a few
//! thousand are in flight (UDP would otherwise drop them in the kernel): the figure is the
//! sustainable rate.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lamplighter_broker::bridge::{self, BridgeConfig, MqttTarget};
use lamplighter_broker::gateways::GatewayRegistry;
use lamplighter_broker::gwmp::GatewayEui;
use lamplighter_broker::netserver::{Activation, DeviceClass, DeviceProfile, NsConfig};
use lamplighter_broker::simgw::{self, AirFrame};
use lamplighter_protocol::lorawan::radio::DataRate;
use lamplighter_protocol::lorawan::{self, AesKey, DataFrame, FCtrl, MType, SessionKeys};
use lamplighter_protocol::time::ScaledClock;
use lamplighter_protocol::{topics, DevAddr, DevEui, TenantId};
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use serde_json::{json, Value};
use tokio::sync::{broadcast, mpsc};

const IN_FLIGHT: u64 = 400;

pub async fn run_once(frames: u32, devices: u32, gateways: u32) -> Result<(f64, Value)> {
    let dir = std::env::temp_dir().join(format!(
        "lamplighter-lorawan-bench-{}-{}",
        std::process::id(),
        Instant::now().elapsed().as_nanos() ^ u128::from(rand::random::<u64>())
    ));
    let tenant = TenantId::new("bench")?;
    let profiles: Vec<DeviceProfile> = (0..devices)
        .map(|i| DeviceProfile {
            tenant: tenant.clone(),
            dev_eui: DevEui(0x00B0_0000_0000_0000 + u64::from(i)),
            class: DeviceClass::C,
            dev_addr: DevAddr(0x2600_0000 + i),
            app_keys: SessionKeys {
                nwk_s_key: AesKey((i as u128 * 7919 + 1).to_le_bytes()),
                app_s_key: AesKey((i as u128 * 104_729 + 3).to_le_bytes()),
            },
            activation: Activation::Abp,
            last_fcnt_up: None,
        })
        .collect();

    let password: String = format!("{:032x}", rand::random::<u128>());
    let expected = password.clone();
    let auth: lamplighter_broker::Authenticator =
        Arc::new(move |_c, user, pass| user == "bench" && pass == expected);
    let broker =
        lamplighter_broker::start(&lamplighter_broker::BrokerConfig::loopback(0, 64), auth)?;
    let registry = GatewayRegistry::open(&dir)?;
    let euis: Vec<GatewayEui> = (0..gateways)
        .map(|g| GatewayEui(0xAA55_5A00_0000_0000 + u64::from(g)))
        .collect();
    for e in &euis {
        registry.add(*e, 0, None)?;
    }
    let target = |id: &str| MqttTarget {
        host: broker.listen.ip().to_string(),
        port: broker.listen.port(),
        client_id: id.into(),
        username: "bench".into(),
        password: password.clone(),
    };
    let bridge = bridge::start(
        BridgeConfig {
            udp_listen: "127.0.0.1:0".parse()?,
            data_dir: dir.clone(),
            ns: NsConfig::default(),
            mqtt: Some(target("lamplighter-bridge")),
        },
        profiles.clone(),
        vec![],
        ScaledClock::system(),
    )
    .await?;

    // The controller's side: same subscription, same checks.
    let accepted = Arc::new(AtomicU64::new(0));
    let rejected = Arc::new(AtomicU64::new(0));
    let (ready_tx, mut ready_rx) = mpsc::channel(1);
    let sub = {
        let accepted = accepted.clone();
        let rejected = rejected.clone();
        let t = target("bench-controller");
        let by_addr: HashMap<DevAddr, (DevEui, SessionKeys)> = profiles
            .iter()
            .map(|p| (p.dev_addr, (p.dev_eui, p.app_keys)))
            .collect();
        tokio::spawn(async move {
            let mut opts = MqttOptions::new(&t.client_id, &t.host, t.port);
            opts.set_credentials(&t.username, &t.password);
            opts.set_max_packet_size(64 * 1024, 64 * 1024);
            let (client, mut el) = AsyncClient::new(opts, 10_000);
            let mut last: HashMap<DevAddr, u32> = HashMap::new();
            loop {
                match el.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => {
                        let _ = client
                            .subscribe(topics::ALL_UPLINKS, QoS::AtLeastOnce)
                            .await;
                    }
                    Ok(Event::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.try_send(());
                    }
                    Ok(Event::Incoming(Packet::Publish(p))) => {
                        let ok = (|| {
                            let topic = topics::parse(&p.topic).ok()?;
                            let h = lorawan::peek_header(&p.payload).ok()?;
                            let (eui, keys) = by_addr.get(&h.dev_addr)?;
                            if !matches!(topic, topics::Topic::Uplink { dev_eui, .. } if dev_eui == *eui)
                            {
                                return None;
                            }
                            let f = lorawan::rebuild_fcnt(last.get(&h.dev_addr).copied(), h.fcnt16)
                                .ok()?;
                            lorawan::decode_data_frame(&p.payload, keys, f).ok()?;
                            last.insert(h.dev_addr, f);
                            Some(())
                        })();
                        match ok {
                            Some(()) => accepted.fetch_add(1, Ordering::Relaxed),
                            None => rejected.fetch_add(1, Ordering::Relaxed),
                        };
                    }
                    Ok(_) => {}
                    Err(_) => tokio::time::sleep(Duration::from_millis(100)).await,
                }
            }
        })
    };
    tokio::time::timeout(Duration::from_secs(10), ready_rx.recv())
        .await
        .context("the bench subscriber did not subscribe")?;

    let (down_tx, _down_rx) = broadcast::channel(16);
    let mut airs = Vec::new();
    let mut gws = Vec::new();
    for e in &euis {
        let (tx, rx) = mpsc::channel(4096);
        gws.push(
            simgw::spawn(
                *e,
                bridge.handle.udp_addr,
                rx,
                down_tx.clone(),
                Duration::from_secs(5),
            )
            .await?,
        );
        airs.push(tx);
    }
    let dr = DataRate::eu868(5).context("DR5")?;
    let built: Vec<Vec<u8>> = (0..frames)
        .map(|n| {
            let p = &profiles[(n % devices) as usize];
            lorawan::encode_data_frame(
                &DataFrame {
                    mtype: MType::UnconfirmedDataUp,
                    dev_addr: p.dev_addr,
                    fctrl: FCtrl::default(),
                    fcnt: n / devices,
                    fopts: vec![],
                    fport: Some(10),
                    frm_payload: vec![(n % 251) as u8; 22],
                },
                &p.app_keys,
            )
            .context("building a bench frame")
        })
        .collect::<Result<_>>()?;

    let start = Instant::now();
    for (n, phy) in built.into_iter().enumerate() {
        while n as u64 - accepted.load(Ordering::Relaxed) - rejected.load(Ordering::Relaxed)
            > IN_FLIGHT
        {
            tokio::time::sleep(Duration::from_micros(200)).await;
            if start.elapsed() > Duration::from_secs(120) {
                break;
            }
        }
        for (g, air) in airs.iter().enumerate() {
            let _ = air
                .send(AirFrame {
                    phy: phy.clone(),
                    freq_hz: 868_100_000,
                    datr: dr,
                    rssi_dbm: -90 - g as i32,
                    snr_db: 5.0 - g as f64,
                })
                .await;
        }
    }
    // Wait for the last frames (or for the count to stop moving).
    let mut last_count = 0;
    let mut last_change = Instant::now();
    let mut done_at = start.elapsed();
    loop {
        let c = accepted.load(Ordering::Relaxed) + rejected.load(Ordering::Relaxed);
        if c != last_count {
            last_count = c;
            last_change = Instant::now();
            done_at = start.elapsed();
        }
        if c >= u64::from(frames) || last_change.elapsed() > Duration::from_secs(3) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let ok = accepted.load(Ordering::Relaxed);
    let fps = ok as f64 / done_at.as_secs_f64().max(1e-9);
    let report = bridge.handle.report();
    for g in gws {
        g.task.abort();
    }
    sub.abort();
    for t in bridge.tasks {
        t.abort();
    }
    let _ = std::fs::remove_dir_all(&dir);
    Ok((
        fps,
        json!({
            "frames": frames,
            "accepted_by_controller_checks": ok,
            "rejected_by_controller_checks": rejected.load(Ordering::Relaxed),
            "seconds": done_at.as_secs_f64(),
            "datagrams": report.datagrams,
            "rx_frames": report.network_server.rx_frames,
            "duplicates": report.network_server.duplicates + report.network_server.late_duplicates,
            "uplinks_accepted": report.network_server.uplinks_accepted,
            "uplinks_published": report.uplinks_published,
        }),
    ))
}
