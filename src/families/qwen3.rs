//! Qwen3 (`qwen3`, dense): an explicit head size, an RMS norm on each head's queries and keys,
//! and on the CPU candle's fused flash-attention kernel; candle's `qwen3`. Its forward serves
//! Qwen3-MoE too.

// The simulated forward's names follow candle-transformers (b, s, h for batch, seq, hidden; q,
// k, v), so the two read side by side.
#![allow(clippy::many_single_char_names)]

use super::candle::{candle_config, prefill_decoder};
use super::config::{activation, bool_field, dropout_field, field, named_alike, opt_field};
use super::llama::tensors_like_llama;
use super::ops::{Run, embedding, gated_mlp, head_on_last, linear, norm, rotary_tables};
use super::sim::{Dt, T};
use super::torch_llama::{Projections, Shape};
use super::{AnyModel, BuildError, ConfigError, Dims, Room, TensorShape};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::qwen3;
use serde_json::Value;

/// Qwen3's differences from Llama's forward: the q and k norms, and biases where the config
/// asks for them.
fn shape(d: &Dims) -> Shape {
    Shape {
        qkv_bias: d.attention_bias,
        o_bias: d.attention_bias,
        qk_norm: true,
        mlp_bias: false,
        projections: Projections::Separate,
    }
}

pub struct Qwen3;

impl Room for Qwen3 {
    fn name(&self) -> &'static str {
        "qwen3"
    }
    fn is_decoder(&self) -> bool {
        true
    }
    fn dims(&self, v: &Value) -> std::result::Result<Dims, ConfigError> {
        dense_dims(v)
    }
    fn tensors(&self, d: &Dims) -> Vec<TensorShape> {
        tensors_like_llama(d, d.attention_bias, true)
    }
    fn check_candle(&self, config: &str, _d: &Dims) -> std::result::Result<(), ConfigError> {
        candle_config::<qwen3::Config>(config).map(drop)
    }
    fn build(
        &self,
        config: &str,
        _d: &Dims,
        vb: VarBuilder<'_>,
        _dtype: DType,
        _device: &Device,
    ) -> std::result::Result<AnyModel, BuildError> {
        let cfg: qwen3::Config = candle_config(config)?;
        Ok(qwen3::ModelForCausalLM::new(&cfg, vb)?.into())
    }
    fn table_bytes(&self, d: &Dims, dt: Dt) -> u64 {
        rotary_tables(d, dt, 2, d.head_dim() / 2)
    }
    fn simulate(&self, r: &Run<'_>, inputs: &[T]) -> T {
        simulated(r, &inputs[0], None)
    }
    super::torch_room!(torch_llama, shape, parameter_order);
}

prefill_decoder!(qwen3::ModelForCausalLM);

/// Qwen3's dims (Qwen3-MoE adds its experts to them).
pub(super) fn dense_dims(v: &Value) -> std::result::Result<Dims, ConfigError> {
    let base = named_alike(v)?;
    let mut d = Dims {
        kv_heads: field(v, "num_key_value_heads")?,
        tied_embeddings: bool_field(v, "tie_word_embeddings")?,
        head_dim_override: Some(field(v, "head_dim")?),
        attention_bias: bool_field(v, "attention_bias")?,
        ..base
    };
    if bool_field(v, "use_sliding_window")? {
        // candle 0.11 refuses it ("sliding window is not supported"); transformers windows the
        // layers from max_window_layers on (Qwen3Config's default 28), which PyTorch's
        // estimator does not model yet.
        d.candle_refuses = Some(
            "field \"use_sliding_window\" is true, and candle 0.11's Qwen3 has no sliding window (set it to false to measure full attention)".into(),
        );
        if opt_field(v, "max_window_layers")?.unwrap_or(28) < d.layers {
            d.torch_refuses = Some(
                "Qwen3's use_sliding_window (sliding-window attention on the layers from max_window_layers on) is not modelled yet; configs with it false, or with max_window_layers at least num_hidden_layers, are".into(),
            );
        }
    }
    activation(v, "hidden_act", "silu", &mut d)?;
    d.dropout.attention = dropout_field(v, "attention_dropout", false)?;
    Ok(d)
}

