//! `RoBERTa` and `XLM-RoBERTa` (`roberta`, `xlm-roberta`): BERT's tensors with positions counted
//! after the padding id; candle's `xlm_roberta`.

// The simulated forward's names follow candle-transformers (b, s, h for batch, seq, hidden; q,
// k, v), so the two read side by side.
#![allow(clippy::many_single_char_names)]

use super::bert::{
    Positions, encoder_tensors, masked_lm_bias_first, torch_bert_forward, torch_bert_train_forward,
    torch_encoder_weights,
};
use super::candle::{Inputs, patched_config};
use super::config::{ConfigError, activation, dropout_field, field, named_alike, opt_field};
use super::ops::{Run, embedding, linear, norm};
use super::sim::{Dt, T};
use super::torch_sim::{Head, Pt, TDt, TorchRun, Weights};
use super::torch_tape::Tape;
use super::{AnyModel, BuildError, CandleModel, Dims, Dropout, Room, TensorShape};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::xlm_roberta;
use serde_json::Value;

pub struct Roberta;

impl Room for Roberta {
    fn name(&self) -> &'static str {
        "roberta"
    }
    fn aliases(&self) -> &'static [&'static str] {
        &["xlm-roberta", "xlmroberta"]
    }
    fn is_decoder(&self) -> bool {
        false
    }
    fn has_pooler(&self) -> bool {
        true
    }
    fn dims(&self, v: &Value) -> std::result::Result<Dims, ConfigError> {
        let table = field(v, "max_position_embeddings")?;
        let pad = field(v, "pad_token_id")?;
        if table <= pad + 1 {
            return Err(format!(
                "field \"max_position_embeddings\" = {table} leaves no position after the padding id {pad} (RoBERTa counts positions from pad_token_id + 1)"
            )
            .into());
        }
        let base = named_alike(v)?;
        // RobertaConfig's defaults: 0.1 each; the classifier's falls back to the hidden one.
        let hidden = dropout_field(v, "hidden_dropout_prob", true)?;
        let mut d = Dims {
            max_positions: table - pad - 1,
            type_vocab: opt_field(v, "type_vocab_size")?.unwrap_or(1),
            position_offset: pad + 1,
            dropout: Dropout {
                hidden,
                attention: dropout_field(v, "attention_probs_dropout_prob", true)?,
                classifier: dropout_field(v, "classifier_dropout", hidden)?,
            },
            // transformers 5's XLM-RoBERTa classes register their head before the model.
            head_registered_first: v.get("model_type").and_then(Value::as_str)
                == Some("xlm-roberta"),
            ..base
        };
        activation(v, "hidden_act", "gelu", &mut d)?;
        Ok(d)
    }
    fn tensors(&self, d: &Dims) -> Vec<TensorShape> {
        encoder_tensors(d)
    }
    fn check_candle(&self, config: &str, _d: &Dims) -> std::result::Result<(), ConfigError> {
        roberta_config(config).map(drop)
    }
    fn build(
        &self,
        config: &str,
        _d: &Dims,
        vb: VarBuilder<'_>,
        _dtype: DType,
        _device: &Device,
    ) -> std::result::Result<AnyModel, BuildError> {
        let cfg = roberta_config(config)?;
        Ok(xlm_roberta::XLMRobertaModel::new(&cfg, vb)?.into())
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
        torch_encoder_weights(d, head, dt)
    }
    fn torch_forward(
        &self,
        r: &TorchRun<'_>,
        ids: &Pt,
    ) -> std::result::Result<Vec<Pt>, &'static str> {
        torch_bert_forward(r, ids, Positions::FromIds)
    }
    fn torch_train_forward<'a>(
        &self,
        r: &'a TorchRun<'a>,
        ids: &Pt,
        labels: &Pt,
        tape: &Tape<'a>,
    ) -> std::result::Result<Pt, &'static str> {
        torch_bert_train_forward(r, ids, labels, tape, Positions::FromIds)
    }
    fn torch_parameter_order(&self, d: &Dims, head: Head, grads: &mut [Pt]) {
        // The forward uses the word, token type and position embeddings, then the `LayerNorm`;
        // `RobertaEmbeddings` registers the position table last, after the `LayerNorm`.
        if let Some(embeddings) = grads.get_mut(2..5) {
            embeddings.rotate_left(1);
        }
        masked_lm_bias_first(head, grads);
        // transformers 5's XLM-RoBERTa registers its head before the model: the classifier's
        // dense and out_proj (weights and biases), or the masked-LM head's five.
        if d.head_registered_first {
            let head_params = match head {
                Head::SequenceClassification => 4,
                Head::MaskedLm => 5,
                _ => 0,
            };
            if grads.len() > head_params {
                grads.rotate_right(head_params);
            }
        }
    }
}

/// candle's XLM-RoBERTa config: roberta-base's config.json has no `position_embedding_type`,
/// which candle's Config requires (absolute is what it means), nor the dropouts it reads.
fn roberta_config(config: &str) -> std::result::Result<xlm_roberta::Config, ConfigError> {
    patched_config(config, |o| {
        o.entry("position_embedding_type")
            .or_insert_with(|| "absolute".into());
        o.entry("attention_probs_dropout_prob")
            .or_insert_with(|| 0.1.into());
        o.entry("hidden_dropout_prob").or_insert_with(|| 0.1.into());
        o.entry("type_vocab_size").or_insert_with(|| 1.into());
    })
}

impl CandleModel for xlm_roberta::XLMRobertaModel {
    fn inputs(&mut self, ids: Tensor) -> Result<Inputs> {
        Ok(Inputs {
            aux: Some(ids.zeros_like()?),
            mask: Some(ids.ones_like()?),
            ids,
        })
    }
    fn forward(&mut self, inputs: Inputs) -> Result<Tensor> {
        let Inputs { ids, aux, mask } = inputs;
        let (Some(tt), Some(mk)) = (aux, mask) else {
            return Err(super::candle::missing("token type ids or mask"));
        };
        xlm_roberta::XLMRobertaModel::forward(self, &ids, &mk, &tt, None, None, None)
    }
}

/// candle's `xlm_roberta::XLMRobertaModel::forward` (`RoBERTa` and `XLM-RoBERTa`): position ids
/// from a cumulative sum over the non-padding tokens (a matmul with an s×s triangle), the mask
/// built once in f32, no dropout bindings (each dense output is consumed by its residual add),
/// and every layer keeps its attention context alive until the next one starts.
fn simulated(r: &Run<'_>, ids: &T, tt: &T, mask: &T) -> T {
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
    for layer in 0..r.d.layers {
        r.sim.layer(layer);
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
    r.sim.after_layers();
    drop((hidden_states, attention_mask));
    xs
}
