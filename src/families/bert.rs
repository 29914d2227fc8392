//! BERT (`bert`): an encoder with learned positions and token types; candle's `bert`.

// The simulated forward's names follow candle-transformers (b, s, h for batch, seq, hidden; q,
// k, v), so the two read side by side.
#![allow(clippy::many_single_char_names)]

use super::candle::{Inputs, candle_config};
use super::config::{activation, dropout_field, named_alike, opt_field};
use super::ops::{Run, embedding, linear, norm, softmax};
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
use candle_transformers::models::bert;
use serde_json::Value;

pub struct Bert;

impl Room for Bert {
    fn name(&self) -> &'static str {
        "bert"
    }
    fn is_decoder(&self) -> bool {
        false
    }
    fn has_pooler(&self) -> bool {
        true
    }
    fn dims(&self, v: &Value) -> std::result::Result<Dims, ConfigError> {
        let base = named_alike(v)?;
        // BertConfig's defaults: 0.1 each; the classifier's falls back to the hidden one.
        let hidden = dropout_field(v, "hidden_dropout_prob", true)?;
        let mut d = Dims {
            type_vocab: opt_field(v, "type_vocab_size")?.unwrap_or(2),
            dropout: Dropout {
                hidden,
                attention: dropout_field(v, "attention_probs_dropout_prob", true)?,
                classifier: dropout_field(v, "classifier_dropout", hidden)?,
            },
            ..base
        };
        activation(v, "hidden_act", "gelu", &mut d)?;
        Ok(d)
    }
    fn tensors(&self, d: &Dims) -> Vec<TensorShape> {
        encoder_tensors(d)
    }
    fn check_candle(&self, config: &str, _d: &Dims) -> std::result::Result<(), ConfigError> {
        candle_config::<bert::Config>(config).map(drop)
    }
    fn build(
        &self,
        config: &str,
        _d: &Dims,
        vb: VarBuilder<'_>,
        _dtype: DType,
        _device: &Device,
    ) -> std::result::Result<AnyModel, BuildError> {
        let cfg: bert::Config = candle_config(config)?;
        Ok(bert::BertModel::load(vb, &cfg)?.into())
    }
    // token type ids (`zeros_like`) and the attention mask (`ones_like`)
    fn sim_inputs(&self, r: &Run<'_>, ids: T) -> Vec<T> {
        vec![
            ids,
            r.sim.alloc(&[r.b, r.s], Dt::U32),
            r.sim.alloc(&[r.b, r.s], Dt::U32),
        ]
    }
    fn simulate(&self, r: &Run<'_>, inputs: &[T]) -> T {
        simulated(r, &inputs[0], &inputs[1], &inputs[2])
    }
    fn torch_weights(&self, d: &Dims, head: Head, dt: TDt) -> Option<Weights> {
        torch_bert_weights(d, head, dt)
    }
    fn torch_forward(
        &self,
        r: &TorchRun<'_>,
        ids: &Pt,
    ) -> std::result::Result<Vec<Pt>, &'static str> {
        torch_bert_forward(r, ids, Positions::Absolute)
    }
    fn torch_train_forward<'a>(
        &self,
        r: &'a TorchRun<'a>,
        ids: &Pt,
        labels: &Pt,
        tape: &Tape<'a>,
    ) -> std::result::Result<Pt, &'static str> {
        torch_bert_train_forward(r, ids, labels, tape, Positions::Absolute)
    }
    fn torch_parameter_order(&self, _d: &Dims, head: Head, grads: &mut [Pt]) {
        // The forward uses the word, token type and position embeddings in that order;
        // `BertEmbeddings` registers the position table before the token types. (AdamW's peak
        // is a parameter's update beside the previous one's denominator: after the word
        // embeddings comes the position table, not the two token-type rows.)
        if let Some(embeddings) = grads.get_mut(1..3) {
            embeddings.swap(0, 1);
        }
        masked_lm_bias_first(head, grads);
    }
}

/// The masked-LM head's parameters come last in the forward's order (transform dense, its
/// `LayerNorm`, the decoder's bias; the decoder's weight is the word embeddings'); BERT's and
/// `RoBERTa`'s heads register that bias first.
pub(super) fn masked_lm_bias_first(head: Head, grads: &mut [Pt]) {
    if head == Head::MaskedLm && grads.len() >= 5 {
        let at = grads.len() - 5;
        grads[at..].rotate_right(1);
    }
}