/// A sparse layer's MLP (Qwen3-MoE's), simulated.
pub(super) type SparseMlp<'f> = &'f dyn Fn(&Run<'_>, &T) -> T;

/// candle's `qwen3::ModelForCausalLM::forward` on the CPU (and `qwen3_moe`'s, with `sparse`): no mask for
/// Qwen3 (the fused flash kernel masks by its loop bounds; Qwen3-MoE builds one all the same); in
/// each layer the normed input and the normed residual stay bound to the layer's end (`let h =
/// …; let h = …;` shadowing), the per-head q/k norms run on flattened copies, and every shadowed
/// binding of the attention stays alive through the kernel. Qwen3-MoE's sparse layers run
/// `sparse` in place of the dense MLP.
pub(super) fn simulated(r: &Run<'_>, ids: &T, sparse: Option<SparseMlp<'_>>) -> T {
    let moe = sparse.is_some();
    let mut kvs: Vec<(T, T)> = Vec::with_capacity(r.d.layers);
    // qwen3_moe::Model::forward: `build_additive_causal_mask(l, offset, None, dev, dtype)` when
    // l > 1: the `Vec<f32>`, `Tensor::from_slice(&mask, (1, 1, l, l))?.to_dtype(dtype)`
    let mask = (moe && r.s > 1).then(|| {
        let _vec = r.sim.raw((r.s * r.s * 4) as u64);
        let m = r.sim.alloc(&[1, 1, r.s, r.s], Dt::F32);
        m.to_dtype(r.dt)
    });
    // Model::forward
    let normed = {
        let mut xs = embedding(r, r.d.vocab, ids);
        for l in 0..r.d.layers {
            r.sim.layer(l);
            xs = {
                // DecoderLayer::forward: `let h = self.ln1.forward(x)?;
                // let h = self.self_attn.forward(&h, mask, offset)?; let x = (x + h)?;`
                let xn = norm(&xs);
                let attn = qwen3_attention(r, &xn, &mut kvs);
                let x2 = xs.binary(&attn);
                drop(attn);
                // `let h2 = self.ln2.forward(&x)?; let h2 = h2.apply(&self.mlp)?; x + h2`
                let xn2 = norm(&x2);
                let mlp_out = if let Some(sparse) = sparse.filter(|_| r.d.is_moe_layer(l)) {
                    sparse(r, &xn2)
                } else {
                    gated_mlp(r, &xn2)
                };
                let out = x2.binary(&mlp_out);
                drop((x2, mlp_out, xn2, xn));
                out
            };
        }
        r.sim.after_layers();
        // `self.norm.forward(&h)`
        let normed = norm(&xs);
        drop((xs, mask));
        normed
    };
    head_on_last(r, normed, kvs)
}

/// `Qwen3Attention::forward` on the CPU, `x` the normed input.
fn qwen3_attention(r: &Run<'_>, x: &T, kvs: &mut Vec<(T, T)>) -> T {
    let (b, s, heads, kv) = (r.b, r.s, r.d.heads, r.d.kv_heads);
    let hd = r.d.head_dim();
    let bias = r.d.attention_bias;
    // 1. projections; 2. `.reshape((b, l, h, d))?.transpose(1, 2)?` (views)
    let q = linear(r, x, heads * hd, bias);
    let k = linear(r, x, kv * hd, bias);
    let v = linear(r, x, kv * hd, bias);
    let q1 = q.reshape(&[b, s, heads, hd]).transpose(1, 2);
    let k1 = k.reshape(&[b, s, kv, hd]).transpose(1, 2);
    let v1 = v.reshape(&[b, s, kv, hd]).transpose(1, 2);
    // 3. `q.flatten(0, 2)` of the transposed view copies; the per-head RmsNorm is one fused op
    let q_flat = q1.reshape(&[b * heads * s, hd]);
    let k_flat = k1.reshape(&[b * kv * s, hd]);
    let q_normed = norm(&q_flat);
    let k_normed = norm(&k_flat);
    let q2 = q_normed.reshape(&[b, heads, s, hd]);
    let k2 = k_normed.reshape(&[b, kv, s, hd]);
    // 4. `rope(&q.contiguous()?, &cos, &sin)` (already contiguous)
    let q3 = q2.unary();
    let k3 = k2.unary();
    // 5. ConcatKvCache::append: `k.contiguous()` (already), `v.contiguous()` (a copy), kept
    let v_cached = v1.contiguous();
    k3.mark_kv();
    v_cached.mark_kv();
    kvs.push((k3.clone(), v_cached.clone()));
    // 6. forward_cpu_flash_attn
    let y = qwen3_flash_attention(r, &q3, &k3, &v_cached);
    drop((q, k, v, q1, k1, v1, q_flat, k_flat, q_normed, k_normed));
    drop((q2, k2, q3, k3, v_cached));
    y
}

/// `Qwen3Attention::forward_cpu_flash_attn`: `(B, S, H, D)` copies of q, k, v; in f16/bf16 f32
/// copies of those (the kernels run in f32) and the result narrowed back; then
/// `ctx.transpose(1, 2)?.reshape((b, l, hidden))?.apply(&self.o_proj)`.
fn qwen3_flash_attention(r: &Run<'_>, q: &T, k: &T, v: &T) -> T {
    let (b, s, hidden) = (r.b, r.s, r.d.hidden);
    let q = q.transpose(1, 2).contiguous();
    let k = k.transpose(1, 2).contiguous();
    let v = v.transpose(1, 2).contiguous();
    let ctx = if r.dt == Dt::F32 {
        flash_attn_cpu(r, &q, &k, &v)
    } else {
        let q32 = q.to_dtype(Dt::F32);
        let k32 = k.to_dtype(Dt::F32);
        let v32 = v.to_dtype(Dt::F32);
        let ctx32 = flash_attn_cpu(r, &q32, &k32, &v32);
        let ctx = ctx32.to_dtype(r.dt);
        drop((q32, k32, v32, ctx32));
        ctx
    };
    let ctx_t = ctx.transpose(1, 2);
    let width = ctx_t.dims()[2] * ctx_t.dims()[3];
    let y = {
        let o = ctx_t.reshape(&[b, s, width]);
        linear(r, &o, hidden, r.d.attention_bias)
    };
    drop((q, k, v, ctx, ctx_t));
    y
}

/// `candle_nn::attention::flash_attn::<f32>` with a causal mask on `(B, S, H, D)` f32 inputs;
/// returns `(B, H, S, D)`. Batch 1: `causal::run_causal_attn_cpu`, an f32 output and a scratch
/// row of the head size for each of the barrier pool's threads. Above it: the inputs packed to
/// `(B·S, H, D)` views, u32 sequence lengths (and their host copies), the `usize` position
/// tables `batch_of_q` and `pos_in_b`, the f32 output, a row of scratch per rayon thread, and
/// the output copied back to `(B, H, S, D)`.
fn flash_attn_cpu(r: &Run<'_>, q: &T, k: &T, v: &T) -> T {
    let (b, s, heads, hd) = (q.dims()[0], q.dims()[1], q.dims()[2], q.dims()[3]);
    let row = (hd * 4) as u64;
    if b == 1 {
        let (q1, k1, v1) = (q.squeeze(0), k.squeeze(0), v.squeeze(0));
        let out = r.sim.alloc(&[heads, s, hd], Dt::F32);
        let scratch = r.sim.raw(r.threads as u64 * row);
        drop(scratch);
        let out4 = out.unsqueeze(0);
        drop((q1, k1, v1, out));
        return out4;
    }
    let (kv_s, kv_heads) = (k.dims()[1], k.dims()[2]);
    let q_packed = q.reshape(&[b * s, heads, hd]);
    let k_packed = k.reshape(&[b * kv_s, kv_heads, hd]);
    let v_packed = v.reshape(&[b * kv_s, kv_heads, hd]);
    let seqlens_q = r.sim.alloc(&[b], Dt::U32);
    let seqlens_k = r.sim.alloc(&[b], Dt::U32);
    // flash_attn_varlen_cpu
    let ctx = {
        let host = r.sim.raw(2 * 4 * b as u64);
        let cumsum = r.sim.raw(2 * 8 * (b as u64 + 1));
        let positions = r.sim.raw(2 * 8 * (b * s) as u64);
        let out = r.sim.alloc(&[b * s, heads, hd], Dt::F32);
        let rows = (b * s * heads) as u64;
        let scratch = r.sim.raw(rows.min(r.threads as u64) * row);
        drop(scratch);
        drop((host, cumsum, positions));
        out
    };
    // `ctx.reshape((b, s_q, h_q, d))?.transpose(1, 2)?.contiguous()`
    let out = ctx.reshape(&[b, s, heads, hd]).transpose(1, 2).contiguous();
    drop((ctx, seqlens_q, seqlens_k, q_packed, k_packed, v_packed));
    out
}
