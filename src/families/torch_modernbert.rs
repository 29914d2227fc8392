//! PyTorch: transformers' `ModernBERT` (transformers 5: a plain encoder, no unpadding) as the
//! CPU runs it. Like BERT it is an encoder over the whole sequence; unlike it, the positions are
//! rotary (two tables, the global layers' and the local ones'), one projection makes q, k and v
//! (`Wqkv`, whose slices the attention reads), every `global_attn_every_n_layers`-th layer
//! attends to everything and the others to a window of `local_attention / 2` tokens each side
//! (a `(b, 1, s, s)` mask, built once, from the window on), the MLP is a `GeGLU` over the two
//! halves of `Wi`, and the layer norms may have no bias. The first layer has no attention norm.

// The names follow transformers' modeling code (b, s, h for batch, seq, hidden; q, k, v), so
// the two read side by side.
#![allow(clippy::many_single_char_names)]

use super::Dims;
use super::torch_llama::{Eager, eager_attention, sdpa, train_eager};
use super::torch_sim::{Head, Pt, TDt, TorchRun, Weights, layer_norm, masked_lm_head};
use super::torch_tape::{self as tt, Edge, Layout, Tape};

/// Whether layer `i` attends locally (through the window's mask).
fn local(d: &Dims, i: usize) -> bool {
    !i.is_multiple_of(d.global_every.max(1))
}

/// How many rotary tables the model makes: one per layer type present (the global one always).
fn layer_types(d: &Dims) -> usize {
    if (0..d.layers).any(|i| local(d, i)) {
        2
    } else {
        1
    }
}

/// The parameters and buffers as the constructor makes them: the token embeddings and their
/// norm; each layer's attention norm (not the first's), `Wqkv`, `Wo`, the MLP's norm, `Wi`
/// (both halves) and `Wo`; the final norm; the rotary buffers (`inv_freq` and its original, f32,
/// per layer type); then the head: the masked-LM's prediction head (dense, norm) and decoder
/// (its weight tied to the embeddings unless `tie_word_embeddings` is false, its bias), the
/// classifier's prediction head and classifier.
pub(super) fn weights(d: &Dims, head: Head, dt: TDt) -> Option<Weights> {
    let (h, i) = (d.hidden, d.intermediate);
    let m = d.modern;
    let mut w = Weights::default();
    w.push(d.vocab * h, dt);
    w.linear((1, h), m.norm_bias, dt);
    for l in 0..d.layers {
        if l > 0 {
            w.linear((1, h), m.norm_bias, dt);
        }
        w.linear((h, 3 * h), d.attention_bias, dt);
        w.linear((h, h), d.attention_bias, dt);
        w.linear((1, h), m.norm_bias, dt);
        w.linear((h, 2 * i), d.mlp_bias, dt);
        w.linear((i, h), d.mlp_bias, dt);
    }
    w.linear((1, h), m.norm_bias, dt);
    for _ in 0..2 * layer_types(d) {
        w.push(d.head_dim() / 2, TDt::F32);
    }
    match head {
        Head::Base => {}
        Head::MaskedLm => {
            w.linear((h, h), m.classifier_bias, dt);
            w.linear((1, h), m.norm_bias, dt);
            if m.untied {
                w.push(d.vocab * h, dt);
            } else {
                w.dropped(d.vocab * h, dt);
            }
            if m.decoder_bias {
                w.push(d.vocab, dt);
            }
        }
        Head::SequenceClassification => {
            w.linear((h, h), m.classifier_bias, dt);
            w.linear((1, h), m.norm_bias, dt);
            w.linear((h, d.labels()), true, dt);
        }
        Head::CausalLm => return None,
    }
    Some(w)
}

