//! Phi-3 (`phi3`): fused q/k/v and gate/up projections; candle's `phi3`.

// The simulated forward's names follow candle-transformers (b, s, h for batch, seq, hidden; q,
// k, v), so the two read side by side.
#![allow(clippy::many_single_char_names)]

use super::candle::{candle_config, prefill_decoder};
use super::config::{dropout_field, named_alike, opt_field};
use super::llama::{derived_head_dim, like_llama};
use super::ops::{
    Run, attend, causal_mask, embedding, linear, norm, norm_head_on_last, repeat_kv, rotary_tables,
};
use super::sim::{Dt, T};
use super::torch_llama::{self, Projections, Shape};
use super::torch_sim::{Head, Pt, TDt, TorchRun, Weights};
use super::torch_tape::Tape;
use super::{AnyModel, BuildError, ConfigError, Dims, Room, TensorShape, tensor_list};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::phi3;
use serde_json::Value;

/// Phi-3's PyTorch forward is Llama's with fused projections.
const SHAPE: Shape = Shape {
    qkv_bias: false,
    o_bias: false,
    qk_norm: false,
    mlp_bias: false,
    projections: Projections::Fused,
};

pub struct Phi3;

impl Room for Phi3 {
    fn name(&self) -> &'static str {
        "phi3"
    }
    fn is_decoder(&self) -> bool {
        true
    }
    fn dims(&self, v: &Value) -> std::result::Result<Dims, ConfigError> {
        let base = named_alike(v)?;
        if v.get("partial_rotary_factor")
            .and_then(Value::as_f64)
            .is_some_and(|f| (f - 1.0).abs() > f64::EPSILON)
        {
            return Err(
                "field \"partial_rotary_factor\" (rotary embedding on part of each head, as in Phi-4-mini) is not modelled yet; oomlab reads Phi-3 configs without it".into(),
            );
        }
        let mut d = like_llama(v, &base, true)?;
        // Only PyTorch's estimator reads these (candle 0.11's Phi-3 runs inference, unmasked by
        // a window).
        d.sliding_window = opt_field(v, "sliding_window")?.unwrap_or(0);
        d.dropout.hidden = dropout_field(v, "resid_pdrop", false)?;
        d.dropout.attention = dropout_field(v, "attention_dropout", false)?;
        // A rope_scaling (longrope, in the 128k variants) whose frequencies change per forward.
        if v.get("rope_scaling").is_some_and(|r| {
            !r.is_null() && r.get("rope_type").and_then(Value::as_str) != Some("default")
        }) {
            d.torch_refuses = Some(
                "Phi-3's rope_scaling (longrope, as in the 128k variants) is not modelled yet; configs with \"rope_scaling\": null are".into(),
            );
        }
        Ok(d)
    }
    fn tensors(&self, d: &Dims) -> Vec<TensorShape> {
        let (h, i) = (d.hidden, d.intermediate);
        let (q, kv) = (d.heads * d.head_dim(), d.kv_heads * d.head_dim());
        tensor_list(|t| {
            t("model.embed_tokens.weight".into(), &[d.vocab, h]);
            for l in 0..d.layers {
                let p = format!("model.layers.{l}");
                t(format!("{p}.self_attn.qkv_proj.weight"), &[q + 2 * kv, h]);
                t(format!("{p}.self_attn.o_proj.weight"), &[h, q]);
                t(format!("{p}.mlp.gate_up_proj.weight"), &[2 * i, h]);
                t(format!("{p}.mlp.down_proj.weight"), &[h, i]);
                t(format!("{p}.input_layernorm.weight"), &[h]);
                t(format!("{p}.post_attention_layernorm.weight"), &[h]);
            }
            t("model.norm.weight".into(), &[h]);
            if !d.tied_embeddings {
                t("lm_head.weight".into(), &[d.vocab, h]);
            }
        })
    }
    fn candle_refuses(&self, d: &Dims) -> Option<String> {
        derived_head_dim(d)
    }
    fn check_candle(&self, config: &str, _d: &Dims) -> std::result::Result<(), ConfigError> {
        candle_config::<phi3::Config>(config).map(drop)
    }
    fn build(
        &self,
        config: &str,
        _d: &Dims,
        vb: VarBuilder<'_>,
        _dtype: DType,
        _device: &Device,
    ) -> std::result::Result<AnyModel, BuildError> {
        let cfg: phi3::Config = candle_config(config)?;
        Ok(phi3::Model::new(&cfg, vb)?.into())
    }
    fn table_bytes(&self, d: &Dims, dt: Dt) -> u64 {
        rotary_tables(d, dt, 2, d.head_dim() / 2)
    }
    fn simulate(&self, r: &Run<'_>, inputs: &[T]) -> T {
        simulated(r, &inputs[0])
    }
    fn torch_weights(&self, d: &Dims, head: Head, dt: TDt) -> Option<Weights> {
        torch_llama::weights(d, head, dt, SHAPE)
    }
    fn torch_forward(
        &self,
        r: &TorchRun<'_>,
        ids: &Pt,
    ) -> std::result::Result<Vec<Pt>, &'static str> {
        torch_llama::forward(r, ids, SHAPE)
    }
    fn torch_parameter_order(&self, d: &Dims, _head: Head, grads: &mut [Pt]) {
        torch_llama::parameter_order(d, grads, SHAPE);
    }
    fn torch_train_forward<'a>(
        &self,
        r: &'a TorchRun<'a>,
        ids: &Pt,
        labels: &Pt,
        tape: &Tape<'a>,
    ) -> std::result::Result<Pt, &'static str> {
        if !r.eval && (r.d.dropout.hidden || r.d.dropout.attention) {
            return Err(
                "Phi-3's dropouts in training (resid_pdrop, attention_dropout above 0) are not modelled yet",
            );
        }
        torch_llama::train_forward(r, ids, labels, tape, SHAPE)
    }
}

