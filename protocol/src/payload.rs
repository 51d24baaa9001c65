//! The application payloads: what a lamp reports and what the controller commands.
//!
//! A compact, versioned binary codec. Byte 0 is the version, so a node in the field with old
//! firmware and a newer controller can tell each other apart instead of misreading fields.
//! Multi-byte fields are little-endian, as in LoRaWAN. The status report is 22 bytes: it fits
//! EU868 DR0's 51-byte FRMPayload with room for the 13 bytes of LoRaWAN framing.
//!
//! ```
//! use lamplighter_protocol::payload::*;
//! let report = StatusReport { level_pct: 40, target_level_pct: 100, power_dw: 123,
//!     energy_dwh: 98_765, ambient_lux: 3, presence: Presence { pedestrians: 2, cyclists: 0, vehicles: 1 },
//!     faults: FaultFlags::DRIVER, mode: NodeMode::Commanded, trigger: ReportTrigger::Presence,
//!     reading_time_s: 1_700_000_000, applied_fcnt_down: 7 };
//! let bytes = report.encode();
//! assert_eq!(bytes.len(), StatusReport::LEN);
//! assert_eq!(StatusReport::decode(&bytes), Ok(report));
//! ```

use serde::{Deserialize, Serialize};

/// LoRaWAN FPort of status reports (uplink).
pub const FPORT_STATUS: u8 = 10;
/// LoRaWAN FPort of commands (downlink).
pub const FPORT_COMMAND: u8 = 11;
/// The codec version this build writes and reads.
pub const VERSION: u8 = 1;

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PayloadError {
    #[error("empty payload")]
    Empty,
    #[error("payload version {0} is not supported (this build speaks version {VERSION})")]
    UnknownVersion(u8),
    #[error("unknown command kind {0}")]
    UnknownKind(u8),
    #[error("payload is {got} bytes, expected {expected}")]
    Length { expected: usize, got: usize },
    #[error("level {0} % is out of range 0-100")]
    LevelOutOfRange(u8),
    #[error("unknown node mode {0}")]
    UnknownMode(u8),
    #[error("unknown report trigger {0}")]
    UnknownTrigger(u8),
    #[error("a fail-safe profile has 1 to {max} steps, got {got}", max = FailSafeProfile::MAX_STEPS)]
    StepCount { got: usize },
    #[error("fail-safe step at minute {0} is outside the day (0-1439)")]
    StepMinute(u16),
}

/// Road users a node's sensor counted since its previous report (saturating at 255).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Presence {
    pub pedestrians: u8,
    pub cyclists: u8,
    pub vehicles: u8,
}

impl Presence {
    pub fn total(self) -> u32 {
        self.pedestrians as u32 + self.cyclists as u32 + self.vehicles as u32
    }
}

/// Fault bits a node reports; the controller raises faults from them with hysteresis.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct FaultFlags(pub u8);

impl FaultFlags {
    /// Commanded on but no current drawn.
    pub const LAMP_FAILURE: FaultFlags = FaultFlags(1 << 0);
    /// The LED driver reports an error.
    pub const DRIVER: FaultFlags = FaultFlags(1 << 1);
    /// The node runs its fail-safe profile because it heard nothing from the controller.
    pub const COMMS_LOST: FaultFlags = FaultFlags(1 << 2);
    /// The light sensor reads daylight while the lamp is lit.
    pub const DAY_BURNING: FaultFlags = FaultFlags(1 << 3);
    /// The node's clock was found unset or far off.
    pub const CLOCK: FaultFlags = FaultFlags(1 << 4);

    pub fn contains(self, other: FaultFlags) -> bool {
        self.0 & other.0 == other.0 && other.0 != 0
    }
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }
}

impl std::ops::BitOr for FaultFlags {
    type Output = FaultFlags;
    fn bitor(self, rhs: FaultFlags) -> FaultFlags {
        FaultFlags(self.0 | rhs.0)
    }
}

/// Who decides the lamp's level right now.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NodeMode {
    /// Following the controller's last command.
    Commanded = 0,
    /// Running the fail-safe profile (no command yet, or silence too long, or hold expired).
    FailSafe = 1,
}

/// Why this report was sent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ReportTrigger {
    Periodic = 0,
    Presence = 1,
    Fault = 2,
    Command = 3,
}