/// `attention_mask.to(bool)` and its `.all()` (`create_bidirectional_mask`, which builds no mask
/// for the global layers: nothing is masked), then the local layers' mask
/// (`create_bidirectional_sliding_window_mask`): none below the window, else `sdpa_mask` by
/// broadcasting (the aranges, `|q - kv| <= window` over `(s, s)` in int64, `q >= 0`, each `&` a
/// new tensor, the padding gathered per batch row) into a `(b, 1, s, s)` bool mask; eager's
/// `eager_mask` turns it into an additive one in the model's type (`where`). The model keeps it
/// to its end.
fn window_mask(r: &TorchRun<'_>, hidden: TDt) -> Option<Pt> {
    let (b, s, sim) = (r.b, r.s, r.sim);
    {
        let _padding = sim.alloc(&[b, s], TDt::Bool);
        let _all = sim.alloc(&[], TDt::Bool);
    }
    let padding = sim.alloc(&[b, s], TDt::Bool);
    {
        let _all = sim.alloc(&[], TDt::Bool);
    }
    // Built whatever the layers' types (the model makes both masks), none below the window.
    if s < r.d.modern.window {
        return None;
    }
    let mask = {
        let batch_arange = sim.alloc(&[b], TDt::I64);
        let head_arange = sim.alloc(&[1], TDt::I64);
        // `torch.arange(length) + offset`
        let index = || {
            let arange = sim.alloc(&[s], TDt::I64);
            let offset = sim.alloc(&[], TDt::I64);
            let shifted = sim.alloc(&[s], TDt::I64);
            drop((offset, arange));
            shifted
        };
        let (q_index, kv_index) = (index(), index());
        let square = |dt| sim.alloc(&[1, 1, s, s], dt);
        // and_masks(window ∧ bidirectional, padding), each starting from a one-element True.
        let outer_start = sim.alloc(&[], TDt::Bool);
        let inner_start = sim.alloc(&[], TDt::Bool);
        let within = {
            let distance = {
                let difference = square(TDt::I64);
                let distance = square(TDt::I64);
                drop(difference);
                distance
            };
            let window = sim.alloc(&[], TDt::I64);
            let within = square(TDt::Bool);
            drop((window, distance));
            within
        };
        let windowed = square(TDt::Bool);
        drop((within, inner_start));
        let pattern = {
            let zero = sim.alloc(&[], TDt::I64);
            let rows = sim.alloc(&[1, 1, s, 1], TDt::Bool);
            drop(zero);
            let both = square(TDt::Bool);
            drop((rows, windowed));
            both
        };
        let combined = square(TDt::Bool);
        drop((pattern, outer_start));
        let padded = sim.alloc(&[b, 1, 1, s], TDt::Bool);
        let mask = sim.alloc(&[b, 1, s, s], TDt::Bool);
        drop((padded, combined));
        drop((batch_arange, head_arange, q_index, kv_index));
        mask
    };
    drop(padding);
    if r.eager {
        let additive = {
            let _zero = sim.alloc(&[], hidden);
            sim.alloc(&mask.dims, hidden)
        };
        drop(mask);
        return Some(additive);
    }
    Some(mask)
}

/// `ModernBertRotaryEmbedding.forward` for one layer type: the positions in f32, their product
/// with `inv_freq`, concatenated, cos and sin each times the attention scaling (a wrapped Python
/// float, cast), then in the hidden states' type. `(1, s, head_dim)` each.
fn rotary(r: &TorchRun<'_>, hidden: TDt) -> (Pt, Pt) {
    let (s, hd, sim) = (r.s, r.d.head_dim(), r.sim);
    let freqs = {
        let _positions = sim.alloc(&[1, s], TDt::F32);
        sim.alloc(&[1, s, hd / 2], TDt::F32)
    };
    let emb = sim.alloc(&[1, s, hd], TDt::F32);
    let scaled = || {
        let raw = emb.like();
        let scaling = sim.alloc(&[], TDt::I64);
        let cast = sim.alloc(&[], TDt::F32);
        let out = emb.like();
        drop((cast, scaling, raw));
        out
    };
    let cos = scaled();
    let sin = scaled();
    drop((freqs, emb));
    (cos.to(hidden), sin.to(hidden))
}

