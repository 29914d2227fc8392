//! Gemma 2 (`gemma2`): f32 norms around attention and the MLP, logit soft-capping, an explicit
//! head size, the head tied to the embeddings; candle's `gemma2`.

// The simulated forward's names follow candle-transformers (b, s, h for batch, seq, hidden; q,
// k, v), so the two read side by side.
#![allow(clippy::many_single_char_names)]

use super::candle::{candle_config, prefill_decoder};
use super::config::{activation, dropout_field, field, opt_field, refuse_true};
use super::llama::self_attn_tensors;
use super::ops::{
    Run, causal_mask, embedding, gated_mlp, gemma_norm, linear, repeat_kv, rotary_tables, softcap,
};
use super::sim::{Dt, T};
use super::torch_gemma::Gemma;
use super::{AnyModel, BuildError, ConfigError, Dims, Room, Softcapping, TensorShape, tensor_list};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::gemma2;
use serde_json::Value;

pub struct Gemma2;

impl Room for Gemma2 {
    fn name(&self) -> &'static str {
        "gemma2"
    }
    fn is_decoder(&self) -> bool {
        true
    }
    fn dims(&self, v: &Value) -> std::result::Result<Dims, ConfigError> {
        let heads = field(v, "num_attention_heads")?;
        // Read as false below; Google's Gemma 2 checkpoints have none.
        refuse_true(
            v,
            "attention_bias",
            "biases on the attention projections, which oomlab does not model for Gemma 2",
        )?;
        let mut d = Dims {
            layers: field(v, "num_hidden_layers")?,
            hidden: field(v, "hidden_size")?,
            heads,
            kv_heads: opt_field(v, "num_key_value_heads")?.unwrap_or(heads),
            intermediate: field(v, "intermediate_size")?,
            vocab: field(v, "vocab_size")?,
            // candle's default when the config has none
            max_positions: opt_field(v, "max_position_embeddings")?.unwrap_or(4096),
            // Gemma ties its head to the embeddings, always.
            tied_embeddings: true,
            head_dim_override: Some(field(v, "head_dim")?),
            // Only PyTorch's estimator reads these (candle 0.11's Gemma 2 neither windows nor
            // alternates): every other layer global (or as `layer_types` lists them), the
            // window (Gemma2Config's default 4096), the soft-cappings set.
            sliding_window: opt_field(v, "sliding_window")?.unwrap_or(4096).max(1),
            global_every: if v.get("layer_types").is_some_and(|t| !t.is_null()) {
                super::config::window_pattern(v)?
            } else {
                2
            },
            softcapping: Softcapping {
                attention: v
                    .get("attn_logit_softcapping")
                    .is_some_and(|c| !c.is_null()),
                logits: v
                    .get("final_logit_softcapping")
                    .is_some_and(|c| !c.is_null()),
            },
            ..Dims::default()
        };
        activation(v, "hidden_activation", "gelu_pytorch_tanh", &mut d)?;
        d.dropout.attention = dropout_field(v, "attention_dropout", false)?;
        Ok(d)
    }
    fn tensors(&self, d: &Dims) -> Vec<TensorShape> {
        gemma_tensors(d, false)
    }
    fn check_candle(&self, config: &str, _d: &Dims) -> std::result::Result<(), ConfigError> {
        candle_config::<gemma2::Config>(config).map(drop)
    }
    fn build(
        &self,
        config: &str,
        _d: &Dims,
        vb: VarBuilder<'_>,
        _dtype: DType,
        _device: &Device,
    ) -> std::result::Result<AnyModel, BuildError> {
        let cfg: gemma2::Config = candle_config(config)?;
        Ok(gemma2::Model::new(false, &cfg, vb)?.into())
    }
    fn table_bytes(&self, d: &Dims, dt: Dt) -> u64 {
        rotary_tables(d, dt, 2, d.head_dim() / 2)
    }
    fn simulate(&self, r: &Run<'_>, inputs: &[T]) -> T {
        simulated(r, &inputs[0])
    }
    super::torch_room!(torch_gemma, |_| Gemma::Two, parameter_order);
    fn torch_sdpa(&self) -> bool {
        false
    }
}

prefill_decoder!(gemma2::Model);

/// The tensors of candle's Gemma 2 and Gemma 3: `qk_norm` for Gemma 3's per-head query and key
/// norms; biases on the projections where `attention_bias` says so (Gemma 2 refuses them);
/// four norms per layer; the head tied to the embeddings.
pub(super) fn gemma_tensors(d: &Dims, qk_norm: bool) -> Vec<TensorShape> {
    let (h, i) = (d.hidden, d.intermediate);
    tensor_list(|t| {
        t("model.embed_tokens.weight".into(), &[d.vocab, h]);
        for l in 0..d.layers {
            let p = format!("model.layers.{l}");
            self_attn_tensors(t, &p, d, d.attention_bias, qk_norm);
            t(format!("{p}.mlp.gate_proj.weight"), &[i, h]);
            t(format!("{p}.mlp.up_proj.weight"), &[i, h]);
            t(format!("{p}.mlp.down_proj.weight"), &[h, i]);
            for n in [
                "input_layernorm",
                "post_attention_layernorm",
                "pre_feedforward_layernorm",
                "post_feedforward_layernorm",
            ] {
                t(format!("{p}.{n}.weight"), &[h]);
            }
        }
        t("model.norm.weight".into(), &[h]);
    })
}

