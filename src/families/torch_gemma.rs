//! PyTorch: Gemma 2 and Gemma 3's text decoder (`Gemma2ForCausalLM`, `Gemma3ForCausalLM`) as
//! transformers 5 runs them on the CPU: Llama's attention and gated MLP (gelu-tanh) around
//! Gemma's own pieces:
//! - the embeddings scaled by `embed_scale` (a buffer in the weights' type);
//! - their RMS norm, computed in f32 and scaled by `1 + weight` before the cast back, four per
//!   layer (before and after the attention and the MLP), and in Gemma 3 one over each head of q
//!   and k, after the heads are split off;
//! - global and local layers (Gemma 2 alternates; Gemma 3 makes every
//!   `sliding_window_pattern`-th global): both masks are built once, and the rotary tables once
//!   (Gemma 3: a pair per layer type); the `DynamicCache` holds a window scalar per local layer;
//! - Gemma 2's soft-capping of the scores (eager attention only: transformers refuses sdpa for
//!   it) and of the logits.

// The attention follows PyTorch's names (q, k, v; b, s for batch and seq).
#![allow(clippy::many_single_char_names)]

use super::Dims;
use super::torch_llama::{
    Eager, causal_mask, eager_attention, eager_layouts, gated_mlp, head_outputs, repeats_kv,
    rotary, rotate, sdpa, sdpa_dropout, train_cache_update, train_eager, train_gated_mlp,
    train_head, train_repeat_kv,
};
use super::torch_sim::{Head, Pt, TDt, TorchRun, Weights};
use super::torch_tape::{self as tt, Edge, Tape};

/// How a Gemma's eager attention runs: its operands laid out as Llama's ([`eager_layouts`],
/// the keys and values from the cache unless checkpointing turned it off), Gemma 2's scores
/// soft-capped.
fn eager(r: &TorchRun<'_>, cached: bool) -> Eager {
    Eager {
        softcap: r.d.softcapping.attention,
        ..eager_layouts(r, false, cached)
    }
}

/// Which Gemma.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Gemma {
    /// No norms over the heads; one rotary table pair; soft-capping.
    Two,
    Three,
}

/// A layer whose type has no rotary tables (which the model's construction rules out).
const NO_TABLES: &str = "a Gemma 3 layer's type has no rotary tables";

/// Whether layer `i` attends locally (a sliding window); every `global_every`-th is global.
fn local(d: &Dims, i: usize) -> bool {
    d.global_every == 0 || !(i + 1).is_multiple_of(d.global_every)
}

/// The layer types the model has: (global, local).
fn types(d: &Dims) -> (bool, bool) {
    (
        (0..d.layers).any(|i| !local(d, i)),
        (0..d.layers).any(|i| local(d, i)),
    )
}

/// Parameters and buffers as `Gemma3ForCausalLM`'s constructor makes them: the embeddings and
/// their scale (a 0-dim buffer in the weights' type), each layer (q, k, v, o, the q and k
/// norms, the MLP, the four norms), the final norm, the rotary buffers (`inv_freq` and
/// `original_inv_freq`, f32, half a head, per layer type), then the head (tied: made and
/// dropped; the classification head's `score` is never tied).
pub(super) fn weights(d: &Dims, head: Head, dt: TDt, gemma: Gemma) -> Option<Weights> {
    if head == Head::MaskedLm {
        return None;
    }
    let (width, inter, vocab, hd) = (d.hidden, d.intermediate, d.vocab, d.head_dim());
    let (qw, kv) = (d.heads * hd, d.kv_heads * hd);
    let bias = d.attention_bias;
    let mut w = Weights::default();
    w.push(vocab * width, dt);
    w.push(1, dt);
    for _ in 0..d.layers {
        w.linear((width, qw), bias, dt);
        w.linear((width, kv), bias, dt);
        w.linear((width, kv), bias, dt);
        w.linear((qw, width), bias, dt);
        if gemma == Gemma::Three {
            w.push(hd, dt);
            w.push(hd, dt);
        }
        w.linear((width, inter), false, dt);
        w.linear((width, inter), false, dt);
        w.linear((inter, width), false, dt);
        for _ in 0..4 {
            w.push(width, dt);
        }
    }
    w.push(width, dt);
    let (global, local) = types(d);
    let tables = match gemma {
        Gemma::Two => 1,
        Gemma::Three => usize::from(global) + usize::from(local),
    };
    for _ in 0..tables * 2 {
        w.push(hd / 2, TDt::F32);
    }
    match head {
        Head::Base | Head::MaskedLm => {}
        Head::SequenceClassification => w.linear((width, d.labels()), false, dt),
        Head::CausalLm => w.dropped(vocab * width, dt),
    }
    Some(w)
}