/// The lamp status uplink (FPort [`FPORT_STATUS`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct StatusReport {
    /// Light output now, percent of design output.
    pub level_pct: u8,
    /// The level the node is ramping to.
    pub target_level_pct: u8,
    /// Input power in tenths of a watt (0.1 W resolution, 6553.5 W max).
    pub power_dw: u16,
    /// Cumulative energy meter of the node in tenths of a watt-hour (dWh), wrapping at
    /// 2^32 (430 MWh). The controller derives consumption from differences, so a resent or
    /// duplicated report never double-counts; tenths keep a dimmed lamp's minute visible.
    pub energy_dwh: u32,
    pub ambient_lux: u16,
    pub presence: Presence,
    pub faults: FaultFlags,
    pub mode: NodeMode,
    pub trigger: ReportTrigger,
    /// When the reading was taken (node clock, Unix seconds): reports buffered while the link
    /// was down keep their own time.
    pub reading_time_s: u32,
    /// Low 16 bits of the last downlink FCnt the node applied: confirms commands arrived.
    pub applied_fcnt_down: u16,
}

impl StatusReport {
    pub const LEN: usize = 22;

    pub fn power_w(&self) -> f32 {
        self.power_dw as f32 / 10.0
    }

    pub fn encode(&self) -> Vec<u8> {
        let mut b = Vec::with_capacity(Self::LEN);
        b.push(VERSION);
        b.push(self.level_pct);
        b.push(self.target_level_pct);
        b.extend_from_slice(&self.power_dw.to_le_bytes());
        b.extend_from_slice(&self.energy_dwh.to_le_bytes());
        b.extend_from_slice(&self.ambient_lux.to_le_bytes());
        b.push(self.presence.pedestrians);
        b.push(self.presence.cyclists);
        b.push(self.presence.vehicles);
        b.push(self.faults.0);
        b.push(self.mode as u8 | (self.trigger as u8) << 4);
        b.extend_from_slice(&self.reading_time_s.to_le_bytes());
        b.extend_from_slice(&self.applied_fcnt_down.to_le_bytes());
        b
    }

    pub fn decode(b: &[u8]) -> Result<Self, PayloadError> {
        check_version(b)?;
        if b.len() != Self::LEN {
            return Err(PayloadError::Length {
                expected: Self::LEN,
                got: b.len(),
            });
        }
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        let u32_at = |i: usize| u32::from_le_bytes([b[i], b[i + 1], b[i + 2], b[i + 3]]);
        let mode = match b[15] & 0x0f {
            0 => NodeMode::Commanded,
            1 => NodeMode::FailSafe,
            m => return Err(PayloadError::UnknownMode(m)),
        };
        let trigger = match b[15] >> 4 {
            0 => ReportTrigger::Periodic,
            1 => ReportTrigger::Presence,
            2 => ReportTrigger::Fault,
            3 => ReportTrigger::Command,
            t => return Err(PayloadError::UnknownTrigger(t)),
        };
        Ok(StatusReport {
            level_pct: level(b[1])?,
            target_level_pct: level(b[2])?,
            power_dw: u16_at(3),
            energy_dwh: u32_at(5),
            ambient_lux: u16_at(9),
            presence: Presence {
                pedestrians: b[11],
                cyclists: b[12],
                vehicles: b[13],
            },
            faults: FaultFlags(b[14]),
            mode,
            trigger,
            reading_time_s: u32_at(16),
            applied_fcnt_down: u16_at(20),
        })
    }
}

/// One step of a fail-safe profile: from `minute_of_day` (local) the lamp runs at `level_pct`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProfileStep {
    pub minute_of_day: u16,
    pub level_pct: u8,
}

/// What a node does on its own: while dark (from its position), the level of the latest step
/// at or before the local time of day; when light, off. Nodes keep it across silence, so a
/// town stays lit when the controller or the network is gone.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FailSafeProfile {
    /// Local time offset from UTC used for the steps' minutes. Fixed: a node running its
    /// fail-safe across a clock change keeps the offset it was given (a
    /// [`Command::FailSafeProfile`] gives it a new one).
    pub utc_offset_min: i16,
    /// Fall back to this profile after hearing nothing from the controller this long.
    pub silence_timeout_s: u16,
    pub steps: Vec<ProfileStep>,
}

impl FailSafeProfile {
    pub const MAX_STEPS: usize = 8;

    /// UK part-night practice: 100 % to 22:00, 75 % to midnight, 50 % to 05:30, then 100 %.
    pub fn part_night(utc_offset_min: i16, silence_timeout_s: u16) -> Self {
        let step = |h: u16, m: u16, level_pct| ProfileStep {
            minute_of_day: h * 60 + m,
            level_pct,
        };
        FailSafeProfile {
            utc_offset_min,
            silence_timeout_s,
            steps: vec![
                step(0, 0, 50),
                step(5, 30, 100),
                step(12, 0, 100),
                step(22, 0, 75),
            ],
        }
    }

    /// The level the profile asks for at a local minute of the day (before lighting-up is
    /// taken into account). The steps wrap around midnight.
    pub fn level_at_minute(&self, minute_of_day: u16) -> u8 {
        let mut steps = self.steps.clone();
        steps.sort_by_key(|s| s.minute_of_day);
        steps
            .iter()
            .rev()
            .find(|s| s.minute_of_day <= minute_of_day)
            .or(steps.last())
            .map_or(100, |s| s.level_pct)
    }

