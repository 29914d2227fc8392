//! What the rooms share on the candle side: the model trait the worker drives, reading candle's
//! own config types (patched where a published config.json leaves out what candle requires),
//! and the decoders' prefill.

use super::ConfigError;
use candle_core::{Result, Tensor};

/// A candle-transformers model, built: inputs made before the measured region, then forwards.
pub trait CandleModel {
    /// What one forward needs beside the token ids `(batch, seq)`, made now (outside the
    /// measured region). State a forward needs fresh (a cache, a model clone) is made here too
    /// and kept by the model until its forward, so no allocation of oomlab's own is counted.
    fn inputs(&mut self, ids: Tensor) -> Result<Inputs>;
    /// One forward. Encoders return hidden states for all positions; decoders the prefill
    /// logits for the last position (what candle 0.11 computes).
    fn forward(&mut self, inputs: Inputs) -> Result<Tensor>;
}

/// Inputs for one forward: the ids and the tensors a family adds (token type ids, a mask).
pub struct Inputs {
    pub ids: Tensor,
    pub aux: Option<Tensor>,
    pub mask: Option<Tensor>,
}

impl Inputs {
    /// The ids alone.
    #[must_use]
    pub fn ids(ids: Tensor) -> Self {
        Self {
            ids,
            aux: None,
            mask: None,
        }
    }
}

/// The input or state a family made and its forward misses (a bug: a forward without its
/// inputs).
pub fn missing(what: &str) -> candle_core::Error {
    candle_core::Error::Msg(format!("missing {what}"))
}

/// Why a family's candle model could not be built.
#[derive(Debug, thiserror::Error)]
pub enum BuildError {
    /// candle's config type refused the config.
    #[error("{0}")]
    Config(#[from] ConfigError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
}

/// candle's config type `T` read from the config text (a config saved by transformers 5
/// first given the fields candle reads: [`transformers4_fields`]).
pub fn candle_config<T: serde::de::DeserializeOwned>(
    config: &str,
) -> std::result::Result<T, ConfigError> {
    patched_config(config, |_| {})
}

/// candle's config for the config text, after `patch` has filled in what candle requires and a
/// published config.json leaves out.
pub fn patched_config<T: serde::de::DeserializeOwned>(
    config: &str,
    patch: impl FnOnce(&mut serde_json::Map<String, serde_json::Value>),
) -> std::result::Result<T, ConfigError> {
    let field = |e: serde_json::Error| ConfigError(e.to_string());
    let mut v: serde_json::Value = serde_json::from_str(config).map_err(field)?;
    if let Some(o) = v.as_object_mut() {
        transformers4_fields(o);
        patch(o);
    }
    serde_json::from_value(v).map_err(field)
}

/// transformers 5 saves a model's rotary settings in `rope_parameters` (one dict, or one per
/// layer type: `full_attention`, `sliding_attention`) where transformers 4 wrote `rope_theta`
/// (Gemma 3's local `rope_local_base_freq`, `ModernBERT`'s `global_rope_theta` and
/// `local_rope_theta`) and `rope_scaling`, which candle 0.11's config types read; it writes
/// `sliding_window: null` for a Qwen2 without one, where candle's wants a number, and Qwen3-MoE's
/// `num_experts` as `num_local_experts`. Each absent field is filled from its new home, the same
/// values under the old names; a config that has them is left as it is.
fn transformers4_fields(o: &mut serde_json::Map<String, serde_json::Value>) {
    use serde_json::Value;
    // Qwen3-MoE's expert count (its attribute map's name).
    if o.get("model_type").and_then(Value::as_str) == Some("qwen3_moe")
        && o.get("num_experts").is_none_or(Value::is_null)
        && let Some(experts) = o.get("num_local_experts").cloned()
    {
        o.insert("num_experts".to_string(), experts);
    }
    let Some(Value::Object(rope)) = o.get("rope_parameters").cloned() else {
        return sliding_window_as_number(o);
    };
    let theta = |p: &serde_json::Map<String, Value>| p.get("rope_theta").cloned();
    let (global, local) = match (rope.get("full_attention"), rope.get("sliding_attention")) {
        (Some(Value::Object(full)), sliding) => {
            (full.clone(), sliding.and_then(Value::as_object).cloned())
        }
        _ => (rope.clone(), None),
    };
    let mut fill = |name: &str, value: Option<Value>| {
        if let Some(value) = value
            && o.get(name).is_none_or(Value::is_null)
        {
            o.insert(name.to_string(), value);
        }
    };
    fill("rope_theta", theta(&global));
    fill("global_rope_theta", theta(&global));
    if let Some(local) = &local {
        fill("rope_local_base_freq", theta(local));
        fill("local_rope_theta", theta(local));
    }
    let scaled = global
        .get("rope_type")
        .and_then(Value::as_str)
        .is_some_and(|t| t != "default");
    if scaled {
        fill("rope_scaling", Some(Value::Object(global.clone())));
    }
    sliding_window_as_number(o);
}

/// A Qwen2 without a sliding window (`use_sliding_window` false) saved by transformers 5 has
/// `sliding_window: null`; candle's config wants a number, which its model then ignores.
fn sliding_window_as_number(o: &mut serde_json::Map<String, serde_json::Value>) {
    let off = o
        .get("use_sliding_window")
        .is_none_or(|u| u.as_bool() == Some(false));
    if off
        && o.get("sliding_window")
            .is_some_and(serde_json::Value::is_null)
        && o.get("model_type").and_then(serde_json::Value::as_str) == Some("qwen2")
        && let Some(positions) = o.get("max_position_embeddings").cloned()
    {
        o.insert("sliding_window".to_string(), positions);
    }
}

/// A decoder whose forward takes the ids alone: a prefill from position 0, then its KV cache
/// cleared, so no state leaks into the next forward (candle's decoders each have these two
/// methods, on no shared trait).
macro_rules! prefill_decoder {
    ($ty:ty) => {
        impl $crate::families::CandleModel for $ty {
            fn inputs(
                &mut self,
                ids: candle_core::Tensor,
            ) -> candle_core::Result<$crate::families::candle::Inputs> {
                Ok($crate::families::candle::Inputs::ids(ids))
            }

            fn forward(
                &mut self,
                inputs: $crate::families::candle::Inputs,
            ) -> candle_core::Result<candle_core::Tensor> {
                let r = <$ty>::forward(self, &inputs.ids, 0);
                self.clear_kv_cache();
                r
            }
        }
    };
}
pub(crate) use prefill_decoder;