prefill_decoder!(phi3::Model);

/// candle's `phi3::Model::forward`: one fused `qkv_proj` whose q, k, v are narrowed views (so
/// each reshape copies), rotary on contiguous copies, one fused `gate_up_proj` whose halves are
/// views, the mask `(b, 1, s, s)`, the final norm on the last position only.
fn simulated(r: &Run<'_>, ids: &T) -> T {
    let (b, s, h, heads, kv) = (r.b, r.s, r.d.hidden, r.d.heads, r.d.kv_heads);
    let hd = h / heads;
    let op = heads * hd + 2 * kv * hd;
    let mut kvs: Vec<(T, T)> = Vec::with_capacity(r.d.layers);
    // prepare_decoder_attention_mask: `mask.expand((b, 1, s, s))?.to_dtype(self.dtype)`
    let attention_mask = causal_mask(r, b);
    let mut xs = embedding(r, r.d.vocab, ids);
    for layer in 0..r.d.layers {
        r.sim.layer(layer);
        xs = {
            let residual = &xs;
            let xn = norm(&xs);
            let attn = {
                let qkv = linear(r, &xn, op, false);
                // narrowed views; `.reshape(..)` copies each, `.transpose(1, 2)` is a view
                let q = qkv
                    .narrow(2, heads * hd)
                    .reshape(&[b, s, heads, hd])
                    .transpose(1, 2);
                let k = qkv
                    .narrow(2, kv * hd)
                    .reshape(&[b, s, kv, hd])
                    .transpose(1, 2);
                let v = qkv
                    .narrow(2, kv * hd)
                    .reshape(&[b, s, kv, hd])
                    .transpose(1, 2);
                // apply_rotary_emb_qkv: `self.rope(&q.contiguous()?, ..)` → `rope(&xs.contiguous()?)`
                let (q2, k2) = {
                    let qc = q.contiguous();
                    let q2 = qc.unary();
                    drop(qc);
                    let kc = k.contiguous();
                    let k2 = kc.unary();
                    drop(kc);
                    (q2, k2)
                };
                k2.mark_kv();
                v.mark_kv();
                kvs.push((k2.clone(), v.clone()));
                let k3 = repeat_kv(k2, heads / kv).contiguous();
                let v3 = repeat_kv(v, heads / kv).contiguous();
                let attn_output = attend(r, &q2, &k3, &v3, &attention_mask);
                let y = {
                    let o = attn_output.transpose(1, 2).reshape(&[b, s, heads * hd]);
                    linear(r, &o, h, false)
                };
                drop((qkv, q, q2, k3, v3, attn_output));
                y
            };
            let xs2 = attn.binary(residual);
            drop(attn);
            let mlp_out = {
                let xn2 = norm(&xs2);
                // `let up_states = xs.apply(&self.gate_up_proj)?; let gate = up_states.narrow(..);
                //  let up_states = up_states.narrow(..); (up_states * gate.apply(&act))?.apply(&down)`
                let up_states = linear(r, &xn2, 2 * r.d.intermediate, false);
                let gate = up_states.narrow(2, r.d.intermediate);
                let up = up_states.narrow(2, r.d.intermediate);
                let p = up.binary(&gate.unary());
                drop((gate, up, up_states));
                linear(r, &p, h, false)
            };
            let out = xs2.binary(&mlp_out);
            drop((mlp_out, xn, xs2));
            out
        };
    }
    r.sim.after_layers();
    norm_head_on_last(r, xs, (attention_mask, kvs))
}
