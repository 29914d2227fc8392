//! The candle runtime: builds a family's candle-transformers model (synthetic or checkpoint
//! weights, through its room in [`crate::families`]) and runs one forward for a (batch, seq)
//! with realistic inputs.
//!
//! Weights are plain detached tensors handed to `VarBuilder::from_tensors` — never trainable
//! `Var`s, which would make candle record the graph and keep intermediates alive. The tensor
//! map holds exactly the tensors the config implies, so tied embeddings stay tied.

use crate::catalog::{CatalogError, Family, ModelSpec};
use crate::families::{AnyModel, BuildError, Inputs};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use std::collections::HashMap;

#[derive(Debug, thiserror::Error)]
pub enum ModelError {
    #[error(transparent)]
    Config(#[from] CatalogError),
    #[error(transparent)]
    Checkpoint(#[from] crate::catalog::CheckpointError),
    #[error("building the {family} model failed: {message}")]
    Build { family: Family, message: String },
    #[error("forward pass failed: {0}")]
    Forward(String),
    /// The device ran out of memory (CUDA; on the CPU the allocator aborts instead).
    #[error("out of device memory: {0}")]
    OutOfMemory(String),
}

/// A candle error as a model error: out of memory when the device says so, else `other`.
fn from_candle(e: &candle_core::Error, other: impl FnOnce(String) -> ModelError) -> ModelError {
    if crate::measure::device_oom(e) {
        ModelError::OutOfMemory(e.to_string())
    } else {
        other(e.to_string())
    }
}

/// A built model, ready for forwards.
pub struct LoadedModel {
    model: AnyModel,
    vocab: usize,
    /// Parameters as held in the run dtype (tied weights once).
    pub weights_bytes: u64,
    /// True when real checkpoint weights were loaded.
    pub from_checkpoint: bool,
}

/// Turns a panic inside candle's constructors (some `unwrap()` internally) into an error.
fn catch<T>(spec: &ModelSpec, f: impl FnOnce() -> Result<T, BuildError>) -> Result<T, ModelError> {
    let family = spec.family;
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(BuildError::Config(e))) => Err(ModelError::Config(CatalogError::Field {
            origin: spec.origin.clone(),
            message: e.0,
        })),
        Ok(Err(BuildError::Candle(e))) => Err(from_candle(&e, |message| ModelError::Build {
            family,
            message,
        })),
        Err(panic) => {
            let message = panic
                .downcast_ref::<String>()
                .cloned()
                .or_else(|| panic.downcast_ref::<&str>().map(|s| (*s).to_string()))
                .unwrap_or_else(|| "panic".into());
            Err(ModelError::Build { family, message })
        }
    }
}

/// Builds the model: checkpoint weights when the spec has them, synthetic zeros otherwise.
pub fn build(spec: &ModelSpec, dtype: DType, device: &Device) -> Result<LoadedModel, ModelError> {
    // Plans refuse such a family first; this guards a request made otherwise, before any weight.
    if let Some(reason) = spec.family.not_in_this_build() {
        return Err(ModelError::Build {
            family: spec.family,
            message: reason.into(),
        });
    }
    if let Some(reason) = spec.candle_refuses() {
        return Err(ModelError::Build {
            family: spec.family,
            message: reason,
        });
    }
    let expected = spec.dims.tensors(spec.family);
    let tensors: HashMap<String, Tensor> = if let Some(ck) = &spec.checkpoint {
        ck.load(spec.family, &expected, dtype, device)?
    } else {
        let mut m = HashMap::with_capacity(expected.len());
        for t in &expected {
            let z = Tensor::zeros(t.shape.as_slice(), dtype, device).map_err(|e| {
                from_candle(&e, |message| ModelError::Build {
                    family: spec.family,
                    message,
                })
            })?;
            m.insert(t.name.clone(), z);
        }
        m
    };
    let weights_bytes = tensors
        .values()
        .map(|t| (t.elem_count() * t.dtype().size_in_bytes()) as u64)
        .sum();
    let vb = VarBuilder::from_tensors(tensors, dtype, device);
    let room = spec.family.room();
    let model = catch(spec, || {
        room.build(&spec.config_json, &spec.dims, vb, dtype, device)
    })?;
    Ok(LoadedModel {
        model,
        vocab: spec.dims.vocab,
        weights_bytes,
        from_checkpoint: spec.checkpoint.is_some(),
    })
}

/// Deterministic, well-spread token ids in `[0, vocab)`.
#[must_use]
pub fn token_ids(batch: usize, seq: usize, vocab: usize) -> Vec<u32> {
    (0..batch * seq)
        .map(|i| ((i as u64).wrapping_mul(2_654_435_761) % vocab as u64) as u32)
        .collect()
}

impl LoadedModel {
    /// Realistic inputs for a (batch, seq): token ids, and what the family adds (an all-ones
    /// attention mask for encoders, a fresh cache for decoders that need one).
    pub fn inputs(
        &mut self,
        batch: usize,
        seq: usize,
        device: &Device,
    ) -> Result<Inputs, ModelError> {
        let ids = token_ids(batch, seq, self.vocab);
        self.inputs_from_ids(&ids, batch, seq, device)
    }

    pub fn inputs_from_ids(
        &mut self,
        ids: &[u32],
        batch: usize,
        seq: usize,
        device: &Device,
    ) -> Result<Inputs, ModelError> {
        Tensor::from_slice(ids, (batch, seq), device)
            .and_then(|ids| self.model.inputs(ids))
            .map_err(|e| from_candle(&e, ModelError::Forward))
    }

    /// One forward. Encoders return hidden states for all positions; decoders the prefill
    /// logits for the last position (what candle 0.11 computes).
    pub fn forward(&mut self, inputs: Inputs) -> Result<Tensor, ModelError> {
        self.model
            .forward(inputs)
            .map_err(|e| from_candle(&e, ModelError::Forward))
    }
}

/// Touches the per-thread matmul scratch buffers on the calling thread and every rayon worker,
/// so the first measured forward does not pay for them (they would skew small peaks by `MiBs`).
pub fn warm_up_threads(dtype: DType, device: &Device) {
    let touch = || {
        for dt in [dtype, DType::F32] {
            if let Ok(a) = Tensor::zeros((64, 64), dt, device) {
                let _ = a.matmul(&a);
            }
        }
    };
    touch();
    rayon::broadcast(|_| touch());
    // candle's CPU flash attention (Qwen3) runs on a barrier pool of its own, started on first
    // use and kept: start it here, outside any measured forward.
    if device.is_cpu() {
        let start = || -> candle_core::Result<Tensor> {
            let x = Tensor::zeros((1, 2, 1, 4), DType::F32, device)?;
            candle_nn::attention::flash_attn::<f32>(
                &x,
                &x,
                &x,
                1.0,
                candle_nn::attention::AttnMask::causal(),
                None,
                None,
            )
        };
        let _ = start();
    }
}
