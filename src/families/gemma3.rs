//! Gemma 3 text models (`gemma3_text`, the `Gemma3ForCausalLM` checkpoints such as gemma-3-1b):
//! Gemma 2's norms around attention and the MLP, an RMS norm on each head's queries and keys,
//! local (sliding-window) layers with a rotating KV cache and every `sliding_window_pattern`-th
//! layer global with a cache as long as `max_position_embeddings`; candle's `gemma3`.
//!
//! Two things of candle 0.11's that set the memory: every layer builds its own rotary tables
//! (cos and sin for every position), and a global layer's KV cache is allocated for
//! `max_position_embeddings` positions at once, whatever the sequence. candle scales the scores
//! by `head_dim`^-1/2 where Hugging Face uses `query_pre_attn_scalar` (the same for the
//! published models), and its global cache takes the values without making them contiguous,
//! which fails for more than one key/value head: oomlab reads configs with one.

// The simulated forward's names follow candle-transformers (b, s, h for batch, seq, hidden; q,
// k, v), so the two read side by side.
#![allow(clippy::many_single_char_names)]

use super::candle::{patched_config, prefill_decoder};
use super::config::{
    ConfigError, activation, bool_field, dropout_field, field, named_alike, window_pattern,
};
use super::gemma2::{after_attention, gemma_tensors};
use super::ops::{
    Run, attend, causal_mask, embedding, gemma_norm, linear, repeat_kv, rotary_tables,
};
use super::sim::{Dt, T};
use super::torch_gemma::Gemma;
use super::{AnyModel, BuildError, Dims, Room, TensorShape};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::gemma3;
use serde_json::Value;

pub struct Gemma3;

impl Room for Gemma3 {
    fn name(&self) -> &'static str {
        "gemma3"
    }
    fn model_type(&self) -> &'static str {
        "gemma3_text"
    }
    fn aliases(&self) -> &'static [&'static str] {
        &["gemma3_text"]
    }
    fn is_decoder(&self) -> bool {
        true
    }
    fn dims(&self, v: &Value) -> std::result::Result<Dims, ConfigError> {
        if v.get("text_config").is_some() {
            return Err(
                "it is a Gemma 3 multimodal config (a \"text_config\" inside); oomlab reads the text model's own config (model_type \"gemma3_text\"): use that object as config.json".into(),
            );
        }
        let base = named_alike(v)?;
        let kv_heads = field(v, "num_key_value_heads")?;
        for cap in ["attn_logit_softcapping", "final_logit_softcapping"] {
            if v.get(cap).is_some_and(|c| !c.is_null()) {
                return Err(format!(
                    "field \"{cap}\" is set; Gemma 3 has none (null), and oomlab models it without"
                )
                .into());
            }
        }
        let mut d = Dims {
            kv_heads,
            // Gemma ties its head to the embeddings, always.
            tied_embeddings: true,
            head_dim_override: Some(field(v, "head_dim")?),
            attention_bias: bool_field(v, "attention_bias")?,
            sliding_window: field(v, "sliding_window")?.max(1),
            global_every: window_pattern(v)?,
            ..base
        };
        activation(v, "hidden_activation", "gelu_pytorch_tanh", &mut d)?;
        d.dropout.attention = dropout_field(v, "attention_dropout", false)?;
        Ok(d)
    }
    fn tensors(&self, d: &Dims) -> Vec<TensorShape> {
        gemma_tensors(d, true)
    }
    fn check_candle(&self, config: &str, d: &Dims) -> std::result::Result<(), ConfigError> {
        gemma3_config(config, d).map(drop)
    }
    fn candle_refuses(&self, d: &Dims) -> Option<String> {
        (d.kv_heads > 1).then(|| {
            format!(
                "candle 0.11's Gemma 3 copies the values into a global layer's KV cache without making them contiguous, which fails for more than one key/value head (num_key_value_heads = {}, as in gemma-3-4b and larger)",
                d.kv_heads
            )
        })
    }
    fn build(
        &self,
        config: &str,
        d: &Dims,
        vb: VarBuilder<'_>,
        _dtype: DType,
        _device: &Device,
    ) -> std::result::Result<AnyModel, BuildError> {
        let cfg = gemma3_config(config, d)?;
        Ok(gemma3::Model::new(false, &cfg, vb)?.into())
    }
    // Each layer's own `RotaryEmbedding` (cos and sin for every position, half a head wide, in
    // the run precision) behind an `Arc` (two counters and two tensor handles).
    fn table_bytes(&self, d: &Dims, dt: Dt) -> u64 {
        let layers = d.layers as u64;
        rotary_tables(d, dt, 2 * layers, d.head_dim() / 2) + 32 * layers
    }
    fn simulate(&self, r: &Run<'_>, inputs: &[T]) -> T {
        simulated(r, &inputs[0])
    }
    super::torch_room!(torch_gemma, |_| Gemma::Three, parameter_order);
}

