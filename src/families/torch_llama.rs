//! PyTorch: the Llama-shaped decoders' forward as transformers 5 runs it under `no_grad` on the
//! CPU (`LlamaForCausalLM`, and Mistral, Qwen2, Qwen3 and Phi-3, which write the same forward;
//! Qwen3 adds a norm over each head of q and k, Qwen2 biases on q, k and v, Phi-3 fuses q, k, v
//! and gate, up into one projection each), sdpa or eager attention, with the causal-lm,
//! sequence-classification or base head, and their training step on the autograd tape.

// The attention follows PyTorch's names (q, k, v; b, s for batch and seq).
#![allow(clippy::many_single_char_names)]

use super::Dims;
use super::torch_sim::{Head, Pt, TDt, TorchRun, Weights, cuda_flash, flash_attention, last_token};
use super::torch_tape::{self as tt, Edge, Layout, Tape};

/// What differs between the Llama-shaped families.
#[derive(Debug, Clone, Copy)]
#[allow(clippy::struct_excessive_bools)] // one per config field that changes the forward
pub(super) struct Shape {
    /// Biases on q, k and v (Qwen2; Qwen3 with `attention_bias`).
    pub qkv_bias: bool,
    /// Bias on o as well (Qwen3 with `attention_bias`).
    pub o_bias: bool,
    /// `RMSNorm` over each head of q and k (Qwen3).
    pub qk_norm: bool,
    /// Biases on the MLP's gate, up and down projections (Llama with `mlp_bias`).
    pub mlp_bias: bool,
    pub projections: Projections,
}

/// How a layer's projections are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Projections {
    /// q, k, v, gate and up each a linear of its own.
    Separate,
    /// Phi-3: one `qkv_proj` whose q, k and v are slices, one `gate_up_proj` chunked in two,
    /// and the rotation concatenated with the (empty) part of each head it does not rotate.
    Fused,
}

impl Shape {
    fn fused(self) -> bool {
        self.projections == Projections::Fused
    }
}

/// `model.parameters()`'s order, which the optimizer walks: the tape lists each layer's
/// parameters in the forward's order (a bias after its weight); the constructors register q, k,
/// v and o (Phi-3: o, then the fused qkv), Qwen3's norms over the heads, the MLP's gate, up and
/// down (Phi-3: the fused `gate_up_proj`, down), and only then the input and post-attention norms the
/// forward uses first. (`AdamW`'s peak is one parameter's update beside the previous one's
/// denominator: with a small vocabulary, the embeddings' beside q's, not the input norm's.)
pub(super) fn parameter_order(d: &Dims, grads: &mut [Pt], shape: Shape) {
    let ranks = layer_ranks(shape);
    let Some(layers) = grads.get_mut(1..=ranks.len() * d.layers) else {
        return;
    };
    for layer in layers.chunks_mut(ranks.len()) {
        let mut ranked: Vec<(u8, Pt)> = ranks.iter().copied().zip(layer.iter().cloned()).collect();
        // Stable: a bias stays after its weight.
        ranked.sort_by_key(|(rank, _)| *rank);
        for (slot, (_, grad)) in layer.iter_mut().zip(ranked) {
            *slot = grad;
        }
    }
}

/// Each of a layer's parameters in the forward's order, ranked by when its module registers.
fn layer_ranks(shape: Shape) -> Vec<u8> {
    const Q: u8 = 0;
    const K: u8 = 1;
    const V: u8 = 2;
    const O: u8 = 3;
    const Q_NORM: u8 = 4;
    const K_NORM: u8 = 5;
    const GATE: u8 = 6;
    const UP: u8 = 7;
    const DOWN: u8 = 8;
    const INPUT_NORM: u8 = 9;
    const POST_NORM: u8 = 10;
    if shape.fused() {
        // input norm, qkv_proj, o_proj, post norm, gate_up_proj, down_proj; Phi-3's attention
        // registers o_proj before qkv_proj.
        const FUSED_O: u8 = 0;
        const FUSED_QKV: u8 = 1;
        return vec![INPUT_NORM, FUSED_QKV, FUSED_O, POST_NORM, GATE, DOWN];
    }
    let linear = |rank: u8, bias: bool| if bias { vec![rank, rank] } else { vec![rank] };
    let head = |rank: u8, norm: u8| {
        let mut ranks = linear(rank, shape.qkv_bias);
        if shape.qk_norm {
            ranks.push(norm);
        }
        ranks
    };
    [
        vec![INPUT_NORM],
        head(Q, Q_NORM),
        head(K, K_NORM),
        linear(V, shape.qkv_bias),
        linear(O, shape.o_bias),
        vec![POST_NORM],
        linear(GATE, shape.mlp_bias),
        linear(UP, shape.mlp_bias),
        linear(DOWN, shape.mlp_bias),
    ]
    .concat()
}