impl CandleModel for bert::BertModel {
    fn inputs(&mut self, ids: Tensor) -> Result<Inputs> {
        Ok(Inputs {
            aux: Some(ids.zeros_like()?),
            mask: Some(ids.ones_like()?),
            ids,
        })
    }
    fn forward(&mut self, inputs: Inputs) -> Result<Tensor> {
        let Inputs { ids, aux, mask } = inputs;
        let tt = aux.ok_or_else(|| super::candle::missing("token type ids"))?;
        bert::BertModel::forward(self, &ids, &tt, mask.as_ref())
    }
}

/// The tensors candle's `bert` and `xlm_roberta` load (no pooler).
pub(super) fn encoder_tensors(d: &Dims) -> Vec<TensorShape> {
    let (h, i) = (d.hidden, d.intermediate);
    tensor_list(|t| {
        t("embeddings.word_embeddings.weight".into(), &[d.vocab, h]);
        t(
            "embeddings.position_embeddings.weight".into(),
            &[d.max_positions + d.position_offset, h],
        );
        t(
            "embeddings.token_type_embeddings.weight".into(),
            &[d.type_vocab, h],
        );
        t("embeddings.LayerNorm.weight".into(), &[h]);
        t("embeddings.LayerNorm.bias".into(), &[h]);
        for l in 0..d.layers {
            let p = format!("encoder.layer.{l}");
            for lin in [
                "attention.self.query",
                "attention.self.key",
                "attention.self.value",
                "attention.output.dense",
            ] {
                t(format!("{p}.{lin}.weight"), &[h, h]);
                t(format!("{p}.{lin}.bias"), &[h]);
            }
            t(format!("{p}.attention.output.LayerNorm.weight"), &[h]);
            t(format!("{p}.attention.output.LayerNorm.bias"), &[h]);
            t(format!("{p}.intermediate.dense.weight"), &[i, h]);
            t(format!("{p}.intermediate.dense.bias"), &[i]);
            t(format!("{p}.output.dense.weight"), &[h, i]);
            t(format!("{p}.output.dense.bias"), &[h]);
            t(format!("{p}.output.LayerNorm.weight"), &[h]);
            t(format!("{p}.output.LayerNorm.bias"), &[h]);
        }
    })
}

/// candle's `bert::BertModel::forward`, simulated.
fn simulated(r: &Run<'_>, ids: &T, tt: &T, mask: &T) -> T {
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
    for layer in 0..r.d.layers {
        r.sim.layer(layer);
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
    r.sim.after_layers();
    drop(embedding_output);
    hidden_states
}

/// PyTorch: the parameters and buffers of transformers' `BertModel` (with its pooler) and the
/// head on it; the buffers are `position_ids` and `token_type_ids` (int64, one per position).
pub(super) fn torch_bert_weights(d: &Dims, head: Head, dt: TDt) -> Option<Weights> {
    torch_encoder_weights(d, head, dt)
}

/// BERT's or `RoBERTa`'s parameters and buffers as the constructor makes them: the embeddings
/// (word, position, token type, `LayerNorm`, then the `position_ids` and `token_type_ids`
/// buffers), each layer (q, k, v, the attention's output and norm, the intermediate, the
/// output and norm), then the head. `RoBERTa`'s classification model has no pooler but a head
/// of its own (dense and `out_proj`).
pub(super) fn torch_encoder_weights(d: &Dims, head: Head, dt: TDt) -> Option<Weights> {
    let (h, i) = (d.hidden, d.intermediate);
    let places = d.max_positions + d.position_offset;
    let mut w = Weights::default();
    for rows in [d.vocab, places, d.type_vocab.max(1)] {
        w.push(rows * h, dt);
    }
    w.linear((1, h), true, dt);
    w.push(places, TDt::I64);
    w.push(places, TDt::I64);
    for _ in 0..d.layers {
        for _ in 0..4 {
            w.linear((h, h), true, dt);
        }
        w.linear((1, h), true, dt);
        w.linear((h, i), true, dt);
        w.linear((i, h), true, dt);
        w.linear((1, h), true, dt);
    }
    match head {
        Head::Base => w.linear((h, h), true, dt),
        // BERT's pooler and classifier; `RoBERTa`'s dense and `out_proj`: the same shapes.
        Head::SequenceClassification => {
            w.linear((h, h), true, dt);
            w.linear((h, d.labels()), true, dt);
        }
        // The masked-LM head (no pooler): the transform's dense and `LayerNorm`, the decoder
        // (its weight tied to the word embeddings, its bias to the head's own), the bias.
        Head::MaskedLm => {
            w.linear((h, h), true, dt);
            w.linear((1, h), true, dt);
            w.dropped(d.vocab * h, dt);
            w.dropped(d.vocab, dt);
            w.push(d.vocab, dt);
        }
        Head::CausalLm => return None,
    }
    Some(w)
}

/// How an encoder's position ids are made.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Positions {
    /// BERT: the `position_ids` buffer's first s (one row, broadcast).
    Absolute,
    /// `RoBERTa`: `create_position_ids_from_input_ids`, one row per sequence.
    FromIds,
}