prefill_decoder!(gemma3::Model);

/// candle's Gemma 3 config: it requires `sliding_window_pattern`, which newer configs replace
/// with `layer_types` (read into [`Dims::global_every`]).
fn gemma3_config(config: &str, d: &Dims) -> std::result::Result<gemma3::Config, ConfigError> {
    let pattern = d.global_every;
    patched_config(config, |o| {
        if o.get("sliding_window_pattern").is_none_or(Value::is_null) {
            o.insert("sliding_window_pattern".into(), pattern.into());
        }
    })
}

/// candle's `gemma3::Model::forward`: embeddings scaled by √hidden, the global and the local
/// masks `(b, 1, s, s)` built once (when s > 1), then each layer with its own mask.
fn simulated(r: &Run<'_>, ids: &T) -> T {
    let mut kvs: Vec<(T, T)> = Vec::with_capacity(r.d.layers);
    // `let xs = self.embed_tokens.forward(input_ids)?; let mut xs = (xs * sqrt(h))?;`
    let mut xs = {
        let e = embedding(r, r.d.vocab, ids);
        let scaled = e.unary();
        drop(e);
        scaled
    };
    // create_attention_masks: prepare_decoder_attention_mask twice (global, then sliding)
    let masks = (r.s > 1).then(|| (causal_mask(r, r.b), causal_mask(r, r.b)));
    let every = r.d.global_every.max(1);
    for l in 0..r.d.layers {
        r.sim.layer(l);
        let sliding = !(l + 1).is_multiple_of(every);
        let mask = masks.as_ref().map(|(g, s)| if sliding { s } else { g });
        xs = layer(r, &xs, sliding, mask, &mut kvs);
    }
    r.sim.after_layers();
    // `xs.narrow(1, seq_len - 1, 1)?.apply(&self.norm)?.apply(&self.lm_head)?`
    let logits = {
        let last = xs.narrow(1, 1);
        let normed = gemma_norm(r, &last);
        let logits = linear(r, &normed, r.d.vocab, false);
        drop((normed, last));
        logits
    };
    drop((xs, masks, kvs));
    logits
}

/// `DecoderLayer::forward`: Gemma 2's layer around Gemma 3's attention.
fn layer(r: &Run<'_>, xs: &T, sliding: bool, mask: Option<&T>, kvs: &mut Vec<(T, T)>) -> T {
    let xn = gemma_norm(r, xs);
    let attn = attention(r, &xn, sliding, mask, kvs);
    after_attention(r, xs, xn, attn)
}

/// `Attention::forward` without flash attention, `x` the normed input.
fn attention(r: &Run<'_>, x: &T, sliding: bool, mask: Option<&T>, kvs: &mut Vec<(T, T)>) -> T {
    let (b, s, h, heads, kv) = (r.b, r.s, r.d.hidden, r.d.heads, r.d.kv_heads);
    let hd = r.d.head_dim();
    let bias = r.d.attention_bias;
    let q = linear(r, x, heads * hd, bias);
    let k = linear(r, x, kv * hd, bias);
    let v = linear(r, x, kv * hd, bias);
    let q1 = q.reshape(&[b, s, heads, hd]).transpose(1, 2);
    let k1 = k.reshape(&[b, s, kv, hd]).transpose(1, 2);
    let v1 = v.reshape(&[b, s, kv, hd]).transpose(1, 2);
    // q_norm, k_norm: Gemma's norm on the transposed views (contiguous outputs)
    let q2 = gemma_norm(r, &q1);
    let k2 = gemma_norm(r, &k1);
    // apply_rotary_emb_qkv: `rope(&q.contiguous()?, ..)` on what is contiguous already
    let q3 = q2.contiguous().unary();
    let k3 = k2.contiguous().unary();
    let (k_out, v_out) = if sliding {
        rotating_append(r, &k3, &v1, kvs)
    } else {
        normal_append(r, &k3, kvs)
    };
    // `repeat_kv(key_states, groups)?.contiguous()?`
    let k4 = repeat_kv(k_out, heads / kv).contiguous();
    let v4 = repeat_kv(v_out, heads / kv).contiguous();
    let attn_output = if let Some(m) = mask {
        attend(r, &q3, &k4, &v4, m)
    } else {
        // One position: no mask; the scaled scores move into the softmax's binding.
        let w = r.mm(&q3, &k4.transpose(2, 3)).unary();
        let w3 = w.unary();
        let out = r.mm(&w3, &v4);
        drop((w, w3));
        out
    };
    // `attn_output.transpose(1, 2)?.reshape((b_sz, q_len, ()))?.apply(&self.o_proj)`
    let y = {
        let o = attn_output.transpose(1, 2).reshape(&[b, s, heads * hd]);
        linear(r, &o, h, bias)
    };
    drop((q, k, v, q1, k1, v1, q2, k2, q3, k3, k4, v4, attn_output));
    y
}

