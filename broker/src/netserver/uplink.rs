//! The uplink path: a frame whose de-duplication window closed is checked (DevAddr, FCnt,
//! MIC) against the device's radio session and, if accepted, re-framed into the
//! application session for the controller; a join-request is checked (JoinEUI, MIC,
//! DevNonce) and answered with a join-accept that starts a new radio session.

use lamplighter_protocol::lorawan::{self, FrameError, JoinAccept, MType};
use lamplighter_protocol::UnixMs;

use super::config::{Activation, DeviceClass, Priority};
use super::counters::UplinkRejection;
use super::events::{RxMeta, TxKind, Uplink};
use super::session::RadioSession;
use super::NetworkServer;

impl NetworkServer {
    pub(super) fn process(&mut self, now: UnixMs, phy: &[u8], mut metas: Vec<RxMeta>) {
        metas.sort_by(|a, b| b.snr_db.total_cmp(&a.snr_db));
        let result = match phy.first().map(|&m| MType::from_mhdr(m)) {
            None => Err(UplinkRejection::Frame(FrameError::TooShort { len: 0 })),
            Some(MType::JoinRequest) => self.join(now, phy, &metas),
            Some(t) if t.is_data() && t.is_uplink() => self.data_up(now, phy, metas),
            Some(t) => Err(UplinkRejection::NotUplink(t)),
        };
        if let Err(r) = result {
            tracing::debug!(reason = %r, "uplink rejected at the network layer");
            self.reject(&r);
        }
    }

    fn data_up(
        &mut self,
        now: UnixMs,
        phy: &[u8],
        metas: Vec<RxMeta>,
    ) -> Result<(), UplinkRejection> {
        let header = lorawan::peek_header(phy).map_err(UplinkRejection::Frame)?;
        let &i = self
            .by_addr
            .get(&header.dev_addr)
            .ok_or(UplinkRejection::UnknownDevAddr(header.dev_addr))?;
        let device = &mut self.devices[i];
        let session = device
            .session
            .as_mut()
            .ok_or(UplinkRejection::UnknownDevAddr(header.dev_addr))?;
        let fcnt = match lorawan::rebuild_fcnt(session.last_fcnt_up, header.fcnt16) {
            Ok(f) => f,
            Err(FrameError::Replay { last, got }) => {
                return Err(UplinkRejection::Replay { last, got })
            }
            Err(e) => return Err(UplinkRejection::Frame(e)),
        };
        let same_keys = session.keys == device.profile.app_keys;
        let app_phy = if same_keys {
            // ABP: the MIC alone is the network server's business; the payload stays sealed.
            let frame =
                lorawan::decode_data_frame(phy, &session.keys, fcnt).map_err(|e| match e {
                    FrameError::BadMic => UplinkRejection::BadMic,
                    e => UplinkRejection::Frame(e),
                })?;
            drop(frame);
            phy.to_vec()
        } else {
            let frame =
                lorawan::decode_data_frame(phy, &session.keys, fcnt).map_err(|e| match e {
                    FrameError::BadMic => UplinkRejection::BadMic,
                    e => UplinkRejection::Frame(e),
                })?;
            lorawan::encode_data_frame(&frame, &device.profile.app_keys)
                .map_err(UplinkRejection::Frame)?
        };
        session.last_fcnt_up = Some(fcnt);
        device.path = metas;
        device.path_at = now;
        let best = device.path[0];
        self.counters.uplinks_accepted += 1;
        self.uplinks.push_back(Uplink {
            tenant: device.profile.tenant.clone(),
            dev_eui: device.profile.dev_eui,
            phy: app_phy,
            fcnt,
            gateways: device.path.len(),
            best,
            received: now,
        });
        if device.profile.class == DeviceClass::A {
            self.class_a_window(now, i, 1_000_000, 2_000_000);
        } else if !device.queue.is_empty() {
            // A Class C device that was waiting for a path now has one.
            self.class_c.push_back(i);
        }
        Ok(())
    }

    fn join(&mut self, now: UnixMs, phy: &[u8], metas: &[RxMeta]) -> Result<(), UplinkRejection> {
        let req = lorawan::peek_join_request(phy).map_err(UplinkRejection::Frame)?;
        let &i = self
            .by_eui
            .get(&req.dev_eui)
            .ok_or(UplinkRejection::UnknownDevEui(req.dev_eui))?;
        let device = &mut self.devices[i];
        let Activation::Otaa { join_eui, app_key } = device.profile.activation else {
            return Err(UplinkRejection::UnknownDevEui(req.dev_eui));
        };
        if join_eui != req.join_eui {
            return Err(UplinkRejection::UnknownDevEui(req.dev_eui));
        }
        lorawan::decode_join_request(phy, &app_key).map_err(|e| match e {
            FrameError::BadMic => UplinkRejection::BadMic,
            e => UplinkRejection::Frame(e),
        })?;
        if !device.dev_nonces.insert(req.dev_nonce) {
            return Err(UplinkRejection::DevNonceReused(req.dev_nonce, req.dev_eui));
        }
        self.used_dev_nonces.push_back((req.dev_eui, req.dev_nonce));
        let n = self.join_nonce.to_le_bytes();
        self.join_nonce = (self.join_nonce + 1) & 0x00FF_FFFF;
        let join_nonce = [n[0], n[1], n[2]];
        let keys =
            lorawan::derive_session_keys(&app_key, join_nonce, self.config.net_id, req.dev_nonce);
        // The counter carries over from the previous session (see the module docs).
        let last_fcnt_up = device
            .session
            .as_ref()
            .and_then(|s| s.last_fcnt_up)
            .or(device.profile.last_fcnt_up);
        device.session = Some(RadioSession { keys, last_fcnt_up });
        device.path = metas.to_vec();
        device.path_at = now;
        let rx2_dr = self.config.rx2_dr.eu868_index().unwrap_or(0);
        let accept = JoinAccept {
            join_nonce,
            net_id: self.config.net_id,
            dev_addr: device.profile.dev_addr,
            dl_settings: rx2_dr & 0x0f,
            rx_delay: 1,
            cf_list: None,
        };
        let phy = lorawan::encode_join_accept(&accept, &app_key);
        let dev_eui = device.profile.dev_eui;
        self.counters.joins_accepted += 1;
        tracing::info!(%dev_eui, dev_addr = %accept.dev_addr, "OTAA join accepted");
        if !self.send_in_rx_windows(
            now,
            i,
            &phy,
            5_000_000,
            6_000_000,
            Priority::High,
            TxKind::JoinAccept { dev_eui },
        ) {
            *self
                .counters
                .downlinks_refused
                .entry("join-accept-no-budget")
                .or_default() += 1;
        }
        Ok(())
    }

    fn reject(&mut self, r: &UplinkRejection) {
        *self.counters.rejected.entry(r.kind()).or_default() += 1;
    }
}