/// `RoBERTa`'s `create_position_ids_from_input_ids`: `ne(pad)` (bool), `.int()`, `cumsum`
/// (int64), back to int32, `* mask`, `.long() + pad`: a `(b, s)` int64 tensor, the steps'
/// tensors freed as it goes.
fn position_ids_from(r: &TorchRun<'_>, ids: &Pt) -> Pt {
    let (b, s) = (r.b, r.s);
    let mask = {
        let ne = ids.new(&[b, s], TDt::Bool);
        let mask = ids.new(&[b, s], TDt::I32);
        drop(ne);
        mask
    };
    let counted = {
        let cumsum = ids.new(&[b, s], TDt::I64);
        let wide = ids.new(&[b, s], TDt::I64);
        drop(cumsum);
        let narrow = ids.new(&[b, s], TDt::I32);
        drop(wide);
        let shifted = narrow.like();
        drop(narrow);
        let masked = shifted.like();
        drop(shifted);
        masked
    };
    let long = ids.new(&[b, s], TDt::I64);
    drop(counted);
    let ids_out = long.like();
    drop((long, mask));
    ids_out
}

/// PyTorch: `BertModel.forward` under `no_grad` on the CPU (transformers 5): the embeddings, the
/// all-ones mask read and dropped (sdpa and eager both skip a mask with nothing masked), each
/// layer, the pooler; the embedding output is held by the model's forward to its end. Returns
/// the outputs.
pub(super) fn torch_bert_forward(
    r: &TorchRun<'_>,
    ids: &Pt,
    positions: Positions,
) -> std::result::Result<Vec<Pt>, &'static str> {
    let (b, s, h, n) = (r.b, r.s, r.d.hidden, r.d.heads);
    let sim = r.sim;
    let embedding_output = if positions == Positions::FromIds {
        // RoBERTa: position ids counted from the ids, token types gathered at them (both
        // `(b, s)`, saved by their embeddings), position embeddings for every row.
        let position_ids = position_ids_from(r, ids);
        let buffered = sim.alloc(&[b, s], TDt::I64);
        r.keep(&buffered);
        r.keep(&position_ids);
        let inputs_embeds = ids.new(&[b, s, h], r.dt);
        let token_type_embeddings = sim.alloc(&[b, s, h], r.dt);
        let sum = inputs_embeds.like();
        let position_embeddings = sim.alloc(&[b, s, h], r.dt);
        let sum = {
            let total = sum.like();
            drop(sum);
            total
        };
        let normed = layer_norm(r, &sum);
        drop((sum, buffered, token_type_embeddings, inputs_embeds));
        drop((position_embeddings, position_ids));
        normed
    } else {
        // token_type_ids from the buffer: gather over position_ids, expanded to (b, s); the
        // embedding saves them as its indices.
        let buffered = sim.alloc(&[1, s], TDt::I64);
        r.keep(&buffered);
        let inputs_embeds = ids.new(&[b, s, h], r.dt);
        let token_type_embeddings = {
            // nn.Embedding reshapes the expanded (strided) ids: a copy.
            let _flat_ids = sim.alloc(&[b, s], TDt::I64);
            sim.alloc(&[b, s, h], r.dt)
        };
        let embeddings = inputs_embeds.like();
        let _position_embeddings = sim.alloc(&[1, s, h], r.dt);
        let embeddings = {
            let sum = embeddings.like();
            drop(embeddings);
            sum
        };
        let normed = layer_norm(r, &embeddings);
        drop(token_type_embeddings);
        normed
    };
    // The mask: `attention_mask.bool()` and `.all()`, then dropped (nothing is masked).
    {
        let _as_bool = sim.alloc(&[b, s], TDt::Bool);
        let _all = sim.alloc(&[], TDt::Bool);
    }
    let mut hidden = embedding_output.clone();
    for _ in 0..r.d.layers {
        let layer_output = {
            // BertAttention: self-attention, then BertSelfOutput; `_` keeps the weights.
            let (attention_output, _weights) = {
                let (context, weights) = {
                    // q, k and v save their input, the layer's.
                    r.keep(&hidden);
                    let q = hidden.linear(h);
                    let k = hidden.linear(h);
                    let v = hidden.linear(h);
                    encoder_attention(r, (&q, &k, &v), n)
                };
                // `attn_output.reshape(*input_shape, -1)`: a view.
                let context = context.view(&[b, s, h]);
                // The dense layer saves its input; the sum, LayerNorm's.
                r.keep(&context);
                let attention_output = {
                    let dense = context.linear(h);
                    let sum = dense.like();
                    layer_norm(r, &sum)
                };
                drop(context);
                (attention_output, weights)
            };
            r.keep(&attention_output);
            let intermediate = {
                // gelu saves its input (ReLU its output, which the next dense saves too).
                let dense = attention_output.linear(r.d.intermediate);
                if !r.d.act_saves_output() {
                    r.keep(&dense);
                }
                dense.like()
            };
            r.keep(&intermediate);
            let out = {
                let dense = intermediate.linear(h);
                let sum = dense.like();
                layer_norm(r, &sum)
            };
            drop(intermediate);
            drop(attention_output);
            out
        };
        hidden = layer_output;
    }
    if r.head == Head::MaskedLm {
        // The model has no pooler; its embedding output goes as it returns. The last hidden
        // state lives until the head's model returns.
        drop(embedding_output);
        // `RobertaLMHead` runs gelu whatever the config's activation.
        let logits = masked_lm_head(
            r,
            &hidden,
            r.d.act_saves_output() && positions == Positions::Absolute,
        );
        return Ok(vec![logits, hidden]);
    }
    if r.head == Head::SequenceClassification && positions == Positions::FromIds {
        // `RobertaClassificationHead` (the model has no pooler; its embedding output goes as
        // it returns): the first token (a view), dropout (none in eval), dense (saving its
        // input), tanh (saving its output), `out_proj` (saving its input); the last hidden
        // state lives until the head's model returns.
        drop(embedding_output);
        let logits = {
            let first = hidden.view(&[b, h]);
            r.keep(&first);
            let dense = first.linear(h);
            let act = dense.like();
            drop(dense);
            r.keep(&act);
            act.linear(r.d.labels())
        };
        return Ok(vec![logits, hidden]);
    }
    // BertPooler: the first token, dense (saving its input), tanh (saving its output).
    r.keep(&hidden);
    let pooled = {
        let dense = sim.alloc(&[b, h], r.dt);
        dense.like()
    };
    r.keep(&pooled);
    let mut outputs = vec![hidden];
    match r.head {
        Head::Base => outputs.push(pooled),
        Head::SequenceClassification => {
            r.keep(&pooled);
            let logits = pooled.linear(r.d.labels());
            drop(pooled);
            outputs.push(logits);
        }
        Head::CausalLm | Head::MaskedLm => {
            return Err(
                "only the base, sequence-classification and masked-LM heads are modelled for BERT",
            );
        }
    }
    drop(embedding_output);
    Ok(outputs)
}