/// `apply_rotary_pos_emb` on q and k (`(b, heads, s, d)`, slices of `Wqkv`): each in f32
/// (`.float()`, a copy for a reduced type, made twice), `x * cos + rotate_half(x) * sin` (the
/// CPU widens a reduced table to f32 in a copy for each product), both rotated before either is
/// cast back to the input's type. Autograd saves only cos and sin.
fn rope(r: &TorchRun<'_>, (q, k): (&Pt, &Pt), (cos, sin): (&Pt, &Pt)) -> (Pt, Pt) {
    r.keep(cos);
    r.keep(sin);
    let times = |x: &Pt, table: &Pt| {
        // On the CPU a reduced table is widened in a copy; an f32 one is read as it is (CUDA's
        // kernels cast as they load).
        let wide = (table.dt != x.dt && !x.on_cuda()).then(|| table.new(&table.dims, x.dt));
        let out = x.like();
        drop(wide);
        out
    };
    let rotated = |x: &Pt| {
        let with_cos = {
            let wide = x.to(TDt::F32);
            times(&wide, cos)
        };
        let turned = {
            let wide = x.to(TDt::F32);
            let mut half = x.dims.clone();
            *half.last_mut().unwrap_or(&mut 0) /= 2;
            let neg = wide.new(&half, TDt::F32);
            let cat = wide.new(&x.dims, TDt::F32);
            drop((neg, wide));
            cat
        };
        let with_sin = times(&turned, sin);
        drop(turned);
        let out = with_cos.like();
        drop((with_cos, with_sin));
        out
    };
    let (q_embed, k_embed) = (rotated(q), rotated(k));
    (q_embed.to(q.dt), k_embed.to(k.dt))
}

/// One encoder layer (infer and grad) on `x`.
fn layer(r: &TorchRun<'_>, i: usize, x: &Pt, mask: Option<&Pt>, (cos, sin): (&Pt, &Pt)) -> Pt {
    let (b, s, h, n, hd) = (r.b, r.s, r.d.hidden, r.d.heads, r.d.head_dim());
    // `attn_output, _ = self.attn(…)`: eager's weights are held to the layer's end.
    let mut held_weights = None;
    let attn = {
        let normed = if i > 0 { layer_norm(r, x) } else { x.clone() };
        let out = {
            r.keep(&normed);
            let qkv = normed.linear(3 * h);
            let part = || qkv.view(&[b, n, s, hd]);
            let (q, k) = rope(r, (&part(), &part()), (cos, sin));
            let v = part();
            let context = if r.eager {
                let (context, weights) = eager_attention(r, (&q, &k, &v), mask, eager(r.d));
                held_weights = Some(weights);
                context
            } else {
                sdpa(r, (&q, &k, &v), mask)
            };
            let merged = context.view(&[b, s, h]);
            r.keep(&merged);
            let out = merged.linear(h);
            drop((merged, context, q, k, v, qkv));
            out
        };
        drop(normed);
        out
    };
    let sum = attn.like();
    let mlp = {
        let normed = layer_norm(r, &sum);
        r.keep(&normed);
        let wi = normed.linear(2 * r.d.intermediate);
        let half = || wi.view(&[b, s, r.d.intermediate]);
        let (input, gate) = (half(), half());
        if !r.d.act_saves_output() {
            r.keep(&input);
        }
        let act = input.like();
        let product = act.like();
        r.keep(&act);
        r.keep(&gate);
        drop(act);
        r.keep(&product);
        let out = product.linear(h);
        drop((product, input, gate, wi, normed));
        out
    };
    let out = sum.like();
    drop((mlp, attn, sum, held_weights));
    out
}

/// How eager attention's operands lie: the rotated q and k keep the layout of `Wqkv`'s rows
/// (the products follow their first operand's strides), each position's heads together; v is
/// a slice of those rows. Folding them into `bmm`'s batch copies each above batch 1.
fn eager(d: &Dims) -> Eager {
    let row = d.heads * d.head_dim();
    Eager {
        query: Layout::Rows { row },
        keys: Layout::Rows { row },
        values: Layout::Rows { row: 3 * row },
        ..Eager::default()
    }
}

/// `ModernBertForMaskedLM`'s or `…ForSequenceClassification`'s forward (infer and grad; the
/// base model's too). Returns the outputs.
pub(super) fn forward(r: &TorchRun<'_>, ids: &Pt) -> Vec<Pt> {
    let (b, s, h) = (r.b, r.s, r.d.hidden);
    let sim = r.sim;
    let last = {
        let position_ids = sim.alloc(&[1, s], TDt::I64);
        let embedded = {
            let tokens = ids.new(&[b, s, h], r.dt);
            layer_norm(r, &tokens)
        };
        let mask = window_mask(r, r.dt);
        let tables: Vec<(Pt, Pt)> = (0..layer_types(r.d)).map(|_| rotary(r, r.dt)).collect();
        let mut hidden = embedded.clone();
        for i in 0..r.d.layers {
            let t = usize::from(local(r.d, i));
            let mask = if local(r.d, i) { mask.as_ref() } else { None };
            hidden = layer(r, i, &hidden, mask, (&tables[t].0, &tables[t].1));
        }
        let out = layer_norm(r, &hidden);
        drop((hidden, mask, position_ids, embedded, tables));
        out
    };
    head_outputs(r, last)
}

