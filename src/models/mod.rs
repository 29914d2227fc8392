//! One adapter per family over candle-transformers: build (synthetic or checkpoint weights)
//! and one forward for a (batch, seq) with realistic inputs.
//!
//! Weights are plain detached tensors handed to `VarBuilder::from_tensors` — never trainable
//! `Var`s, which would make candle record the graph and keep intermediates alive. The tensor
//! map holds exactly the tensors the config implies, so tied embeddings stay tied.

use crate::catalog::{CatalogError, Family, ModelSpec};
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::{
    bert, distilbert, gemma2, llama, mistral, mixtral, modernbert, phi3, qwen2, qwen3, qwen3_moe,
    xlm_roberta,
};
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

enum Kind {
    Bert(bert::BertModel),
    DistilBert(distilbert::DistilBertModel),
    Llama {
        model: llama::Llama,
        /// Pristine cache (rotary tables); cloned per forward so no KV state leaks between trials.
        cache: llama::Cache,
    },
    Qwen2(qwen2::ModelForCausalLM),
    Qwen3(qwen3::ModelForCausalLM),
    Qwen3Moe(qwen3_moe::ModelForCausalLM),
    Mistral(mistral::Model),
    Phi3(phi3::Model),
    Roberta(xlm_roberta::XLMRobertaModel),
    Gemma2(gemma2::Model),
    /// Pristine (no KV cache): candle's Mixtral cannot clear its cache, so each forward runs on
    /// a clone made with the inputs, before the measured region.
    Mixtral(mixtral::Model),
    ModernBert(modernbert::ModernBert),
}

/// A built model, ready for forwards.
pub struct LoadedModel {
    kind: Kind,
    vocab: usize,
    /// Parameters as held in the run dtype (tied weights once).
    pub weights_bytes: u64,
    /// True when real checkpoint weights were loaded.
    pub from_checkpoint: bool,
}

/// Inputs for one forward, created before the measured region.
pub struct Inputs {
    ids: Tensor,
    aux: Option<Tensor>,
    mask: Option<Tensor>,
    cache: Option<llama::Cache>,
    mixtral: Option<Box<mixtral::Model>>,
}

fn candle_config<T: serde::de::DeserializeOwned>(spec: &ModelSpec) -> Result<T, CatalogError> {
    serde_json::from_str(&spec.config_json).map_err(|e| CatalogError::Field {
        origin: spec.origin.clone(),
        message: e.to_string(),
    })
}

