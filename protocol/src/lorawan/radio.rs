//! EU868 radio facts: data rates, time on air (Semtech AN1200.13) and the duty-cycle
//! sub-bands. Pure functions: the network server's duty-cycle accounting, the simulator and
//! the `bench` figures all use these.

use std::fmt;
use std::str::FromStr;

/// A LoRa data rate: spreading factor and bandwidth.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct DataRate {
    /// 7..=12.
    pub sf: u8,
    /// 125, 250 or 500.
    pub bw_khz: u16,
}

impl DataRate {
    /// EU868 DR0..=DR6 (DR7 is FSK, not supported here).
    pub fn eu868(dr: u8) -> Option<DataRate> {
        let (sf, bw_khz) = match dr {
            0 => (12, 125),
            1 => (11, 125),
            2 => (10, 125),
            3 => (9, 125),
            4 => (8, 125),
            5 => (7, 125),
            6 => (7, 250),
            _ => return None,
        };
        Some(DataRate { sf, bw_khz })
    }

    /// The EU868 DR index of this data rate, if it is one.
    pub fn eu868_index(self) -> Option<u8> {
        (0..=6).find(|&dr| DataRate::eu868(dr) == Some(self))
    }

    /// Largest FRMPayload at this data rate (EU868, no FOpts repeater margin).
    pub fn max_frm_payload(self) -> usize {
        match self.eu868_index() {
            Some(0..=2) => 51,
            Some(3) => 115,
            _ => 242,
        }
    }

    /// Time on air in microseconds of a PHYPayload of `len` bytes (explicit header, CR 4/5,
    /// 8 preamble symbols). `crc`: uplinks carry a payload CRC, downlinks do not.
    pub fn time_on_air_us(self, len: usize, crc: bool) -> u64 {
        let sf = f64::from(self.sf);
        let t_sym_us = f64::from(1u32 << self.sf) * 1000.0 / f64::from(self.bw_khz);
        let de = if self.sf >= 11 && self.bw_khz == 125 {
            1.0
        } else {
            0.0
        };
        let crc = if crc { 1.0 } else { 0.0 };
        let num = 8.0 * len as f64 - 4.0 * sf + 28.0 + 16.0 * crc;
        let den = 4.0 * (sf - 2.0 * de);
        let payload_symbols = 8.0 + ((num / den).ceil() * 5.0).max(0.0);
        ((8.0 + 4.25 + payload_symbols) * t_sym_us).round() as u64
    }
}

impl fmt::Display for DataRate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SF{}BW{}", self.sf, self.bw_khz)
    }
}

/// Why a string is not a LoRa data rate.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not a LoRa data rate like SF7BW125: {0:?}")]
pub struct DataRateError(pub String);

impl FromStr for DataRate {
    type Err = DataRateError;
    fn from_str(s: &str) -> Result<Self, DataRateError> {
        let err = || DataRateError(s.chars().take(32).collect());
        let rest = s.strip_prefix("SF").ok_or_else(err)?;
        let (sf, bw) = rest.split_once("BW").ok_or_else(err)?;
        let sf: u8 = sf.parse().map_err(|_| err())?;
        let bw_khz: u16 = bw.parse().map_err(|_| err())?;
        if !(7..=12).contains(&sf) || ![125, 250, 500].contains(&bw_khz) {
            return Err(err());
        }
        Ok(DataRate { sf, bw_khz })
    }
}

/// An EU868 duty-cycle sub-band (ETSI EN 300 220, as LoRaWAN RP002 uses them).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum SubBand {
    /// 863.0-865.0 MHz, 0.1 %.
    H13,
    /// 865.0-868.0 MHz, 1 %.
    H14,
    /// 868.0-868.6 MHz, 1 %: the three default channels 868.1/868.3/868.5 (RX1).
    G1,
    /// 868.7-869.2 MHz, 0.1 %.
    G2,
    /// 869.4-869.65 MHz, 10 %: RX2 and Class C at 869.525 MHz.
    G3,
    /// 869.7-870.0 MHz, 1 %.
    G4,
}

impl SubBand {
    pub const ALL: [SubBand; 6] = [
        SubBand::H13,
        SubBand::H14,
        SubBand::G1,
        SubBand::G2,
        SubBand::G3,
        SubBand::G4,
    ];

    /// The sub-band a centre frequency falls in; None outside the EU868 bands (or in the
    /// gaps between them), where a transmission is refused.
    pub fn of_hz(freq_hz: u32) -> Option<SubBand> {
        let f = freq_hz;
        Some(match f {
            863_000_000..865_000_000 => SubBand::H13,
            865_000_000..868_000_000 => SubBand::H14,
            868_000_000..=868_600_000 => SubBand::G1,
            868_700_000..=869_200_000 => SubBand::G2,
            869_400_000..=869_650_000 => SubBand::G3,
            869_700_000..=870_000_000 => SubBand::G4,
            _ => return None,
        })
    }

    /// Allowed share of time on air, in parts per thousand.
    pub fn duty_permille(self) -> u32 {
        match self {
            SubBand::H13 | SubBand::G2 => 1,
            SubBand::H14 | SubBand::G1 | SubBand::G4 => 10,
            SubBand::G3 => 100,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            SubBand::H13 => "h1.3 863.0-865.0 MHz 0.1%",
            SubBand::H14 => "h1.4 865.0-868.0 MHz 1%",
            SubBand::G1 => "g1 868.0-868.6 MHz 1%",
            SubBand::G2 => "g2 868.7-869.2 MHz 0.1%",
            SubBand::G3 => "g3 869.4-869.65 MHz 10%",
            SubBand::G4 => "g4 869.7-870.0 MHz 1%",
        }
    }
}

/// The EU868 RX2 / Class C frequency.
pub const RX2_FREQ_HZ: u32 = 869_525_000;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn time_on_air_matches_the_published_table() {
        // 23-byte PHYPayload, uplink (CRC on): SF7 61.7 ms .. SF12 1482.8 ms.
        let want = [
            (5, 61_696),
            (4, 113_152),
            (3, 205_824),
            (2, 370_688),
            (1, 823_296),
            (0, 1_482_752),
        ];
        for (dr, us) in want {
            let got = DataRate::eu868(dr).unwrap().time_on_air_us(23, true);
            assert_eq!(got, us, "DR{dr}");
        }
    }

    #[test]
    fn data_rates_parse_and_print() {
        let dr: DataRate = "SF9BW125".parse().unwrap();
        assert_eq!(dr.eu868_index(), Some(3));
        assert_eq!(dr.to_string(), "SF9BW125");
        for bad in [
            "",
            "SF6BW125",
            "SF7BW100",
            "SF7",
            "BW125",
            "SFxBW125",
            "SF7BW125x",
        ] {
            assert!(bad.parse::<DataRate>().is_err(), "{bad}");
        }
    }

    #[test]
    fn sub_bands() {
        assert_eq!(SubBand::of_hz(868_100_000), Some(SubBand::G1));
        assert_eq!(SubBand::of_hz(RX2_FREQ_HZ), Some(SubBand::G3));
        assert_eq!(SubBand::of_hz(867_100_000), Some(SubBand::H14));
        assert_eq!(SubBand::of_hz(915_000_000), None);
        assert_eq!(SubBand::G3.duty_permille(), 100);
    }
}