    fn validate(&self) -> Result<(), PayloadError> {
        if self.steps.is_empty() || self.steps.len() > Self::MAX_STEPS {
            return Err(PayloadError::StepCount {
                got: self.steps.len(),
            });
        }
        for s in &self.steps {
            if s.minute_of_day >= 1440 {
                return Err(PayloadError::StepMinute(s.minute_of_day));
            }
            level(s.level_pct)?;
        }
        Ok(())
    }
}

/// The command downlinks (FPort [`FPORT_COMMAND`]).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum Command {
    /// Ramp to `level_pct` over `ramp_ms` (sent in 100 ms units, rounded up), then hold it for `hold_s`
    /// seconds before returning to the fail-safe profile (0: hold until the next command).
    SetLevel {
        level_pct: u8,
        ramp_ms: u32,
        hold_s: u16,
    },
    FailSafeProfile(FailSafeProfile),
}

const KIND_SET_LEVEL: u8 = 1;
const KIND_PROFILE: u8 = 2;

impl Command {
    /// The longest ramp a command can carry: u16 tenths of a second.
    pub const MAX_RAMP_MS: u32 = u16::MAX as u32 * 100;

    /// The ramp a command carries for `ramp_ms`: rounded up to whole tenths of a second (a
    /// ramp limit is never beaten by rounding), at most [`Command::MAX_RAMP_MS`]. A command
    /// built with it decodes to itself.
    pub fn wire_ramp_ms(ramp_ms: u32) -> u32 {
        ramp_ms.min(Self::MAX_RAMP_MS).div_ceil(100) * 100
    }

    pub fn encode(&self) -> Result<Vec<u8>, PayloadError> {
        let mut b = vec![VERSION];
        match self {
            Command::SetLevel {
                level_pct,
                ramp_ms,
                hold_s,
            } => {
                level(*level_pct)?;
                b.push(KIND_SET_LEVEL);
                b.push(*level_pct);
                let ramp_ds = (Self::wire_ramp_ms(*ramp_ms) / 100) as u16;
                b.extend_from_slice(&ramp_ds.to_le_bytes());
                b.extend_from_slice(&hold_s.to_le_bytes());
            }
            Command::FailSafeProfile(p) => {
                p.validate()?;
                b.push(KIND_PROFILE);
                b.extend_from_slice(&p.utc_offset_min.to_le_bytes());
                b.extend_from_slice(&p.silence_timeout_s.to_le_bytes());
                b.push(p.steps.len() as u8);
                for s in &p.steps {
                    b.extend_from_slice(&s.minute_of_day.to_le_bytes());
                    b.push(s.level_pct);
                }
            }
        }
        Ok(b)
    }

    pub fn decode(b: &[u8]) -> Result<Self, PayloadError> {
        check_version(b)?;
        let kind = *b.get(1).ok_or(PayloadError::Length {
            expected: 2,
            got: b.len(),
        })?;
        let need = |n: usize| {
            if b.len() == n {
                Ok(())
            } else {
                Err(PayloadError::Length {
                    expected: n,
                    got: b.len(),
                })
            }
        };
        let u16_at = |i: usize| u16::from_le_bytes([b[i], b[i + 1]]);
        match kind {
            KIND_SET_LEVEL => {
                need(7)?;
                Ok(Command::SetLevel {
                    level_pct: level(b[2])?,
                    ramp_ms: u16_at(3) as u32 * 100,
                    hold_s: u16_at(5),
                })
            }
            KIND_PROFILE => {
                if b.len() < 7 {
                    return Err(PayloadError::Length {
                        expected: 7,
                        got: b.len(),
                    });
                }
                let n = b[6] as usize;
                if n == 0 || n > FailSafeProfile::MAX_STEPS {
                    return Err(PayloadError::StepCount { got: n });
                }
                need(7 + 3 * n)?;
                let steps = (0..n)
                    .map(|i| ProfileStep {
                        minute_of_day: u16_at(7 + 3 * i),
                        level_pct: b[9 + 3 * i],
                    })
                    .collect();
                let p = FailSafeProfile {
                    utc_offset_min: u16_at(2) as i16,
                    silence_timeout_s: u16_at(4),
                    steps,
                };
                p.validate()?;
                Ok(Command::FailSafeProfile(p))
            }
            k => Err(PayloadError::UnknownKind(k)),
        }
    }
}

fn check_version(b: &[u8]) -> Result<(), PayloadError> {
    match b.first() {
        None => Err(PayloadError::Empty),
        Some(&VERSION) => Ok(()),
        Some(&v) => Err(PayloadError::UnknownVersion(v)),
    }
}

