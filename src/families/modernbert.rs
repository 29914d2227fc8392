//! `ModernBERT` (`modernbert`): an encoder with rotary positions, local attention on most layers,
//! a `GeGLU` MLP and bias-free layer norms; candle's `modernbert`.

// The simulated forward's names follow candle-transformers (b, s, h for batch, seq, hidden; q,
// k, v), so the two read side by side.
#![allow(clippy::many_single_char_names)]

use super::candle::{Inputs, candle_config};
use super::config::{activation, dropout_field, flag_field, named_alike, opt_field};
use super::ops::{Run, embedding, linear, rotary_tables, softmax};
use super::sim::{Dt, T};
use super::torch_modernbert;
use super::torch_sim::{Head, Pt, TDt, TorchRun, Weights};
use super::torch_tape::Tape;
use super::{
    AnyModel, BuildError, CandleModel, ConfigError, Dims, Dropout, Modern, Room, TensorShape,
    tensor_list,
};
use candle_core::{DType, Device, Result, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::modernbert;
use serde_json::Value;

pub struct ModernBert;

impl Room for ModernBert {
    fn name(&self) -> &'static str {
        "modernbert"
    }
    fn is_decoder(&self) -> bool {
        false
    }
    fn f32_only(&self) -> Option<&'static str> {
        Some("it adds an f32 attention mask to scores in the run precision")
    }
    fn gated_mlp(&self) -> bool {
        true
    }
    fn dims(&self, v: &Value) -> std::result::Result<Dims, ConfigError> {
        let base = named_alike(v)?;
        let mut d = Dims {
            global_every: global_every(v, base.layers)?,
            attention_bias: flag_field(v, "attention_bias")?,
            mlp_bias: flag_field(v, "mlp_bias")?,
            ..base
        };
        torch_fields(v, &mut d)?;
        Ok(d)
    }
    fn tensors(&self, d: &Dims) -> Vec<TensorShape> {
        let (h, i) = (d.hidden, d.intermediate);
        tensor_list(|t| {
            t(
                "model.embeddings.tok_embeddings.weight".into(),
                &[d.vocab, h],
            );
            t("model.embeddings.norm.weight".into(), &[h]);
            for l in 0..d.layers {
                let p = format!("model.layers.{l}");
                // The first layer has no attention norm (an identity in the checkpoints).
                if l > 0 {
                    t(format!("{p}.attn_norm.weight"), &[h]);
                }
                t(format!("{p}.attn.Wqkv.weight"), &[3 * h, h]);
                t(format!("{p}.attn.Wo.weight"), &[h, h]);
                t(format!("{p}.mlp_norm.weight"), &[h]);
                t(format!("{p}.mlp.Wi.weight"), &[2 * i, h]);
                t(format!("{p}.mlp.Wo.weight"), &[h, i]);
            }
            t("model.final_norm.weight".into(), &[h]);
        })
    }
    fn check_candle(&self, config: &str, _d: &Dims) -> std::result::Result<(), ConfigError> {
        candle_config::<modernbert::Config>(config).map(drop)
    }
    fn build(
        &self,
        config: &str,
        _d: &Dims,
        vb: VarBuilder<'_>,
        _dtype: DType,
        _device: &Device,
    ) -> std::result::Result<AnyModel, BuildError> {
        let cfg: modernbert::Config = candle_config(config)?;
        Ok(modernbert::ModernBert::load(vb, &cfg)?.into())
    }
    // Two tables (global and local theta) of cos and sin, half a head wide, in the run precision.
    fn table_bytes(&self, d: &Dims, dt: Dt) -> u64 {
        rotary_tables(d, dt, 4, d.head_dim() / 2)
    }
    // the attention mask (`ones_like`)
    fn sim_inputs(&self, r: &Run<'_>, ids: T) -> Vec<T> {
        vec![ids, r.sim.alloc(&[r.b, r.s], Dt::U32)]
    }
    fn simulate(&self, r: &Run<'_>, inputs: &[T]) -> T {
        simulated(r, &inputs[0], &inputs[1])
    }
    fn torch_weights(&self, d: &Dims, head: Head, dt: TDt) -> Option<Weights> {
        torch_modernbert::weights(d, head, dt)
    }
    fn torch_forward(
        &self,
        r: &TorchRun<'_>,
        ids: &Pt,
    ) -> std::result::Result<Vec<Pt>, &'static str> {
        Ok(torch_modernbert::forward(r, ids))
    }
    fn torch_train_forward<'a>(
        &self,
        r: &'a TorchRun<'a>,
        ids: &Pt,
        labels: &Pt,
        tape: &Tape<'a>,
    ) -> std::result::Result<Pt, &'static str> {
        torch_modernbert::train_forward(r, ids, labels, tape)
    }
}

/// Every how many layers one attends globally: `global_attn_every_n_layers` (transformers 4's
/// configs, and candle's), else the distance to the second global layer in `layer_types` (what
/// transformers 5 saves instead), else transformers' default, 3. A `layer_types` that is no such
/// pattern is the PyTorch estimator's to refuse ([`torch_fields`]); candle's config, which
/// requires the field, refuses a config without it.
fn global_every(v: &Value, layers: usize) -> std::result::Result<usize, ConfigError> {
    if let Some(every) = opt_field(v, "global_attn_every_n_layers")? {
        if every == 0 {
            return Err("field \"global_attn_every_n_layers\" must be at least 1, found 0".into());
        }
        return Ok(every);
    }
    let Some(types) = v.get("layer_types").and_then(Value::as_array) else {
        return Ok(3);
    };
    let global = |t: &Value| t.as_str() == Some("full_attention");
    Ok(types
        .iter()
        .skip(1)
        .position(global)
        .map_or(layers.max(1), |i| i + 1))
}

