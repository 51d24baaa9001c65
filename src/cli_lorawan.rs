//! The LoRaWAN commands of the CLI: `lorawan decode`, `lorawan bench`, `gateways add|list`.
//! `main.rs` only routes to [`run_lorawan`] and [`run_gateways`].

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use base64::Engine;
use clap::{Args, Subcommand};
use lamplighter_broker::dutycycle::downlinks_per_hour;
use lamplighter_broker::gateways::GatewayRegistry;
use lamplighter_broker::gwmp::GatewayEui;
use lamplighter_protocol::lorawan::radio::{DataRate, SubBand};
use lamplighter_protocol::lorawan::{self, AesKey, FrameError, MType, SessionKeys};
use lamplighter_protocol::payload::{Command, StatusReport, FPORT_COMMAND, FPORT_STATUS};
use serde_json::{json, Value};

#[derive(Subcommand)]
pub enum LorawanCommand {
    /// Decodes one PHYPayload and prints one JSON object.
    Decode(DecodeArgs),
    /// Frames per second through the UDP bridge and network server to the controller's
    /// topic, and downlinks per hour per sub-band; one JSON object.
    Bench(BenchArgs),
}

#[derive(Args)]
pub struct DecodeArgs {
    /// The PHYPayload as hex.
    #[arg(long, conflicts_with = "base64", required_unless_present = "base64")]
    pub phy: Option<String>,
    /// The PHYPayload as base64 (as in a gateway's rxpk or ChirpStack's phyPayload).
    #[arg(long)]
    pub base64: Option<String>,
    #[arg(long)]
    pub nwkskey: Option<String>,
    #[arg(long)]
    pub appskey: Option<String>,
    /// For join-requests (MIC) and join-accepts (decryption).
    #[arg(long)]
    pub appkey: Option<String>,
    /// The full 32-bit FCnt (default: the 16 bits on air).
    #[arg(long)]
    pub fcnt: Option<u32>,
}

#[derive(Args)]
pub struct BenchArgs {
    /// Uplink frames per run.
    #[arg(long, default_value_t = 20_000)]
    pub frames: u32,
    /// Devices sending them.
    #[arg(long, default_value_t = 1000)]
    pub devices: u32,
    /// Gateways hearing every frame (de-duplication is part of the figure).
    #[arg(long, default_value_t = 2)]
    pub gateways: u32,
    #[arg(long, default_value_t = 5)]
    pub runs: u32,
}

#[derive(Subcommand)]
pub enum GatewaysCommand {
    /// Provisions a gateway by EUI; a running bridge accepts it within a second.
    Add {
        #[arg(long)]
        eui: String,
        #[arg(long)]
        data_dir: Option<PathBuf>,
        #[arg(long)]
        note: Option<String>,
    },
    /// Lists provisioned gateways, one EUI a line.
    List {
        #[arg(long)]
        data_dir: Option<PathBuf>,
    },
}

pub fn run_gateways(command: GatewaysCommand) -> Result<()> {
    let dir = |d: Option<PathBuf>| match d {
        Some(d) => Ok(d),
        None => crate::system::default_data_dir(),
    };
    match command {
        GatewaysCommand::Add {
            eui,
            data_dir,
            note,
        } => {
            let eui: GatewayEui = eui.parse()?;
            let dir = dir(data_dir)?;
            let reg = GatewayRegistry::open(&dir)?;
            let now_ms = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map(|d| d.as_millis() as u64)
                .unwrap_or(0);
            let new = reg.add(eui, now_ms, note.as_deref())?;
            lamplighter_print_line!(
                "{}",
                json!({ "eui": eui.to_string(), "added": new, "registry": dir.join(lamplighter_broker::gateways::DB_FILE) })
            );
            Ok(())
        }
        GatewaysCommand::List { data_dir } => {
            let reg = GatewayRegistry::open(&dir(data_dir)?)?;
            let mut all: Vec<_> = reg.all()?.into_iter().collect();
            all.sort();
            for e in all {
                lamplighter_print_line!("{e}");
            }
            Ok(())
        }
    }
}

pub fn run_lorawan(command: LorawanCommand) -> Result<()> {
    match command {
        LorawanCommand::Decode(args) => {
            lamplighter_print_line!("{}", decode(&args)?);
            Ok(())
        }
        LorawanCommand::Bench(args) => {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
                .context("cannot start the async runtime")?;
            let report = rt.block_on(bench(&args))?;
            lamplighter_print_line!("{report}");
            Ok(())
        }
    }
}

fn key(name: &str, v: &Option<String>) -> Result<Option<AesKey>> {
    v.as_deref()
        .map(|s| s.parse::<AesKey>().with_context(|| format!("--{name}")))
        .transpose()
}

