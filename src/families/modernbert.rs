//! `ModernBERT` (`modernbert`): an encoder with rotary positions, local attention on most layers,
//! a `GeGLU` MLP and bias-free layer norms; candle's `modernbert`.

// The simulated forward's names follow candle-transformers (b, s, h for batch, seq, hidden; q,
// k, v), so the two read side by side.
#![allow(clippy::many_single_char_names)]

use super::candle::{Inputs, candle_config};
use super::config::{field, named_alike};
use super::ops::{Run, embedding, linear, rotary_tables, softmax};
use super::sim::{Dt, T};
use super::{AnyModel, BuildError, CandleModel, ConfigError, Dims, Room, TensorShape, tensor_list};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::modernbert;
use serde_json::Value;

pub struct ModernBert;

impl Room for ModernBert {
    fn name(&self) -> &'static str {
        "modernbert"
    }
    fn is_decoder(&self) -> bool {
        false
    }
    fn f32_only(&self) -> Option<&'static str> {
        Some("it adds an f32 attention mask to scores in the run precision")
    }
    fn gated_mlp(&self) -> bool {
        true
    }
    fn dims(&self, v: &Value) -> std::result::Result<Dims, ConfigError> {
        let base = named_alike(v)?;
        Ok(Dims {
            global_every: field(v, "global_attn_every_n_layers")?.max(1),
            ..base
        })
    }
    fn tensors(&self, d: &Dims) -> Vec<TensorShape> {
        let (h, i) = (d.hidden, d.intermediate);
        tensor_list(|t| {
            t(
                "model.embeddings.tok_embeddings.weight".into(),
                &[d.vocab, h],
            );
            t("model.embeddings.norm.weight".into(), &[h]);
            for l in 0..d.layers {
                let p = format!("model.layers.{l}");
                // The first layer has no attention norm (an identity in the checkpoints).
                if l > 0 {
                    t(format!("{p}.attn_norm.weight"), &[h]);
                }
                t(format!("{p}.attn.Wqkv.weight"), &[3 * h, h]);
                t(format!("{p}.attn.Wo.weight"), &[h, h]);
                t(format!("{p}.mlp_norm.weight"), &[h]);
                t(format!("{p}.mlp.Wi.weight"), &[2 * i, h]);
                t(format!("{p}.mlp.Wo.weight"), &[h, i]);
            }
            t("model.final_norm.weight".into(), &[h]);
        })
    }
    fn check_candle(&self, config: &str, _d: &Dims) -> std::result::Result<(), ConfigError> {
        candle_config::<modernbert::Config>(config).map(drop)
    }
    fn build(
        &self,
        config: &str,
        _d: &Dims,
        vb: VarBuilder<'_>,
        _dtype: DType,
        _device: &Device,
    ) -> std::result::Result<AnyModel, BuildError> {
        let cfg: modernbert::Config = candle_config(config)?;
        Ok(modernbert::ModernBert::load(vb, &cfg)?.into())
    }
    // Two tables (global and local theta) of cos and sin, half a head wide, in the run precision.
    fn table_bytes(&self, d: &Dims, dt: Dt) -> u64 {
        rotary_tables(d, dt, 4, d.head_dim() / 2)
    }
    // the attention mask (`ones_like`)
    fn sim_inputs(&self, r: &Run<'_>, ids: T) -> Vec<T> {
        vec![ids, r.sim.alloc(&[r.b, r.s], Dt::U32)]
    }
    fn simulate(&self, r: &Run<'_>, inputs: &[T]) -> T {
        simulated(r, &inputs[0], &inputs[1])
    }
}

impl CandleModel for modernbert::ModernBert {
    fn inputs(&mut self, ids: Tensor) -> Result<Inputs> {
        Ok(Inputs {
            mask: Some(ids.ones_like()?),
            aux: None,
            ids,
        })
    }
    fn forward(&mut self, inputs: Inputs) -> Result<Tensor> {
        let mask = inputs.mask.ok_or_else(|| super::candle::missing("mask"))?;
        modernbert::ModernBert::forward(self, &inputs.ids, &mask)
    }
}