/// `Gemma3RMSNorm` (infer and grad): `x.float()` (a copy unless f32), then
/// `x * rsqrt(x.pow(2).mean(-1) + eps)` (pow saves its input, rsqrt its output, the product
/// both), then `1 + weight.float()` (the weight's f32 copy unless f32) times that (saving
/// both), cast back to x's type.
fn norm(r: &TorchRun<'_>, x: &Pt) -> Pt {
    let h = x.dims[x.dims.len() - 1];
    let mut rows = x.dims.clone();
    *rows.last_mut().unwrap_or(&mut 0) = 1;
    // A Python number meeting an f32 tensor (the mean's count, eps, the 1): wrapped in an
    // int64 scalar and cast to f32 while the op runs.
    let number = |t: &Pt| (t.wrapped_number(TDt::I64), t.wrapped_number(TDt::F32));
    let normed = {
        let x32 = x.to(TDt::F32);
        let inv = {
            let variance = {
                let _squared = x32.like();
                r.keep(&x32);
                let mean = x32.new(&rows, TDt::F32);
                drop(number(&mean));
                mean
            };
            let shifted = {
                let _eps = number(&variance);
                variance.like()
            };
            drop(variance);
            let inv = shifted.like();
            drop(shifted);
            r.keep(&inv);
            inv
        };
        let normed = x32.like();
        r.keep(&x32);
        r.keep(&inv);
        drop(inv);
        normed
    };
    let scale = {
        let _w32 = (r.dt != TDt::F32).then(|| x.new(&[h], TDt::F32));
        let _one = number(x);
        x.new(&[h], TDt::F32)
    };
    let out = normed.like();
    r.keep(&normed);
    r.keep(&scale);
    drop(scale);
    drop(normed);
    out.to(x.dt)
}

/// One decoder layer (infer and grad) on `x`, with its layer type's mask (the rotations' tables
/// are the model's); the layer's keys and values go to `cache`.
fn layer(r: &TorchRun<'_>, x: &Pt, mask: Option<&Pt>, cache: &mut Vec<Pt>, gemma: Gemma) -> Pt {
    let (b, s, width) = (r.b, r.s, r.d.hidden);
    let (heads, kvh, hd) = (r.d.heads, r.d.kv_heads, r.d.head_dim());
    // `hidden_states, _ = self.self_attn(…)`: eager's weights are held to the layer's end.
    let (attn, _weights) = {
        let normed = norm(r, x);
        // q, k and v save their input.
        r.keep(&normed);
        let (attn, weights) = {
            let q = normed.linear(heads * hd);
            let k = normed.linear(kvh * hd);
            let v = normed.linear(kvh * hd);
            // Gemma 3's norms over each head (the projections go as they are normed).
            let heads_of = |t: Pt, count: usize| {
                let t4 = t.view(&[b, count, s, hd]);
                if gemma == Gemma::Two {
                    return t4;
                }
                let n = norm(r, &t4);
                drop((t, t4));
                n
            };
            let q = heads_of(q, heads);
            let k = heads_of(k, kvh);
            // The rotations save cos and sin (kept by the model); q and k live until both are
            // rotated.
            let (query, key) = (rotate(&q), rotate(&k));
            drop((q, k));
            let keys = key.like();
            let values = v.new(&[b, kvh, s, hd], r.dt);
            drop((key, v));
            cache.extend([keys.clone(), values.clone()]);
            let (context, weights) = match mask {
                Some(mask) if r.eager => {
                    let (context, weights) =
                        eager_attention(r, (&query, &keys, &values), Some(mask), eager(r, true));
                    (context, Some(weights))
                }
                _ => (sdpa(r, (&query, &keys, &values), mask), None),
            };
            let projected = context.view(&[b, s, heads * hd]).linear(width);
            drop(context);
            drop(query);
            (projected, weights)
        };
        drop(normed);
        (attn, weights)
    };
    let hidden = {
        let post = norm(r, &attn);
        drop(attn);
        let sum = x.like();
        drop(post);
        sum
    };
    let mlp = {
        let normed = norm(r, &hidden);
        r.keep(&normed);
        // gelu-tanh's gate.
        let down = gated_mlp(r, &normed);
        drop(normed);
        down
    };
    let post = norm(r, &mlp);
    drop(mlp);
    let out = hidden.like();
    drop((post, hidden));
    out
}