/// A global layer's `KvCache::append`: each cache allocates `(b, kv, max_position_embeddings,
/// head_dim)` zeros on first use, copies the keys (and the values, which must be contiguous
/// already: one key/value head) in, and hands back a narrowed view of each.
fn normal_append(r: &Run<'_>, k: &T, kvs: &mut Vec<(T, T)>) -> (T, T) {
    let full = [r.b, k.dims()[1], r.d.max_positions, k.dims()[3]];
    let k_all = r.sim.alloc(&full, r.dt);
    k_all.mark_kv();
    let v_all = r.sim.alloc(&full, r.dt);
    v_all.mark_kv();
    let out = (k_all.narrow(2, r.s), v_all.narrow(2, r.s));
    kvs.push((k_all, v_all));
    out
}

/// A local layer's `RotatingKvCache::append`: each cache allocates `(b, kv, sliding_window,
/// head_dim)` zeros on first use. A sequence as long as the window or longer: its last window
/// copied in (a contiguous copy of the narrowed view, freed after), and the whole input handed
/// back. A shorter one: copied in (`src.contiguous()`, a copy for the transposed values) and a
/// narrowed view of the cache handed back.
fn rotating_append(r: &Run<'_>, k: &T, v: &T, kvs: &mut Vec<(T, T)>) -> (T, T) {
    let window = r.d.sliding_window;
    let append = |src: &T| {
        let mut dims = src.dims().to_vec();
        dims[2] = window;
        let all = r.sim.alloc(&dims, r.dt);
        all.mark_kv();
        if r.s >= window {
            drop(src.narrow(2, window).contiguous());
            (all, src.clone())
        } else {
            drop(src.contiguous());
            let view = all.narrow(2, r.s);
            (all, view)
        }
    };
    let (k_all, k_out) = append(k);
    let (v_all, v_out) = append(v);
    kvs.push((k_all, v_all));
    (k_out, v_out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn tiny() -> Value {
        serde_json::from_str(include_str!("../../assets/models/tiny-gemma3.json")).unwrap()
    }

    #[test]
    fn layer_types_are_read_as_the_pattern_and_an_irregular_list_is_refused() {
        let mut v = tiny();
        let o = v.as_object_mut().unwrap();
        o.remove("sliding_window_pattern");
        o.insert(
            "layer_types".into(),
            json!(["sliding_attention", "full_attention", "sliding_attention"]),
        );
        assert_eq!(Gemma3.dims(&v).unwrap().global_every, 2);
        // candle's config then gets the pattern it requires.
        let d = Gemma3.dims(&v).unwrap();
        let cfg = gemma3_config(&v.to_string(), &d).unwrap();
        assert_eq!(cfg.sliding_window_pattern, 2);
        v["layer_types"] = json!(["full_attention", "sliding_attention", "full_attention"]);
        let e = Gemma3.dims(&v).unwrap_err().0;
        assert!(
            e.contains("\"layer_types\"") && e.contains("every 1"),
            "{e}"
        );
        v.as_object_mut().unwrap().remove("layer_types");
        let e = Gemma3.dims(&v).unwrap_err().0;
        assert!(e.contains("sliding_window_pattern"), "{e}");
    }

    #[test]
    fn what_candle_cannot_run_is_refused_saying_why() {
        // Read (the PyTorch runtime runs it), and refused for candle's runs.
        let mut v = tiny();
        v["num_key_value_heads"] = json!(2);
        let d = Gemma3.dims(&v).unwrap();
        assert_eq!(d.kv_heads, 2);
        let why = Gemma3.candle_refuses(&d).unwrap();
        assert!(
            why.contains("num_key_value_heads") && why.contains("gemma-3-4b"),
            "{why}"
        );
        assert!(
            Gemma3
                .candle_refuses(&Gemma3.dims(&tiny()).unwrap())
                .is_none()
        );
        let mut v = tiny();
        v["attn_logit_softcapping"] = json!(50.0);
        let e = Gemma3.dims(&v).unwrap_err().0;
        assert!(e.contains("\"attn_logit_softcapping\""), "{e}");
        let multimodal = json!({"model_type": "gemma3", "text_config": tiny()});
        let e = Gemma3.dims(&multimodal).unwrap_err().0;
        assert!(
            e.contains("text_config") && e.contains("gemma3_text"),
            "{e}"
        );
    }
}
