//! Each family's forward as candle-transformers 0.11 runs it on the CPU, written again against
//! the simulator's shape-only tensors. The bindings follow candle's code: a shadowed `let` stays
//! alive to the end of its function, a temporary to the end of its statement, and an operand taken
//! by value (`a + b`, `t / 2.0`, a tensor moved into a function) is released inside the operation.
//! Comments quote the candle lines they stand for.

// The names follow candle-transformers (b, s, h for batch, seq, hidden; q, k, v), so the two read
// side by side.
#![allow(clippy::many_single_char_names)]

use super::sim::{Dt, Raw, Sim, T, cat};
use crate::catalog::{Dims, Family};

/// What a simulated forward needs besides the model's dims.
pub struct Run<'a> {
    pub sim: &'a Sim,
    pub d: &'a Dims,
    pub b: usize,
    pub s: usize,
    pub dt: Dt,
    /// The worker's CPU threads (at least 1): kernels that keep a scratch row per thread.
    pub threads: usize,
}

impl Run<'_> {
    /// A weight: it exists already (counted with the weights), so it costs nothing here.
    fn w(&self, dims: &[usize]) -> T {
        self.sim.external(dims, self.dt)
    }

    /// `lhs.matmul(rhs)`. In bf16 candle's CPU matmul widens both whole operand storages to f32
    /// and computes an f32 result, all alive while the bf16 output is written.
    fn mm(&self, lhs: &T, rhs: &T) -> T {
        if lhs.dt() != Dt::Bf16 {
            return lhs.matmul(rhs);
        }
        let _lhs = self.sim.alloc(&[lhs.storage_elems()], Dt::F32);
        let _rhs = self.sim.alloc(&[rhs.storage_elems()], Dt::F32);
        let mut out = lhs.dims().to_vec();
        let last = out.len() - 1;
        out[last] = rhs.dims()[rhs.dims().len() - 1];
        let _wide = self.sim.alloc(&out, Dt::F32);
        lhs.matmul(rhs)
    }
}

/// `candle_nn::Linear::forward`:
/// `[bsize, m, k]` contiguous → `x.reshape((bsize*m, k))?.matmul(&w.t())?.reshape((bsize, m, ()))?`,
/// else `x.matmul(&w.broadcast_left(bsize)?.t()?)?`; 2-D → `x.matmul(&w.t())?`;
/// then `x.broadcast_add(bias)` while `x` is still bound.
fn linear(r: &Run<'_>, x: &T, out: usize, bias: bool) -> T {
    let w = r.w(&[out, x.dims()[x.dims().len() - 1]]);
    let y = match *x.dims() {
        [bsz, m, k] if x.is_contiguous() => {
            let wt = w.t();
            r.mm(&x.reshape(&[bsz * m, k]), &wt).reshape(&[bsz, m, out])
        }
        [bsz, _, k] => {
            let wb = w.broadcast_as(&[bsz, out, k]).t();
            r.mm(x, &wb)
        }
        _ => r.mm(x, &w.t()),
    };
    if bias { y.binary(&r.w(&[out])) } else { y }
}

/// `candle_nn::LayerNorm::forward` with a bias on a contiguous input (`ops::layer_norm`), and
/// `RmsNorm::forward` on a contiguous input (`ops::rms_norm`): one fused op, one output.
fn norm(x: &T) -> T {
    x.unary()
}

/// `candle_nn::ops::softmax` over the last dimension:
/// `let max = xs.max_keepdim(dim)?; let diff = xs.broadcast_sub(&max)?; let num = diff.exp()?;
///  let den = num.sum_keepdim(dim)?; num.broadcast_div(&den)`
fn softmax(x: &T) -> T {
    let max = x.reduce_last();
    let diff = x.binary(&max);
    let num = diff.unary();
    let den = num.reduce_last();
    num.binary(&den)
}

/// `masked_fill(on_false, mask, v)`: `let on_true = Tensor::new(v, dev)?.broadcast_as(shape)?;
/// mask.where_cond(&on_true, on_false)`.
fn masked_fill(r: &Run<'_>, on_false: &T, mask: &T) -> T {
    let on_true = r.sim.alloc(&[], Dt::F32).broadcast_as(mask.dims());
    let out = on_false.new_like(mask.dims(), on_false.dt());
    drop(on_true);
    out
}

/// `utils::repeat_kv(xs, n_rep)`: `Tensor::cat(&vec![&xs; n_rep], 2)?.reshape(…)` (the reshape
/// copies when the cat's result is a transposed view).
fn repeat_kv(x: T, n_rep: usize) -> T {
    if n_rep == 1 {
        return x;
    }
    let (b, kv, s, hd) = (x.dims()[0], x.dims()[1], x.dims()[2], x.dims()[3]);
    let refs: Vec<&T> = vec![&x; n_rep];
    cat(&refs, 2).reshape(&[b, kv * n_rep, s, hd])
}