/// A Gemma decoder layer after its attention (Gemma 2 and 3): `let xs =
/// xs.apply(&post_attention_layernorm)?; let xs = (xs + residual)?;`, then the pre-feedforward
/// norm, the MLP, the post-feedforward norm and `residual + xs`. Every shadowed binding (the
/// normed input `xn`, the attention output, the sum, the pre-feedforward norm, the MLP output)
/// stays alive to the end.
pub(super) fn after_attention(r: &Run<'_>, residual: &T, xn: T, attn: T) -> T {
    let sum = {
        let pan = gemma_norm(r, &attn);
        let sum = pan.binary(residual);
        drop(pan);
        sum
    };
    let pre = gemma_norm(r, &sum);
    let mlp_out = gated_mlp(r, &pre);
    let post = gemma_norm(r, &mlp_out);
    let out = sum.binary(&post);
    drop(post);
    drop((xn, attn, sum, pre, mlp_out));
    out
}

/// candle's `gemma2::Model::forward`: embeddings scaled by √hidden, Gemma's f32 norms before and
/// after attention and the MLP, logit soft-capping in attention and at the head (tied to the
/// embeddings), a causal mask `(b, 1, s, s)` (candle 0.11 puts the sliding window on every
/// layer), an explicit `head_dim`.
fn simulated(r: &Run<'_>, ids: &T) -> T {
    let (b, s, h, heads, kv) = (r.b, r.s, r.d.hidden, r.d.heads, r.d.kv_heads);
    let hd = r.d.head_dim();
    let qd = heads * hd;
    let mut kvs: Vec<(T, T)> = Vec::with_capacity(r.d.layers);
    let attention_mask = causal_mask(r, b);
    // `let xs = self.embed_tokens.forward(input_ids)?; let mut xs = (xs * sqrt(h))?;`
    let mut xs = {
        let e = embedding(r, r.d.vocab, ids);
        let scaled = e.unary();
        drop(e);
        scaled
    };
    for layer in 0..r.d.layers {
        r.sim.layer(layer);
        xs = {
            let residual = &xs;
            let xn = gemma_norm(r, &xs);
            let attn = {
                let q = linear(r, &xn, qd, false);
                let k = linear(r, &xn, kv * hd, false);
                let v = linear(r, &xn, kv * hd, false);
                let q1 = q.reshape(&[b, s, heads, hd]).transpose(1, 2);
                let k1 = k.reshape(&[b, s, kv, hd]).transpose(1, 2);
                let v1 = v.reshape(&[b, s, kv, hd]).transpose(1, 2);
                // apply_rotary_emb_qkv: `rope(&q.contiguous()?, ..)`, `rope(&k.contiguous()?, ..)`
                let q2 = {
                    let c = q1.contiguous();
                    let o = c.unary();
                    drop(c);
                    o
                };
                let k2 = {
                    let c = k1.contiguous();
                    let o = c.unary();
                    drop(c);
                    o
                };
                k2.mark_kv();
                v1.mark_kv();
                kvs.push((k2.clone(), v1.clone()));
                let k3 = repeat_kv(k2, heads / kv).contiguous();
                let v3 = repeat_kv(v1, heads / kv).contiguous();
                let attn_output = {
                    // `(q.matmul(&k.transpose(2, 3)?)? * scale)?` consumes the scores
                    let w = {
                        let mm = r.mm(&q2, &k3.transpose(2, 3));
                        let scaled = mm.unary();
                        drop(mm);
                        scaled
                    };
                    let w = softcap(w);
                    // the capped scores stay bound (a match arm borrows them) to the block's end
                    let w2 = w.binary(&attention_mask);
                    let w3 = w2.unary(); // softmax_last_dim
                    let out = r.mm(&w3, &v3);
                    drop((w, w2, w3));
                    out
                };
                let y = {
                    let o = attn_output.transpose(1, 2).reshape(&[b, s, qd]);
                    linear(r, &o, h, false)
                };
                drop((q, k, v, q1, q2, k3, v3, attn_output));
                y
            };
            after_attention(r, residual, xn, attn)
        };
    }
    r.sim.after_layers();
    // `xs.narrow(1, seq_len - 1, 1)?.apply(&self.norm)?.apply(&self.lm_head)?`, then the
    // final soft-capping
    let logits = {
        let last = xs.narrow(1, 1);
        let normed = gemma_norm(r, &last);
        let logits = linear(r, &normed, r.d.vocab, false);
        drop((normed, last));
        logits
    };
    let logits = softcap(logits);
    drop((xs, attention_mask, kvs));
    logits
}
