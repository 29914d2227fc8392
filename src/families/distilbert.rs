//! `DistilBERT` (`distilbert`): BERT's encoder halved, its own field names; candle's `distilbert`.

// The simulated forward's names follow candle-transformers (b, s, h for batch, seq, hidden; q,
// k, v), so the two read side by side.
#![allow(clippy::many_single_char_names)]

use super::candle::{Inputs, candle_config};
use super::config::{activation, dropout_field, field};
use super::ops::{Run, embedding, linear, masked_fill, norm, softmax};
use super::sim::{Dt, T};
use super::torch_sim::{
    Head, Pt, TDt, TorchRun, Weights, encoder_attention, layer_norm, masked_lm_head,
};
use super::torch_tape::{self as tt, Edge, Tape};
use super::{
    AnyModel, BuildError, CandleModel, ConfigError, Dims, Dropout, Room, TensorShape, tensor_list,
};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::distilbert;
use serde_json::Value;

pub struct DistilBert;

impl Room for DistilBert {
    fn name(&self) -> &'static str {
        "distilbert"
    }
    fn is_decoder(&self) -> bool {
        false
    }
    /// Its attention upcasts its scores to f32 and then multiplies them with values in the run
    /// dtype, which fails for f16/bf16.
    fn f32_only(&self) -> Option<&'static str> {
        Some("its attention mixes f32 scores with values in the run precision")
    }
    fn dims(&self, v: &Value) -> std::result::Result<Dims, ConfigError> {
        let mut d = Dims {
            layers: field(v, "n_layers")?,
            hidden: field(v, "dim")?,
            heads: field(v, "n_heads")?,
            kv_heads: field(v, "n_heads")?,
            intermediate: field(v, "hidden_dim")?,
            vocab: field(v, "vocab_size")?,
            max_positions: field(v, "max_position_embeddings")?,
            // DistilBertConfig's defaults: 0.1, 0.1 and the classifier's 0.2.
            dropout: Dropout {
                hidden: dropout_field(v, "dropout", true)?,
                attention: dropout_field(v, "attention_dropout", true)?,
                classifier: dropout_field(v, "seq_classif_dropout", true)?,
            },
            ..Dims::default()
        };
        activation(v, "activation", "gelu", &mut d)?;
        Ok(d)
    }
    fn dim_names(&self) -> [&'static str; 4] {
        ["n_layers", "dim", "n_heads", "hidden_dim"]
    }
    fn tensors(&self, d: &Dims) -> Vec<TensorShape> {
        let (h, i) = (d.hidden, d.intermediate);
        tensor_list(|t| {
            t("embeddings.word_embeddings.weight".into(), &[d.vocab, h]);
            t(
                "embeddings.position_embeddings.weight".into(),
                &[d.max_positions, h],
            );
            t("embeddings.LayerNorm.weight".into(), &[h]);
            t("embeddings.LayerNorm.bias".into(), &[h]);
            for l in 0..d.layers {
                let p = format!("transformer.layer.{l}");
                for lin in ["q_lin", "k_lin", "v_lin", "out_lin"] {
                    t(format!("{p}.attention.{lin}.weight"), &[h, h]);
                    t(format!("{p}.attention.{lin}.bias"), &[h]);
                }
                t(format!("{p}.sa_layer_norm.weight"), &[h]);
                t(format!("{p}.sa_layer_norm.bias"), &[h]);
                t(format!("{p}.ffn.lin1.weight"), &[i, h]);
                t(format!("{p}.ffn.lin1.bias"), &[i]);
                t(format!("{p}.ffn.lin2.weight"), &[h, i]);
                t(format!("{p}.ffn.lin2.bias"), &[h]);
                t(format!("{p}.output_layer_norm.weight"), &[h]);
                t(format!("{p}.output_layer_norm.bias"), &[h]);
            }
        })
    }
    fn check_candle(&self, config: &str, _d: &Dims) -> std::result::Result<(), ConfigError> {
        candle_config::<distilbert::Config>(config).map(drop)
    }
    fn build(
        &self,
        config: &str,
        _d: &Dims,
        vb: VarBuilder<'_>,
        _dtype: DType,
        _device: &Device,
    ) -> std::result::Result<AnyModel, BuildError> {
        let cfg: distilbert::Config = candle_config(config)?;
        Ok(distilbert::DistilBertModel::load(vb, &cfg)?.into())
    }
    // `Tensor::zeros((b, 1, 1, s), U8)`
    fn sim_inputs(&self, r: &Run<'_>, ids: T) -> Vec<T> {
        vec![ids, r.sim.alloc(&[r.b, 1, 1, r.s], Dt::U8)]
    }
    fn simulate(&self, r: &Run<'_>, inputs: &[T]) -> T {
        simulated(r, &inputs[0], &inputs[1])
    }
    fn torch_weights(&self, d: &Dims, head: Head, dt: TDt) -> Option<Weights> {
        torch_weights(d, head, dt)
    }
    fn torch_forward(
        &self,
        r: &TorchRun<'_>,
        ids: &Pt,
    ) -> std::result::Result<Vec<Pt>, &'static str> {
        torch_forward(r, ids)
    }
    fn torch_train_forward<'a>(
        &self,
        r: &'a TorchRun<'a>,
        ids: &Pt,
        labels: &Pt,
        tape: &Tape<'a>,
    ) -> std::result::Result<Pt, &'static str> {
        torch_train_forward(r, ids, labels, tape)
    }
}