/// `Embedding::forward`: `ids.flatten_all()` (a view), `index_select`, reshape (a view).
fn embedding(r: &Run<'_>, rows: usize, ids: &T) -> T {
    let table = r.w(&[rows, r.d.hidden]);
    let mut dims = ids.dims().to_vec();
    dims.push(r.d.hidden);
    table.embedding(&ids.reshape(&[ids.elems()])).reshape(&dims)
}

/// The inputs oomlab builds before the measured region (`LoadedModel::inputs`).
pub fn inputs(r: &Run<'_>, family: Family) -> Vec<T> {
    let (b, s) = (r.b, r.s);
    let ids = r.sim.alloc(&[b, s], Dt::U32);
    match family {
        // token type ids (`zeros_like`) and the attention mask (`ones_like`)
        Family::Bert | Family::Roberta => vec![
            ids,
            r.sim.alloc(&[b, s], Dt::U32),
            r.sim.alloc(&[b, s], Dt::U32),
        ],
        // the attention mask (`ones_like`)
        Family::ModernBert => vec![ids, r.sim.alloc(&[b, s], Dt::U32)],
        // `Tensor::zeros((b, 1, 1, s), U8)`
        Family::DistilBert => vec![ids, r.sim.alloc(&[b, 1, 1, s], Dt::U8)],
        Family::Llama
        | Family::Qwen2
        | Family::Qwen3
        | Family::Qwen3Moe
        | Family::Mistral
        | Family::Phi3
        | Family::Gemma2
        | Family::Mixtral => vec![ids],
    }
}

/// One forward of `family`; returns its output (alive until the worker has read the peak).
pub fn forward(r: &Run<'_>, family: Family, inputs: &[T]) -> T {
    match family {
        Family::Bert => bert(r, &inputs[0], &inputs[1], &inputs[2]),
        Family::DistilBert => distilbert(r, &inputs[0], &inputs[1]),
        Family::Llama => llama(r, &inputs[0]),
        Family::Qwen2 => qwen2(r, &inputs[0]),
        Family::Qwen3 => qwen3(r, &inputs[0], false),
        Family::Qwen3Moe => qwen3(r, &inputs[0], true),
        Family::Mistral => mistral(r, &inputs[0]),
        Family::Phi3 => phi3(r, &inputs[0]),
        Family::Roberta => roberta(r, &inputs[0], &inputs[1], &inputs[2]),
        Family::Gemma2 => gemma2(r, &inputs[0]),
        Family::Mixtral => mixtral(r, &inputs[0]),
        Family::ModernBert => modernbert(r, &inputs[0], &inputs[1]),
    }
}

fn bert(r: &Run<'_>, ids: &T, tt: &T, mask: &T) -> T {
    let (b, s, h, heads) = (r.b, r.s, r.d.hidden, r.d.heads);
    let hd = h / heads;
    // BertModel::forward: `let embedding_output = self.embeddings.forward(..)?;`
    let embedding_output = {
        let input_embeddings = embedding(r, r.d.vocab, ids);
        // `(&input_embeddings + token_type_embeddings)?` consumes the token type embeddings.
        let mut embeddings = {
            let token_type_embeddings = embedding(r, r.d.type_vocab.max(1), tt);
            input_embeddings.binary(&token_type_embeddings)
        };
        {
            let _position_ids_vec = r.sim.raw(s as u64 * 4);
            let position_ids = r.sim.alloc(&[s], Dt::U32);
            let pos = embedding(r, r.d.max_positions, &position_ids);
            embeddings = embeddings.binary(&pos);
        }
        let normed = norm(&embeddings);
        normed.clone() // dropout
    };
    // `let attention_mask = get_extended_attention_mask(&attention_mask, dtype)?;`
    let attention_mask = {
        let m = mask.unsqueeze(1).unsqueeze(1);
        let m = m.to_dtype(r.dt);
        // `(attention_mask.ones_like()? - &attention_mask)?.broadcast_mul(&min)`
        let diff = {
            let ones = m.unary();
            ones.binary(&m)
        };
        let min = r.sim.alloc(&[], Dt::F32).to_dtype(r.dt);
        diff.binary(&min)
    };
    // BertEncoder::forward: `let mut hidden_states = hidden_states.clone(); for layer { hidden_states = layer.forward(&hidden_states, mask)? }`
    let mut hidden_states = embedding_output.clone();
    for _ in 0..r.d.layers {
        hidden_states = {
            let x = &hidden_states;
            // BertAttention::forward
            let self_outputs = {
                // BertSelfAttention::forward
                let query_layer = linear(r, x, h, true);
                let key_layer = linear(r, x, h, true);
                let value_layer = linear(r, x, h, true);
                // transpose_for_scores: `xs.reshape(..)?.transpose(1, 2)?; xs.contiguous()`
                let split = |t: &T| t.reshape(&[b, s, heads, hd]).transpose(1, 2).contiguous();
                let query_layer2 = split(&query_layer);
                let key_layer2 = split(&key_layer);
                let value_layer2 = split(&value_layer);
                // `(attention_scores / sqrt)` consumes the matmul's output
                let scores = r.mm(&query_layer2, &key_layer2.t()).unary();
                let scores2 = scores.binary(&attention_mask);
                let probs = softmax(&scores2).clone();
                let context = r.mm(&probs, &value_layer2);
                let context2 = context.transpose(1, 2).contiguous();
                let out = context2.reshape(&[b, s, h]);
                drop((query_layer, key_layer, value_layer));
                drop((query_layer2, key_layer2, value_layer2));
                drop((scores, scores2, probs, context, context2));
                out
            };
            // BertSelfOutput::forward: `let hidden_states = dense(..)?; … layer_norm(&(hidden_states + input_tensor)?)`
            let attention_output = {
                let dense = linear(r, &self_outputs, h, true);
                let sum = dense.clone().binary(x);
                let out = norm(&sum);
                drop((sum, dense));
                out
            };
            drop(self_outputs);
            // BertIntermediate::forward: `let hidden_states = dense(..)?; let ys = act(&hidden_states)?;`
            let intermediate_output = {
                let dense = linear(r, &attention_output, r.d.intermediate, true);
                dense.unary()
            };
            // BertOutput::forward
            let layer_output = {
                let dense = linear(r, &intermediate_output, h, true);
                let sum = dense.clone().binary(&attention_output);
                let out = norm(&sum);
                drop((sum, dense));
                out
            };
            drop((intermediate_output, attention_output));
            layer_output
        };
    }
    drop(embedding_output);
    hidden_states
}