/// Parameters and buffers of `…ForCausalLM` as its constructor makes them: the embeddings,
/// each layer (q, k, v, o, Qwen3's q/k norms, the gated MLP, the two norms), the final norm,
/// the rotary buffers `inv_freq` and `original_inv_freq` (f32, half a head each), then the head
/// (made and dropped when tied to the embeddings; `…ForSequenceClassification`'s `score`, a
/// linear to the labels without a bias, is never tied).
pub(super) fn weights(d: &Dims, head: Head, dt: TDt, shape: Shape) -> Option<Weights> {
    if head == Head::MaskedLm {
        return None;
    }
    let (width, inter, vocab) = (d.hidden, d.intermediate, d.vocab);
    let hd = d.head_dim();
    let (qw, kv) = (d.heads * hd, d.kv_heads * hd);
    let mut w = Weights::default();
    w.push(vocab * width, dt);
    for _ in 0..d.layers {
        if shape.fused() {
            // `Phi3Attention` makes o_proj first; no biases.
            w.linear((qw, width), false, dt);
            w.linear((width, qw + 2 * kv), false, dt);
            w.linear((width, 2 * inter), false, dt);
            w.linear((inter, width), false, dt);
            w.push(width, dt);
            w.push(width, dt);
            continue;
        }
        w.linear((width, qw), shape.qkv_bias, dt);
        w.linear((width, kv), shape.qkv_bias, dt);
        w.linear((width, kv), shape.qkv_bias, dt);
        w.linear((qw, width), shape.o_bias, dt);
        if shape.qk_norm {
            w.push(hd, dt);
            w.push(hd, dt);
        }
        w.linear((width, inter), shape.mlp_bias, dt);
        w.linear((width, inter), shape.mlp_bias, dt);
        w.linear((inter, width), shape.mlp_bias, dt);
        w.push(width, dt);
        w.push(width, dt);
    }
    w.push(width, dt);
    w.push(hd / 2, TDt::F32);
    w.push(hd / 2, TDt::F32);
    // `AutoModel` (the base head) has no head at all.
    match (head, d.torch_tied_embeddings()) {
        (Head::Base | Head::MaskedLm, _) => {}
        (Head::SequenceClassification, _) => w.linear((width, d.labels()), false, dt),
        (_, true) => w.dropped(vocab * width, dt),
        (_, false) => w.push(vocab * width, dt),
    }
    Some(w)
}

/// `LlamaRMSNorm`: upcast to f32 (a copy unless f32), variance, scale, back to the input type,
/// times the weight. Autograd saves the f32 input (pow and the scaling multiply), the
/// reciprocal deviation (rsqrt's output) and what the weight multiplies.
fn rms_norm(r: &TorchRun<'_>, x: &Pt) -> Pt {
    let mut rows = x.dims.clone();
    *rows.last_mut().unwrap_or(&mut 0) = 1;
    let x32 = x.to(TDt::F32);
    let variance = {
        let _squared = x32.like();
        x32.new(&rows, TDt::F32)
    };
    let scaled = {
        let inv = {
            let shifted = variance.like();
            shifted.like()
        };
        r.keep(&inv);
        x32.like()
    };
    r.keep(&x32);
    drop(x32);
    let out = {
        let back = scaled.to(x.dt);
        r.keep(&back);
        back.like()
    };
    drop(scaled);
    drop(variance);
    out
}

