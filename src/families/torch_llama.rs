//! PyTorch: the Llama-shaped decoders' forward as transformers 5 runs it under `no_grad` on the
//! CPU (`LlamaForCausalLM`, and Mistral, Qwen2 and Qwen3, which write the same forward; Qwen3
//! adds a norm over each head of q and k, Qwen2 biases on q, k and v), sdpa attention.

use super::Dims;
use super::torch_sim::{Head, Pt, TDt, TorchRun, flash_attention};

/// What differs between the Llama-shaped families.
#[derive(Debug, Clone, Copy)]
pub(super) struct Shape {
    /// Biases on q, k and v (Qwen2; Qwen3 with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o as well (Qwen3 with `attention_bias`).
    pub o_bias: bool,
    /// RMSNorm over each head of q and k (Qwen3).
    pub qk_norm: bool,
}

/// Parameters and buffers of `…ForCausalLM`: embeddings, layers, the final norm, the head
/// (unless tied), and the rotary `inv_freq` buffer (f32, half a head).
pub(super) fn weights(d: &Dims, head: Head, dt: TDt, shape: Shape) -> Option<u64> {
    if head != Head::CausalLm {
        return None;
    }
    let (h, i, v) = (d.hidden as u64, d.intermediate as u64, d.vocab as u64);
    let hd = d.head_dim() as u64;
    let (q, kv) = (d.heads as u64 * hd, d.kv_heads as u64 * hd);
    let mut layer = h * q + 2 * h * kv + q * h + 3 * h * i + 2 * h;
    if shape.qkv_bias {
        layer += q + 2 * kv;
    }
    if shape.o_bias {
        layer += h;
    }
    if shape.qk_norm {
        layer += 2 * hd;
    }
    let head_params = if d.tied_embeddings { 0 } else { v * h };
    let params = v * h + d.layers as u64 * layer + h + head_params;
    Some(params * dt.size() + hd / 2 * TDt::F32.size())
}

/// `LlamaRMSNorm`: upcast to f32 (a copy unless f32), variance, scale, back to the input type,
/// times the weight.
fn rms_norm(x: &Pt) -> Pt {
    let mut rows = x.dims.clone();
    *rows.last_mut().unwrap_or(&mut 0) = 1;
    let x32 = x.to(TDt::F32);
    let variance = {
        let _squared = x32.like();
        x32.new(&rows, TDt::F32)
    };
    let scaled = {
        let _inv = {
            let shifted = variance.like();
            shifted.like()
        };
        x32.like()
    };
    drop(x32);
    let out = {
        let back = scaled.to(x.dt);
        back.like()
    };
    drop(scaled);
    drop(variance);
    out
}

/// `q * cos + rotate_half(q) * sin`.
fn rotate(x: &Pt) -> Pt {
    let with_cos = x.like();
    let with_sin = {
        let rotated = {
            let mut half = x.dims.clone();
            *half.last_mut().unwrap_or(&mut 0) /= 2;
            let _neg = x.new(&half, x.dt);
            x.like()
        };
        rotated.like()
    };
    let out = x.like();
    drop(with_cos);
    drop(with_sin);
    out
}

/// `LlamaRotaryEmbedding.forward`: cos and sin for the positions, `(1, s, head_dim)`, in the
/// model's type.
fn rotary(r: &TorchRun<'_>, hd: usize) -> (Pt, Pt) {
    let s = r.s;
    let (cos, sin) = {
        let freqs = {
            let _positions = r.sim.alloc(&[1, s, 1], TDt::F32);
            r.sim.alloc(&[1, s, hd / 2], TDt::F32)
        };
        let emb = r.sim.alloc(&[1, s, hd], TDt::F32);
        let cos = {
            let raw = emb.like();
            raw.like()
        };
        let sin = {
            let raw = emb.like();
            raw.like()
        };
        drop(freqs);
        (cos, sin)
    };
    (cos.to(r.dt), sin.to(r.dt))
}

/// One forward of `…ForCausalLM` with a `DynamicCache` (`use_cache` is on by default), logits for
/// every position. Returns the logits and the cache.
pub(super) fn forward(r: &TorchRun<'_>, ids: &Pt, shape: Shape) -> Result<Vec<Pt>, &'static str> {
    if r.eager {
        return Err("eager attention with its causal mask is not modelled yet for decoders (sdpa is)");
    }
    if r.head != Head::CausalLm {
        return Err("only the causal-lm head is modelled for decoders");
    }
    let (b, s, h) = (r.b, r.s, r.d.hidden);
    let (n, kvh, hd) = (r.d.heads, r.d.kv_heads, r.d.head_dim());
    let sim = r.sim;
    let mut cache: Vec<Pt> = Vec::new();
    let normed = {
        let inputs_embeds = ids.new(&[b, s, h], r.dt);
        // `torch.arange(s) + past_seen_tokens`
        let _position_ids = {
            let _arange = sim.alloc(&[s], TDt::I64);
            sim.alloc(&[s], TDt::I64)
        };
        // create_causal_mask reads the all-ones mask (sdpa then uses is_causal, no mask).
        {
            let _as_bool = sim.alloc(&[b, s], TDt::Bool);
            let _sum = sim.alloc(&[], TDt::I64);
            let _as_long = sim.alloc(&[b, s], TDt::I64);
        }
        let (cos, sin) = rotary(r, hd);
        let _ = (&cos, &sin);
        let mut hidden = inputs_embeds.clone();
        for _ in 0..r.d.layers {
            let out = {
                let residual = hidden.clone();
                let normed = rms_norm(&hidden);
                let attn = {
                    let project = |width: usize, heads: usize| {
                        let p = normed.linear(width);
                        if shape.qk_norm {
                            rms_norm(&p.view(&[b, s, heads, hd]))
                        } else {
                            p
                        }
                    };
                    let q = project(n * hd, n);
                    let k = project(kvh * hd, kvh);
                    let v = normed.linear(kvh * hd);
                    let q = {
                        let rotated = rotate(&q.view(&[b, n, s, hd]));
                        drop(q);
                        rotated
                    };
                    let k = {
                        let rotated = rotate(&k.view(&[b, kvh, s, hd]));
                        drop(k);
                        rotated
                    };
                    // DynamicCache.update: the new keys and values concatenated after the
                    // (empty) past; the cache keeps them.
                    let keys = k.like();
                    let values = sim.alloc(&[b, kvh, s, hd], r.dt);
                    drop(k);
                    drop(v);
                    cache.push(keys);
                    cache.push(values);
                    let context = flash_attention(&q, n, s, s, hd, r.threads);
                    let o = context.view(&[b, s, n * hd]).linear(h);
                    drop(context);
                    drop(q);
                    o
                };
                drop(normed);
                let hidden = {
                    let sum = residual.like();
                    drop(attn);
                    sum
                };
                drop(residual);
                let normed = rms_norm(&hidden);
                let mlp = {
                    let gated = {
                        let gate = normed.linear(r.d.intermediate);
                        gate.like()
                    };
                    let product = {
                        let _up = normed.linear(r.d.intermediate);
                        gated.like()
                    };
                    drop(gated);
                    let down = product.linear(h);
                    drop(product);
                    down
                };
                drop(normed);
                let sum = hidden.like();
                drop(mlp);
                sum
            };
            hidden = out;
        }
        let normed = rms_norm(&hidden);
        drop(hidden);
        drop(inputs_embeds);
        normed
    };
    let logits = normed.linear(r.d.vocab);
    drop(normed);
    let mut outputs = vec![logits];
    outputs.extend(cache);
    Ok(outputs)
}