/// What the PyTorch model reads beside candle's fields (transformers' defaults where absent),
/// and the fields candle's model does not follow (it loads no biases and runs gelu): candle
/// refuses those, naming the field. The PyTorch estimator refuses what it does not model: a
/// rope scaling and a `layer_types` other than the pattern (any workload), dropout and
/// `sparse_prediction` (in training).
fn torch_fields(v: &Value, d: &mut Dims) -> std::result::Result<(), ConfigError> {
    let window = opt_field(v, "local_attention")?.unwrap_or(128);
    let mut head = Dims::default();
    activation(v, "classifier_activation", "gelu", &mut head)?;
    activation(v, "hidden_activation", "gelu", d)?;
    let pooling = match v.get("classifier_pooling") {
        None | Some(Value::Null) => "cls",
        Some(Value::String(p)) if p == "cls" || p == "mean" => p.as_str(),
        Some(x) => {
            return Err(format!(
                "field \"classifier_pooling\" must be \"cls\" or \"mean\", found {x}"
            )
            .into());
        }
    };
    d.modern = Modern {
        window: window / 2,
        norm_bias: flag_field(v, "norm_bias")?,
        classifier_bias: flag_field(v, "classifier_bias")?,
        decoder_bias: v.get("decoder_bias").is_none_or(Value::is_null)
            || flag_field(v, "decoder_bias")?,
        mean_pooling: pooling == "mean",
        head_saves_output: head.act_saves_output(),
        untied: v.get("tie_word_embeddings").is_some_and(|t| !t.is_null())
            && !flag_field(v, "tie_word_embeddings")?,
        sparse_prediction: flag_field(v, "sparse_prediction")?,
    };
    if let Some(why) = head.torch_refuses {
        d.torch_refuses.get_or_insert(why);
    }
    for (name, on) in [
        ("norm_bias", d.modern.norm_bias),
        ("attention_bias", d.attention_bias),
        ("mlp_bias", d.mlp_bias),
    ] {
        if on {
            d.candle_refuses.get_or_insert_with(|| {
                format!("field \"{name}\" is true (biases), which candle 0.11's ModernBERT does not load")
            });
        }
    }
    if let Some(Value::String(act)) = v.get("hidden_activation")
        && act != "gelu"
    {
        d.candle_refuses.get_or_insert_with(|| {
            format!("field \"hidden_activation\" is \"{act}\", and candle 0.11's ModernBERT runs gelu whatever it says")
        });
    }
    // Dropout acts only in training (the estimator's train-mode forward refuses it); the
    // sparse prediction only with a masked-LM's labels.
    let on = |name| dropout_field(v, name, false);
    d.dropout = Dropout {
        hidden: on("embedding_dropout")? || on("mlp_dropout")?,
        attention: on("attention_dropout")?,
        classifier: on("classifier_dropout")?,
    };
    if v.get("rope_scaling").is_some_and(|x| !x.is_null())
        || v.get("rope_parameters")
            .and_then(Value::as_object)
            .is_some_and(|p| {
                p.values().any(|t| {
                    t.get("rope_type")
                        .and_then(Value::as_str)
                        .is_some_and(|k| k != "default")
                })
            })
    {
        d.torch_refuses.get_or_insert_with(|| {
            "a rope scaling (\"rope_scaling\" or a \"rope_parameters\" rope_type other than default) is not modelled for ModernBERT".to_string()
        });
    }
    if let Some(types) = v.get("layer_types").filter(|t| !t.is_null()) {
        // Compared entry by entry (the layer count is not yet checked for plausibility).
        let pattern = |i: usize| {
            if i.is_multiple_of(d.global_every) {
                "full_attention"
            } else {
                "sliding_attention"
            }
        };
        let follows = types.as_array().is_some_and(|a| {
            a.len() == d.layers
                && a.iter()
                    .enumerate()
                    .all(|(i, t)| t.as_str() == Some(pattern(i)))
        });
        if !follows {
            d.torch_refuses.get_or_insert_with(|| {
                format!("field \"layer_types\" is not one global layer every {} (\"global_attn_every_n_layers\"), which is what oomlab follows", d.global_every)
            });
        }
    }
    Ok(())
}

impl CandleModel for modernbert::ModernBert {
    fn inputs(&mut self, ids: Tensor) -> Result<Inputs> {
        Ok(Inputs {
            mask: Some(ids.ones_like()?),
            aux: None,
            ids,
        })
    }
    fn forward(&mut self, inputs: Inputs) -> Result<Tensor> {
        let mask = inputs.mask.ok_or_else(|| super::candle::missing("mask"))?;
        modernbert::ModernBert::forward(self, &inputs.ids, &mask)
    }
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
fn simulated(r: &Run<'_>, ids: &T, mask: &T) -> T {
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
        r.sim.layer(l);
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
    r.sim.after_layers();
    let out = layer_norm_no_bias(r, &xs);
    drop((xs, global_mask, local_mask));
    out
}
