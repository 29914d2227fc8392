//! Llama (`llama`): the decoder the others vary — RMS norms, rotary positions, grouped key/value
//! heads, a gated MLP; candle's `llama`. Its config reading and tensors serve Qwen2, Qwen3 and
//! Mistral too.

// The simulated forward's names follow candle-transformers (b, s, h for batch, seq, hidden; q,
// k, v), so the two read side by side.
#![allow(clippy::many_single_char_names)]

use super::candle::{Inputs, candle_config};
use super::config::{activation, dropout_field, flag_field, named_alike, opt_field};
use super::ops::{Run, embedding, linear, masked_fill, norm, repeat_kv, rotary_tables};
use super::sim::{Dt, T};
use super::torch_llama::{Projections, Shape};
use super::{AnyModel, BuildError, CandleModel, ConfigError, Dims, Room, TensorShape, tensor_list};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::llama;
use serde_json::Value;

/// Llama's forward as transformers writes it: no q/k norms; biases on the attention's four
/// projections where `attention_bias` asks for them, on the MLP's three where `mlp_bias` does.
fn shape(d: &Dims) -> Shape {
    Shape {
        qkv_bias: d.attention_bias,
        o_bias: d.attention_bias,
        qk_norm: false,
        mlp_bias: d.mlp_bias,
        projections: Projections::Separate,
    }
}

pub struct Llama;

impl Room for Llama {
    fn name(&self) -> &'static str {
        "llama"
    }
    fn is_decoder(&self) -> bool {
        true
    }
    fn dims(&self, v: &Value) -> std::result::Result<Dims, ConfigError> {
        let base = named_alike(v)?;
        // transformers' Llama takes biases on these; candle's has none. PyTorch's estimator
        // models them (the attention's as Qwen2's and Qwen3's).
        let mut d = like_llama(v, &base, true)?;
        d.attention_bias = flag_field(v, "attention_bias")?;
        d.mlp_bias = flag_field(v, "mlp_bias")?;
        for (set, field, what) in [
            (
                d.mlp_bias,
                "mlp_bias",
                "the MLP's gate, up and down projections",
            ),
            (
                d.attention_bias,
                "attention_bias",
                "the attention's q, k, v and o projections",
            ),
        ] {
            if set {
                d.candle_refuses = Some(format!(
                    "field \"{field}\" is true (biases on {what}), which candle 0.11's Llama does not load"
                ));
            }
        }
        Ok(d)
    }
    fn tensors(&self, d: &Dims) -> Vec<TensorShape> {
        tensors_like_llama(d, d.attention_bias, false)
    }
    fn candle_refuses(&self, d: &Dims) -> Option<String> {
        derived_head_dim(d)
    }
    fn check_candle(&self, config: &str, _d: &Dims) -> std::result::Result<(), ConfigError> {
        candle_config::<llama::LlamaConfig>(config).map(drop)
    }
    fn build(
        &self,
        config: &str,
        _d: &Dims,
        vb: VarBuilder<'_>,
        dtype: DType,
        device: &Device,
    ) -> std::result::Result<AnyModel, BuildError> {
        let cfg: llama::LlamaConfig = candle_config(config)?;
        let cfg = cfg.into_config(false);
        let model = llama::Llama::load(vb, &cfg)?;
        let cache = llama::Cache::new(true, dtype, &cfg, device)?;
        Ok(LlamaModel {
            model,
            cache,
            fresh: None,
        }
        .into())
    }
    // cos and sin for every position, half a head wide, in the run precision
    fn table_bytes(&self, d: &Dims, dt: Dt) -> u64 {
        rotary_tables(d, dt, 2, d.head_dim() / 2)
    }
    fn simulate(&self, r: &Run<'_>, inputs: &[T]) -> T {
        simulated(r, &inputs[0])
    }
    super::torch_room!(torch_llama, shape, parameter_order);
}

/// candle's Llama and its cache.
pub struct LlamaModel {
    model: llama::Llama,
    /// Pristine cache (rotary tables); cloned per forward so no KV state leaks between trials.
    cache: llama::Cache,
    /// The clone for the next forward, made with its inputs.
    fresh: Option<llama::Cache>,
}

impl CandleModel for LlamaModel {
    fn inputs(&mut self, ids: Tensor) -> Result<Inputs> {
        self.fresh = Some(self.cache.clone());
        Ok(Inputs::ids(ids))
    }
    fn forward(&mut self, inputs: Inputs) -> Result<Tensor> {
        let mut cache = self
            .fresh
            .take()
            .ok_or_else(|| super::candle::missing("cache"))?;
        self.model.forward(&inputs.ids, 0, &mut cache)
    }
}

