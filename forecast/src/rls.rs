//! Weighted recursive least squares with exponential forgetting, one small
//! linear model per forecast horizon, stored in ndarray arrays.

use ndarray::{Array1, Array2, Array3, ArrayView1};
use serde::{Deserialize, Serialize};

/// A bank of `horizons` independent RLS models sharing the same feature
/// dimension `k`. Model `h` predicts the residual `h + 1` steps ahead.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub(crate) struct RlsBank {
    /// Coefficients, shape (horizons, k).
    pub(crate) beta: Array2<f64>,
    /// Inverse information matrices, shape (horizons, k, k).
    p: Array3<f64>,
    /// Prior coefficients that `beta` leaks back to.
    prior: Array2<f64>,
    /// Leak rate towards the prior per update (a weak ridge: keeps directions
    /// the data do not excite, e.g. collinear lags, from winding up).
    leak: f64,
    /// Forgetting factor per update.
    lambda: f64,
    /// Initial (and maximum) diagonal value of P; bounds P under weak
    /// excitation so that forgetting cannot blow it up.
    p0: f64,
}

impl RlsBank {
    pub(crate) fn new(
        horizons: usize,
        beta0: Array2<f64>,
        lambda: f64,
        p0: f64,
        leak: f64,
    ) -> Self {
        let k = beta0.ncols();
        debug_assert_eq!(beta0.nrows(), horizons);
        let mut p = Array3::zeros((horizons, k, k));
        for h in 0..horizons {
            for i in 0..k {
                p[[h, i, i]] = p0;
            }
        }
        RlsBank {
            prior: beta0.clone(),
            leak,
            beta: beta0,
            p,
            lambda,
            p0,
        }
    }

    pub(crate) fn k(&self) -> usize {
        self.beta.ncols()
    }

    pub(crate) fn predict(&self, h: usize, x: ArrayView1<f64>) -> f64 {
        self.beta.row(h).dot(&x)
    }

    /// One weighted RLS step for model `h` with features `x`, target `y`, weight `w`.
    pub(crate) fn update(&mut self, h: usize, x: ArrayView1<f64>, y: f64, w: f64) {
        if !(y.is_finite() && w.is_finite() && w > 0.0) || x.iter().any(|v| !v.is_finite()) {
            return;
        }
        let k = self.k();
        let mut p = self.p.index_axis_mut(ndarray::Axis(0), h);
        let px: Array1<f64> = p.dot(&x);
        let denom = self.lambda + w * x.dot(&px);
        if denom <= 1e-12 || !denom.is_finite() {
            return;
        }
        let gain = &px * (w / denom);
        let err = y - self.beta.row(h).dot(&x);
        {
            let mut b = self.beta.row_mut(h);
            b.scaled_add(err, &gain);
            let prior = self.prior.row(h);
            b.zip_mut_with(&prior, |b, p| *b += self.leak * (p - *b));
        }
        // P = (P - gain * px^T) / lambda, kept symmetric and bounded.
        for i in 0..k {
            for j in 0..k {
                p[[i, j]] = (p[[i, j]] - gain[i] * px[j]) / self.lambda;
            }
        }
        for i in 0..k {
            for j in (i + 1)..k {
                let m = 0.5 * (p[[i, j]] + p[[j, i]]);
                p[[i, j]] = m;
                p[[j, i]] = m;
            }
        }
        let max_diag = (0..k).map(|i| p[[i, i]]).fold(0.0f64, f64::max);
        if max_diag > self.p0 {
            p.mapv_inplace(|v| v * (self.p0 / max_diag));
        }
        if p.iter().any(|v| !v.is_finite()) {
            p.fill(0.0);
            for i in 0..k {
                p[[i, i]] = self.p0;
            }
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        (self.beta.len() + self.prior.len() + self.p.len()) * std::mem::size_of::<f64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::{array, Array2};

    #[test]
    fn recovers_linear_coefficients() {
        let mut bank = RlsBank::new(1, Array2::zeros((1, 2)), 0.999, 10.0, 0.0);
        let mut s = 1u64;
        for _ in 0..2000 {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let a = ((s >> 33) as f64 / (1u64 << 31) as f64) - 0.5;
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let b = ((s >> 33) as f64 / (1u64 << 31) as f64) - 0.5;
            let x = array![a, b];
            bank.update(0, x.view(), 0.7 * a - 0.3 * b, 1.0);
        }
        assert!((bank.beta[[0, 0]] - 0.7).abs() < 1e-3, "{:?}", bank.beta);
        assert!((bank.beta[[0, 1]] + 0.3).abs() < 1e-3, "{:?}", bank.beta);
    }
}
