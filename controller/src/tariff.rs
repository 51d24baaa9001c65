//! The tariff: what a kWh costs in money and carbon (`[controller.tariff]`).
//!
//! A configuration type in its own module (as quinn-proto keeps its config apart from its
//! connection state), so that the core can validate the whole configuration without importing
//! the store, and the store can price energy without importing the core's configuration.

use serde::{Deserialize, Serialize};

/// What a kWh costs, in money and carbon: `[controller.tariff]`, every key with a default.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Tariff {
    /// Default 0.294 GBP/kWh.
    pub gbp_per_kwh: f64,
    /// Default 0.20705 kg CO2e/kWh (UK grid electricity, generation and T&D, 2024).
    pub co2e_kg_per_kwh: f64,
}

impl Default for Tariff {
    fn default() -> Self {
        Tariff {
            gbp_per_kwh: 0.294,
            co2e_kg_per_kwh: 0.20705,
        }
    }
}

impl Tariff {
    pub fn validate(&self) -> Result<(), TariffError> {
        for (name, v) in [
            ("gbp_per_kwh", self.gbp_per_kwh),
            ("co2e_kg_per_kwh", self.co2e_kg_per_kwh),
        ] {
            if !(v.is_finite() && v >= 0.0) {
                return Err(TariffError { name, got: v });
            }
        }
        Ok(())
    }
}

/// A tariff figure that is not a non-negative number.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
#[error("tariff {name} must be a non-negative number, got {got}")]
pub struct TariffError {
    pub name: &'static str,
    pub got: f64,
}