/// The dims Llama, Qwen2, Mistral and Phi-3 read beyond the common fields: key/value heads
/// (default: one per query head), an explicit `head_dim` (which need not be hidden / heads), the
/// activation, and whether the head is tied to the embeddings (`tied`: whether candle's model
/// can tie it at all).
pub(super) fn like_llama(
    v: &Value,
    base: &Dims,
    tied: bool,
) -> std::result::Result<Dims, ConfigError> {
    let mut d = Dims {
        kv_heads: opt_field(v, "num_key_value_heads")?.unwrap_or(base.heads),
        // transformers reads an explicit head_dim (Mistral-Nemo's 128-wide heads of a 5120-wide,
        // 32-head model); candle's Llama, Qwen2 and Phi-3 derive it, so those rooms keep such
        // configs off candle (`derived_head_dim`).
        head_dim_override: opt_field(v, "head_dim")?,
        tied_embeddings: tied
            && v.get("tie_word_embeddings")
                .and_then(Value::as_bool)
                .unwrap_or(false),
        ..base.clone()
    };
    activation(v, "hidden_act", "silu", &mut d)?;
    d.dropout.attention = dropout_field(v, "attention_dropout", false)?;
    Ok(d)
}

/// Why candle cannot run `d`, for the rooms whose candle model derives `head_dim` as
/// `hidden_size / num_attention_heads`: an explicit `head_dim` that differs.
pub(super) fn derived_head_dim(d: &Dims) -> Option<String> {
    (d.head_dim() * d.heads != d.hidden).then(|| {
        format!(
            "candle 0.11's model derives head_dim as hidden_size / num_attention_heads = {} / {}, and this config's \"head_dim\" = {} differs from it",
            d.hidden,
            d.heads,
            d.head_dim()
        )
    })
}

/// A decoder layer's `self_attn` tensors (`p`: the layer's prefix, `model.layers.N`): q, k and
/// v (with biases where `qkv_bias`), o (a bias where `attention_bias` says so), and the per-head
/// q and k norms where `qk_norm` (Qwen3, Gemma 3).
pub(super) fn self_attn_tensors(
    t: &mut dyn FnMut(String, &[usize]),
    p: &str,
    d: &Dims,
    qkv_bias: bool,
    qk_norm: bool,
) {
    let (h, hd) = (d.hidden, d.head_dim());
    let (qd, kv) = (d.heads * hd, d.kv_heads * hd);
    for (name, rows) in [("q_proj", qd), ("k_proj", kv), ("v_proj", kv)] {
        t(format!("{p}.self_attn.{name}.weight"), &[rows, h]);
        if qkv_bias {
            t(format!("{p}.self_attn.{name}.bias"), &[rows]);
        }
    }
    t(format!("{p}.self_attn.o_proj.weight"), &[h, qd]);
    if d.attention_bias {
        t(format!("{p}.self_attn.o_proj.bias"), &[h]);
    }
    if qk_norm {
        t(format!("{p}.self_attn.q_norm.weight"), &[hd]);
        t(format!("{p}.self_attn.k_norm.weight"), &[hd]);
    }
}

/// The tensors of candle's Llama-shaped decoders (Llama, Qwen2, Qwen3, Qwen3-MoE, Mistral):
/// `qkv_bias` for biases on q, k and v; `qk_norm` for Qwen3's per-head norms; o carries a bias
/// when `attention_bias` says so; a layer whose [`Dims::is_moe_layer`] holds experts.
pub(super) fn tensors_like_llama(d: &Dims, qkv_bias: bool, qk_norm: bool) -> Vec<TensorShape> {
    let (h, i) = (d.hidden, d.intermediate);
    tensor_list(|t| {
        t("model.embed_tokens.weight".into(), &[d.vocab, h]);
        for l in 0..d.layers {
            let p = format!("model.layers.{l}");
            self_attn_tensors(t, &p, d, qkv_bias, qk_norm);
            if d.is_moe_layer(l) {
                let mi = d.moe_intermediate;
                t(format!("{p}.mlp.gate.weight"), &[d.experts, h]);
                for e in 0..d.experts {
                    let ex = format!("{p}.mlp.experts.{e}");
                    t(format!("{ex}.gate_proj.weight"), &[mi, h]);
                    t(format!("{ex}.up_proj.weight"), &[mi, h]);
                    t(format!("{ex}.down_proj.weight"), &[h, mi]);
                }
            } else {
                for (name, shape, out) in [
                    ("gate_proj", [i, h], i),
                    ("up_proj", [i, h], i),
                    ("down_proj", [h, i], h),
                ] {
                    t(format!("{p}.mlp.{name}.weight"), &shape);
                    if d.mlp_bias {
                        t(format!("{p}.mlp.{name}.bias"), &[out]);
                    }
                }
            }
            t(format!("{p}.input_layernorm.weight"), &[h]);
            t(format!("{p}.post_attention_layernorm.weight"), &[h]);
        }
        t("model.norm.weight".into(), &[h]);
        if !d.tied_embeddings {
            t("lm_head.weight".into(), &[d.vocab, h]);
        }
    })
}

