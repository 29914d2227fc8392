//! Mixtral (`mixtral`): a mixture of experts, every expert's weights resident, each token through
//! `num_experts_per_tok` of them; candle's `mixtral`.

// The simulated forward's names follow candle-transformers (b, s, h for batch, seq, hidden; q,
// k, v), so the two read side by side.
#![allow(clippy::many_single_char_names)]

use super::candle::{Inputs, patched_config};
use super::config::{ConfigError, field, named_alike, opt_field};
use super::ops::{
    Run, attend, causal_mask, embedding, expert_lists, gated_mlp, linear, norm, norm_head_on_last,
    pushed_vec, repeat_kv, rope_unfused, rotary_tables,
};
use super::sim::{Dt, T};
use super::{AnyModel, BuildError, CandleModel, Dims, Room, TensorShape, tensor_list};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::mixtral;
use serde_json::Value;

pub struct Mixtral;

impl Room for Mixtral {
    fn name(&self) -> &'static str {
        "mixtral"
    }
    fn is_decoder(&self) -> bool {
        true
    }
    fn f32_only(&self) -> Option<&'static str> {
        Some("it multiplies each expert's output by routing weights it always makes in f32")
    }
    fn dims(&self, v: &Value) -> std::result::Result<Dims, ConfigError> {
        let base = named_alike(v)?;
        let experts = field(v, "num_local_experts")?;
        let per_token = field(v, "num_experts_per_tok")?;
        if per_token == 0 || per_token > experts {
            return Err(format!(
                "field \"num_experts_per_tok\" = {per_token} must be between 1 and \"num_local_experts\" = {experts}"
            )
            .into());
        }
        Ok(Dims {
            kv_heads: opt_field(v, "num_key_value_heads")?.unwrap_or(base.heads),
            // candle's Mixtral always holds its own lm_head (tied_embeddings false).
            experts,
            experts_per_token: per_token,
            ..base
        })
    }
    fn tensors(&self, d: &Dims) -> Vec<TensorShape> {
        let (h, i) = (d.hidden, d.intermediate);
        let kv = d.kv_heads * d.head_dim();
        tensor_list(|t| {
            t("model.embed_tokens.weight".into(), &[d.vocab, h]);
            for l in 0..d.layers {
                let p = format!("model.layers.{l}");
                t(format!("{p}.self_attn.q_proj.weight"), &[h, h]);
                t(format!("{p}.self_attn.k_proj.weight"), &[kv, h]);
                t(format!("{p}.self_attn.v_proj.weight"), &[kv, h]);
                t(format!("{p}.self_attn.o_proj.weight"), &[h, h]);
                t(format!("{p}.block_sparse_moe.gate.weight"), &[d.experts, h]);
                for expert in 0..d.experts {
                    let ex = format!("{p}.block_sparse_moe.experts.{expert}");
                    t(format!("{ex}.w1.weight"), &[i, h]);
                    t(format!("{ex}.w2.weight"), &[h, i]);
                    t(format!("{ex}.w3.weight"), &[i, h]);
                }
                t(format!("{p}.input_layernorm.weight"), &[h]);
                t(format!("{p}.post_attention_layernorm.weight"), &[h]);
            }
            t("model.norm.weight".into(), &[h]);
            t("lm_head.weight".into(), &[d.vocab, h]);
        })
    }
    fn check_candle(&self, config: &str, d: &Dims) -> std::result::Result<(), ConfigError> {
        mixtral_config(config, d).map(drop)
    }
    fn build(
        &self,
        config: &str,
        d: &Dims,
        vb: VarBuilder<'_>,
        _dtype: DType,
        _device: &Device,
    ) -> std::result::Result<AnyModel, BuildError> {
        let cfg = mixtral_config(config, d)?;
        Ok(MixtralModel {
            pristine: mixtral::Model::new(&cfg, vb)?,
            fresh: None,
        }
        .into())
    }
    // Mixtral keeps the tables full width: `Tensor::cat(&[&freqs, &freqs], D::Minus1)`.
    fn table_bytes(&self, d: &Dims, dt: Dt) -> u64 {
        rotary_tables(d, dt, 2, d.head_dim())
    }
    fn simulate(&self, r: &Run<'_>, inputs: &[T]) -> T {
        simulated(r, &inputs[0])
    }
}

/// candle's Mixtral config: it wants `use_flash_attn` and a numeric `sliding_window`;
/// Mixtral-8x7B's config.json has neither (its window is null: none).
fn mixtral_config(config: &str, d: &Dims) -> std::result::Result<mixtral::Config, ConfigError> {
    let window = d.max_positions;
    patched_config(config, |o| {
        o.insert("use_flash_attn".into(), false.into());
        if o.get("sliding_window").is_none_or(Value::is_null) {
            o.insert("sliding_window".into(), window.into());
        }
    })
}

/// candle's Mixtral cannot clear its KV cache, so each forward runs on a clone of the pristine
/// model (no cache), made with the inputs, before the measured region.
pub struct MixtralModel {
    pristine: mixtral::Model,
    fresh: Option<Box<mixtral::Model>>,
}

