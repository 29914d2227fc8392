//! Qwen2 (`qwen2`): Llama's shape with biases on q, k and v; candle's `qwen2`.

// The simulated forward's names follow candle-transformers (b, s, h for batch, seq, hidden; q,
// k, v), so the two read side by side.
#![allow(clippy::many_single_char_names)]

use super::candle::{candle_config, prefill_decoder};
use super::config::{named_alike, opt_field};
use super::llama::{derived_head_dim, like_llama, tensors_like_llama};
use super::ops::{
    Run, attend, causal_mask, embedding, gated_mlp, head_on_last, linear, norm, repeat_kv,
    rotary_tables,
};
use super::sim::{Dt, T};
use super::torch_llama::{Projections, Shape};
use super::{AnyModel, BuildError, ConfigError, Dims, Room, TensorShape};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::qwen2;
use serde_json::Value;

/// Qwen2's difference from Llama's forward: biases on q, k and v.
const SHAPE: Shape = Shape {
    qkv_bias: true,
    o_bias: false,
    qk_norm: false,
    mlp_bias: false,
    projections: Projections::Separate,
};

pub struct Qwen2;

impl Room for Qwen2 {
    fn name(&self) -> &'static str {
        "qwen2"
    }
    fn is_decoder(&self) -> bool {
        true
    }
    fn dims(&self, v: &Value) -> std::result::Result<Dims, ConfigError> {
        let base = named_alike(v)?;
        let mut d = like_llama(v, &base, true)?;
        // transformers then runs sliding-window attention on the layers from max_window_layers
        // on (candle 0.11 windows every layer, memory alike: the whole mask is built).
        let windowed_from = opt_field(v, "max_window_layers")?.unwrap_or(28);
        if v.get("use_sliding_window").and_then(Value::as_bool) == Some(true)
            && windowed_from < d.layers
        {
            d.torch_refuses = Some(
                "Qwen2's use_sliding_window (sliding-window attention on the layers from max_window_layers on) is not modelled yet; configs with it false, or with max_window_layers at least num_hidden_layers, are".into(),
            );
        }
        Ok(d)
    }
    // Qwen2 always has q, k and v biases.
    fn tensors(&self, d: &Dims) -> Vec<TensorShape> {
        tensors_like_llama(d, true, false)
    }
    fn candle_refuses(&self, d: &Dims) -> Option<String> {
        derived_head_dim(d)
    }
    fn check_candle(&self, config: &str, _d: &Dims) -> std::result::Result<(), ConfigError> {
        candle_config::<qwen2::Config>(config).map(drop)
    }
    fn build(
        &self,
        config: &str,
        _d: &Dims,
        vb: VarBuilder<'_>,
        _dtype: DType,
        _device: &Device,
    ) -> std::result::Result<AnyModel, BuildError> {
        let cfg: qwen2::Config = candle_config(config)?;
        Ok(qwen2::ModelForCausalLM::new(&cfg, vb)?.into())
    }
    fn table_bytes(&self, d: &Dims, dt: Dt) -> u64 {
        rotary_tables(d, dt, 2, d.head_dim() / 2)
    }
    fn simulate(&self, r: &Run<'_>, inputs: &[T]) -> T {
        simulated(r, &inputs[0])
    }
    super::torch_room!(torch_llama, |_| SHAPE, parameter_order);
}

prefill_decoder!(qwen2::ModelForCausalLM);

/// candle's `qwen2::ModelForCausalLM::forward`, simulated.
fn simulated(r: &Run<'_>, ids: &T) -> T {
    let (b, s, h, heads, kv) = (r.b, r.s, r.d.hidden, r.d.heads, r.d.kv_heads);
    let hd = h / heads;
    // The layers' `kv_cache` fields: alive until `clear_kv_cache` after the forward.
    let mut kvs: Vec<(T, T)> = Vec::with_capacity(r.d.layers);
    // Model::forward
    let normed = {
        // prepare_causal_attention_mask: `Tensor::from_slice(&mask, (s, s))` of f32,
        // `mask.expand((b, 1, s, s))?.to_dtype(self.dtype)`
        let attention_mask = causal_mask(r, b);
        let mut xs = embedding(r, r.d.vocab, ids);
        for layer in 0..r.d.layers {
            r.sim.layer(layer);
            xs = {
                // DecoderLayer::forward
                let residual = &xs;
                let xn = norm(&xs);
                let attn = {
                    let q = linear(r, &xn, h, true);
                    let k = linear(r, &xn, kv * hd, true);
                    let v = linear(r, &xn, kv * hd, true);
                    let q1 = q.reshape(&[b, s, heads, hd]).transpose(1, 2);
                    let k1 = k.reshape(&[b, s, kv, hd]).transpose(1, 2);
                    let v1 = v.reshape(&[b, s, kv, hd]).transpose(1, 2);
                    // apply_rotary_emb_qkv: `rope(&q.contiguous()?, ..)`, `rope(&k.contiguous()?, ..)`
                    let q2 = q1.contiguous().unary();
                    let k2 = k1.contiguous().unary();
                    k2.mark_kv();
                    v1.mark_kv();
                    kvs.push((k2.clone(), v1.clone()));
                    let k3 = repeat_kv(k2, heads / kv).contiguous();
                    let v3 = repeat_kv(v1, heads / kv).contiguous();
                    let attn_output = attend(r, &q2, &k3, &v3, &attention_mask);
                    // `attn_output.transpose(1, 2)?.reshape(..)?.apply(&self.o_proj)`
                    let y = {
                        let o = attn_output.transpose(1, 2).reshape(&[b, s, h]);
                        linear(r, &o, h, false)
                    };
                    drop((q, k, v, q1, k1, q2, k3, v3, attn_output));
                    y
                };
                // `let xs = (xs + residual)?;` consumes the attention output
                let xs2 = attn.binary(residual);
                drop(attn);
                // `let xs = xs.apply(&post_ln)?.apply(&self.mlp)?; residual + xs`
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
        // `xs.apply(&self.norm)`
        let normed = norm(&xs);
        drop((xs, attention_mask));
        normed
    };
    head_on_last(r, normed, kvs)
}
