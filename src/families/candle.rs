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

/// candle's config type `T` read from the config text.
pub fn candle_config<T: serde::de::DeserializeOwned>(
    config: &str,
) -> std::result::Result<T, ConfigError> {
    serde_json::from_str(config).map_err(|e| ConfigError(e.to_string()))
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
        patch(o);
    }
    serde_json::from_value(v).map_err(field)
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