fn mtype_name(t: MType) -> &'static str {
    match t {
        MType::JoinRequest => "JoinRequest",
        MType::JoinAccept => "JoinAccept",
        MType::UnconfirmedDataUp => "UnconfirmedDataUp",
        MType::UnconfirmedDataDown => "UnconfirmedDataDown",
        MType::ConfirmedDataUp => "ConfirmedDataUp",
        MType::ConfirmedDataDown => "ConfirmedDataDown",
        MType::RejoinRequest => "RejoinRequest",
        MType::Proprietary => "Proprietary",
    }
}

/// Decodes a PHYPayload into one JSON object. Errors are one clear line.
pub fn decode(args: &DecodeArgs) -> Result<Value> {
    let phy = match (&args.phy, &args.base64) {
        (Some(h), _) => hex::decode(h.trim()).context("--phy is not hex")?,
        (None, Some(b)) => base64::engine::general_purpose::STANDARD
            .decode(b.trim())
            .context("--base64 is not base64")?,
        (None, None) => bail!("give the frame with --phy HEX or --base64 B64"),
    };
    if phy.len() > lorawan::MAX_PHY_PAYLOAD_LEN {
        bail!(
            "cannot decode: {} bytes is longer than a LoRa frame (255)",
            phy.len()
        );
    }
    let nwk = key("nwkskey", &args.nwkskey)?;
    let app = key("appskey", &args.appskey)?;
    let app_key = key("appkey", &args.appkey)?;
    let Some(&mhdr) = phy.first() else {
        bail!("cannot decode: the frame is empty");
    };
    let mtype = MType::from_mhdr(mhdr);
    let mic_hex = hex::encode(phy.get(phy.len().saturating_sub(4)..).unwrap_or_default());
    match mtype {
        MType::JoinRequest => {
            let req = lorawan::peek_join_request(&phy).map_err(cannot)?;
            let mic_ok = app_key.map(|k| lorawan::decode_join_request(&phy, &k).is_ok());
            Ok(json!({
                "mtype": mtype_name(mtype),
                "join_eui": req.join_eui.to_string(),
                "dev_eui": req.dev_eui.to_string(),
                "dev_nonce": hex::encode([req.dev_nonce[1], req.dev_nonce[0]]),
                "mic_hex": mic_hex,
                "mic_ok": mic_ok,
            }))
        }
        MType::JoinAccept => {
            let Some(k) = app_key else {
                if phy.len() != lorawan::JOIN_ACCEPT_LEN
                    && phy.len() != lorawan::JOIN_ACCEPT_CF_LIST_LEN
                {
                    bail!(
                        "cannot decode: a join-accept is 17 or 33 bytes, got {}",
                        phy.len()
                    );
                }
                return Ok(json!({
                    "mtype": mtype_name(mtype),
                    "encrypted_hex": hex::encode(&phy[1..]),
                    "mic_ok": null,
                    "note": "give --appkey to decrypt a join-accept",
                }));
            };
            match lorawan::decrypt_join_accept(&phy, &k) {
                Ok(ja) => {
                    let be3 = |b: [u8; 3]| hex::encode([b[2], b[1], b[0]]);
                    Ok(json!({
                        "mtype": mtype_name(mtype),
                        "mic_ok": true,
                        "join_nonce": be3(ja.join_nonce),
                        "net_id": be3(ja.net_id),
                        "dev_addr": ja.dev_addr.to_string(),
                        "dl_settings": ja.dl_settings,
                        "rx1_dr_offset": (ja.dl_settings >> 4) & 0x07,
                        "rx2_data_rate": ja.dl_settings & 0x0f,
                        "rx_delay": ja.rx_delay,
                        "cf_list_hex": ja.cf_list.map(hex::encode),
                    }))
                }
                Err(FrameError::BadMic) => Ok(json!({
                    "mtype": mtype_name(mtype),
                    "mic_ok": false,
                })),
                Err(e) => Err(cannot(e)),
            }
        }
        t if t.is_data() => decode_data(&phy, t, nwk, app, args.fcnt, mic_hex),
        t => bail!("cannot decode: {} frames are not supported", mtype_name(t)),
    }
}

fn cannot(e: FrameError) -> anyhow::Error {
    anyhow::anyhow!("cannot decode: {e}")
}