/// `LayerNorm::forward` without a bias (candle's fused op needs one): the general path.
/// `let x = x.to_dtype(f32)?; let mean_x = (x.sum_keepdim(D::Minus1)? / h)?;
/// let x = x.broadcast_sub(&mean_x)?; let norm_x = (x.sqr()?.sum_keepdim(D::Minus1)? / h)?;
/// let x_normed = x.broadcast_div(&(norm_x + eps)?.sqrt()?)?;
/// x_normed.to_dtype(x_dtype)?.broadcast_mul(&self.weight)`
fn layer_norm_no_bias(r: &Run<'_>, x: &T) -> T {
    let wide = x.to_dtype(Dt::F32);
    let mean_x = {
        let sum = wide.reduce_last();
        let m = sum.unary();
        drop(sum);
        m
    };
    let centred = wide.binary(&mean_x);
    let norm_x = {
        let sq = centred.unary();
        let sum = sq.reduce_last();
        let out = sum.unary();
        drop((sum, sq));
        out
    };
    let x_normed = {
        let plus = norm_x.unary();
        drop(norm_x);
        let root = plus.unary();
        let out = centred.binary(&root);
        drop((plus, root));
        out
    };
    let out = {
        let back = x_normed.to_dtype(r.dt);
        let out = back.binary(&r.w(&[r.d.hidden]));
        drop(back);
        out
    };
    drop((x_normed, centred, mean_x, wide));
    out
}

/// candle's `modernbert::ModernBert::forward`: the global mask built once in f32, a local
/// (sliding) one of s×s added to it on the local layers (a temporary alive through the layer),
/// a fused `Wqkv` whose q, k, v are strided views, rotary on contiguous copies, the generic
/// softmax, a `GeGLU` MLP over the two halves of `Wi`, bias-free layer norms.
fn simulated(r: &Run<'_>, ids: &T, mask: &T) -> T {
    let (b, s, h, heads) = (r.b, r.s, r.d.hidden, r.d.heads);
    let hd = h / heads;
    let global_mask = {
        let expanded = mask
            .unsqueeze(1)
            .unsqueeze(1)
            .broadcast_as(&[b, 1, s, s])
            .to_dtype(Dt::F32);
        let inverted = expanded.unary();
        drop(expanded);
        let scaled = inverted.unary();
        drop(inverted);
        scaled
    };
    // get_local_attention_mask: the `Vec<f32>`, then `Tensor::from_slice(&mask, (s, s))`
    let local_mask = {
        let vec = r.sim.raw((s * s * 4) as u64);
        let m = r.sim.alloc(&[s, s], Dt::F32);
        drop(vec);
        m
    };
    // `xs.apply(&self.word_embeddings)?.apply(&self.norm)?`
    let mut xs = {
        let e = embedding(r, r.d.vocab, ids);
        let out = layer_norm_no_bias(r, &e);
        drop(e);
        out
    };
    let every = r.d.global_every.max(1);
    for l in 0..r.d.layers {
        r.sim.layer(l);
        xs = {
            let xn = if l > 0 {
                layer_norm_no_bias(r, &xs)
            } else {
                xs.clone()
            };
            // local layers: `&global_attention_mask.broadcast_add(local_attention_mask)?`
            let local = (l % every != 0).then(|| global_mask.binary(&local_mask));
            let attention_mask = local.as_ref().unwrap_or(&global_mask);
            let attn = {
                // `.apply(&self.qkv)?.reshape((b, s, 3, heads, hd))?.permute((2, 0, 3, 1, 4))?`
                let qkv = linear(r, &xn, 3 * h, false);
                // `qkv.get(i)` is `narrow(0, i, 1)?.reshape(..)`: a reshape of a strided view,
                // so each of q, k, v is a contiguous copy
                let part = || {
                    qkv.reshape(&[b, s, 3 * heads, hd])
                        .narrow(2, heads)
                        .transpose(1, 2)
                        .contiguous()
                };
                let (q, k, v) = (part(), part(), part());
                // apply_rotary_emb_qkv: `rope(&q.contiguous()?, ..)` on what is contiguous already
                let q2 = q.unary();
                let k2 = k.unary();
                // `let q = (q * scale)?;` consumes the rotated q
                let q3 = q2.unary();
                drop(q2);
                let att = r.mm(&q3, &k2.t());
                let att2 = att.binary(attention_mask);
                let probs = softmax(&att2);
                let ctx = r.mm(&probs, &v);
                drop((att, att2, probs));
                let o = ctx.transpose(1, 2).reshape(&[b, s, h]);
                let y = linear(r, &o, h, false);
                drop((qkv, q, k, v, k2, q3, ctx, o));
                y
            };
            let sum = attn.binary(&xs);
            drop(attn);
            let mlp_out = {
                let normed = layer_norm_no_bias(r, &sum);
                let wi = linear(r, &normed, 2 * r.d.intermediate, false);
                let input = wi.narrow(2, r.d.intermediate);
                let gate = wi.narrow(2, r.d.intermediate);
                let act = input.unary();
                let p = act.binary(&gate);
                drop(act);
                let out = linear(r, &p, h, false);
                drop((p, input, gate, wi, normed));
                out
            };
            let out = sum.binary(&mlp_out);
            drop((sum, mlp_out, local, xn));
            out
        };
    }
    r.sim.after_layers();
    let out = layer_norm_no_bias(r, &xs);
    drop((xs, global_mask, local_mask));
    out
}
