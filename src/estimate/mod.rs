//! The analytic memory model: what a forward needs, predicted from the model's dims before any
//! trial — weights, the activations alive at the forward's peak, the KV cache, and the overhead
//! the worker holds beside the weights. Pure: no I/O, no threads.
//!
//! Activations come from a liveness simulation of the forward candle runs (each family's room
//! writes its forward again over shape-only tensors; `families::sim` counts what is alive when), not
//! from constants fitted to measurements. The overhead has two parts: what the model's build
//! leaves beside the weights (tensor metadata, rotary tables), derived from the dims; and the
//! runtime's own buffers (per-thread matmul scratch, allocator and thread-pool state), which
//! depend on the machine and the thread count and are measured once (see [`Runtime`]).

pub mod torch;

use crate::catalog::ModelSpec;
use crate::families::ops::Run;
use crate::families::sim::{self, Dt, Sim, tensor_metadata_bytes};
use crate::plan::Precision;
use serde::{Deserialize, Serialize};

/// The runtime's bytes beside the model: measured once per machine, thread count and precision
/// (the worker's baseline for a tiny model, less that model's weights and build metadata).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Runtime {
    pub threads: usize,
    pub bytes: u64,
}

impl Runtime {
    /// What is measured from a worker's baseline for `spec` (a small model is best).
    #[must_use]
    pub fn from_baseline(
        spec: &ModelSpec,
        dtype: Precision,
        threads: usize,
        baseline: u64,
    ) -> Self {
        let model = spec.weights_bytes(dtype.candle()) + build_bytes(spec, dtype);
        Self {
            threads,
            bytes: baseline.saturating_sub(model),
        }
    }
}

/// What a forward needs, by part. `total_bytes` is comparable with a sweep trial's
/// `total_bytes` (the worker's high-water mark).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Breakdown {
    pub weights_bytes: u64,
    /// Activations alive at the forward's peak (the inputs included), the KV cache excluded.
    pub activation_bytes: u64,
    /// The KV cache alive at the peak (decoders).
    pub kv_cache_bytes: u64,
    /// Held beside the weights: the build's tensor metadata and tables, and the runtime's own.
    pub overhead_bytes: u64,
    pub total_bytes: u64,
}

/// What building the model leaves alive beside the weights: each weight tensor's metadata, and
/// the rotary tables decoders keep (llama's `Cache` and qwen2's `RotaryEmbedding`: cos and sin
/// for every position, half a head wide, in the run precision; llama keeps an f32 copy's worth
/// only transiently).
#[must_use]
pub fn build_bytes(spec: &ModelSpec, dtype: Precision) -> u64 {
    let d = &spec.dims;
    let meta: u64 = d
        .tensors(spec.family)
        .iter()
        .map(|t| tensor_metadata_bytes(t.shape.len()))
        .sum();
    let rotary = spec.family.room().table_bytes(d, Dt::from(dtype));
    meta + rotary
}

/// The simulated forward's high-water mark above what was live before it, and the KV cache's
/// share of it.
/// `threads`: the worker's CPU threads (kernels that keep a scratch row per thread).
fn forward_peak(
    spec: &ModelSpec,
    batch: usize,
    seq: usize,
    dtype: Precision,
    threads: usize,
) -> sim::Peak {
    simulated_forward(spec, batch, seq, dtype, threads).peak()
}

/// One simulated forward at this point, run to its end (its output and inputs released); the
/// simulator keeps its peak, the scope of the peak and where the layers began.
fn simulated_forward(
    spec: &ModelSpec,
    batch: usize,
    seq: usize,
    dtype: Precision,
    threads: usize,
) -> Sim {
    let sim = Sim::new();
    let r = Run {
        sim: &sim,
        d: &spec.dims,
        b: batch,
        s: seq,
        dt: dtype.into(),
        threads: threads.max(1),
    };
    let room = spec.family.room();
    let inputs = room.sim_inputs(&r, sim.alloc(&[batch, seq], Dt::U32));
    let out = room.simulate(&r, &inputs);
    drop(out);
    drop(inputs);
    sim
}

/// Where a simulated forward peaks and where its layers begin: what a candle trial's timeline
/// is labelled with, as the estimator's (the worker's allocator sees bytes, not ops).
#[derive(Debug, Clone, PartialEq)]
pub struct ForwardShape {
    /// The op and place of the allocation that made the peak: `MLP › linear in layer 1`.
    pub peak_at: String,
    /// Where each layer begins, as a fraction (0 to 1) of the forward's allocations and frees.
    pub layer_starts: Vec<f64>,
}