fn decode_data(
    phy: &[u8],
    mtype: MType,
    nwk: Option<AesKey>,
    app: Option<AesKey>,
    fcnt: Option<u32>,
    mic_hex: String,
) -> Result<Value> {
    let header = lorawan::peek_header(phy).map_err(cannot)?;
    let fcnt = match fcnt {
        Some(f) if f as u16 != header.fcnt16 => bail!(
            "--fcnt {f} does not match the 16 bits on air ({})",
            header.fcnt16
        ),
        Some(f) => f,
        None => u32::from(header.fcnt16),
    };
    let fhdr_end = 8 + usize::from(header.fopts_len);
    let fport = (phy.len() - 4 > fhdr_end).then(|| phy[fhdr_end]);
    let fctrl = lorawan::FCtrl::from_byte(phy[5]);
    let mut out = json!({
        "mtype": mtype_name(mtype),
        "dev_addr": header.dev_addr.to_string(),
        "fctrl": { "adr": fctrl.adr, "adr_ack_req": fctrl.adr_ack_req, "ack": fctrl.ack, "f_pending": fctrl.f_pending },
        "fcnt": fcnt,
        "fport": fport,
        "fopts_hex": hex::encode(&phy[8..fhdr_end]),
        "frm_payload_hex": hex::encode(phy.get(fhdr_end + 1..phy.len() - 4).unwrap_or_default()),
        "mic_hex": mic_hex,
        "mic_ok": null,
        "payload_hex": null,
    });
    let Some(nwk) = nwk else {
        return Ok(out);
    };
    // The MIC needs only NwkSKey; decryption of ports 1-255 needs AppSKey.
    let keys = SessionKeys {
        nwk_s_key: nwk,
        app_s_key: app.unwrap_or(nwk),
    };
    match lorawan::decode_data_frame(phy, &keys, fcnt) {
        Ok(frame) => {
            out["mic_ok"] = json!(true);
            if app.is_some() || frame.fport == Some(0) {
                out["payload_hex"] = json!(hex::encode(&frame.frm_payload));
                let decoded = match frame.fport {
                    Some(FPORT_STATUS) if mtype.is_uplink() => {
                        Some(match StatusReport::decode(&frame.frm_payload) {
                            Ok(r) => json!({ "status_report": r }),
                            Err(e) => json!({ "error": e.to_string() }),
                        })
                    }
                    Some(FPORT_COMMAND) if !mtype.is_uplink() => {
                        Some(match Command::decode(&frame.frm_payload) {
                            Ok(c) => json!({ "command": c }),
                            Err(e) => json!({ "error": e.to_string() }),
                        })
                    }
                    _ => None,
                };
                if let Some(d) = decoded {
                    out["decoded"] = d;
                }
            }
        }
        Err(FrameError::BadMic) => out["mic_ok"] = json!(false),
        Err(e) => return Err(cannot(e)),
    }
    Ok(out)
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

/// Downlinks per hour one gateway can send, per sub-band, for our command frame (a SetLevel
/// command: 20-byte PHYPayload) at each EU868 data rate, under the duty-cycle rule
/// implemented (sliding hour; Normal priority may use 90 %, High 100 %).
pub fn duty_table() -> Value {
    let len = 12 + 1 + 7;
    let mut bands = serde_json::Map::new();
    for band in [SubBand::G1, SubBand::G3, SubBand::G2, SubBand::H14] {
        let mut per_dr = serde_json::Map::new();
        for dr in 0..=5 {
            let Some(rate) = DataRate::eu868(dr) else {
                continue;
            };
            let all = downlinks_per_hour(band, rate, len);
            per_dr.insert(
                format!("DR{dr} {rate}"),
                json!({ "airtime_ms": rate.time_on_air_us(len, false) as f64 / 1000.0, "high": all, "normal": all * 9 / 10, "low": all / 2 }),
            );
        }
        bands.insert(band.name().to_string(), Value::Object(per_dr));
    }
    json!({ "frame_bytes": len, "per_hour": bands })
}

async fn bench(args: &BenchArgs) -> Result<Value> {
    anyhow::ensure!(
        args.frames > 0 && args.devices > 0 && args.gateways > 0 && args.runs > 0,
        "--frames, --devices, --gateways and --runs must be positive"
    );
    let mut fps = Vec::new();
    let mut last_report = Value::Null;
    for _ in 0..args.runs {
        let (rate, report) =
            crate::lorawan_bench::run_once(args.frames, args.devices, args.gateways).await?;
        fps.push(rate);
        last_report = report;
    }
    Ok(json!({
        "command": format!("lamplighter lorawan bench --frames {} --devices {} --gateways {} --runs {}", args.frames, args.devices, args.gateways, args.runs),
        "path": "simulated gateways -> UDP (GWMP) -> bridge -> network server (dedup, MIC, FCnt) -> embedded MQTT -> controller's uplink subscription (peek, FCnt, MIC, as the controller checks)",
        "frames_per_run": args.frames,
        "frames_per_second_runs": fps,
        "frames_per_second_median": median(fps.clone()),
        "last_run": last_report,
        "duty_cycle": duty_table(),
    }))
}

#[allow(dead_code)]
fn _unused(_: Duration, _: Instant) {}