impl CandleModel for distilbert::DistilBertModel {
    // candle's DistilBERT masks where the mask is 1: nothing is padding here.
    fn inputs(&mut self, ids: Tensor) -> Result<Inputs> {
        let (batch, seq) = ids.dims2()?;
        Ok(Inputs {
            mask: Some(Tensor::zeros((batch, 1, 1, seq), DType::U8, ids.device())?),
            aux: None,
            ids,
        })
    }
    fn forward(&mut self, inputs: Inputs) -> Result<Tensor> {
        let mask = inputs.mask.ok_or_else(|| super::candle::missing("mask"))?;
        distilbert::DistilBertModel::forward(self, &inputs.ids, &mask)
    }
}

/// candle's `distilbert::DistilBertModel::forward`, simulated.
fn simulated(r: &Run<'_>, ids: &T, mask_in: &T) -> T {
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
    for layer in 0..r.d.layers {
        r.sim.layer(layer);
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
    r.sim.after_layers();
    drop(embedding_output);
    hidden_states
}

/// PyTorch: `DistilBertModel`'s parameters and its `position_ids` buffer (int64), and the
/// classification head (`pre_classifier`, `classifier`).
fn torch_weights(d: &Dims, head: Head, dt: TDt) -> Option<Weights> {
    let (width, inner) = (d.hidden, d.intermediate);
    let mut w = Weights::default();
    w.push(d.vocab * width, dt);
    w.push(d.max_positions * width, dt);
    w.linear((1, width), true, dt);
    w.push(d.max_positions, TDt::I64);
    for _ in 0..d.layers {
        for _ in 0..4 {
            w.linear((width, width), true, dt);
        }
        w.linear((1, width), true, dt);
        w.linear((width, inner), true, dt);
        w.linear((inner, width), true, dt);
        w.linear((1, width), true, dt);
    }
    match head {
        Head::Base => {}
        Head::SequenceClassification => {
            w.linear((width, width), true, dt);
            w.linear((width, d.labels()), true, dt);
        }
        // The masked-LM head: `vocab_transform`, `vocab_layer_norm`, `vocab_projector` (its
        // weight tied to the word embeddings, its bias its own).
        Head::MaskedLm => {
            w.linear((width, width), true, dt);
            w.linear((1, width), true, dt);
            w.dropped(d.vocab * width, dt);
            w.push(d.vocab, dt);
        }
        Head::CausalLm => return None,
    }
    Some(w)
}

/// PyTorch: `DistilBertModel.forward` as transformers 5 runs it on the CPU (sdpa): embeddings,
/// the all-ones mask read and dropped, each `TransformerBlock` (attention, its `LayerNorm` over the
/// sum, the FFN, the output `LayerNorm`); the embeddings' output is held to the end. With autograd
/// on, what it saves.
fn torch_forward(r: &TorchRun<'_>, ids: &Pt) -> std::result::Result<Vec<Pt>, &'static str> {
    let (b, s, width, heads) = (r.b, r.s, r.d.hidden, r.d.heads);
    let sim = r.sim;
    let embeddings = {
        let word = ids.new(&[b, s, width], r.dt);
        let position = sim.alloc(&[1, s, width], r.dt);
        let sum = word.like();
        drop((word, position));
        layer_norm(r, &sum)
    };
    {
        let _as_bool = sim.alloc(&[b, s], TDt::Bool);
        let _all = sim.alloc(&[], TDt::Bool);
    }
    let mut hidden = embeddings.clone();
    for _ in 0..r.d.layers {
        let out = {
            // `attention_output, _ = self.attention(…)`: eager's weights are held to the
            // block's end.
            let (sa_output, _weights) = {
                let (attention, weights) = {
                    r.keep(&hidden);
                    let q = hidden.linear(width);
                    let k = hidden.linear(width);
                    let v = hidden.linear(width);
                    let (context, weights) = encoder_attention(r, (&q, &k, &v), heads);
                    let context = context.view(&[b, s, width]);
                    r.keep(&context);
                    (context.linear(width), weights)
                };
                // `sa_output = self.sa_layer_norm(sa_output + x)`: the attention's output is
                // freed when the name is bound again, after the norm.
                let sum = attention.like();
                let normed = layer_norm(r, &sum);
                drop(attention);
                (normed, weights)
            };
            r.keep(&sa_output);
            let ffn = {
                let inner = {
                    let lin1 = sa_output.linear(r.d.intermediate);
                    if !r.d.act_saves_output() {
                        r.keep(&lin1);
                    }
                    lin1.like()
                };
                r.keep(&inner);
                inner.linear(width)
            };
            let sum = sa_output.like();
            let normed = layer_norm(r, &sum);
            drop(ffn);
            drop(sa_output);
            normed
        };
        hidden = out;
    }
    if r.head == Head::MaskedLm {
        // The model returns (its embeddings' output with it); the last hidden state lives until
        // the head's model returns.
        drop(embeddings);
        let logits = masked_lm_head(r, &hidden, r.d.act_saves_output());
        return Ok(vec![logits, hidden]);
    }
    let mut outputs = vec![];
    match r.head {
        Head::Base => {}
        Head::SequenceClassification => {
            // The first token: pre_classifier, ReLU (saving its output), classifier.
            r.keep(&hidden);
            let relu = {
                let pre = sim.alloc(&[b, width], r.dt);
                pre.like()
            };
            r.keep(&relu);
            outputs.push(relu.linear(r.d.labels()));
        }
        Head::CausalLm | Head::MaskedLm => {
            return Err(
                "only the base, sequence-classification and masked-LM heads are modelled for DistilBERT",
            );
        }
    }
    outputs.insert(0, hidden);
    drop(embeddings);
    Ok(outputs)
}

/// PyTorch: the forward of a training step, `DistilBertForSequenceClassification` or
/// `…ForMaskedLM` in train mode with autograd on the CPU (transformers 5), recording each op's
/// node on `tape`; returns the loss (with `r.eval`, the head's output instead). The embeddings (word and position, `LayerNorm`, dropout); each `TransformerBlock`
/// (q, k, v; eager attention, or sdpa's math kernel with attention dropout or its flash kernel
/// without; `out_lin`,
/// `sa_layer_norm` of the sum,
/// the FFN with its dropout, `output_layer_norm`); the first token through `pre_classifier`,
/// `ReLU` (saving its output), dropout and the classifier; cross-entropy.
fn torch_train_forward<'a>(
    r: &'a TorchRun<'a>,
    ids: &Pt,
    labels: &Pt,
    tape: &Tape<'a>,
) -> std::result::Result<Pt, &'static str> {
    let modelled = matches!(r.head, Head::SequenceClassification | Head::MaskedLm)
        || (r.eval && r.head == Head::Base);
    if !modelled {
        return Err(
            "a DistilBERT training step is modelled with the sequence-classification and masked-LM heads",
        );
    }
    let (b, s, width) = (r.b, r.s, r.d.hidden);
    let sim = r.sim;
    // A masked-LM head's projector is tied to the word embeddings.
    let word_embeddings =
        tape.embedding_grad(vec![r.d.vocab, width], r.dt, r.head == Head::MaskedLm);
    let embeddings = {
        let word = ids.new(&[b, s, width], r.dt);
        tape.node(&word, vec![word_embeddings], &[ids]);
        let position = sim.alloc(&[1, s, width], r.dt);
        tape.node(
            &position,
            vec![Edge::Param(vec![r.d.max_positions, width], r.dt)],
            &[],
        );
        let sum = tt::add(tape, &word, &position);
        let normed = tt::layer_norm(tape, &sum, r.threads);
        drop(sum);
        tt::dropout(tape, &normed, r.d.dropout.hidden)
    };
    {
        let _as_bool = sim.alloc(&[b, s], TDt::Bool);
        let _all = sim.alloc(&[], TDt::Bool);
    }
    // DistilBertModel's forward holds the embeddings' output to its end.
    let mut hidden = embeddings.clone();
    for _ in 0..r.d.layers {
        let input = hidden.clone();
        hidden = tape.layer(&hidden, Box::new(move |t| train_block(r, t, &input)));
    }
    // The base head's output is the last hidden state.
    if r.head == Head::Base {
        drop(embeddings);
        return Ok(hidden);
    }
    if r.head == Head::MaskedLm {
        drop(embeddings);
        return Ok(tt::masked_lm(
            r,
            tape,
            hidden,
            labels,
            r.d.act_saves_output(),
        ));
    }
    let logits = {
        let first = hidden.view_node(&[b, width]);
        tape.node(&first, vec![Tape::grad_of(&hidden)], &[]);
        drop(hidden);
        let relu = {
            let pre = tt::linear(tape, &first, width, true);
            tt::unary(tape, &pre, true)
        };
        drop(embeddings);
        let dropped = tt::dropout(tape, &relu, r.d.dropout.classifier);
        drop(relu);
        tt::linear(tape, &dropped, r.d.labels(), true)
    };
    if r.eval {
        return Ok(logits);
    }
    Ok(tt::cross_entropy(tape, &logits, labels))
}