/// The head on the last hidden state (infer and grad): the prediction head (dense, its
/// activation, norm), then the decoder over the vocabulary, or the pooled rows' classifier.
fn head_outputs(r: &TorchRun<'_>, last: Pt) -> Vec<Pt> {
    let (b, h) = (r.b, r.d.hidden);
    let predict = |x: &Pt| {
        r.keep(x);
        let dense = x.linear(h);
        if !r.d.modern.head_saves_output {
            r.keep(&dense);
        }
        let act = dense.like();
        drop(dense);
        layer_norm(r, &act)
    };
    match r.head {
        Head::Base | Head::CausalLm => vec![last],
        Head::MaskedLm => {
            let logits = masked_lm_head(r, &last, r.d.modern.head_saves_output);
            vec![logits, last]
        }
        Head::SequenceClassification => {
            let pooled = if r.d.modern.mean_pooling {
                mean_pool(r, &last)
            } else {
                last.view(&[b, h])
            };
            let normed = predict(&pooled);
            drop(pooled);
            r.keep(&normed);
            let logits = normed.linear(r.d.labels());
            drop(normed);
            vec![logits, last]
        }
    }
}

/// `classifier_pooling` "mean" over the all-ones int64 mask: `(last * mask.unsqueeze(-1))`
/// (the CPU widens the mask to the hidden states' type in a copy) summed over the sequence,
/// over `mask.sum(dim=1, keepdim=True)` (int64, which the division saves; widened in a copy).
/// Returns the `(b, h)` pooled rows.
fn mean_pool(r: &TorchRun<'_>, last: &Pt) -> Pt {
    let (b, s, h) = (r.b, r.s, r.d.hidden);
    let widen = |dims: &[usize]| (!last.on_cuda()).then(|| last.new(dims, last.dt));
    let summed = {
        let widened = widen(&[b, s, 1]);
        let product = last.like();
        drop(widened);
        let sum = last.new(&[b, h], last.dt);
        drop(product);
        sum
    };
    let count = last.new(&[b, 1], TDt::I64);
    r.keep(&count);
    let pooled = {
        let widened = widen(&[b, 1]);
        let out = summed.like();
        drop(widened);
        out
    };
    drop((summed, count));
    pooled
}

/// [`rope`] with autograd: each `.float()` a cast node (a copy for a reduced type), the products
/// saving their tables, `rotate_half`'s slices (each slice's backward: zeros like its input,
/// the gradient copied in), negation and concatenation, the sum, then both cast back.
fn train_rope(tape: &Tape<'_>, (q, k): (&Pt, &Pt), (cos, sin): (&Pt, &Pt)) -> (Pt, Pt) {
    let rotated = |x: &Pt| {
        let with_cos = {
            let wide = tape.cast(x, TDt::F32);
            tt::times_table(tape, &wide, cos)
        };
        let turned = {
            let wide = tape.cast(x, TDt::F32);
            tt::rotate_half(tape, &wide)
        };
        let with_sin = tt::times_table(tape, &turned, sin);
        drop(turned);
        tt::add(tape, &with_cos, &with_sin)
    };
    let (q_embed, k_embed) = (rotated(q), rotated(k));
    (tape.cast(&q_embed, q.dt), tape.cast(&k_embed, k.dt))
}

/// What a layer gets beside its input: its type's rotary tables and, for a local layer, the
/// window's mask (a checkpoint holds them for its recomputation until its region's backward).
struct LayerArgs {
    tables: (Pt, Pt),
    mask: Option<Pt>,
}