/// candle's config for `spec`, after `patch` has filled in what candle requires and a published
/// config.json leaves out.
fn patched_config<T: serde::de::DeserializeOwned>(
    spec: &ModelSpec,
    patch: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> Result<T, CatalogError> {
    let field = |e: serde_json::Error| CatalogError::Field {
        origin: spec.origin.clone(),
        message: e.to_string(),
    };
    let mut v: serde_json::Value = serde_json::from_str(&spec.config_json).map_err(field)?;
    if let Some(o) = v.as_object_mut() {
        patch(o);
    }
    serde_json::from_value(v).map_err(field)
}

/// candle's Mixtral config: it wants `use_flash_attn` and a numeric `sliding_window`;
/// Mixtral-8x7B's config.json has neither (its window is null: none).
fn mixtral_config(spec: &ModelSpec) -> Result<mixtral::Config, CatalogError> {
    let window = spec.dims.max_positions;
    patched_config(spec, |o| {
        o.insert("use_flash_attn".into(), false.into());
        if o.get("sliding_window")
            .is_none_or(serde_json::Value::is_null)
        {
            o.insert("sliding_window".into(), window.into());
        }
    })
}

/// candle's XLM-RoBERTa config: roberta-base's config.json has no `position_embedding_type`,
/// which candle's Config requires (absolute is what it means), nor the dropouts it reads.
fn roberta_config(spec: &ModelSpec) -> Result<xlm_roberta::Config, CatalogError> {
    patched_config(spec, |o| {
        o.entry("position_embedding_type")
            .or_insert_with(|| "absolute".into());
        o.entry("attention_probs_dropout_prob")
            .or_insert_with(|| 0.1.into());
        o.entry("hidden_dropout_prob").or_insert_with(|| 0.1.into());
        o.entry("type_vocab_size").or_insert_with(|| 1.into());
    })
}

/// Whether candle's own config type for the family reads this config (every field it requires,
/// of the type it wants), checked when the model is resolved, before any worker starts.
pub fn check_config(spec: &ModelSpec) -> Result<(), CatalogError> {
    match spec.family {
        Family::Bert => candle_config::<bert::Config>(spec).map(drop),
        Family::DistilBert => candle_config::<distilbert::Config>(spec).map(drop),
        Family::Llama => candle_config::<llama::LlamaConfig>(spec).map(drop),
        Family::Qwen2 => candle_config::<qwen2::Config>(spec).map(drop),
        Family::Qwen3 => candle_config::<qwen3::Config>(spec).map(drop),
        Family::Qwen3Moe => candle_config::<qwen3_moe::Config>(spec).map(drop),
        Family::Mistral => candle_config::<mistral::Config>(spec).map(drop),
        Family::Phi3 => candle_config::<phi3::Config>(spec).map(drop),
        Family::Mixtral => mixtral_config(spec).map(drop),
        Family::ModernBert => candle_config::<modernbert::Config>(spec).map(drop),
        Family::Gemma2 => candle_config::<gemma2::Config>(spec).map(drop),
        Family::Roberta => roberta_config(spec).map(drop),
    }
}

/// A decoder's prefill from position 0, then its KV cache cleared, so no state leaks into the
/// next forward (candle's decoders each have these two methods, on no shared trait).
macro_rules! prefill {
    ($m:expr, $ids:expr) => {{
        let r = $m.forward($ids, 0);
        $m.clear_kv_cache();
        r
    }};
}

/// Turns a panic inside candle's constructors (some `unwrap()` internally) into an error.
fn catch<T>(family: Family, f: impl FnOnce() -> candle_core::Result<T>) -> Result<T, ModelError> {
    match std::panic::catch_unwind(std::panic::AssertUnwindSafe(f)) {
        Ok(Ok(v)) => Ok(v),
        Ok(Err(e)) => Err(from_candle(&e, |message| ModelError::Build {
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

/// Bytes the weights take in `dtype`, computed from the config alone (no allocation).
#[must_use]
pub fn weights_bytes(spec: &ModelSpec, dtype: DType) -> u64 {
    spec.candle_parameters() * dtype.size_in_bytes() as u64
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
    let family = spec.family;
    let kind = match family {
        Family::Bert => {
            let cfg: bert::Config = candle_config(spec)?;
            Kind::Bert(catch(family, || bert::BertModel::load(vb, &cfg))?)
        }
        Family::DistilBert => {
            let cfg: distilbert::Config = candle_config(spec)?;
            Kind::DistilBert(catch(family, || {
                distilbert::DistilBertModel::load(vb, &cfg)
            })?)
        }
        Family::Llama => {
            let cfg: llama::LlamaConfig = candle_config(spec)?;
            let cfg = cfg.into_config(false);
            let model = catch(family, || llama::Llama::load(vb, &cfg))?;
            let cache = catch(family, || llama::Cache::new(true, dtype, &cfg, device))?;
            Kind::Llama { model, cache }
        }
        Family::Qwen2 => {
            let cfg: qwen2::Config = candle_config(spec)?;
            Kind::Qwen2(catch(family, || qwen2::ModelForCausalLM::new(&cfg, vb))?)
        }
        Family::Qwen3 => {
            let cfg: qwen3::Config = candle_config(spec)?;
            Kind::Qwen3(catch(family, || qwen3::ModelForCausalLM::new(&cfg, vb))?)
        }
        Family::Qwen3Moe => {
            let cfg: qwen3_moe::Config = candle_config(spec)?;
            Kind::Qwen3Moe(catch(family, || {
                qwen3_moe::ModelForCausalLM::new(&cfg, vb)
            })?)
        }
        Family::Mistral => {
            let cfg: mistral::Config = candle_config(spec)?;
            Kind::Mistral(catch(family, || mistral::Model::new(&cfg, vb))?)
        }
        Family::Phi3 => {
            let cfg: phi3::Config = candle_config(spec)?;
            Kind::Phi3(catch(family, || phi3::Model::new(&cfg, vb))?)
        }
        Family::Mixtral => {
            let cfg = mixtral_config(spec)?;
            Kind::Mixtral(catch(family, || mixtral::Model::new(&cfg, vb))?)
        }
        Family::ModernBert => {
            let cfg: modernbert::Config = candle_config(spec)?;
            Kind::ModernBert(catch(family, || modernbert::ModernBert::load(vb, &cfg))?)
        }
        Family::Gemma2 => {
            let cfg: gemma2::Config = candle_config(spec)?;
            Kind::Gemma2(catch(family, || gemma2::Model::new(false, &cfg, vb))?)
        }
        Family::Roberta => {
            let cfg = roberta_config(spec)?;
            Kind::Roberta(catch(family, || {
                xlm_roberta::XLMRobertaModel::new(&cfg, vb)
            })?)
        }
    };
    Ok(LoadedModel {
        kind,
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
    /// Realistic inputs for a (batch, seq): token ids, and for encoders an all-ones attention mask.
    pub fn inputs(&self, batch: usize, seq: usize, device: &Device) -> Result<Inputs, ModelError> {
        let ids = token_ids(batch, seq, self.vocab);
        self.inputs_from_ids(&ids, batch, seq, device)
    }

    pub fn inputs_from_ids(
        &self,
        ids: &[u32],
        batch: usize,
        seq: usize,
        device: &Device,
    ) -> Result<Inputs, ModelError> {
        let f = || -> candle_core::Result<Inputs> {
            let ids = Tensor::from_slice(ids, (batch, seq), device)?;
            Ok(match &self.kind {
                Kind::Bert(_) | Kind::Roberta(_) => Inputs {
                    aux: Some(ids.zeros_like()?),
                    mask: Some(ids.ones_like()?),
                    ids,
                    cache: None,
                    mixtral: None,
                },
                // candle's DistilBERT masks where the mask is 1: nothing is padding here.
                Kind::DistilBert(_) => Inputs {
                    mask: Some(Tensor::zeros((batch, 1, 1, seq), DType::U8, device)?),
                    ids,
                    aux: None,
                    cache: None,
                    mixtral: None,
                },
                Kind::Llama { cache, .. } => Inputs {
                    ids,
                    aux: None,
                    mask: None,
                    cache: Some(cache.clone()),
                    mixtral: None,
                },
                Kind::ModernBert(_) => Inputs {
                    mask: Some(ids.ones_like()?),
                    ids,
                    aux: None,
                    cache: None,
                    mixtral: None,
                },
                Kind::Mixtral(m) => Inputs {
                    ids,
                    aux: None,
                    mask: None,
                    cache: None,
                    mixtral: Some(Box::new(m.clone())),
                },
                Kind::Qwen2(_)
                | Kind::Qwen3(_)
                | Kind::Qwen3Moe(_)
                | Kind::Mistral(_)
                | Kind::Phi3(_)
                | Kind::Gemma2(_) => Inputs {
                    ids,
                    aux: None,
                    mask: None,
                    cache: None,
                    mixtral: None,
                },
            })
        };
        f().map_err(|e| from_candle(&e, ModelError::Forward))
    }

    /// One forward. Encoders return hidden states for all positions; decoders the prefill
    /// logits for the last position (what candle 0.11 computes).
    pub fn forward(&mut self, inputs: Inputs) -> Result<Tensor, ModelError> {
        let Inputs {
            ids,
            aux,
            mask,
            cache,
            mixtral,
        } = inputs;
        let out = match &mut self.kind {
            Kind::Bert(m) => match &aux {
                Some(tt) => m.forward(&ids, tt, mask.as_ref()),
                None => Err(candle_core::Error::Msg("missing token type ids".into())),
            },
            Kind::Roberta(m) => match (&aux, &mask) {
                (Some(tt), Some(mk)) => m.forward(&ids, mk, tt, None, None, None),
                _ => Err(candle_core::Error::Msg(
                    "missing token type ids or mask".into(),
                )),
            },
            Kind::DistilBert(m) => match &mask {
                Some(mk) => m.forward(&ids, mk),
                None => Err(candle_core::Error::Msg("missing mask".into())),
            },
            Kind::Llama { model, .. } => match cache {
                Some(mut c) => model.forward(&ids, 0, &mut c),
                None => Err(candle_core::Error::Msg("missing cache".into())),
            },
            Kind::Qwen2(m) => prefill!(m, &ids),
            Kind::Qwen3(m) => prefill!(m, &ids),
            Kind::Qwen3Moe(m) => prefill!(m, &ids),
            Kind::Mistral(m) => prefill!(m, &ids),
            Kind::Phi3(m) => prefill!(m, &ids),
            Kind::Gemma2(m) => prefill!(m, &ids),
            Kind::ModernBert(m) => match &mask {
                Some(mk) => m.forward(&ids, mk),
                None => Err(candle_core::Error::Msg("missing mask".into())),
            },
            Kind::Mixtral(_) => match mixtral {
                Some(mut fresh) => fresh.forward(&ids, 0),
                None => Err(candle_core::Error::Msg("missing model clone".into())),
            },
        };
        out.map_err(|e| from_candle(&e, ModelError::Forward))
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