/// One `TransformerBlock` in train mode with autograd, on `x`.
fn train_block(r: &TorchRun<'_>, tape: &Tape<'_>, x: &Pt) -> Pt {
    let (width, heads) = (r.d.hidden, r.d.heads);
    // `attention_output, _ = self.attention(…)`: eager's weights are held to the block's end.
    let mut held_weights = None;
    let sa_output = {
        let attention = {
            let q = tt::linear(tape, x, width, true);
            let k = tt::linear(tape, x, width, true);
            let v = tt::linear(tape, x, width, true);
            let context = if r.eager {
                let (context, weights) =
                    tt::eager_attention(tape, (&q, &k, &v), heads, r.d.dropout.attention);
                held_weights = Some(weights);
                context
            } else if r.d.dropout.attention && !q.on_cuda() {
                tt::attention_context(tape, (&q, &k, &v), heads)
            } else {
                tt::flash_context(tape, (&q, &k, &v), heads, r.threads)
            };
            tt::linear(tape, &context, width, true)
        };
        let sum = tt::add(tape, &attention, x);
        let normed = tt::layer_norm(tape, &sum, r.threads);
        drop((sum, attention));
        normed
    };
    let ffn = {
        let inner = {
            let lin1 = tt::linear(tape, &sa_output, r.d.intermediate, true);
            tt::unary(tape, &lin1, r.d.act_saves_output())
        };
        let lin2 = tt::linear(tape, &inner, width, true);
        drop(inner);
        tt::dropout(tape, &lin2, r.d.dropout.hidden)
    };
    let sum = tt::add(tape, &ffn, &sa_output);
    let normed = tt::layer_norm(tape, &sum, r.threads);
    drop((sum, ffn, sa_output, held_weights));
    normed
}
