//! Mistral (`mistral`): Llama's shape with an explicit head size candle reads and its own
//! `lm_head` always; candle's `mistral`.

// The simulated forward's names follow candle-transformers (b, s, h for batch, seq, hidden; q,
// k, v), so the two read side by side.
#![allow(clippy::many_single_char_names)]

use super::candle::{candle_config, prefill_decoder};
use super::config::{named_alike, opt_field};
use super::llama::{like_llama, tensors_like_llama};
use super::ops::{
    Run, attend, causal_mask, embedding, gated_mlp, linear, norm, norm_head_on_last, repeat_kv,
    rotary_tables,
};
use super::sim::{Dt, T};
use super::torch_llama::{Projections, Shape};
use super::{AnyModel, BuildError, ConfigError, Dims, Room, TensorShape};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::mistral;
use serde_json::Value;

/// Mistral's forward is Llama's (below its sliding window).
const SHAPE: Shape = Shape {
    qkv_bias: false,
    o_bias: false,
    qk_norm: false,
    mlp_bias: false,
    projections: Projections::Separate,
};

pub struct Mistral;

impl Room for Mistral {
    fn name(&self) -> &'static str {
        "mistral"
    }
    fn is_decoder(&self) -> bool {
        true
    }
    fn dims(&self, v: &Value) -> std::result::Result<Dims, ConfigError> {
        let base = named_alike(v)?;
        // transformers' Mistral ties its lm_head when the config says so; candle's always holds
        // its own.
        let mut d = like_llama(v, &base, true)?;
        d.torch_tied = Some(std::mem::take(&mut d.tied_embeddings));
        // Only PyTorch's estimator reads it (candle 0.11's Mistral masks the same way).
        d.sliding_window = opt_field(v, "sliding_window")?.unwrap_or(0);
        Ok(d)
    }
    fn tensors(&self, d: &Dims) -> Vec<TensorShape> {
        tensors_like_llama(d, false, false)
    }
    fn check_candle(&self, config: &str, _d: &Dims) -> std::result::Result<(), ConfigError> {
        candle_config::<mistral::Config>(config).map(drop)
    }
    fn build(
        &self,
        config: &str,
        _d: &Dims,
        vb: VarBuilder<'_>,
        _dtype: DType,
        _device: &Device,
    ) -> std::result::Result<AnyModel, BuildError> {
        let cfg: mistral::Config = candle_config(config)?;
        Ok(mistral::Model::new(&cfg, vb)?.into())
    }
    fn table_bytes(&self, d: &Dims, dt: Dt) -> u64 {
        rotary_tables(d, dt, 2, d.head_dim() / 2)
    }
    fn simulate(&self, r: &Run<'_>, inputs: &[T]) -> T {
        simulated(r, &inputs[0])
    }
    super::torch_room!(torch_llama, |_| SHAPE, parameter_order);
}

prefill_decoder!(mistral::Model);

/// candle's `mistral::Model::forward` (no biases; q, k, v made contiguous before the rotary
/// embedding, which then runs on them in place of copies; the mask `(1, 1, s, s)`; the final
/// norm on the last position only).
fn simulated(r: &Run<'_>, ids: &T) -> T {
    let (b, s, h, heads, kv) = (r.b, r.s, r.d.hidden, r.d.heads, r.d.kv_heads);
    // The config's head_dim where it gives one (Mistral-Nemo: 128 of a 5120-wide, 32-head model).
    let hd = r.d.head_dim();
    let mut kvs: Vec<(T, T)> = Vec::with_capacity(r.d.layers);
    // prepare_decoder_attention_mask: the `Vec<f32>`, `Tensor::from_slice(&mask, (s, s))`,
    // `mask.expand((1, 1, s, s))?.to_dtype(self.dtype)`
    let attention_mask = causal_mask(r, 1);
    let mut xs = embedding(r, r.d.vocab, ids);
    for layer in 0..r.d.layers {
        r.sim.layer(layer);
        xs = {
            let residual = &xs;
            let xn = norm(&xs);
            let attn = {
                let q = linear(r, &xn, heads * hd, false);
                let k = linear(r, &xn, kv * hd, false);
                let v = linear(r, &xn, kv * hd, false);
                // `.reshape(..)?.transpose(1, 2)?.contiguous()?` for each
                let q1 = q.reshape(&[b, s, heads, hd]).transpose(1, 2).contiguous();
                let k1 = k.reshape(&[b, s, kv, hd]).transpose(1, 2).contiguous();
                let v1 = v.reshape(&[b, s, kv, hd]).transpose(1, 2).contiguous();
                // apply_rotary_emb_qkv: `rope(q, ..)`, `rope(k, ..)`
                let q2 = q1.unary();
                let k2 = k1.unary();
                k2.mark_kv();
                v1.mark_kv();
                kvs.push((k2.clone(), v1.clone()));
                // repeat_kv (no `.contiguous()` after it here)
                let k3 = repeat_kv(k2, heads / kv);
                let v3 = repeat_kv(v1, heads / kv);
                let attn_output = attend(r, &q2, &k3, &v3, &attention_mask);
                let y = {
                    let o = attn_output.transpose(1, 2).reshape(&[b, s, heads * hd]);
                    linear(r, &o, h, false)
                };
                drop((q, k, v, q1, q2, k3, v3, attn_output));
                y
            };
            let xs2 = attn.binary(residual);
            drop(attn);
            let mlp_out = {
                let xn2 = norm(&xs2);
                gated_mlp(r, &xn2)
            };
            let out = xs2.binary(&mlp_out);
            drop((mlp_out, xn, xs2));
            out
        };
    }
    r.sim.after_layers();
    norm_head_on_last(r, xs, (attention_mask, kvs))
}
