//! EN 13201 lighting classes: M (motorised traffic, luminance), P (pedestrian and low-speed
//! areas, illuminance), C (conflict areas). A lower number is a brighter class.
//!
//! Lamps are designed for one class at 100 % output. When demand allows a lower class for a
//! period (CEN/TR 13201-1 adaptive lighting), the lamp is dimmed by the ratio of the two
//! classes' required averages, which is what [`LightingClass::level_pct_for`] computes.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum LightingClass {
    /// M1..=M6, average road-surface luminance.
    M(u8),
    /// P1..=P6, average horizontal illuminance.
    P(u8),
    /// C0..=C5, average horizontal illuminance.
    C(u8),
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not an EN 13201 class (M1-M6, P1-P6, C0-C5): {0:?}")]
pub struct ClassError(String);

impl LightingClass {
    /// The class's required average: cd/m2 for M, lx for P and C (EN 13201-2).
    pub fn required_average(self) -> f32 {
        const M: [f32; 6] = [2.0, 1.5, 1.0, 0.75, 0.5, 0.3];
        const P: [f32; 6] = [15.0, 10.0, 7.5, 5.0, 3.0, 2.0];
        const C: [f32; 6] = [50.0, 30.0, 20.0, 15.0, 10.0, 7.5];
        match self {
            LightingClass::M(n) => M[(n - 1) as usize],
            LightingClass::P(n) => P[(n - 1) as usize],
            LightingClass::C(n) => C[n as usize],
        }
    }

    /// The class number (M3 -> 3).
    pub fn number(self) -> u8 {
        match self {
            LightingClass::M(n) | LightingClass::P(n) | LightingClass::C(n) => n,
        }
    }

    /// The same series with another number, clamped to the series' range.
    pub fn with_number(self, n: i32) -> Self {
        match self {
            LightingClass::M(_) => LightingClass::M(n.clamp(1, 6) as u8),
            LightingClass::P(_) => LightingClass::P(n.clamp(1, 6) as u8),
            LightingClass::C(_) => LightingClass::C(n.clamp(0, 5) as u8),
        }
    }

    /// The dimming level at which a lamp designed for `self` at 100 % meets `target`.
    /// Classes of another series are compared by number only, which is the conservative
    /// reading when a zone's class series is not the lamp's.
    pub fn level_pct_for(self, target: LightingClass) -> f32 {
        let same_series = std::mem::discriminant(&self) == std::mem::discriminant(&target);
        let target = if same_series {
            target
        } else {
            self.with_number(target.number() as i32)
        };
        (100.0 * target.required_average() / self.required_average()).clamp(0.0, 100.0)
    }
}

impl fmt::Display for LightingClass {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LightingClass::M(n) => write!(f, "M{n}"),
            LightingClass::P(n) => write!(f, "P{n}"),
            LightingClass::C(n) => write!(f, "C{n}"),
        }
    }
}

impl FromStr for LightingClass {
    type Err = ClassError;
    fn from_str(s: &str) -> Result<Self, ClassError> {
        let err = || ClassError(s.to_string());
        let (series, num) = s.split_at_checked(1).ok_or_else(err)?;
        let n: u8 = num.parse().map_err(|_| err())?;
        match (series, n) {
            ("M" | "m", 1..=6) => Ok(LightingClass::M(n)),
            ("P" | "p", 1..=6) => Ok(LightingClass::P(n)),
            ("C" | "c", 0..=5) => Ok(LightingClass::C(n)),
            _ => Err(err()),
        }
    }
}

impl From<LightingClass> for String {
    fn from(c: LightingClass) -> String {
        c.to_string()
    }
}
impl TryFrom<String> for LightingClass {
    type Error = ClassError;
    fn try_from(s: String) -> Result<Self, ClassError> {
        s.parse()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_parse_and_display() {
        for s in ["M1", "M6", "P3", "C0", "C5"] {
            assert_eq!(s.parse::<LightingClass>().unwrap().to_string(), s);
        }
        for s in ["M0", "M7", "P0", "C6", "X1", "", "M"] {
            assert!(s.parse::<LightingClass>().is_err(), "{s}");
        }
    }

    #[test]
    fn dimming_level_is_the_ratio_of_required_averages() {
        let p4 = LightingClass::P(4);
        assert_eq!(p4.level_pct_for(LightingClass::P(4)), 100.0);
        assert_eq!(p4.level_pct_for(LightingClass::P(6)), 40.0);
        assert_eq!(LightingClass::M(3).level_pct_for(LightingClass::M(5)), 50.0);
        // A brighter class than designed cannot exceed 100 %.
        assert_eq!(p4.level_pct_for(LightingClass::P(1)), 100.0);
    }
}