/// PyTorch: the forward of a training step, `BertForSequenceClassification` or
/// `…ForMaskedLM` (`RoBERTa`'s with `Positions::FromIds`) in train mode with autograd on the CPU
/// (transformers 5), recording each op's node on `tape`; returns the loss (what the step keeps
/// of the output). Dropout is on where the config's probability is above 0; attention dropout
/// sends sdpa to PyTorch's math kernel on the CPU, and without it sdpa runs the CPU flash
/// kernel. With `r.eval` (autocast outside training) the same forward in eval mode, any head,
/// returning the head's output (the base head's pooled output) instead of a loss.
pub(super) fn torch_bert_train_forward<'a>(
    r: &'a TorchRun<'a>,
    ids: &Pt,
    labels: &Pt,
    tape: &Tape<'a>,
    positions: Positions,
) -> std::result::Result<Pt, &'static str> {
    let (b, s, h) = (r.b, r.s, r.d.hidden);
    let drop_on = r.d.dropout;
    let modelled = matches!(r.head, Head::SequenceClassification | Head::MaskedLm)
        || (r.eval && r.head == Head::Base);
    if !modelled {
        return Err(
            "a BERT or RoBERTa training step is modelled with the sequence-classification and masked-LM heads",
        );
    }
    // A masked-LM head's decoder is tied to the word embeddings.
    let word_embeddings = tape.embedding_grad(vec![r.d.vocab, h], r.dt, r.head == Head::MaskedLm);
    let sim = r.sim;
    let embedding_output = if positions == Positions::FromIds {
        let position_ids = position_ids_from(r, ids);
        let buffered = sim.alloc(&[b, s], TDt::I64);
        let inputs_embeds = ids.new(&[b, s, h], r.dt);
        tape.node(&inputs_embeds, vec![word_embeddings.clone()], &[ids]);
        let token_type_embeddings = sim.alloc(&[b, s, h], r.dt);
        tape.node(
            &token_type_embeddings,
            vec![Edge::Param(vec![r.d.type_vocab.max(1), h], r.dt)],
            &[&buffered],
        );
        let sum = tt::add(tape, &inputs_embeds, &token_type_embeddings);
        let position_embeddings = sim.alloc(&[b, s, h], r.dt);
        tape.node(
            &position_embeddings,
            vec![Edge::Param(
                vec![r.d.max_positions + r.d.position_offset, h],
                r.dt,
            )],
            &[&position_ids],
        );
        let sum = {
            let total = tt::add(tape, &sum, &position_embeddings);
            drop(sum);
            total
        };
        let normed = tt::layer_norm(tape, &sum, r.threads);
        drop((sum, buffered, token_type_embeddings, inputs_embeds));
        drop((position_embeddings, position_ids));
        tt::dropout(tape, &normed, drop_on.hidden)
    } else {
        // token_type_ids: the buffer's first s, expanded; the embedding saves them and its
        // backward makes them contiguous.
        let buffered = sim.alloc(&[1, s], TDt::I64);
        let inputs_embeds = ids.new(&[b, s, h], r.dt);
        tape.node(&inputs_embeds, vec![word_embeddings.clone()], &[ids]);
        let token_type_embeddings = {
            let _flat_ids = sim.alloc(&[b, s], TDt::I64);
            sim.alloc(&[b, s, h], r.dt)
        };
        tape.node(
            &token_type_embeddings,
            vec![
                Edge::Param(vec![r.d.type_vocab.max(1), h], r.dt),
                Edge::Temp((b * s) as u64 * TDt::I64.size()),
            ],
            &[&buffered],
        );
        drop(buffered);
        let sum = tt::add(tape, &inputs_embeds, &token_type_embeddings);
        let positions = sim.alloc(&[1, s, h], r.dt);
        let positions_rows = r.d.max_positions + r.d.position_offset;
        tape.node(
            &positions,
            vec![Edge::Param(vec![positions_rows, h], r.dt)],
            &[],
        );
        let sum = {
            let total = tt::add(tape, &sum, &positions);
            drop(sum);
            total
        };
        let normed = tt::layer_norm(tape, &sum, r.threads);
        drop(sum);
        tt::dropout(tape, &normed, drop_on.hidden)
    };
    // The mask: `attention_mask.bool()` and `.all()`, then dropped (nothing is masked).
    {
        let _as_bool = sim.alloc(&[b, s], TDt::Bool);
        let _all = sim.alloc(&[], TDt::Bool);
    }
    // BertModel's forward holds the embedding output to its end (what keeps it alive under
    // autocast, where the projections save casts of it instead).
    let mut hidden = embedding_output.clone();
    for _ in 0..r.d.layers {
        let input = hidden.clone();
        hidden = tape.layer(&hidden, Box::new(move |t| bert_train_layer(r, t, &input)));
    }
    if r.head == Head::MaskedLm {
        // The model (no pooler) returns, its embedding output with it.
        drop(embedding_output);
        // `RobertaLMHead` runs gelu whatever the config's activation.
        let relu_head = r.d.act_saves_output() && positions == Positions::Absolute;
        return Ok(tt::masked_lm(r, tape, hidden, labels, relu_head));
    }
    if positions == Positions::FromIds && r.head == Head::SequenceClassification {
        // RobertaClassificationHead (the model has no pooler): the first token, dropout,
        // dense, tanh, dropout, out_proj.
        let logits = {
            let first = hidden.view_node(&[b, h]);
            tape.node(&first, vec![Tape::grad_of(&hidden)], &[]);
            drop(hidden);
            let x = tt::dropout(tape, &first, drop_on.classifier);
            drop(first);
            let dense = tt::linear(tape, &x, h, true);
            drop(x);
            let act = tt::unary(tape, &dense, true);
            drop(dense);
            let x = tt::dropout(tape, &act, drop_on.classifier);
            drop(act);
            tt::linear(tape, &x, r.d.labels(), true)
        };
        drop(embedding_output);
        if r.eval {
            return Ok(logits);
        }
        return Ok(tt::cross_entropy(tape, &logits, labels));
    }
    // BertPooler: the first token (its backward scatters into zeros like the hidden states),
    // dense, tanh (saving its output).
    let pooled = {
        let first = hidden.view_node(&[b, h]);
        tape.node(&first, vec![Tape::grad_of(&hidden)], &[]);
        drop(hidden);
        let dense = tt::linear(tape, &first, h, true);
        tt::unary(tape, &dense, true)
    };
    drop(embedding_output);
    // The base head's output is the pooled one (beside the last hidden state).
    if r.head == Head::Base {
        return Ok(pooled);
    }
    let logits = {
        let dropped = tt::dropout(tape, &pooled, drop_on.classifier);
        drop(pooled);
        tt::linear(tape, &dropped, r.d.labels(), true)
    };
    if r.eval {
        return Ok(logits);
    }
    Ok(tt::cross_entropy(tape, &logits, labels))
}