/// The simulated forward's [`ForwardShape`] for one point.
#[must_use]
pub fn forward_shape(
    spec: &ModelSpec,
    batch: usize,
    seq: usize,
    dtype: Precision,
    threads: usize,
) -> ForwardShape {
    let sim = simulated_forward(spec, batch, seq, dtype, threads);
    let (events, starts) = sim.layer_starts();
    let n = events.max(1) as f64;
    ForwardShape {
        peak_at: sim.peak().scope.to_string(),
        layer_starts: starts.into_iter().map(|e| e as f64 / n).collect(),
    }
}

/// What one forward adds to the live bytes at its peak (inputs, activations and KV cache): on
/// top of a worker's measured baseline, its `total_bytes`.
#[must_use]
pub fn forward_bytes(
    spec: &ModelSpec,
    batch: usize,
    seq: usize,
    dtype: Precision,
    threads: usize,
) -> u64 {
    forward_peak(spec, batch, seq, dtype, threads).bytes
}

/// The estimate for one (batch, seq, precision).
#[must_use]
pub fn estimate(
    spec: &ModelSpec,
    batch: usize,
    seq: usize,
    dtype: Precision,
    runtime: &Runtime,
) -> Breakdown {
    let peak = forward_peak(spec, batch, seq, dtype, runtime.threads);
    let weights_bytes = spec.weights_bytes(dtype.candle());
    let overhead_bytes = build_bytes(spec, dtype) + runtime.bytes;
    let activation_bytes = peak.bytes - peak.kv_cache_bytes;
    Breakdown {
        weights_bytes,
        activation_bytes,
        kv_cache_bytes: peak.kv_cache_bytes,
        overhead_bytes,
        total_bytes: weights_bytes + overhead_bytes + peak.bytes,
    }
}

/// The largest batch in `1..=limit` where `fits` holds (memory grows with batch, so a bisection
/// finds it); None when batch 1 does not.
fn last_fitting(limit: usize, fits: impl Fn(usize) -> bool) -> Option<usize> {
    if !fits(1) {
        return None;
    }
    let (mut good, mut bad) = (1, limit + 1);
    while bad - good > 1 {
        let mid = usize::midpoint(good, bad);
        if fits(mid) {
            good = mid;
        } else {
            bad = mid;
        }
    }
    Some(good)
}

/// The largest batch in `1..=limit` whose forward fits on top of a measured `baseline_bytes`
/// under `capacity_bytes`: the estimator's b* for a worker already built (running `threads`).
#[must_use]
pub fn max_batch_over_baseline(
    spec: &ModelSpec,
    seq: usize,
    dtype: Precision,
    threads: usize,
    baseline_bytes: u64,
    capacity_bytes: u64,
    limit: usize,
) -> Option<usize> {
    last_fitting(limit, |b| {
        baseline_bytes + forward_bytes(spec, b, seq, dtype, threads) <= capacity_bytes
    })
}

/// The largest batch in `1..=limit` whose estimated total stays at or under `capacity_bytes`
/// (memory grows with batch, so a bisection finds it).
#[must_use]
pub fn max_batch(
    spec: &ModelSpec,
    seq: usize,
    dtype: Precision,
    runtime: &Runtime,
    capacity_bytes: u64,
    limit: usize,
) -> Option<usize> {
    last_fitting(limit, |b| {
        estimate(spec, b, seq, dtype, runtime).total_bytes <= capacity_bytes
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ModelRef;

    fn spec(id: &str) -> ModelSpec {
        ModelSpec::resolve(&ModelRef::Catalog(id.into())).unwrap()
    }

    /// Every layer begins once, in order, inside the forward; the peak is named by its op and
    /// where it is (a layer, or before or after them).
    #[test]
    fn a_simulated_forward_names_its_peak_and_where_its_layers_begin() {
        for (id, seq) in [
            ("tiny-bert", 64),
            ("tiny-llama", 64),
            ("bert-base-uncased", 128),
        ] {
            let s = spec(id);
            let shape = forward_shape(&s, 4, seq, Precision::F32, 1);
            assert_eq!(shape.layer_starts.len(), s.dims.layers, "{id}");
            assert!(
                shape.layer_starts.windows(2).all(|w| w[0] < w[1])
                    && shape.layer_starts.iter().all(|f| *f > 0.0 && *f < 1.0),
                "{id}: {:?}",
                shape.layer_starts
            );
            assert!(
                shape.peak_at.contains(" in layer ")
                    || shape.peak_at.ends_with("before the first layer")
                    || shape.peak_at.ends_with("after the last layer"),
                "{id}: {}",
                shape.peak_at
            );
            assert!(
                !shape.peak_at.starts_with("an op"),
                "{id}: {}",
                shape.peak_at
            );
        }
        // bert-base at seq 128: the attention probabilities (softmax's last step) make the peak.
        let shape = forward_shape(&spec("bert-base-uncased"), 8, 128, Precision::F32, 1);
        assert!(shape.peak_at.starts_with("softmax › "), "{}", shape.peak_at);
    }
}