/// One encoder layer with autograd on `x` (layer `i`).
fn train_layer(r: &TorchRun<'_>, tape: &Tape<'_>, i: usize, x: &Pt, args: &LayerArgs) -> Pt {
    let (b, s, h, n, hd) = (r.b, r.s, r.d.hidden, r.d.heads, r.d.head_dim());
    let (cos, sin) = &args.tables;
    let mask = args.mask.as_ref();
    let norm = |t: &Pt| tt::layer_norm_with(tape, t, r.threads, r.d.modern.norm_bias);
    let mut held_weights = None;
    let attn = {
        let normed = if i > 0 { norm(x) } else { x.clone() };
        let out = {
            let qkv = tt::linear_with(tape, &normed, 3 * h, r.d.attention_bias);
            // `unbind`: three views, one node, whose backward stacks the three gradients.
            let part = || qkv.view_node(&[b, s, n, hd]);
            let (q, k, v) = (part(), part(), part());
            tape.node(
                &q,
                vec![Edge::Join(
                    qkv.gid(),
                    vec![k.gid(), v.gid()],
                    qkv.dims.clone(),
                    qkv.dt,
                )],
                &[],
            );
            let heads_major = |t: &Pt| t.view(&[b, n, s, hd]);
            let (q, k, v) = (heads_major(&q), heads_major(&k), heads_major(&v));
            let (q, k) = train_rope(tape, (&q, &k), (cos, sin));
            // Under autocast sdpa casts its inputs (the arguments right to left).
            let (v, k) = (tape.lower(&v), tape.lower(&k));
            let q = tape.lower(&q);
            let context = if r.eager {
                let (context, weights) = train_eager(tape, (&q, &k, &v), mask, eager(r.d));
                held_weights = Some(weights);
                context
            } else {
                tt::flash_attention(tape, (&q, &k, &v), mask, r.threads)
            };
            let merged = context.view(&[b, s, h]);
            let out = tt::linear_with(tape, &merged, h, r.d.attention_bias);
            drop((merged, context, q, k, v, qkv));
            out
        };
        drop(normed);
        out
    };
    let hidden = tt::add(tape, x, &attn);
    let mlp = {
        let normed = norm(&hidden);
        let inter = r.d.intermediate;
        let wi = tt::linear_with(tape, &normed, 2 * inter, r.d.mlp_bias);
        let (input, gate) = tt::halves(tape, &wi);
        let act = tt::unary(tape, &input, r.d.act_saves_output());
        let product = tt::mul(tape, &act, &gate);
        drop(act);
        let out = tt::linear_with(tape, &product, h, r.d.mlp_bias);
        drop((product, input, gate, wi, normed));
        out
    };
    let out = tt::add(tape, &hidden, &mlp);
    drop((mlp, attn, hidden, held_weights));
    out
}