/// candle's `llama::Llama::forward`, simulated.
fn simulated(r: &Run<'_>, ids: &T) -> T {
    let (b, s, h, heads, kv) = (r.b, r.s, r.d.hidden, r.d.heads, r.d.kv_heads);
    let hd = h / heads;
    // The per-forward clone of the Cache: its KV entries and causal mask live to the end.
    let mut kvs: Vec<(T, T)> = Vec::with_capacity(r.d.layers);
    let mut mask: Option<T> = None;
    // Llama::forward: `let mut x = self.wte.forward(x)?; for block { x = block.forward(&x, ..)? }`
    let mut x = embedding(r, r.d.vocab, ids);
    for layer in 0..r.d.layers {
        r.sim.layer(layer);
        x = {
            // Block::forward: `let residual = x; let x = self.rms_1.forward(x)?;`
            let residual = &x;
            let xn = norm(&x);
            // CausalSelfAttention::forward
            let y = {
                let q = linear(r, &xn, h, false);
                let k = linear(r, &xn, kv * hd, false);
                let v = linear(r, &xn, kv * hd, false);
                let q1 = q.reshape(&[b, s, heads, hd]).transpose(1, 2).contiguous();
                let k1 = k.reshape(&[b, s, kv, hd]).transpose(1, 2).contiguous();
                let v1 = v.reshape(&[b, s, kv, hd]).transpose(1, 2);
                let q2 = q1.unary(); // rope
                let k2 = k1.unary(); // rope
                // `cache.kvs[block_idx] = Some((k.clone(), v.clone()))`
                k2.mark_kv();
                v1.mark_kv();
                kvs.push((k2.clone(), v1.clone()));
                let k3 = repeat_kv(k2, heads / kv);
                let v3 = repeat_kv(v1, heads / kv);
                // The `else` block (no flash attention); its bindings end with it.
                let y = {
                    let (qf, kf, vf) = (
                        q2.to_dtype(Dt::F32),
                        k3.to_dtype(Dt::F32),
                        v3.to_dtype(Dt::F32),
                    );
                    // `(q.matmul(&k.t()?)? / sqrt)?` consumes the scores
                    let att = r.mm(&qf, &kf.t()).unary();
                    let att2 = {
                        let m = mask.get_or_insert_with(|| {
                            let _vec = r.sim.raw((s * s) as u64);
                            r.sim.alloc(&[s, s], Dt::U8)
                        });
                        let m = m.broadcast_as(att.dims());
                        masked_fill(r, &att, &m)
                    };
                    let att3 = att2.unary(); // softmax_last_dim
                    // `att.matmul(&v.contiguous()?)?.to_dtype(in_dtype)?`
                    let vc = vf.contiguous();
                    let wide = r.mm(&att3, &vc);
                    let y = wide.to_dtype(r.dt);
                    drop((qf, kf, vf, att, att2, att3, vc, wide));
                    y
                };
                let y2 = y.transpose(1, 2).reshape(&[b, s, h]);
                let out = linear(r, &y2, h, false);
                drop((q, k, v, q1, k1, q2, k3, v3, y, y2));
                out
            };
            // `let x = (self.attn.forward(&x, ..)? + residual)?;` consumes the attention output
            let x2 = y.binary(residual);
            drop(y);
            // `let x = (self.mlp.forward(&self.rms_2.forward(&x)?)? + residual)?;`
            let x3 = {
                let xn2 = norm(&x2);
                // Mlp::forward: `let x = (silu(&self.c_fc1.forward(x)?)? * self.c_fc2.forward(x)?)?;`
                let m = {
                    let p = {
                        let g = linear(r, &xn2, r.d.intermediate, false);
                        let act = g.unary();
                        let u = linear(r, &xn2, r.d.intermediate, false);
                        let p = act.binary(&u);
                        drop((act, u, g));
                        p
                    };
                    linear(r, &p, h, false)
                };
                let out = m.binary(&x2);
                drop((m, xn2));
                out
            };
            drop((xn, x2));
            x3
        };
    }
    r.sim.after_layers();
    // `let x = self.ln_f.forward(&x)?; let x = x.i((.., seq_len - 1, ..))?.contiguous()?;`
    let xn = norm(&x);
    let last = xn.narrow(1, 1).squeeze(1).contiguous();
    let logits = linear(r, &last, r.d.vocab, false);
    let out = logits.to_dtype(Dt::F32);
    drop((logits, last, xn, x, kvs, mask));
    out
}