/// `q * cos + rotate_half(q) * sin`. Autograd saves only cos and sin (tables that need no
/// gradient): multiplying by them needs neither q nor its rotation for the backward.
pub(super) fn rotate(x: &Pt) -> Pt {
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
pub(super) fn rotary(r: &TorchRun<'_>, hd: usize) -> (Pt, Pt) {
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

/// A sliding-window model's `DynamicCache` (Mistral's): each layer a
/// `DynamicSlidingWindowLayer`, holding its window as a one-element i64 tensor.
fn window_tensors(r: &TorchRun<'_>) -> Vec<Pt> {
    if r.d.sliding_window == 0 {
        return Vec::new();
    }
    (0..r.d.layers)
        .map(|_| r.sim.alloc(&[], TDt::I64))
        .collect()
}

/// transformers' `create_causal_mask` (or, with a `window` above 0, its
/// `create_sliding_window_causal_mask`) with the all-ones attention mask. For sdpa below the
/// window (or without one) it reads the mask (`fast_all`)
/// and builds none: sdpa runs causal. From Mistral's `sliding_window` on, and always for eager
/// attention, `sdpa_mask` builds the `(b, 1, s, s)` bool mask by broadcasting (the aranges; the
/// window and causal conditions over `(s, s)`, each `&` a new tensor; the padding gathered per
/// batch row). Eager's `eager_mask` turns it into an additive mask in the model's type
/// (`where`). The model keeps the mask to its end.
pub(super) fn causal_mask(r: &TorchRun<'_>, window: usize) -> Option<Pt> {
    let (b, s, sim) = (r.b, r.s, r.sim);
    let windowed = window > 0 && s >= window;
    let padding = sim.alloc(&[b, s], TDt::Bool);
    if !windowed && !r.eager {
        let _sum = sim.alloc(&[], TDt::I64);
        let _as_long = sim.alloc(&[b, s], TDt::I64);
        return None;
    }
    let mask = {
        let batch_arange = sim.alloc(&[b], TDt::I64);
        let head_arange = sim.alloc(&[1], TDt::I64);
        // `torch.arange(length) + offset`
        let index = || {
            let _arange = sim.alloc(&[s], TDt::I64);
            sim.alloc(&[s], TDt::I64)
        };
        let (q_index, kv_index) = (index(), index());
        let square = || sim.alloc(&[1, 1, s, s], TDt::Bool);
        // and_masks(pattern, padding) starts from a one-element `True`; the window's pattern is
        // and_masks(window, causal), which starts from its own.
        let all = sim.alloc(&[], TDt::Bool);
        // The window's pattern whenever there is a window (eager builds it below the window
        // too).
        let pattern = if window > 0 {
            let start = sim.alloc(&[], TDt::Bool);
            let within = {
                let _shifted = sim.alloc(&[1, 1, s, 1], TDt::I64);
                square()
            };
            let windowed = square();
            drop((within, start));
            let causal = square();
            let both = square();
            drop((windowed, causal));
            both
        } else {
            square()
        };
        let combined = square();
        drop((pattern, all));
        let padded = sim.alloc(&[b, 1, 1, s], TDt::Bool);
        let mask = sim.alloc(&[b, 1, s, s], TDt::Bool);
        drop((padded, combined));
        drop((batch_arange, head_arange, q_index, kv_index));
        mask
    };
    if r.eager {
        let additive = mask.new(&mask.dims, r.dt);
        drop((mask, padding));
        return Some(additive);
    }
    drop(padding);
    Some(mask)
}

/// How the decoders' eager attention runs, beside its inputs.
#[derive(Debug, Clone, Copy, Default)]
pub(super) struct Eager {
    /// How the query lies in memory.
    pub query: Layout,
    /// How the keys lie in memory.
    pub keys: Layout,
    /// How the values lie in memory.
    pub values: Layout,
    /// Gemma 2 soft-caps the scores.
    pub softcap: bool,
    /// Dropout on the weights (train mode with `attention_dropout` above 0).
    pub dropout: bool,
}

/// How the eager attention's operands lie: the query as the rotation leaves it (Phi-3's
/// concatenation whole, else the projection's rows); the keys and values one head's expansion,
/// or `repeat_kv`'s or the cache's copies, or (checkpointing turns the cache off, `cached`
/// false) as the layer made them: Phi-3's keys its concatenation, its values a slice of the
/// fused rows, other decoders' keys and values their projections' rows.
pub(super) fn eager_layouts(r: &TorchRun<'_>, fused: bool, cached: bool) -> Eager {
    let (heads, kvh, hd) = (r.d.heads, r.d.kv_heads, r.d.head_dim());
    let query = if fused {
        Layout::Whole
    } else {
        Layout::Rows { row: heads * hd }
    };
    let (keys, values) = if expanded(r) {
        (Layout::Expanded, Layout::Expanded)
    } else if cached || repeats_kv(r, true) {
        (Layout::Whole, Layout::Whole)
    } else if fused {
        (
            Layout::Whole,
            Layout::Rows {
                row: (heads + 2 * kvh) * hd,
            },
        )
    } else {
        let rows = Layout::Rows { row: kvh * hd };
        (rows, rows)
    };
    Eager {
        query,
        keys,
        values,
        softcap: false,
        dropout: !r.eval && r.d.dropout.attention,
    }
}

/// `tanh(x / cap) * cap` (infer and grad): each division and product by a Python number makes
/// its wrapped scalar (saved) and output; `tanh` saves its output. `x` goes once divided.
pub(super) fn softcap(r: &TorchRun<'_>, x: Pt) -> Pt {
    let divided = super::torch_sim::scale(r, &x);
    drop(x);
    let capped = divided.like();
    r.keep(&capped);
    drop(divided);
    let out = super::torch_sim::scale(r, &capped);
    drop(capped);
    out
}

/// `tanh(x / cap) * cap` with autograd: the division and the product each save their wrapped
/// scalar (cast to x's type while they run), `tanh` its output; each backward makes a gradient like its input. `x` goes once
/// divided.
pub(super) fn train_softcap(tape: &Tape<'_>, x: Pt) -> Pt {
    let by_number = |t: &Pt| {
        let number = t.wrapped_number(TDt::I64);
        // The number cast to t's type while the op runs.
        let cast = t.wrapped_number(t.dt);
        let y = t.like();
        drop(cast);
        tape.node(&y, vec![Tape::grad_of(t)], &[&number]);
        y
    };
    let divided = by_number(&x);
    drop(x);
    let capped = tt::unary(tape, &divided, true);
    drop(divided);
    let out = by_number(&capped);
    drop(capped);
    out
}

/// Whether the keys and values `repeat_kv` hands the attention are one key/value head's
/// expansion to every head (a view with stride 0).
pub(super) fn expanded(r: &TorchRun<'_>) -> bool {
    r.d.kv_heads == 1 && r.d.heads > 1
}

/// Whether transformers' `repeat_kv` copies the keys and values out to every head: with fewer
/// key/value heads, always under eager attention, and under sdpa when a mask keeps it from
/// taking `enable_gqa`.
pub(super) fn repeats_kv(r: &TorchRun<'_>, masked: bool) -> bool {
    r.d.kv_heads < r.d.heads && (r.eager || masked)
}

/// `repeat_kv` on the keys and values (infer and grad): copies `(b, heads, s, d)` where
/// [`repeats_kv`], else themselves. With one key/value head the expansion reshapes as a view
/// (stride 0 over the heads): no copy.
fn repeat_kv(r: &TorchRun<'_>, (keys, values): (&Pt, &Pt), masked: bool) -> (Pt, Pt) {
    let dims = [r.b, r.d.heads, r.s, r.d.head_dim()];
    if !repeats_kv(r, masked) {
        return (keys.clone(), values.clone());
    }
    if r.d.kv_heads == 1 {
        return (keys.view(&dims), values.view(&dims));
    }
    (keys.new(&dims, keys.dt), values.new(&dims, values.dt))
}

/// `repeat_kv` on `t` with autograd (train), where [`repeats_kv`]: a copy out to every head,
/// or with one key/value head a view (stride 0); either way the backward sums the gradient
/// back to `t`'s heads.
pub(super) fn train_repeat_kv(r: &TorchRun<'_>, tape: &Tape<'_>, t: &Pt) -> Pt {
    let dims = [r.b, r.d.heads, r.s, r.d.head_dim()];
    let repeated = if r.d.kv_heads == 1 {
        t.view_node(&dims)
    } else {
        t.new(&dims, t.dt)
    };
    tape.node(&repeated, vec![Tape::grad_of(t)], &[]);
    repeated
}

/// sdpa for the decoders (infer and grad): the flash kernel, causal, or under a mask (Mistral
/// past its window), where sdpa takes no `enable_gqa`: `repeat_kv` copies the keys and values
/// out to every head, and the kernel gets the mask as an additive one in the query's type
/// (`where`), which autograd saves with the rest. Returns the `(b, s, heads, d)` context.
pub(super) fn sdpa(
    r: &TorchRun<'_>,
    (query, keys, values): (&Pt, &Pt, &Pt),
    mask: Option<&Pt>,
) -> Pt {
    let (s, heads, hd) = (r.s, r.d.heads, r.d.head_dim());
    let (keys, values) = repeat_kv(r, (keys, values), mask.is_some());
    let additive = mask.map(|m| m.new(&m.dims, query.dt));
    let context = flash_attention(r, (query, &keys, &values), heads, s, s, hd, mask.is_some());
    if let Some(additive) = &additive {
        r.keep(additive);
    }
    drop((additive, keys, values));
    context
}

/// transformers' `eager_attention_forward` for the decoders (infer and grad) on the rotated
/// `query` (heads-major over the projection's layout) and the cache's keys and values, under
/// the additive `mask`: `repeat_kv` copies the keys and values out to every head; `matmul`
/// copies the query for `bmm` (saving the copy and the keys), times the scale, plus the mask,
/// softmax in f32 (saving its output) cast back to the query's type, `matmul` with the values
/// (saving both), then `transpose(1, 2).contiguous()`, which `o_proj` saves. Returns the
/// `(b, s, heads, d)` context and the weights, which the layer holds (`_`) to its end.
pub(super) fn eager_attention(
    r: &TorchRun<'_>,
    (query, keys, values): (&Pt, &Pt, &Pt),
    mask: Option<&Pt>,
    how: Eager,
) -> (Pt, Pt) {
    let (b, s, heads, hd) = (r.b, r.s, r.d.heads, r.d.head_dim());
    let (keys, values) = repeat_kv(r, (keys, values), true);
    // Folding (b, heads) for `bmm`: a copy where the layout asks for one.
    let fold = |t: &Pt, layout: Layout| {
        if layout.fold_copies((b, t.dims[1], t.dims[2], t.dims[3])) {
            t.copy()
        } else {
            t.clone()
        }
    };
    let scores = {
        let q_rows = fold(query, how.query);
        let k_rows = fold(&keys, how.keys);
        r.keep(&q_rows);
        r.keep(&k_rows);
        query.new(&[b, heads, s, s], query.dt)
    };
    let scaled = super::torch_sim::scale(r, &scores);
    drop(scores);
    // Gemma 2's soft-capping: `/ cap` and `* cap` (each a wrapped number, saved), `tanh`
    // between them (saving its output).
    let scaled = if how.softcap {
        softcap(r, scaled)
    } else {
        scaled
    };
    // `+ attention_mask` (none on ModernBERT's global layers).
    let masked = if mask.is_some() {
        let sum = scaled.like();
        drop(scaled);
        sum
    } else {
        scaled
    };
    // `softmax(dtype=float32)` casts a bf16/f16 input to f32 first.
    let probs = {
        let probs32 = masked.widened(TDt::F32);
        r.keep(&probs32);
        probs32.to(query.dt)
    };
    drop(masked);
    let out = {
        let v_rows = fold(&values, how.values);
        r.keep(&probs);
        r.keep(&v_rows);
        query.new(&[b, heads, s, hd], query.dt)
    };
    let context = query.new(&[b, s, heads, hd], query.dt);
    // `o_proj` saves it (the flash kernel's output is saved by the kernel itself).
    r.keep(&context);
    drop((out, keys, values));
    (context, probs)
}

/// One forward of `…ForCausalLM` with a `DynamicCache` (`use_cache` is on by default), logits for
/// every position (the causal-lm head; the base head stops at the final norm; the
/// classification head scores every position, then pools each row's last token that is not
/// padding). Returns the logits (or the last hidden state) and the cache.
pub(super) fn forward(r: &TorchRun<'_>, ids: &Pt, shape: Shape) -> Result<Vec<Pt>, &'static str> {
    if r.head == Head::MaskedLm {
        return Err("decoders have no masked-LM head");
    }
    let (b, s, width) = (r.b, r.s, r.d.hidden);
    let (heads, kvh, hd) = (r.d.heads, r.d.kv_heads, r.d.head_dim());
    let sim = r.sim;
    let mut cache: Vec<Pt> = Vec::new();
    let normed = {
        let inputs_embeds = ids.new(&[b, s, width], r.dt);
        cache.extend(window_tensors(r));
        // `torch.arange(s) + past_seen_tokens`
        let _position_ids = {
            let _arange = sim.alloc(&[s], TDt::I64);
            sim.alloc(&[s], TDt::I64)
        };
        let mask = causal_mask(r, r.d.sliding_window);
        let (cos, sin) = rotary(r, hd);
        // Each layer's rotation multiplies by them: autograd saves them.
        r.keep(&cos);
        r.keep(&sin);
        let mut hidden = inputs_embeds.clone();
        for _ in 0..r.d.layers {
            let out = {
                let residual = hidden.clone();
                let normed = rms_norm(r, &hidden);
                // q, k and v save their input.
                r.keep(&normed);
                let (attn, _weights) = {
                    // Phi-3's fused projection: q, k and v are its slices, and it lives until
                    // the attention returns.
                    let qkv = shape.fused().then(|| normed.linear((heads + 2 * kvh) * hd));
                    let project = |out: usize, count: usize| {
                        if let Some(qkv) = &qkv {
                            return qkv.view(&[b, s, out]);
                        }
                        let projected = normed.linear(out);
                        if shape.qk_norm {
                            rms_norm(r, &projected.view(&[b, s, count, hd]))
                        } else {
                            projected
                        }
                    };
                    let query = project(heads * hd, heads);
                    let key = project(kvh * hd, kvh);
                    let value = match &qkv {
                        Some(qkv) => qkv.view(&[b, s, kvh * hd]),
                        None => normed.linear(kvh * hd),
                    };
                    // Phi-3 concatenates the rotation with the part of each head it leaves as
                    // it is (none here): a copy.
                    let pass = |rotated: Pt| {
                        if !shape.fused() {
                            return rotated;
                        }
                        let cat = rotated.like();
                        drop(rotated);
                        cat
                    };
                    // `apply_rotary_pos_emb(q, k, …)`: the caller's q and k live until both
                    // are rotated.
                    let rotated_q = pass(rotate(&query.view(&[b, heads, s, hd])));
                    let rotated_k = pass(rotate(&key.view(&[b, kvh, s, hd])));
                    drop((query, key));
                    let (query, key) = (rotated_q, rotated_k);
                    // DynamicCache.update: the new keys and values concatenated after the
                    // (empty) past; the cache keeps them.
                    let keys = key.like();
                    let values = sim.alloc(&[b, kvh, s, hd], r.dt);
                    drop(key);
                    drop(value);
                    cache.push(keys.clone());
                    cache.push(values.clone());
                    let (context, weights) = match &mask {
                        Some(mask) if r.eager => {
                            let (context, weights) = eager_attention(
                                r,
                                (&query, &keys, &values),
                                Some(mask),
                                eager_layouts(r, shape.fused(), true),
                            );
                            (context, Some(weights))
                        }
                        _ => {
                            let context = sdpa(r, (&query, &keys, &values), mask.as_ref());
                            let context = if copies_context(shape, &context, mask.is_some()) {
                                // `o_proj` saves the copy.
                                let copy = context.like();
                                r.keep(&copy);
                                copy
                            } else {
                                context
                            };
                            (context, None)
                        }
                    };
                    let projected = context.view(&[b, s, heads * hd]).linear(width);
                    drop(context);
                    drop(query);
                    drop(qkv);
                    (projected, weights)
                };
                drop(normed);
                let hidden = {
                    let sum = residual.like();
                    drop(attn);
                    sum
                };
                drop(residual);
                let normed = rms_norm(r, &hidden);
                r.keep(&normed);
                let mlp = if shape.fused() {
                    // Phi-3: `gate_up_proj`, chunked (views); silu saves the gate (a view: the
                    // whole projection is kept), the product both factors; the gate lives
                    // until the MLP returns.
                    let gate_up = normed.linear(2 * r.d.intermediate);
                    r.keep(&gate_up);
                    let act = gate_up.new(&[b, s, r.d.intermediate], gate_up.dt);
                    let product = act.like();
                    r.keep(&act);
                    drop(act);
                    r.keep(&product);
                    let down = product.linear(width);
                    drop((product, gate_up));
                    down
                } else {
                    gated_mlp(r, &normed)
                };
                drop(normed);
                let sum = hidden.like();
                drop(mlp);
                sum
            };
            hidden = out;
        }
        let normed = rms_norm(r, &hidden);
        drop(hidden);
        drop(inputs_embeds);
        normed
    };
    Ok(head_outputs(r, ids, normed, cache))
}

/// The gated MLP (infer and grad) on the normed input, `down(act(gate(x)) * up(x))`: the
/// activation saves its input (`ReLU` its output, which the product saves too), the product
/// both factors, down its input; the product goes as the MLP returns.
pub(super) fn gated_mlp(r: &TorchRun<'_>, normed: &Pt) -> Pt {
    let gated = {
        let gate = normed.linear(r.d.intermediate);
        if !r.d.act_saves_output() {
            r.keep(&gate);
        }
        gate.like()
    };
    let product = {
        let up = normed.linear(r.d.intermediate);
        r.keep(&gated);
        r.keep(&up);
        gated.like()
    };
    r.keep(&product);
    drop(gated);
    let down = product.linear(r.d.hidden);
    drop(product);
    down
}

/// [`gated_mlp`] with autograd on the tape (each projection with its bias where `bias`).
pub(super) fn train_gated_mlp(r: &TorchRun<'_>, tape: &Tape<'_>, normed: &Pt, bias: bool) -> Pt {
    let project = |x: &Pt, out: usize| tt::linear_with(tape, x, out, bias);
    let gate = project(normed, r.d.intermediate);
    let act = tt::unary(tape, &gate, r.d.act_saves_output());
    drop(gate);
    let up = project(normed, r.d.intermediate);
    let product = tt::mul(tape, &act, &up);
    drop((act, up));
    let down = project(&product, r.d.hidden);
    drop(product);
    down
}

/// `DynamicCache.update` with autograd: the new keys and values concatenated onto the empty
/// past (copies whose gradients pass back), which the cache keeps; without the cache
/// (checkpointing turns it off) the attention takes them as they are. The rotated key and the
/// value go as the update returns.
pub(super) fn train_cache_update(
    tape: &Tape<'_>,
    (key, value): (Pt, Pt),
    cache: &std::cell::RefCell<Vec<Pt>>,
) -> (Pt, Pt) {
    if tape.checkpointing() {
        return (key, value);
    }
    let keys = key.like();
    tape.node(&keys, vec![Edge::Pass(key.gid())], &[]);
    let values = value.like();
    tape.node(&values, vec![Edge::Pass(value.gid())], &[]);
    cache.borrow_mut().extend([keys.clone(), values.clone()]);
    drop((key, value));
    (keys, values)
}

/// The head on the final norm's output (infer and grad), then the model's outputs with the
/// cache: `AutoModel`'s last hidden state, or the logits for every position, or the pooled
/// logits of the classification head (its locals go as the model returns).
pub(super) fn head_outputs(r: &TorchRun<'_>, ids: &Pt, normed: Pt, cache: Vec<Pt>) -> Vec<Pt> {
    // `AutoModel` returns the last hidden state with the cache.
    if r.head == Head::Base {
        let mut outputs = vec![normed];
        outputs.extend(cache);
        return outputs;
    }
    // lm_head (or score) saves its input.
    r.keep(&normed);
    if r.head == Head::SequenceClassification {
        let logits = normed.linear(r.d.labels());
        let pooled = last_token(ids, &logits);
        for index in &pooled.indices {
            r.keep(index);
        }
        let [rows, last] = pooled.indices;
        drop(rows);
        // The model's locals go as it returns: the last hidden state, the logits, the pooling's.
        drop((normed, logits, last, pooled.locals));
        let mut outputs = vec![pooled.pooled];
        outputs.extend(cache);
        return outputs;
    }
    let logits = normed.linear(r.d.vocab);
    // Gemma 2 soft-caps the logits (the last hidden state still held).
    let logits = if r.d.softcapping.logits {
        softcap(r, logits)
    } else {
        logits
    };
    drop(normed);
    let mut outputs = vec![logits];
    outputs.extend(cache);
    outputs
}

/// PyTorch: the forward of a training step for `…ForCausalLM` in train mode with autograd on the
/// CPU (transformers 5), recording each op's node on `tape`; returns the loss. As `forward` (the
/// `DynamicCache` unless checkpointing turns it off, logits for every position), then
/// `ForCausalLMLoss`: the logits in f32, the labels padded and shifted (a copy), cross-entropy
/// over every position. sdpa runs the flash kernel: attention dropout (which turns it to
/// PyTorch's math kernel) is modelled under eager attention only, and refused under sdpa.
/// The classification head: `score` on every position, the last token that is not padding
/// pooled (indexing, whose backward scatters into zeros like the logits), cross-entropy on the
/// pooled logits in their type. With `r.eval`: the logits (or, for the base head, the last
/// hidden state) instead of a loss.
pub(super) fn train_forward<'a>(
    r: &'a TorchRun<'a>,
    ids: &Pt,
    labels: &Pt,
    tape: &Tape<'a>,
    shape: Shape,
) -> Result<Pt, &'static str> {
    if r.head == Head::MaskedLm {
        return Err("decoders have no masked-LM head");
    }
    if r.head == Head::Base && !r.eval {
        return Err("the base head computes no loss");
    }
    sdpa_dropout(r)?;
    let (b, s, width) = (r.b, r.s, r.d.hidden);
    let hd = r.d.head_dim();
    let sim = r.sim;
    // Only the causal-lm head is tied to the embeddings (`score` never is).
    let embedding = tape.embedding_grad(
        vec![r.d.vocab, width],
        r.dt,
        r.d.torch_tied_embeddings() && r.head == Head::CausalLm,
    );
    // The `DynamicCache`: each layer's keys and values, kept until the model's output goes
    // (the end of the forward); the kernel saves them too, except autocast's f32 keys, which
    // it casts.
    let cache = std::rc::Rc::new(std::cell::RefCell::new(Vec::new()));
    let normed = {
        let inputs_embeds = ids.new(&[b, s, width], r.dt);
        tape.node(&inputs_embeds, vec![embedding], &[ids]);
        if !tape.checkpointing() {
            cache.borrow_mut().extend(window_tensors(r));
        }
        let position_ids = {
            let _arange = sim.alloc(&[s], TDt::I64);
            sim.alloc(&[s], TDt::I64)
        };
        let mask = causal_mask(r, r.d.sliding_window);
        let (cos, sin) = rotary(r, hd);
        let mut hidden = inputs_embeds.clone();
        for _ in 0..r.d.layers {
            let (input, cos, sin) = (hidden.clone(), cos.clone(), sin.clone());
            let cache = std::rc::Rc::clone(&cache);
            // A checkpoint keeps the layer's arguments for the recomputation, the position ids
            // among them.
            let (ids, mask) = (position_ids.clone(), mask.clone());
            hidden = tape.layer(
                &hidden,
                Box::new(move |t| {
                    let _kept = &ids;
                    let layer = Layer {
                        rotary: (&cos, &sin),
                        mask: mask.as_ref(),
                        cache: &cache,
                    };
                    train_layer(r, t, &input, &layer, shape)
                }),
            );
        }
        let normed = tt::rms_norm(tape, &hidden);
        // The model's locals go as its forward returns.
        drop((hidden, inputs_embeds, cos, sin, position_ids, mask));
        normed
    };
    Ok(train_head(r, tape, (ids, labels), normed, cache))
}

/// Attention dropout in train mode under sdpa: PyTorch's math kernel (the CPU's flash kernel
/// takes no dropout), which the decoders do not model yet.
pub(super) fn sdpa_dropout(r: &TorchRun<'_>) -> Result<(), &'static str> {
    if !r.eval && !r.eager && r.d.dropout.attention {
        return Err(
            "attention dropout in training (\"attention_dropout\" above 0) under sdpa, which then runs PyTorch's math kernel, is not modelled yet for decoders; --attn eager is",
        );
    }
    Ok(())
}

/// The head of a training step on the final norm's output, `cache` (the model's `DynamicCache`)
/// living until the model's output goes: the loss, or with `r.eval` the head's output.
pub(super) fn train_head<C>(
    r: &TorchRun<'_>,
    tape: &Tape<'_>,
    (ids, labels): (&Pt, &Pt),
    normed: Pt,
    cache: C,
) -> Pt {
    let (b, s) = (r.b, r.s);
    // Without labels the model returns the last hidden state (the base head) or the logits,
    // with the cache.
    if r.head == Head::Base {
        drop(cache);
        return normed;
    }
    if r.head == Head::SequenceClassification {
        let logits = tt::linear_mm(tape, &normed, r.d.labels());
        let pooled = last_token(ids, &logits);
        let [rows, last] = &pooled.indices;
        tape.node(&pooled.pooled, vec![Tape::grad_of(&logits)], &[rows, last]);
        let out = if r.eval {
            pooled.pooled
        } else {
            tt::cross_entropy(tape, &pooled.pooled, labels)
        };
        drop((normed, logits, pooled.indices, pooled.locals, cache));
        return out;
    }
    let logits = tt::linear_mm(tape, &normed, r.d.vocab);
    let logits = if r.d.softcapping.logits {
        train_softcap(tape, logits)
    } else {
        logits
    };
    if r.eval {
        drop((normed, cache));
        return logits;
    }
    // ForCausalLMLoss: `logits.float()`, labels padded by one and shifted (`contiguous`).
    let logits32 = tape.cast(&logits, TDt::F32);
    let padded = labels.new(&[b, s + 1], TDt::I64);
    // `labels[..., 1:].contiguous()`: a copy, except at batch 1, where the slice is contiguous
    // and stays a view of the padded labels.
    let shifted = if b == 1 {
        padded.view(&[b, s])
    } else {
        labels.new(&[b, s], TDt::I64)
    };
    let loss = tt::cross_entropy(tape, &logits32.view(&[b * s, r.d.vocab]), &shifted);
    // The model's output (and with it the cache and the last hidden state) goes after the loss.
    drop((shifted, padded, logits32, logits, normed, cache));
    loss
}

/// transformers' `eager_attention_forward` in train mode on the rotated query and the
/// (repeated) keys and values, under the additive `mask`: `matmul(q, kᵀ)` (autocast casts kᵀ,
/// then q; folding (b, heads) of the query's layout copies it, except at batch 1; `bmm` saves
/// both), times the scale (saving its 8-byte scalar), plus the mask (in the mask's type: a
/// low-precision product is widened), `softmax(dtype=float32)` (a cast first unless f32; saving
/// its output), cast back to the query's type, dropout (with `attention_dropout` above 0 its
/// mask and output, the weights before it then gone; else the input itself), `matmul` with the
/// values (autocast casts both; saving both), then `transpose(1, 2).contiguous()`. Returns the
/// `(b, s, heads·d)` context and the weights (dropout's output).
pub(super) fn train_eager(
    tape: &Tape<'_>,
    (query, keys, values): (&Pt, &Pt, &Pt),
    mask: Option<&Pt>,
    how: Eager,
) -> (Pt, Pt) {
    let (b, heads, s, hd) = (query.dims[0], query.dims[1], query.dims[2], query.dims[3]);
    let rows = b * heads;
    // Folding (b, heads) for `bmm` copies where the layout asks for one, the layout autocast's
    // cast (`lowered`) left.
    let fold = |t: &Pt, lowered: &Pt, layout: Layout, dims: &[usize]| {
        let layout = if lowered.dt == t.dt {
            layout
        } else {
            layout.cast(t.dims[1], t.dims[3])
        };
        tt::bmm_fold(
            tape,
            lowered,
            dims,
            layout,
            (b, t.dims[1], t.dims[2], t.dims[3]),
        )
    };
    let scores = {
        let k = tape.lower(keys);
        let q = tape.lower(query);
        let q_rows = fold(query, &q, how.query, &[rows, s, hd]);
        let k_rows = fold(keys, &k, how.keys, &[rows, hd, s]);
        tt::bmm(tape, &q_rows, &k_rows, &[rows, s, s])
    };
    let scaled = {
        let y = scores.like();
        let scaling = scores.wrapped_number(TDt::I64);
        tape.node(&y, vec![Tape::grad_of(&scores)], &[&scaling]);
        y
    };
    drop(scores);
    let scaled = if how.softcap {
        train_softcap(tape, scaled)
    } else {
        scaled
    };
    // `+ attention_mask` (none on ModernBERT's global layers).
    let masked = match mask {
        None => scaled,
        Some(mask) => {
            let y = if scaled.dt == mask.dt {
                let y = scaled.like();
                tape.node(&y, vec![Edge::Pass(scaled.gid())], &[]);
                y
            } else {
                let y = scaled.widened(mask.dt);
                tape.node(&y, vec![Tape::grad_of(&scaled)], &[]);
                y
            };
            drop(scaled);
            y
        }
    };
    let probs = {
        let probs32 = {
            let x32 = tape.cast(&masked, TDt::F32);
            let p = x32.like();
            tape.node(&p, vec![Tape::grad_of(&x32)], &[&p]);
            p
        };
        tape.cast(&probs32, query.dt)
    };
    drop(masked);
    // `attn_weights = dropout(attn_weights, …)`: the name rebound, the weights before it go.
    let probs = {
        let dropped = tt::dropout(tape, &probs, how.dropout);
        drop(probs);
        dropped
    };
    let out = {
        let v = tape.lower(values);
        let p = tape.lower(&probs);
        let v_rows = fold(values, &v, how.values, &[rows, s, hd]);
        tt::bmm(tape, &p, &v_rows, &[rows, s, hd])
    };
    let context = tt::heads_merged(tape, &out, (b, heads, s));
    (context, probs)
}

/// Whether transformers' `attn_output.transpose(1, 2).contiguous()` after sdpa copies: when
/// the query is heads-major in memory (Phi-3's concatenation), so is the output the kernel
/// makes like it (the CPU's flash kernel, CUDA's flash); CUDA's memory-efficient kernel makes
/// `(b, s, heads, d)` whatever the query.
fn copies_context(shape: Shape, out: &Pt, masked: bool) -> bool {
    shape.fused() && (!out.on_cuda() || cuda_flash(out.dt, masked))
}

/// What each decoder layer is given beside its input.
struct Layer<'l> {
    /// The rotary tables, cos and sin.
    rotary: (&'l Pt, &'l Pt),
    /// The attention mask, when one is built (Mistral from its window on).
    mask: Option<&'l Pt>,
    /// The `DynamicCache` (unused under checkpointing, which turns it off).
    cache: &'l std::cell::RefCell<Vec<Pt>>,
}

/// One decoder layer in train mode with autograd, on `x`.
fn train_layer(r: &TorchRun<'_>, tape: &Tape<'_>, x: &Pt, layer: &Layer<'_>, shape: Shape) -> Pt {
    let (cos, sin) = layer.rotary;
    let (b, s, width) = (r.b, r.s, r.d.hidden);
    let (heads, kvh, hd) = (r.d.heads, r.d.kv_heads, r.d.head_dim());
    // `hidden_states, _ = self.self_attn(…)`: eager's weights are held to the layer's end.
    let (attn, _weights) = {
        let normed = tt::rms_norm(tape, x);
        // Phi-3's fused projection; q, k and v are its slices (each slice's backward: zeros
        // like it, the gradient copied in). It lives until the attention returns.
        let qkv = shape
            .fused()
            .then(|| tt::linear_mm(tape, &normed, (heads + 2 * kvh) * hd));
        let slice = |out: usize| {
            qkv.as_ref().map(|qkv| {
                let t = qkv.view_node(&[b, s, out]);
                tape.node(&t, vec![Tape::grad_of(qkv)], &[]);
                t
            })
        };
        let slices = [slice(heads * hd), slice(kvh * hd), slice(kvh * hd)];
        let [q_slice, k_slice, v_slice] = slices;
        let project = |out: usize, bias: bool| {
            if bias {
                tt::linear(tape, &normed, out, true)
            } else {
                tt::linear_mm(tape, &normed, out)
            }
        };
        // Each projection is viewed heads-major as it is made, `view(…).transpose(1, 2)` (q's
        // and k's gradients come back heads-major from the rotation and are copied; v's from
        // the kernel in v's own layout). Qwen3: `q_norm(q.view(b, s, heads, d)).transpose(1,
        // 2)` (and k's): the norm over each head, then a plain view.
        let heads_of = |out: usize, count: usize, sliced: Option<Pt>| {
            let t = sliced.unwrap_or_else(|| project(out, shape.qkv_bias));
            if shape.qk_norm {
                // The norm's gradients keep the heads-major layout the rotation's arrive in:
                // the view's backward copies.
                let rows = t.view_node(&[b, s, count, hd]);
                tape.node(&rows, vec![Edge::Copy(t.gid())], &[]);
                drop(t);
                let per_head = tt::rms_norm(tape, &rows);
                drop(rows);
                per_head.view(&[b, count, s, hd])
            } else {
                tt::heads_major(tape, &t, count, hd)
            }
        };
        let q4 = heads_of(heads * hd, heads, q_slice);
        let k4 = heads_of(kvh * hd, kvh, k_slice);
        // v's gradient comes back in v's own layout from the flash kernel; from `repeat_kv`'s
        // sum or eager's `bmm` it is heads-major, and the view's backward copies it.
        let value = {
            let v = v_slice.unwrap_or_else(|| project(kvh * hd, shape.qkv_bias));
            if r.eager || repeats_kv(r, layer.mask.is_some()) {
                tt::heads_major(tape, &v, kvh, hd)
            } else {
                v.view(&[b, kvh, s, hd])
            }
        };
        // `apply_rotary_pos_emb(q, k, cos, sin)`: the caller's q and k live until both are
        // rotated.
        let (query, key) = if shape.fused() {
            // Phi-3: the part each head does not rotate, `q[..., d:]`, is an empty slice (its
            // backward still makes zeros like q); the rotation is concatenated with it (its
            // backward hands each part a slice of the gradient).
            let pass = |t: &Pt| {
                let p = t.view_node(&[b, t.dims[1], s, 0]);
                tape.node(&p, vec![Tape::grad_of(t)], &[]);
                p
            };
            let (q_pass, k_pass) = (pass(&q4), pass(&k4));
            let embed = |t: &Pt, kept: &Pt| {
                let rotated = tt::rotate(tape, t, cos, sin);
                let cat = rotated.like();
                tape.node(
                    &cat,
                    vec![Edge::Pass(rotated.gid()), Edge::Pass(kept.gid())],
                    &[],
                );
                cat
            };
            let rotated_q = embed(&q4, &q_pass);
            let rotated_k = embed(&k4, &k_pass);
            drop((q4, k4, q_pass, k_pass));
            (rotated_q, rotated_k)
        } else {
            let rotated_q = tt::rotate(tape, &q4, cos, sin);
            let rotated_k = tt::rotate(tape, &k4, cos, sin);
            drop((q4, k4));
            (rotated_q, rotated_k)
        };
        let (keys, values) = train_cache_update(tape, (key, value), layer.cache);
        // `repeat_kv` ([`repeats_kv`]) copies the keys and values out to every head (the
        // backward sums the copies' gradients back); the copies go as the attention function
        // returns.
        let (context, weights) = {
            let (keys, values) = if repeats_kv(r, layer.mask.is_some()) {
                (
                    train_repeat_kv(r, tape, &keys),
                    train_repeat_kv(r, tape, &values),
                )
            } else {
                (keys.clone(), values.clone())
            };
            match layer.mask {
                Some(mask) if r.eager => {
                    let (context, weights) = train_eager(
                        tape,
                        (&query, &keys, &values),
                        Some(mask),
                        eager_layouts(r, shape.fused(), !tape.checkpointing()),
                    );
                    (context, Some(weights))
                }
                _ => {
                    // Under autocast sdpa casts its inputs (the arguments right to left: v, k,
                    // q).
                    let (v, k) = (tape.lower(&values), tape.lower(&keys));
                    let q = tape.lower(&query);
                    let out = tt::flash_attention(tape, (&q, &k, &v), layer.mask, r.threads);
                    if copies_context(shape, &out, layer.mask.is_some()) {
                        let copy = out.like();
                        tape.node(&copy, vec![Edge::Pass(out.gid())], &[]);
                        (copy, None)
                    } else {
                        (out, None)
                    }
                }
            }
        };
        let context = context.view(&[b, s, heads * hd]);
        let projected = if shape.o_bias {
            tt::linear(tape, &context, width, true)
        } else {
            tt::linear_mm(tape, &context, width)
        };
        // The attention's locals go as it returns; the layer's normed input as it is rebound.
        drop((context, query, keys, values, qkv, normed));
        (projected, weights)
    };
    let hidden = tt::add(tape, x, &attn);
    drop(attn);
    let mlp = {
        let normed = tt::rms_norm(tape, &hidden);
        if shape.fused() {
            // Phi-3: `gate_up_proj`, chunked (one split node for both halves), `up * silu(gate)`
            // (silu saves the gate, the product both factors); the gate lives until the MLP
            // returns.
            let inter = r.d.intermediate;
            let gate_up = tt::linear_mm(tape, &normed, 2 * inter);
            let (gate, up) = tt::halves(tape, &gate_up);
            drop(gate_up);
            let act = tt::unary(tape, &gate, r.d.act_saves_output());
            let product = tt::mul(tape, &up, &act);
            drop((act, up));
            let down = tt::linear_mm(tape, &product, width);
            drop((product, gate, normed));
            let out = tt::add(tape, &hidden, &down);
            drop((hidden, down));
            return out;
        }
        let down = train_gated_mlp(r, tape, &normed, shape.mlp_bias);
        drop(normed);
        down
    };
    let out = tt::add(tape, &hidden, &mlp);
    drop((hidden, mlp));
    out
}
