//! What the teaching views need from the estimator: the shown sweep's model resolved, the
//! runtime's bytes for each precision (measured once per machine, cached), and each curve's
//! predicted memory against batch. Built on a background thread (resolving a folder reads
//! files; a first calibration starts a worker), once per shown model and plan.

use crate::calibrate;
use crate::catalog::{ModelRef, ModelSpec};
use crate::estimate::{self, Breakdown, Runtime};
use crate::plan::{BatchRange, Curve, Precision};
use crate::report::Results;
use crate::worker::WorkerConfig;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

/// What a prediction is for: a change of any of these asks for a new one.
#[derive(Debug, Clone, PartialEq)]
pub struct TeachKey {
    pub model: ModelRef,
    pub threads: usize,
    pub curves: Vec<Curve>,
    pub range: BatchRange,
    pub capacity_bytes: u64,
}

impl TeachKey {
    #[must_use]
    pub fn of(r: &Results) -> Self {
        Self {
            model: r.model_ref.clone(),
            threads: r.threads.unwrap_or_else(|| r.plan.device.threads()),
            curves: r.plan.curves(),
            range: r.plan.batch,
            capacity_bytes: r.capacity_bytes,
        }
    }
}

/// One curve's prediction, drawn dashed under its measured points.
#[derive(Debug, Clone)]
pub struct PredictedCurve {
    pub curve: Curve,
    /// (batch, estimated total bytes).
    pub points: Vec<[f64; 2]>,
    /// The largest batch whose estimate fits the capacity (None: not even the range minimum).
    pub b_star: Option<usize>,
}

/// The estimator, ready for a shown sweep.
#[derive(Debug, Clone)]
pub struct TeachModel {
    pub key: TeachKey,
    pub spec: ModelSpec,
    /// For every precision the model's family runs in.
    pub runtimes: BTreeMap<Precision, Runtime>,
    pub curves: Vec<PredictedCurve>,
}

impl TeachModel {
    /// The estimate at a point, when the precision is one the model runs in.
    #[must_use]
    pub fn estimate(&self, batch: usize, seq: usize, dtype: Precision) -> Option<Breakdown> {
        let rt = self.runtimes.get(&dtype)?;
        Some(estimate::estimate(&self.spec, batch, seq, dtype, rt))
    }

    /// The estimator's largest batch at (seq, dtype) under `capacity_bytes`.
    #[must_use]
    pub fn b_star(&self, seq: usize, dtype: Precision, capacity_bytes: u64) -> Option<usize> {
        let rt = self.runtimes.get(&dtype)?;
        estimate::max_batch(
            &self.spec,
            seq,
            dtype,
            rt,
            capacity_bytes,
            crate::plan::MAX_BATCH,
        )
    }
}

/// Batches to draw a predicted curve at: every batch of a short range, else about 48 spread
/// over it, always with both ends.
fn sample_batches(lo: usize, hi: usize) -> Vec<usize> {
    let n = hi - lo + 1;
    if n <= 64 {
        return (lo..=hi).collect();
    }
    let mut v: Vec<usize> = (0..48).map(|i| lo + (n - 1) * i / 47).collect();
    v.dedup();
    v
}

/// Why the estimator for a shown sweep could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TeachError {
    #[error(transparent)]
    Model(#[from] crate::catalog::CatalogError),
    #[error(transparent)]
    Calibrate(#[from] calibrate::CalibrateError),
}

/// Builds the estimator for `key` (background thread). `cache` overrides the runtime cache file.
pub fn load(
    key: &TeachKey,
    worker: &WorkerConfig,
    cache: Option<&PathBuf>,
) -> Result<TeachModel, TeachError> {
    let spec = ModelSpec::resolve(&key.model)?;
    let cancel = AtomicBool::new(false);
    let mut runtimes = BTreeMap::new();
    let candle_runs = spec.candle_refuses().is_none();
    for dtype in Precision::ALL {
        if candle_runs && spec.family.supports(dtype) {
            let (rt, _) = calibrate::runtime(key.threads, dtype, worker, cache.cloned(), &cancel)?;
            runtimes.insert(dtype, rt);
        }
    }
    let mut model = TeachModel {
        key: key.clone(),
        spec,
        runtimes,
        curves: Vec::new(),
    };
    // The estimator models candle's forward: PyTorch's curves get no prediction.
    for &curve in key
        .curves
        .iter()
        .filter(|c| c.runtime == crate::plan::Runtime::Candle)
    {
        let Some(rt) = model.runtimes.get(&curve.dtype) else {
            continue;
        };
        let b_star = estimate::max_batch(
            &model.spec,
            curve.seq,
            curve.dtype,
            rt,
            key.capacity_bytes,
            key.range.max,
        )
        .filter(|&b| b >= key.range.min);
        // Up to a little past the predicted boundary, where the measured points will land.
        let hi = b_star.map_or(key.range.max, |b| (b + b / 4 + 2).min(key.range.max));
        let points = sample_batches(key.range.min, hi.max(key.range.min))
            .into_iter()
            .map(|b| {
                let e = estimate::estimate(&model.spec, b, curve.seq, curve.dtype, rt);
                [b as f64, e.total_bytes as f64]
            })
            .collect();
        model.curves.push(PredictedCurve {
            curve,
            points,
            b_star,
        });
    }
    Ok(model)
}

#[cfg(test)]
mod tests {
    use super::sample_batches;

    #[test]
    fn samples_keep_both_ends_and_stay_few() {
        assert_eq!(sample_batches(3, 7), vec![3, 4, 5, 6, 7]);
        let v = sample_batches(1, 1000);
        assert_eq!((v[0], *v.last().unwrap()), (1, 1000));
        assert!(v.len() <= 48 && v.windows(2).all(|w| w[0] < w[1]));
    }
}