fn level(v: u8) -> Result<u8, PayloadError> {
    if v <= 100 {
        Ok(v)
    } else {
        Err(PayloadError::LevelOutOfRange(v))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn arb_report() -> impl Strategy<Value = StatusReport> {
        (
            (
                0u8..=100,
                0u8..=100,
                any::<u16>(),
                any::<u32>(),
                any::<u16>(),
            ),
            (any::<[u8; 3]>(), any::<u8>(), 0u8..2, 0u8..4),
            (any::<u32>(), any::<u16>()),
        )
            .prop_map(
                |((l, t, p, e, lux), (pr, f, m, tr), (ts, fc))| StatusReport {
                    level_pct: l,
                    target_level_pct: t,
                    power_dw: p,
                    energy_dwh: e,
                    ambient_lux: lux,
                    presence: Presence {
                        pedestrians: pr[0],
                        cyclists: pr[1],
                        vehicles: pr[2],
                    },
                    faults: FaultFlags(f),
                    mode: [NodeMode::Commanded, NodeMode::FailSafe][m as usize],
                    trigger: [
                        ReportTrigger::Periodic,
                        ReportTrigger::Presence,
                        ReportTrigger::Fault,
                        ReportTrigger::Command,
                    ][tr as usize],
                    reading_time_s: ts,
                    applied_fcnt_down: fc,
                },
            )
    }

    fn arb_command() -> impl Strategy<Value = Command> {
        let set =
            (0u8..=100, 0u32..=65_535, any::<u16>()).prop_map(|(l, r, h)| Command::SetLevel {
                level_pct: l,
                ramp_ms: r * 100,
                hold_s: h,
            });
        let steps = prop::collection::vec((0u16..1440, 0u8..=100), 1..=FailSafeProfile::MAX_STEPS);
        let profile = (any::<i16>(), any::<u16>(), steps).prop_map(|(o, t, s)| {
            Command::FailSafeProfile(FailSafeProfile {
                utc_offset_min: o,
                silence_timeout_s: t,
                steps: s
                    .into_iter()
                    .map(|(m, l)| ProfileStep {
                        minute_of_day: m,
                        level_pct: l,
                    })
                    .collect(),
            })
        });
        prop_oneof![set, profile]
    }

    proptest! {
        #[test]
        fn status_reports_round_trip(r in arb_report()) {
            let b = r.encode();
            prop_assert!(b.len() <= 24);
            prop_assert_eq!(StatusReport::decode(&b), Ok(r));
        }

        #[test]
        fn commands_round_trip_and_fit_dr0(c in arb_command()) {
            let b = c.encode().unwrap();
            prop_assert!(b.len() <= 51 - 13);
            prop_assert_eq!(Command::decode(&b), Ok(c));
        }

        #[test]
        fn a_set_level_with_its_wire_ramp_decodes_to_itself(
            level_pct in 0u8..=100, ramp_ms in any::<u32>(), hold_s in any::<u16>(),
        ) {
            let c = Command::SetLevel { level_pct, ramp_ms: Command::wire_ramp_ms(ramp_ms), hold_s };
            prop_assert_eq!(Command::decode(&c.encode().unwrap()), Ok(c));
        }

        #[test]
        fn arbitrary_bytes_never_panic(b in prop::collection::vec(any::<u8>(), 0..64)) {
            let _ = StatusReport::decode(&b);
            let _ = Command::decode(&b);
        }
    }

    #[test]
    fn bad_payloads_say_why() {
        assert_eq!(StatusReport::decode(&[]), Err(PayloadError::Empty));
        assert_eq!(
            StatusReport::decode(&[2; 22]),
            Err(PayloadError::UnknownVersion(2))
        );
        assert_eq!(
            StatusReport::decode(&[1; 5]),
            Err(PayloadError::Length {
                expected: 22,
                got: 5
            })
        );
        assert_eq!(
            Command::decode(&[1, 1, 101, 0, 0, 0, 0]),
            Err(PayloadError::LevelOutOfRange(101))
        );
        assert_eq!(Command::decode(&[1, 9]), Err(PayloadError::UnknownKind(9)));
        assert_eq!(
            Command::decode(&[1, 2, 0, 0, 0, 0, 0]),
            Err(PayloadError::StepCount { got: 0 })
        );
    }

    #[test]
    fn part_night_profile_wraps_midnight() {
        let p = FailSafeProfile::part_night(0, 3600);
        assert_eq!(p.level_at_minute(21 * 60), 100);
        assert_eq!(p.level_at_minute(22 * 60 + 30), 75);
        assert_eq!(p.level_at_minute(3 * 60), 50);
        assert_eq!(p.level_at_minute(6 * 60), 100);
    }
}