fn distilbert(r: &Run<'_>, ids: &T, mask_in: &T) -> T {
    let (b, s, h, heads) = (r.b, r.s, r.d.hidden, r.d.heads);
    let hd = h / heads;
    // Embeddings::forward
    let embedding_output = {
        let input_embeddings = embedding(r, r.d.vocab, ids);
        let _position_ids_vec = r.sim.raw(s as u64 * 4);
        let position_ids = r.sim.alloc(&[s], Dt::U32);
        let embeddings = {
            let pos = embedding(r, r.d.max_positions, &position_ids);
            input_embeddings.binary(&pos)
        };
        norm(&embeddings)
    };
    let mut hidden_states = embedding_output.clone();
    for _ in 0..r.d.layers {
        hidden_states = {
            let x = &hidden_states;
            // MultiHeadSelfAttention::forward
            let sa_output = {
                let q = linear(r, x, h, true);
                let k = linear(r, x, h, true);
                let v = linear(r, x, h, true);
                let split = |t: &T| t.reshape(&[b, s, heads, hd]).transpose(1, 2);
                let (q1, k1, v1) = (split(&q), split(&k), split(&v));
                // `let q: Tensor = (q / sqrt)?;` consumes the view, the linear's output stays
                let q2 = q1.unary();
                drop(q1);
                let scores = {
                    let kt = k1.transpose(2, 3).contiguous();
                    r.mm(&q2, &kt)
                };
                let mask = mask_in.broadcast_as(scores.dims());
                let scores2 = {
                    let f = scores.to_dtype(Dt::F32);
                    masked_fill(r, &f, &mask)
                };
                let weights = softmax(&scores2);
                let context = {
                    let vc = v1.contiguous();
                    r.mm(&weights, &vc)
                };
                let context2 = context.transpose(1, 2).reshape(&[b, s, h]).contiguous();
                let out = linear(r, &context2, h, true);
                drop((
                    q, k, v, k1, v1, q2, scores, mask, scores2, weights, context, context2,
                ));
                out
            };
            // TransformerBlock::forward
            let sa_output2 = sa_output.binary(x);
            let sa_output3 = norm(&sa_output2);
            // FFN: `hidden_states.apply(&lin1)?.apply(&act)?.apply(&lin2)` (temporaries to the end)
            let ffn_output = {
                let l1 = linear(r, &sa_output3, r.d.intermediate, true);
                let act = l1.unary();
                linear(r, &act, h, true)
            };
            // `(&ffn_output + sa_output)?` consumes the normed attention output
            let ffn_output2 = ffn_output.binary(&sa_output3);
            drop(sa_output3);
            let output = norm(&ffn_output2);
            drop((sa_output, sa_output2, ffn_output, ffn_output2));
            output
        };
    }
    drop(embedding_output);
    hidden_states
}