/// What the model builds once beside its layers: the `DynamicCache`'s window scalars, the
/// position ids, the masks (global, local) and the rotary tables (global, local); each layer
/// takes its type's.
struct Shared {
    /// Global, local.
    masks: [Option<Pt>; 2],
    /// Global, local: cos and sin, for the types the model has.
    tables: [Option<Tables>; 2],
    position_ids: Pt,
}

/// A layer type's rotary cos and sin.
type Tables = (Pt, Pt);

impl Shared {
    fn new(r: &TorchRun<'_>, cache: &mut Vec<Pt>, with_cache: bool, gemma: Gemma) -> Self {
        let (sim, s, hd) = (r.sim, r.s, r.d.head_dim());
        // `DynamicCache(config)`: each local layer a `DynamicSlidingWindowLayer` holding its
        // window as an int64 scalar.
        if with_cache {
            cache.extend(
                (0..r.d.layers)
                    .filter(|&i| local(r.d, i))
                    .map(|_| sim.alloc(&[], TDt::I64)),
            );
        }
        let position_ids = {
            let _arange = sim.alloc(&[s], TDt::I64);
            sim.alloc(&[s], TDt::I64)
        };
        let masks = [causal_mask(r, 0), causal_mask(r, r.d.sliding_window)];
        let (global, local) = types(r.d);
        let tables = match gemma {
            // One pair for every layer.
            Gemma::Two => {
                let tables = rotary(r, hd);
                [Some(tables.clone()), Some(tables)]
            }
            Gemma::Three => [global.then(|| rotary(r, hd)), local.then(|| rotary(r, hd))],
        };
        Self {
            masks,
            tables,
            position_ids,
        }
    }

    /// Layer `i`'s rotary tables and mask (None: its type has no tables, which `new` rules
    /// out).
    fn of(&self, d: &Dims, i: usize) -> Option<(&Tables, Option<&Pt>)> {
        let t = usize::from(local(d, i));
        Some((self.tables[t].as_ref()?, self.masks[t].as_ref()))
    }
}

