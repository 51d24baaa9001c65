//! Weighted recursive least squares with exponential forgetting, one small
//! linear model per forecast horizon, stored in ndarray arrays.

use ndarray::{Array2, Array3, Axis};
use serde::{Deserialize, Serialize};

/// The feature dimension of every bank: the model's four residual features (see
/// `model.rs`). Fixed, so the arithmetic runs on stack arrays.
pub(crate) const K: usize = 4;

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
        assert_eq!(
            beta0.dim(),
            (horizons, K),
            "one row of K coefficients per horizon"
        );
        let mut p = Array3::zeros((horizons, K, K));
        for h in 0..horizons {
            for i in 0..K {
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

    pub(crate) fn predict(&self, h: usize, x: &[f64; K]) -> f64 {
        dot(row(&self.beta, h), x)
    }

    /// One weighted RLS step for model `h` with features `x`, target `y`, weight `w`.
    ///
    /// Worked in fixed-size arrays on the stack: a forecaster runs this for every horizon of
    /// every zone's series each interval, and ndarray's owned temporaries were an allocation
    /// each. The sums run in the order ndarray's `dot` gives them, so the results are the same
    /// to the bit.
    pub(crate) fn update(&mut self, h: usize, x: &[f64; K], y: f64, w: f64) {
        if !(y.is_finite() && w.is_finite() && w > 0.0) || x.iter().any(|v| !v.is_finite()) {
            return;
        }
        let lambda = self.lambda;
        let p = self
            .p
            .index_axis_mut(Axis(0), h)
            .into_slice()
            .expect("P is stored contiguous");
        let p: &mut [f64; K * K] = p.try_into().expect("P is K x K");
        let px: [f64; K] = std::array::from_fn(|i| {
            let p_row = std::array::from_fn(|j| p[i * K + j]);
            dot(&p_row, x)
        });
        let denom = lambda + w * dot(x, &px);
        if denom <= 1e-12 || !denom.is_finite() {
            return;
        }
        let gain = px.map(|v| v * (w / denom));
        let err = y - dot(row(&self.beta, h), x);
        let prior = *row(&self.prior, h);
        let b = row_mut(&mut self.beta, h);
        for i in 0..K {
            b[i] += err * gain[i];
        }
        for i in 0..K {
            b[i] += self.leak * (prior[i] - b[i]);
        }
        // P = (P - gain * px^T) / lambda, kept symmetric and bounded.
        for i in 0..K {
            for j in 0..K {
                p[i * K + j] = (p[i * K + j] - gain[i] * px[j]) / lambda;
            }
        }
        for i in 0..K {
            for j in (i + 1)..K {
                let m = 0.5 * (p[i * K + j] + p[j * K + i]);
                p[i * K + j] = m;
                p[j * K + i] = m;
            }
        }
        let max_diag = (0..K).map(|i| p[i * K + i]).fold(0.0f64, f64::max);
        if max_diag > self.p0 {
            p.iter_mut().for_each(|v| *v *= self.p0 / max_diag);
        }
        if p.iter().any(|v| !v.is_finite()) {
            p.fill(0.0);
            for i in 0..K {
                p[i * K + i] = self.p0;
            }
        }
    }

    pub(crate) fn heap_bytes(&self) -> usize {
        (self.beta.len() + self.prior.len() + self.p.len()) * std::mem::size_of::<f64>()
    }
}

/// `sum x[i] * y[i]` from zero in index order, as ndarray's `dot` sums fewer than eight terms.
fn dot(x: &[f64; K], y: &[f64; K]) -> f64 {
    let mut sum = 0.0;
    for i in 0..K {
        sum += x[i] * y[i];
    }
    sum
}

/// Row `h` of a (rows, K) array, as the fixed-size array the arithmetic here works in.
pub(crate) fn row(a: &Array2<f64>, h: usize) -> &[f64; K] {
    a.row(h)
        .to_slice()
        .and_then(|r| r.try_into().ok())
        .expect("rows are stored contiguous, K long")
}

pub(crate) fn row_mut(a: &mut Array2<f64>, h: usize) -> &mut [f64; K] {
    a.row_mut(h)
        .into_slice()
        .and_then(|r| r.try_into().ok())
        .expect("rows are stored contiguous, K long")
}

#[cfg(test)]
mod tests {
    use super::*;
    use ndarray::Array2;

    #[test]
    fn recovers_linear_coefficients() {
        let mut bank = RlsBank::new(1, Array2::zeros((1, K)), 0.999, 10.0, 0.0);
        let truth = [0.7, -0.3, 0.2, -0.1];
        let mut s = 1u64;
        for _ in 0..2000 {
            let x: [f64; K] = std::array::from_fn(|_| {
                s = s
                    .wrapping_mul(6364136223846793005)
                    .wrapping_add(1442695040888963407);
                ((s >> 33) as f64 / (1u64 << 31) as f64) - 0.5
            });
            bank.update(0, &x, dot(&truth, &x), 1.0);
        }
        for (k, want) in truth.iter().enumerate() {
            assert!((bank.beta[[0, k]] - want).abs() < 1e-3, "{:?}", bank.beta);
        }
    }
}