impl CandleModel for MixtralModel {
    fn inputs(&mut self, ids: Tensor) -> Result<Inputs> {
        self.fresh = Some(Box::new(self.pristine.clone()));
        Ok(Inputs::ids(ids))
    }
    fn forward(&mut self, inputs: Inputs) -> Result<Tensor> {
        let mut fresh = self
            .fresh
            .take()
            .ok_or_else(|| super::candle::missing("model clone"))?;
        fresh.forward(&inputs.ids, 0)
    }
}

/// candle's `mixtral::Model::forward` with every expert's weights resident. The router picks, per
/// token, the `num_experts_per_tok` highest of a softmax; with synthetic (zero) weights all
/// scores tie and the same first experts take every token — the case simulated here, exact for
/// synthetic weights and the most one expert can be handed with real ones. Host-side routing
/// tables (`to_vec2`, per-expert index lists) count too.
fn simulated(r: &Run<'_>, ids: &T) -> T {
    let (b, s, h, heads, kv) = (r.b, r.s, r.d.hidden, r.d.heads, r.d.kv_heads);
    let hd = h / heads;
    let (n, experts, k) = (b * s, r.d.experts, r.d.experts_per_token);
    let mut kvs: Vec<(T, T)> = Vec::with_capacity(r.d.layers);
    let attention_mask = causal_mask(r, b);
    let mut xs = embedding(r, r.d.vocab, ids);
    for layer in 0..r.d.layers {
        r.sim.layer(layer);
        xs = {
            let residual = &xs;
            let xn = norm(&xs);
            let attn = {
                let q = linear(r, &xn, h, false);
                let kk = linear(r, &xn, kv * hd, false);
                let v = linear(r, &xn, kv * hd, false);
                let q1 = q.reshape(&[b, s, heads, hd]).transpose(1, 2);
                let k1 = kk.reshape(&[b, s, kv, hd]).transpose(1, 2);
                let v1 = v.reshape(&[b, s, kv, hd]).transpose(1, 2);
                let q2 = rope_unfused(&q1);
                let k2 = rope_unfused(&k1);
                k2.mark_kv();
                v1.mark_kv();
                kvs.push((k2.clone(), v1.clone()));
                // `repeat_kv` with no `.contiguous()` after it
                let k3 = repeat_kv(k2, heads / kv);
                let v3 = repeat_kv(v1, heads / kv);
                let attn_output = attend(r, &q2, &k3, &v3, &attention_mask);
                let y = {
                    let o = attn_output.transpose(1, 2).reshape(&[b, s, h]);
                    linear(r, &o, h, false)
                };
                drop((q, kk, v, q1, k1, q2, k3, v3, attn_output));
                y
            };
            let xs2 = attn.binary(residual);
            drop(attn);
            // `xs.apply(&post_attention_layernorm)?.apply(&self.block_sparse_moe)?`
            let moe = {
                let xn2 = norm(&xs2);
                let x = xn2.reshape(&[n, h]);
                let router_logits = linear(r, &x, experts, false);
                let routing = router_logits.unary(); // softmax_last_dim
                // `routing_weights.to_dtype(F32)?.to_vec2::<f32>()?`: the rows and their Vec
                let table = {
                    let wide = routing.to_dtype(Dt::F32);
                    let rows = pushed_vec(r, n, 24);
                    // one row Vec of `experts` f32 per token, all alive together: one sum
                    let each = r.sim.raw((n * experts * 4) as u64);
                    drop(wide);
                    (rows, each)
                };
                // `top_x` and `selected_rws`
                let lists = expert_lists(r, n, experts, k);
                let mut ys = x.new_like(&[n, h], x.dt()); // `xs.zeros_like()`
                for _ in 0..k {
                    let top_x = r.sim.alloc(&[n], Dt::U32);
                    let rws = r.sim.alloc(&[n], Dt::F32);
                    let current_state = x.new_like(&[n, h], x.dt()); // index_select
                    // BlockSparseTop2MLP::forward: `let lhs = xs.apply(&w1)?.apply(&act)?;
                    // let rhs = xs.apply(&w3)?; (lhs * rhs)?.apply(&w2)`
                    let chs = gated_mlp(r, &current_state);
                    let weighted = chs.binary(&rws.reshape(&[n, 1]));
                    // `ys = ys.index_add(&top_x, &current_hidden_states, 0)?`
                    let added = ys.new_like(&[n, h], ys.dt());
                    ys = added;
                    drop((top_x, rws, current_state, chs, weighted));
                }
                let out = ys.reshape(&[b, s, h]);
                drop((table, lists, routing, router_logits, x, xn2));
                out
            };
            let out = xs2.binary(&moe);
            drop((moe, xn, xs2));
            out
        };
    }
    r.sim.after_layers();
    norm_head_on_last(r, xs, (attention_mask, kvs))
}