/// The forward of a training step (or, with `r.eval`, an eval-mode forward under autocast) on
/// the tape: the masked-LM's loss over every position (`ForMaskedLMLoss`: the logits in f32)
/// or the classifier's; with `r.eval` the head's output.
pub(super) fn train_forward<'a>(
    r: &'a TorchRun<'a>,
    ids: &Pt,
    labels: &Pt,
    tape: &Tape<'a>,
) -> Result<Pt, &'static str> {
    if !(matches!(r.head, Head::MaskedLm | Head::SequenceClassification)
        || (r.eval && r.head == Head::Base))
    {
        return Err(
            "a ModernBERT training step is modelled with the masked-LM and sequence-classification heads",
        );
    }
    let dropout = r.d.dropout;
    if !r.eval && (dropout.hidden || dropout.attention || dropout.classifier) {
        return Err(
            "ModernBERT's dropout in training (\"embedding_dropout\", \"mlp_dropout\", \"attention_dropout\" or \"classifier_dropout\" above 0) is not modelled yet",
        );
    }
    if !r.eval && r.head == Head::MaskedLm && r.d.modern.sparse_prediction {
        return Err(
            "ModernBERT's \"sparse_prediction\" (the masked-LM head on the masked rows only, in training) is not modelled",
        );
    }
    let (b, s, h) = (r.b, r.s, r.d.hidden);
    let sim = r.sim;
    let norm = |t: &Pt| tt::layer_norm_with(tape, t, r.threads, r.d.modern.norm_bias);
    let last = {
        let position_ids = sim.alloc(&[1, s], TDt::I64);
        let embedded = {
            // The masked-LM decoder is tied to the token embeddings (unless the config unties
            // it).
            let tied = r.head == Head::MaskedLm && !r.d.modern.untied;
            let word = tape.embedding_grad(vec![r.d.vocab, h], r.dt, tied);
            let tokens = ids.new(&[b, s, h], r.dt);
            tape.node(&tokens, vec![word], &[ids]);
            let normed = norm(&tokens);
            drop(tokens);
            normed
        };
        let mask = window_mask(r, r.dt);
        let tables: Vec<(Pt, Pt)> = (0..layer_types(r.d)).map(|_| rotary(r, r.dt)).collect();
        let mut hidden = embedded.clone();
        for i in 0..r.d.layers {
            let is_local = local(r.d, i);
            let args = LayerArgs {
                tables: tables[usize::from(is_local)].clone(),
                mask: if is_local { mask.clone() } else { None },
            };
            let input = hidden.clone();
            hidden = tape.layer(
                &hidden,
                Box::new(move |t| train_layer(r, t, i, &input, &args)),
            );
        }
        let out = norm(&hidden);
        drop((hidden, mask, tables, position_ids, embedded));
        out
    };
    if r.head == Head::Base {
        return Ok(last);
    }
    let predict = |x: &Pt| {
        let dense = tt::linear_with(tape, x, h, r.d.modern.classifier_bias);
        let act = tt::unary(tape, &dense, r.d.modern.head_saves_output);
        drop(dense);
        let normed = norm(&act);
        drop(act);
        normed
    };
    if r.head == Head::MaskedLm {
        let logits = {
            let normed = predict(&last);
            tt::linear_with(tape, &normed, r.d.vocab, r.d.modern.decoder_bias)
        };
        if r.eval {
            drop(last);
            return Ok(logits);
        }
        let wide = tape.cast(&logits, TDt::F32);
        let rows = b * s;
        let loss = tt::cross_entropy(tape, &wide.view(&[rows, r.d.vocab]), &labels.view(&[rows]));
        drop((wide, logits, last));
        return Ok(loss);
    }
    let logits = {
        let pooled = if r.d.modern.mean_pooling {
            train_mean_pool(r, tape, &last)
        } else {
            // `last_hidden_state[:, 0]`: its backward scatters into zeros like the states.
            let first = last.view_node(&[b, h]);
            tape.node(&first, vec![Tape::grad_of(&last)], &[]);
            first
        };
        let normed = predict(&pooled);
        drop(pooled);
        tt::linear_with(tape, &normed, r.d.labels(), true)
    };
    if r.eval {
        drop(last);
        return Ok(logits);
    }
    let loss = tt::cross_entropy(tape, &logits, labels);
    drop((logits, last));
    Ok(loss)
}

/// [`mean_pool`] with autograd: the product saves the mask (its backward multiplies again,
/// through a widened copy of it), the sum's backward expands the gradient (a view), the
/// division saves the count (its backward divides through a widened copy of it).
fn train_mean_pool(r: &TorchRun<'_>, tape: &Tape<'_>, last: &Pt) -> Pt {
    let (b, s, h) = (r.b, r.s, r.d.hidden);
    let dt = last.dt;
    // On the CPU the int64 operands are widened in copies (CUDA's kernels cast as they load).
    let cpu = !last.on_cuda();
    let widen = |dims: &[usize]| cpu.then(|| last.new(dims, dt));
    let work = |elems: usize| cpu.then(|| Edge::Work(elems as u64 * dt.size()));
    let summed = {
        let product = {
            let widened = widen(&[b, s, 1]);
            let product = last.like();
            drop(widened);
            product
        };
        let edges = work(b * s).into_iter().chain([Tape::grad_of(last)]);
        tape.node(&product, edges.collect(), &[]);
        let sum = last.new(&[b, h], dt);
        tape.node(&sum, vec![Edge::Pass(product.gid())], &[]);
        drop(product);
        sum
    };
    let count = last.new(&[b, 1], TDt::I64);
    let pooled = {
        let widened = widen(&[b, 1]);
        let out = summed.like();
        drop(widened);
        out
    };
    let edges = work(b).into_iter().chain([Tape::grad_of(&summed)]);
    tape.node(&pooled, edges.collect(), &[&count]);
    drop((summed, count));
    pooled
}