/// One `BertLayer` in train mode with autograd (sdpa's math kernel with attention dropout, its
/// flash kernel without), on `hidden`.
fn bert_train_layer(r: &TorchRun<'_>, tape: &Tape<'_>, hidden: &Pt) -> Pt {
    let (h, n) = (r.d.hidden, r.d.heads);
    let drop_on = r.d.dropout;
    let mut held_weights = None;
    let attention_output = {
        let context = {
            let q = tt::linear(tape, hidden, h, true);
            let k = tt::linear(tape, hidden, h, true);
            let v = tt::linear(tape, hidden, h, true);
            if r.eager {
                // The weights it returns are held to the layer's end.
                let (context, weights) =
                    tt::eager_attention(tape, (&q, &k, &v), n, drop_on.attention);
                held_weights = Some(weights);
                context
            } else if drop_on.attention && !q.on_cuda() {
                tt::attention_context(tape, (&q, &k, &v), n)
            } else {
                tt::flash_context(tape, (&q, &k, &v), n, r.threads)
            }
        };
        // The context lives until `BertAttention` returns (its tuple holds it), after the norm.
        let dense = tt::linear(tape, &context, h, true);
        let dropped = tt::dropout(tape, &dense, drop_on.hidden);
        drop(dense);
        let sum = tt::add(tape, &dropped, hidden);
        let out = tt::layer_norm(tape, &sum, r.threads);
        drop((sum, dropped, context));
        out
    };
    let intermediate = {
        let dense = tt::linear(tape, &attention_output, r.d.intermediate, true);
        tt::unary(tape, &dense, r.d.act_saves_output())
    };
    // The intermediate output lives until `feed_forward_chunk` returns, after the norm.
    let layer_output = {
        let dense = tt::linear(tape, &intermediate, h, true);
        let dropped = tt::dropout(tape, &dense, drop_on.hidden);
        drop(dense);
        let sum = tt::add(tape, &dropped, &attention_output);
        let out = tt::layer_norm(tape, &sum, r.threads);
        drop((sum, dropped, intermediate));
        out
    };
    drop((attention_output, held_weights));
    layer_output
}