fn llama(r: &Run<'_>, ids: &T) -> T {
    let (b, s, h, heads, kv) = (r.b, r.s, r.d.hidden, r.d.heads, r.d.kv_heads);
    let hd = h / heads;
    // The per-forward clone of the Cache: its KV entries and causal mask live to the end.
    let mut kvs: Vec<(T, T)> = Vec::with_capacity(r.d.layers);
    let mut mask: Option<T> = None;
    // Llama::forward: `let mut x = self.wte.forward(x)?; for block { x = block.forward(&x, ..)? }`
    let mut x = embedding(r, r.d.vocab, ids);
    for _ in 0..r.d.layers {
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
    // `let x = self.ln_f.forward(&x)?; let x = x.i((.., seq_len - 1, ..))?.contiguous()?;`
    let xn = norm(&x);
    let last = xn.narrow(1, 1).squeeze(1).contiguous();
    let logits = linear(r, &last, r.d.vocab, false);
    let out = logits.to_dtype(Dt::F32);
    drop((logits, last, xn, x, kvs, mask));
    out
}

fn qwen2(r: &Run<'_>, ids: &T) -> T {
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
        for _ in 0..r.d.layers {
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
        // `xs.apply(&self.norm)`
        let normed = norm(&xs);
        drop((xs, attention_mask));
        normed
    };
    head_on_last(r, normed, kvs)
}

/// candle's `mistral::Model::forward` (no biases; q, k, v made contiguous before the rotary
/// embedding, which then runs on them in place of copies; the mask `(1, 1, s, s)`; the final
/// norm on the last position only).
fn mistral(r: &Run<'_>, ids: &T) -> T {
    let (b, s, h, heads, kv) = (r.b, r.s, r.d.hidden, r.d.heads, r.d.kv_heads);
    let hd = h / heads;
    let mut kvs: Vec<(T, T)> = Vec::with_capacity(r.d.layers);
    // prepare_decoder_attention_mask: the `Vec<f32>`, `Tensor::from_slice(&mask, (s, s))`,
    // `mask.expand((1, 1, s, s))?.to_dtype(self.dtype)`
    let attention_mask = causal_mask(r, 1);
    let mut xs = embedding(r, r.d.vocab, ids);
    for _ in 0..r.d.layers {
        xs = {
            let residual = &xs;
            let xn = norm(&xs);
            let attn = {
                let q = linear(r, &xn, h, false);
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
                    let o = attn_output.transpose(1, 2).reshape(&[b, s, h]);
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
    norm_head_on_last(r, xs, (attention_mask, kvs))
}

/// `xs.narrow(1, seq_len - 1, 1)?.apply(&self.norm)?.apply(&self.lm_head)` (mistral, phi3,
/// mixtral): the last position's norm, on a strided view, then the head; `xs` and what else the
/// forward `held` are released after it, in that order.
fn norm_head_on_last<H>(r: &Run<'_>, xs: T, held: H) -> T {
    let last = xs.narrow(1, 1);
    let normed = norm_strided(r, &last);
    let logits = linear(r, &normed, r.d.vocab, false);
    drop((last, normed, xs, held));
    logits
}

/// `ModelForCausalLM::forward`'s `.narrow(1, seq_len - 1, 1)?.apply(&self.lm_head)` on the normed
/// hidden states (qwen2, qwen3); the KV cache goes after it.
fn head_on_last(r: &Run<'_>, normed: T, kvs: Vec<(T, T)>) -> T {
    let last = normed.narrow(1, 1);
    let logits = linear(r, &last, r.d.vocab, false);
    drop((last, normed, kvs));
    logits
}

/// `RmsNorm::forward` on a strided view (the last position of a batch above one): the general
/// `LayerNorm` path. `let x = x.to_dtype(f32)?; let norm_x = (x.sqr()?.sum_keepdim(D::Minus1)? /
/// h)?; let x_normed = x.broadcast_div(&(norm_x + eps)?.sqrt()?)?;
/// x_normed.to_dtype(x_dtype)?.broadcast_mul(&self.weight)`.
fn norm_strided(r: &Run<'_>, x: &T) -> T {
    if x.is_contiguous() {
        return norm(x);
    }
    let wide = x.to_dtype(Dt::F32);
    let norm_x = {
        let sq = wide.unary();
        sq.reduce_last().unary()
    };
    let x_normed = {
        let denom = norm_x.unary().unary();
        drop(norm_x);
        wide.binary(&denom)
    };
    let out = x_normed.to_dtype(r.dt).binary(&r.w(&[r.d.hidden]));
    drop((wide, x_normed));
    out
}

/// candle's `phi3::Model::forward`: one fused `qkv_proj` whose q, k, v are narrowed views (so
/// each reshape copies), rotary on contiguous copies, one fused `gate_up_proj` whose halves are
/// views, the mask `(b, 1, s, s)`, the final norm on the last position only.
fn phi3(r: &Run<'_>, ids: &T) -> T {
    let (b, s, h, heads, kv) = (r.b, r.s, r.d.hidden, r.d.heads, r.d.kv_heads);
    let hd = h / heads;
    let op = heads * hd + 2 * kv * hd;
    let mut kvs: Vec<(T, T)> = Vec::with_capacity(r.d.layers);
    // prepare_decoder_attention_mask: `mask.expand((b, 1, s, s))?.to_dtype(self.dtype)`
    let attention_mask = causal_mask(r, b);
    let mut xs = embedding(r, r.d.vocab, ids);
    for _ in 0..r.d.layers {
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
    norm_head_on_last(r, xs, (attention_mask, kvs))
}

/// candle's `xlm_roberta::XLMRobertaModel::forward` (`RoBERTa` and `XLM-RoBERTa`): position ids
/// from a cumulative sum over the non-padding tokens (a matmul with an s×s triangle), the mask
/// built once in f32, no dropout bindings (each dense output is consumed by its residual add),
/// and every layer keeps its attention context alive until the next one starts.
fn roberta(r: &Run<'_>, ids: &T, tt: &T, mask: &T) -> T {
    let (b, s, h, heads) = (r.b, r.s, r.d.hidden, r.d.heads);
    let hd = h / heads;
    // XLMRobertaEmbeddings::forward
    let hidden_states = {
        let input_embeddings = embedding(r, r.d.vocab, ids);
        // `(&input_embeddings + token_type_embeddings)?` consumes the token type embeddings.
        let mut embeddings = {
            let token_type_embeddings = embedding(r, r.d.type_vocab.max(1), tt);
            input_embeddings.binary(&token_type_embeddings)
        };
        {
            // `input_ids.ne(pad)?.to_dtype(dtype)?`
            let mask_p = {
                let ne = ids.new_like(&[b, s], Dt::U8);
                ne.to_dtype(r.dt)
            };
            // `mask.cumsum(1)?`: `Tensor::triu2(s, dtype)` (arange, `ge` as u8, to dtype), then
            // `t.broadcast_matmul(&triu)`
            let cumsum = {
                let triu = {
                    let arange = r.sim.alloc(&[s], Dt::U32);
                    let ge = r.sim.alloc(&[s, s], Dt::U8);
                    let tr = ge.to_dtype(r.dt);
                    drop((ge, arange));
                    tr
                };
                let out = r.mm(&mask_p, &triu);
                drop(triu);
                out
            };
            // `(cumsum * mask)?` consumes both; `.broadcast_add(&pad)?.to_dtype(U32)?`
            let position_ids = {
                let prod = cumsum.binary(&mask_p);
                drop((cumsum, mask_p));
                let pad = r.sim.alloc(&[], Dt::U32);
                let pad_dt = pad.to_dtype(r.dt);
                let added = prod.binary(&pad_dt);
                drop(prod);
                let ids = added.to_dtype(Dt::U32);
                drop((added, pad_dt, pad));
                ids
            };
            let pos = embedding(r, r.d.max_positions + r.d.position_offset, &position_ids);
            embeddings = embeddings.binary(&pos);
            drop((pos, position_ids));
        }
        // `let embeddings = self.layer_norm.forward(&embeddings)?;` — the shadowed sum and the
        // word embeddings stay bound to the end of the function.
        let normed = norm(&embeddings);
        drop((embeddings, input_embeddings));
        normed
    };
    // prepare_4d_attention_mask(mask, F32): `mask.unsqueeze(1)?.unsqueeze(2)?.expand(..)?
    // .to_dtype(F32)?`, `(1.0 - expanded)?`, `(inverted * min)?.to_dtype(F32)`
    let attention_mask = {
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
    // XLMRobertaEncoder::forward: `let mut hidden_states = hidden_states.clone();` and each
    // layer's `(layer_output, self_outputs)`, the second dropped at the end of the iteration.
    let mut xs = hidden_states.clone();
    for _ in 0..r.d.layers {
        let (layer_output, self_outputs) = {
            let x = &xs;
            // XLMRobertaSelfAttention::forward
            let self_outputs = {
                let mixed_query_layer = linear(r, x, h, true);
                // transpose_for_scores: `x.reshape(..)?.permute((0, 2, 1, 3))?.contiguous()`
                let split = |t: &T| t.reshape(&[b, s, heads, hd]).transpose(1, 2).contiguous();
                let key_layer = {
                    let k = linear(r, x, h, true);
                    split(&k)
                };
                let value_layer = {
                    let v = linear(r, x, h, true);
                    split(&v)
                };
                let query_layer = split(&mixed_query_layer);
                let scores = r.mm(&query_layer, &key_layer.t());
                let scores = {
                    let scaled = scores.unary();
                    drop(scores);
                    scaled
                };
                // `broadcast_add(&mask.to_dtype(scores.dtype())?)`: a copy of the mask below f32
                let scores = {
                    let m = attention_mask.to_dtype(r.dt);
                    let added = scores.binary(&m);
                    drop((m, scores));
                    added
                };
                let probs = scores.unary(); // softmax_last_dim
                // `probs.matmul(&value_layer)?.permute((0, 2, 1, 3))?.contiguous()?`, then a reshape
                let context = {
                    let ctx = r.mm(&probs, &value_layer);
                    ctx.transpose(1, 2).contiguous()
                };
                let out = context.reshape(&[b, s, h]);
                drop((mixed_query_layer, key_layer, value_layer, query_layer));
                drop((scores, probs, context));
                out
            };
            // XLMRobertaSelfOutput::forward: `layernorm(&(dense + input_tensor)?)`
            let attention_output = {
                let dense = linear(r, &self_outputs, h, true);
                let sum = dense.binary(x);
                drop(dense);
                let out = norm(&sum);
                drop(sum);
                out
            };
            // XLMRobertaIntermediate::forward
            let intermediate_output = {
                let dense = linear(r, &attention_output, r.d.intermediate, true);
                dense.unary()
            };
            // XLMRobertaOutput::forward
            let layer_output = {
                let dense = linear(r, &intermediate_output, h, true);
                let sum = dense.binary(&attention_output);
                drop(dense);
                let out = norm(&sum);
                drop(sum);
                out
            };
            drop((intermediate_output, attention_output));
            (layer_output, self_outputs)
        };
        xs = layer_output;
        drop(self_outputs);
    }
    drop((hidden_states, attention_mask));
    xs
}

/// Gemma's own `RmsNorm::forward` (always the general path, in f32, with `weight + 1`):
/// `let x = x.to_dtype(f32)?; let norm_x = (x.sqr()?.sum_keepdim(D::Minus1)? / h)?;
/// let x_normed = x.broadcast_div(&(norm_x + eps)?.sqrt()?)?;
/// x_normed.to_dtype(x_dtype)?.broadcast_mul(&(&self.weight + 1.0)?)`
fn gemma_norm(r: &Run<'_>, x: &T) -> T {
    let wide = x.to_dtype(Dt::F32);
    let norm_x = {
        let sq = wide.unary();
        let sum = sq.reduce_last();
        let out = sum.unary();
        drop((sum, sq));
        out
    };
    let x_normed = {
        let plus = norm_x.unary();
        drop(norm_x);
        let root = plus.unary();
        let out = wide.binary(&root);
        drop((plus, root));
        out
    };
    let out = {
        let back = x_normed.to_dtype(r.dt);
        let w1 = r.sim.alloc(&[r.d.hidden], r.dt);
        let out = back.binary(&w1);
        drop((back, w1));
        out
    };
    drop((x_normed, wide));
    out
}

/// `((xs / cap)?.tanh()? * cap)?`: the quotient is a temporary, the tanh consumed by the product.
fn softcap(xs: T) -> T {
    let quotient = xs.unary();
    drop(xs);
    let tanh = quotient.unary();
    let out = tanh.unary();
    drop((tanh, quotient));
    out
}

/// candle's `gemma2::Model::forward`: embeddings scaled by √hidden, Gemma's f32 norms before and
/// after attention and the MLP, logit soft-capping in attention and at the head (tied to the
/// embeddings), a causal mask `(b, 1, s, s)` (candle 0.11 puts the sliding window on every
/// layer), an explicit `head_dim`.
fn gemma2(r: &Run<'_>, ids: &T) -> T {
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
    for _ in 0..r.d.layers {
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
            // `let xs = xs.apply(&post_attention_layernorm)?; let xs = (xs + residual)?;`
            let sum = {
                let pan = gemma_norm(r, &attn);
                let sum = pan.binary(residual);
                drop(pan);
                sum
            };
            // pre-feedforward norm, the MLP, post-feedforward norm, `residual + xs`
            let pre = gemma_norm(r, &sum);
            let mlp_out = gated_mlp(r, &pre);
            let post = gemma_norm(r, &mlp_out);
            let out = sum.binary(&post);
            drop(post);
            drop((xn, attn, sum, pre, mlp_out));
            out
        };
    }
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

/// The decoders' `prepare_*_attention_mask`: the `Vec<f32>` of s×s, `Tensor::from_slice(&mask,
/// (s, s))`, `mask.expand((rows, 1, s, s))?.to_dtype(self.dtype)` (rows: the batch, or 1).
fn causal_mask(r: &Run<'_>, rows: usize) -> T {
    let s = r.s;
    let _vec = r.sim.raw((s * s * 4) as u64);
    let m = r.sim.alloc(&[s, s], Dt::F32);
    m.broadcast_as(&[rows, 1, s, s]).to_dtype(r.dt)
}

/// The decoders' attention core: `(q.matmul(&k.transpose(2, 3)?)? * scale)?` (the product
/// consumed), the mask added while the scaled scores stay bound (a `match` arm borrows them),
/// `softmax_last_dim`, `.matmul(&v)`.
fn attend(r: &Run<'_>, q: &T, k: &T, v: &T, mask: &T) -> T {
    let w = r.mm(q, &k.transpose(2, 3)).unary();
    let w2 = w.binary(mask);
    let w3 = w2.unary();
    let out = r.mm(&w3, v);
    drop((w, w2, w3));
    out
}

/// The gated MLP: `let lhs = xs.apply(&gate)?.apply(&act)?; let rhs = xs.apply(&up)?;
/// (lhs * rhs)?.apply(&down)`.
fn gated_mlp(r: &Run<'_>, x: &T) -> T {
    gated_mlp_width(r, x, r.d.intermediate)
}

/// [`gated_mlp`] `width` wide (an expert's).
fn gated_mlp_width(r: &Run<'_>, x: &T, width: usize) -> T {
    let lhs = linear(r, x, width, false).unary();
    let rhs = linear(r, x, width, false);
    let p = lhs.binary(&rhs);
    drop((lhs, rhs));
    linear(r, &p, r.d.hidden, false)
}

/// A `Vec` grown by `n` pushes of `elem`-byte items: capacity 4, then doubling (the counting
/// allocator counts a reallocation's growth, so the final capacity is what stays).
fn pushed_vec(r: &Run<'_>, n: usize, elem: usize) -> Option<Raw> {
    (n > 0).then(|| r.sim.raw((n.next_power_of_two().max(4) * elem) as u64))
}

/// Buffers that stand for `Vec`s (see [`expert_lists`]).
type ExpertLists = ((Raw, Raw), Vec<(Option<Raw>, Option<Raw>)>);

/// The mixture-of-experts blocks' per-expert token and weight lists (`vec![vec![]; E]` twice), then one push of
/// a 4-byte item per token into each of its `k` experts' lists — with synthetic weights the same
/// first `k` experts take every one of the `n` tokens. Alive while the result is.
fn expert_lists(r: &Run<'_>, n: usize, experts: usize, k: usize) -> ExpertLists {
    let outer = (
        r.sim.raw((experts * 24) as u64),
        r.sim.raw((experts * 24) as u64),
    );
    let lists: Vec<_> = (0..k)
        .map(|_| (pushed_vec(r, n, 4), pushed_vec(r, n, 4)))
        .collect();
    (outer, lists)
}

/// `rotate_half`-style rotary on a transposed view: `(x.broadcast_mul(&cos)? +
/// rotate_half(x)?.broadcast_mul(&sin))?`, `rotate_half` = `cat(&[&x2.neg()?, &x1], -1)`.
fn rope_unfused(x: &T) -> T {
    let mut half = x.dims().to_vec();
    let last = half.len() - 1;
    half[last] /= 2;
    let with_cos = x.new_like(x.dims(), x.dt());
    let rotated = {
        let neg = x.new_like(&half, x.dt());
        let cat = x.new_like(x.dims(), x.dt());
        drop(neg);
        cat
    };
    let with_sin = rotated.unary();
    let out = with_cos.binary(&with_sin);
    drop((with_cos, with_sin, rotated));
    out
}

/// candle's `mixtral::Model::forward` with every expert's weights resident. The router picks, per
/// token, the `num_experts_per_tok` highest of a softmax; with synthetic (zero) weights all
/// scores tie and the same first experts take every token — the case simulated here, exact for
/// synthetic weights and the most one expert can be handed with real ones. Host-side routing
/// tables (`to_vec2`, per-expert index lists) count too.
fn mixtral(r: &Run<'_>, ids: &T) -> T {
    let (b, s, h, heads, kv) = (r.b, r.s, r.d.hidden, r.d.heads, r.d.kv_heads);
    let hd = h / heads;
    let (n, experts, k) = (b * s, r.d.experts, r.d.experts_per_token);
    let mut kvs: Vec<(T, T)> = Vec::with_capacity(r.d.layers);
    let attention_mask = causal_mask(r, b);
    let mut xs = embedding(r, r.d.vocab, ids);
    for _ in 0..r.d.layers {
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
    norm_head_on_last(r, xs, (attention_mask, kvs))
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
fn modernbert(r: &Run<'_>, ids: &T, mask: &T) -> T {
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
    let out = layer_norm_no_bias(r, &xs);
    drop((xs, global_mask, local_mask));
    out
}

/// candle's `qwen3::ModelForCausalLM::forward` on the CPU (and `qwen3_moe`'s, `moe`): no mask for
/// Qwen3 (the fused flash kernel masks by its loop bounds; Qwen3-MoE builds one all the same); in
/// each layer the normed input and the normed residual stay bound to the layer's end (`let h =
/// …; let h = …;` shadowing), the per-head q/k norms run on flattened copies, and every shadowed
/// binding of the attention stays alive through the kernel. Qwen3-MoE's sparse layers run
/// [`qwen3_sparse_moe`] in place of the dense MLP.
fn qwen3(r: &Run<'_>, ids: &T, moe: bool) -> T {
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
            xs = {
                // DecoderLayer::forward: `let h = self.ln1.forward(x)?;
                // let h = self.self_attn.forward(&h, mask, offset)?; let x = (x + h)?;`
                let xn = norm(&xs);
                let attn = qwen3_attention(r, &xn, &mut kvs);
                let x2 = xs.binary(&attn);
                drop(attn);
                // `let h2 = self.ln2.forward(&x)?; let h2 = h2.apply(&self.mlp)?; x + h2`
                let xn2 = norm(&x2);
                let mlp_out = if r.d.is_moe_layer(l) {
                    qwen3_sparse_moe(r, &xn2)
                } else {
                    gated_mlp(r, &xn2)
                };
                let out = x2.binary(&mlp_out);
                drop((x2, mlp_out, xn2, xn));
                out
            };
        }
        // `self.norm.forward(&h)`
        let normed = norm(&xs);
        drop((xs, mask));
        normed
    };
    head_on_last(r, normed, kvs)
}

/// candle's `Qwen3SparseMoeBlock::forward` (the CPU's; the CUDA build runs a fused block). With
/// synthetic (zero) weights the router's scores tie and the stable `arg_sort` hands every token to
/// the first `num_experts_per_tok` experts — the case simulated, as for Mixtral. Every shadowed
/// binding (logits, softmax, the sorted ids, the gathered weights) stays alive to the end, with
/// the host-side tables: `to_vec2` of the weights and of the ids (a `Vec` per token), the
/// per-expert token and weight lists.
fn qwen3_sparse_moe(r: &Run<'_>, x: &T) -> T {
    let (b, s, h) = (r.b, r.s, r.d.hidden);
    let (n, experts, k) = (b * s, r.d.experts, r.d.experts_per_token);
    let xs = x.reshape(&[n, h]);
    let router_logits = linear(r, &xs, experts, false);
    let routing = router_logits.unary(); // softmax_last_dim
    // `.arg_sort_last_dim(false)?.narrow(D::Minus1, 0, k)?.contiguous()?`
    let experts_per_tok = routing
        .new_like(&[n, experts], Dt::U32)
        .narrow(1, k)
        .contiguous();
    let gathered = routing.new_like(&[n, k], routing.dt()); // gather
    // `routing_weights.to_dtype(F32)?.to_vec2::<f32>()?`, `experts_per_tok.to_vec2::<u32>()?`
    let weight_rows = {
        let wide = gathered.to_dtype(Dt::F32);
        let rows = (pushed_vec(r, n, 24), r.sim.raw((n * k * 4) as u64));
        drop(wide);
        rows
    };
    let id_rows = (pushed_vec(r, n, 24), r.sim.raw((n * k * 4) as u64));
    // `top_x` and `selected_experts`
    let lists = expert_lists(r, n, experts, k);
    let mut ys = xs.new_like(&[n, h], xs.dt()); // `xs.zeros_like()`
    for _ in 0..k {
        let top_x = r.sim.alloc(&[n], Dt::U32);
        // `Tensor::new(..)?.reshape(((), 1))?.to_dtype(xs.dtype())?`
        let selected = r.sim.alloc(&[n], Dt::F32).reshape(&[n, 1]).to_dtype(r.dt);
        // `xs.index_select(&top_x, 0)?.reshape(((), hidden_dim))?`
        let current_state = xs.new_like(&[n, h], xs.dt()).reshape(&[n, h]);
        let chs = gated_mlp_width(r, &current_state, r.d.moe_intermediate);
        let weighted = chs.binary(&selected);
        // `ys = ys.index_add(&top_x, &current_hidden_states, 0)?`
        let added = ys.new_like(&[n, h], ys.dt());
        ys = added;
        drop((top_x, selected, current_state, chs, weighted));
    }
    let out = ys.reshape(&[b, s, h]);
    drop((ys, lists, id_rows, weight_rows));
    drop((gathered, experts_per_tok, routing, router_logits, xs));
    out
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