/// One forward of `Gemma3ForCausalLM` with a `DynamicCache` (infer and grad), any head but
/// masked-LM. Returns the head's output and the cache.
pub(super) fn forward(r: &TorchRun<'_>, ids: &Pt, gemma: Gemma) -> Result<Vec<Pt>, &'static str> {
    if r.head == Head::MaskedLm {
        return Err("decoders have no masked-LM head");
    }
    let (b, s, width) = (r.b, r.s, r.d.hidden);
    let mut cache: Vec<Pt> = Vec::new();
    let normed = {
        // `embedding(ids) * embed_scale.to(weight.dtype)` (the buffer has the weights' type).
        let inputs_embeds = {
            let looked_up = ids.new(&[b, s, width], r.dt);
            looked_up.like()
        };
        let shared = Shared::new(r, &mut cache, true, gemma);
        for (cos, sin) in shared.tables.iter().flatten() {
            r.keep(cos);
            r.keep(sin);
        }
        let mut hidden = inputs_embeds.clone();
        for i in 0..r.d.layers {
            let (_, mask) = shared.of(r.d, i).ok_or(NO_TABLES)?;
            hidden = layer(r, &hidden, mask, &mut cache, gemma);
        }
        let normed = norm(r, &hidden);
        drop((hidden, inputs_embeds, shared));
        normed
    };
    Ok(head_outputs(r, ids, normed, cache))
}

/// `model.parameters()`'s order from the forward's (a training step's gradients): each layer's
/// forward uses the input norm, q, k, v, (Gemma 3) the q and k norms, o, the post-attention and
/// pre-feedforward norms, gate, up, down and the post-feedforward norm; its constructor
/// registers the attention (q, k, v, o, the q and k norms), the MLP, then the four norms. (With
/// biases on the attention the gradients are left in the forward's order.)
pub(super) fn parameter_order(d: &Dims, grads: &mut [Pt], gemma: Gemma) {
    // Gemma 2 has no norms over the heads.
    const THREE: [usize; 13] = [1, 2, 3, 6, 4, 5, 9, 10, 11, 0, 7, 8, 12];
    const TWO: [usize; 11] = [1, 2, 3, 4, 7, 8, 9, 0, 5, 6, 10];
    let registered: &[usize] = match gemma {
        Gemma::Two => &TWO,
        Gemma::Three => &THREE,
    };
    if d.attention_bias {
        return;
    }
    let Some(layers) = grads.get_mut(1..=registered.len() * d.layers) else {
        return;
    };
    for layer in layers.chunks_mut(registered.len()) {
        let used = layer.to_vec();
        for (slot, &from) in layer.iter_mut().zip(registered) {
            *slot = used[from].clone();
        }
    }
}

/// `Gemma3RMSNorm` with autograd: [`tt::rms_scaled`] in Gemma's style up to the scaled f32
/// input, then `1 + weight.float()` (for a weight not f32, a cast whose backward
/// makes the parameter's gradient; else the parameter's gradient comes straight from the
/// product's reduction), the product (saving both; its backward makes the scaled input's
/// gradient and, over a full-size f32 product, the reduced one of `1 + w`), then `type_as(x)`.
fn train_norm(tape: &Tape<'_>, x: &Pt) -> Pt {
    let h = x.dims[x.dims.len() - 1];
    let full = |t: &Pt| t.elems() as u64 * t.dt.size();
    let number = |t: &Pt| (t.wrapped_number(TDt::I64), t.wrapped_number(TDt::F32));
    let (scaled, _) = tt::rms_scaled(tape, x, tt::RmsStyle::Gemma);
    // The weight is f32 under autocast.
    let weight_dt = if tape.autocast_on() { TDt::F32 } else { x.dt };
    let (scale, scale_grad) = {
        let w32 = (weight_dt != TDt::F32).then(|| {
            let w = x.new(&[h], TDt::F32);
            tape.node(&w, vec![Edge::Param(vec![h], weight_dt)], &[]);
            w
        });
        let _one = number(x);
        let scale = x.new(&[h], TDt::F32);
        let grad = match &w32 {
            Some(w) => {
                tape.node(&scale, vec![Edge::Pass(w.gid())], &[]);
                Tape::grad_of(&scale)
            }
            None => Edge::Param(vec![h], TDt::F32),
        };
        (scale, grad)
    };
    let out = scaled.like();
    tape.node(
        &out,
        vec![
            Edge::Work(full(&scaled)),
            Tape::grad_of(&scaled),
            Edge::Reduced(Box::new(scale_grad)),
        ],
        &[&scaled, &scale],
    );
    drop((scale, scaled));
    tape.cast(&out, x.dt)
}

/// One decoder layer in train mode with autograd on `x`, with its layer type's rotary tables
/// and mask; the `DynamicCache` (off under checkpointing) takes its keys and values.
fn train_layer(
    r: &TorchRun<'_>,
    tape: &Tape<'_>,
    x: &Pt,
    ((cos, sin), mask): ((&Pt, &Pt), Option<&Pt>),
    cache: &std::cell::RefCell<Vec<Pt>>,
    gemma: Gemma,
) -> Pt {
    let (b, s, width) = (r.b, r.s, r.d.hidden);
    let (heads, kvh, hd) = (r.d.heads, r.d.kv_heads, r.d.head_dim());
    let (attn, _weights) = {
        let normed = train_norm(tape, x);
        let project = |out: usize| {
            if r.d.attention_bias {
                tt::linear(tape, &normed, out, true)
            } else {
                tt::linear_mm(tape, &normed, out)
            }
        };
        // `proj(x).view(b, s, heads, d).transpose(1, 2)` for each, then the per-head norms.
        let q4 = tt::heads_major(tape, &project(heads * hd), heads, hd);
        let k4 = tt::heads_major(tape, &project(kvh * hd), kvh, hd);
        let value = {
            let v = project(kvh * hd);
            if r.eager || repeats_kv(r, mask.is_some()) {
                tt::heads_major(tape, &v, kvh, hd)
            } else {
                v.view(&[b, kvh, s, hd])
            }
        };
        let (q, k) = match gemma {
            Gemma::Two => (q4, k4),
            Gemma::Three => {
                let q = train_norm(tape, &q4);
                drop(q4);
                let k = train_norm(tape, &k4);
                drop(k4);
                (q, k)
            }
        };
        let (query, key) = {
            let rotated_q = tt::rotate(tape, &q, cos, sin);
            let rotated_k = tt::rotate(tape, &k, cos, sin);
            drop((q, k));
            (rotated_q, rotated_k)
        };
        let (keys, values) = train_cache_update(tape, (key, value), cache);
        let (context, weights) = {
            let (keys, values) = if repeats_kv(r, mask.is_some()) {
                (
                    train_repeat_kv(r, tape, &keys),
                    train_repeat_kv(r, tape, &values),
                )
            } else {
                (keys.clone(), values.clone())
            };
            match mask {
                Some(mask) if r.eager => {
                    let (context, weights) = train_eager(
                        tape,
                        (&query, &keys, &values),
                        Some(mask),
                        eager(r, !tape.checkpointing()),
                    );
                    (context, Some(weights))
                }
                _ => {
                    let (v, k) = (tape.lower(&values), tape.lower(&keys));
                    let q = tape.lower(&query);
                    (
                        tt::flash_attention(tape, (&q, &k, &v), mask, r.threads),
                        None,
                    )
                }
            }
        };
        let context = context.view(&[b, s, heads * hd]);
        let projected = if r.d.attention_bias {
            tt::linear(tape, &context, width, true)
        } else {
            tt::linear_mm(tape, &context, width)
        };
        drop((context, query, keys, values, normed));
        (projected, weights)
    };
    let hidden = {
        let post = train_norm(tape, &attn);
        drop(attn);
        let sum = tt::add(tape, x, &post);
        drop(post);
        sum
    };
    let mlp = {
        let normed = train_norm(tape, &hidden);
        let down = train_gated_mlp(r, tape, &normed, false);
        drop(normed);
        down
    };
    let post = train_norm(tape, &mlp);
    drop(mlp);
    let out = tt::add(tape, &hidden, &post);
    drop((hidden, post));
    out
}

/// PyTorch: the forward of a training step for `Gemma3ForCausalLM` (or its classification
/// head) in train mode with autograd on the CPU, recording each op's node on `tape`: the
/// scaled embeddings (the head tied to them), the layers (each checkpointed when the tape
/// checkpoints; the `DynamicCache` off then), the final norm, then the head and its loss as
/// the Llama-shaped decoders' ([`train_head`]). With `r.eval` the head's output instead.
pub(super) fn train_forward<'a>(
    r: &'a TorchRun<'a>,
    ids: &Pt,
    labels: &Pt,
    tape: &Tape<'a>,
    gemma: Gemma,
) -> Result<Pt, &'static str> {
    if r.head == Head::MaskedLm {
        return Err("decoders have no masked-LM head");
    }
    if r.head == Head::Base && !r.eval {
        return Err("the base head computes no loss");
    }
    sdpa_dropout(r)?;
    let (b, s, width) = (r.b, r.s, r.d.hidden);
    let embedding = tape.embedding_grad(vec![r.d.vocab, width], r.dt, r.head == Head::CausalLm);
    let cache = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let normed = {
        let inputs_embeds = {
            let looked_up = ids.new(&[b, s, width], r.dt);
            tape.node(&looked_up, vec![embedding], &[ids]);
            // `* embed_scale` (a buffer): the backward scales the gradient, a new tensor.
            let scaled = looked_up.like();
            tape.node(&scaled, vec![Tape::grad_of(&looked_up)], &[]);
            scaled
        };
        let shared = Shared::new(r, &mut cache.borrow_mut(), !tape.checkpointing(), gemma);
        let mut hidden = inputs_embeds.clone();
        for i in 0..r.d.layers {
            let ((cos, sin), mask) = shared.of(r.d, i).ok_or(NO_TABLES)?;
            // A checkpoint keeps the layer's arguments for the recomputation, the position ids
            // among them.
            let (input, cos, sin, mask) = (hidden.clone(), cos.clone(), sin.clone(), mask.cloned());
            let (ids, cache) = (shared.position_ids.clone(), std::rc::Rc::clone(&cache));
            hidden = tape.layer(
                &hidden,
                Box::new(move |t| {
                    let _kept = &ids;
                    train_layer(r, t, &input, ((&cos, &sin), mask.as_ref()), &cache, gemma)
                }),
            );
        }
        let normed = train_norm(tape, &hidden);
        drop((hidden, inputs_embeds, shared));
        normed
    };
    Ok(train_head(r, tape, (ids, labels), normed, cache))
}
