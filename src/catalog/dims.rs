//! Families, their dimensions read from config.json, and the tensors candle's models load.

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use std::fmt;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Bert,
    DistilBert,
    Llama,
    Qwen2,
    Mistral,
    Phi3,
    /// `RoBERTa` and `XLM-RoBERTa` (candle's `xlm_roberta`).
    Roberta,
    Gemma2,
    /// A mixture of experts (candle's `mixtral`): every expert's weights are resident, each token
    /// runs through `num_experts_per_tok` of them.
    Mixtral,
    /// `ModernBERT`: an encoder with rotary positions and local attention on most layers.
    ModernBert,
    /// Qwen3 (dense): an explicit `head_dim`, an RMS norm on each head's queries and keys, and on
    /// the CPU candle's fused flash-attention kernel.
    Qwen3,
    /// Qwen3-MoE: Qwen3's attention; every `decoder_sparse_step`-th layer's MLP is a mixture of
    /// experts (all resident, `num_experts_per_tok` of them per token), the others dense.
    #[serde(rename = "qwen3_moe")]
    Qwen3Moe,
}

impl Family {
    pub const ALL: [Self; 12] = [
        Self::Bert,
        Self::DistilBert,
        Self::Llama,
        Self::Qwen2,
        Self::Mistral,
        Self::Phi3,
        Self::Roberta,
        Self::Gemma2,
        Self::Mixtral,
        Self::ModernBert,
        Self::Qwen3,
        Self::Qwen3Moe,
    ];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Bert => "bert",
            Self::DistilBert => "distilbert",
            Self::Llama => "llama",
            Self::Qwen2 => "qwen2",
            Self::Mistral => "mistral",
            Self::Phi3 => "phi3",
            Self::Roberta => "roberta",
            Self::Gemma2 => "gemma2",
            Self::Mixtral => "mixtral",
            Self::ModernBert => "modernbert",
            Self::Qwen3 => "qwen3",
            Self::Qwen3Moe => "qwen3_moe",
        }
    }

    #[must_use]
    pub fn is_decoder(self) -> bool {
        matches!(
            self,
            Self::Llama
                | Self::Qwen2
                | Self::Qwen3
                | Self::Qwen3Moe
                | Self::Mistral
                | Self::Phi3
                | Self::Gemma2
                | Self::Mixtral
        )
    }

    /// Whether candle 0.11's model for this family runs in `p`.
    /// `DistilBERT`'s attention upcasts its scores to f32 and then multiplies them with values in
    /// the run dtype, which fails for f16/bf16.
    #[must_use]
    pub fn supports(self, p: crate::precision::Precision) -> bool {
        self.f32_only().is_none() || p == crate::precision::Precision::F32
    }

    /// Why candle 0.11's model for this family runs only in f32, when it does.
    #[must_use]
    pub fn f32_only(self) -> Option<&'static str> {
        match self {
            Self::DistilBert => {
                Some("its attention mixes f32 scores with values in the run precision")
            }
            Self::Mixtral => {
                Some("it multiplies each expert's output by routing weights it always makes in f32")
            }
            Self::ModernBert => {
                Some("it adds an f32 attention mask to scores in the run precision")
            }
            _ => None,
        }
    }

    /// Why this build cannot measure the family, when it cannot: candle-transformers 0.11 built
    /// with CUDA runs Qwen3-MoE through its fused expert block on every device (experts packed
    /// into new stacked tensors at load, a CUDA-only grouped GEMM), which oomlab has not checked.
    #[must_use]
    pub fn not_in_this_build(self) -> Option<&'static str> {
        (cfg!(feature = "cuda") && self == Self::Qwen3Moe).then_some(
            "this build (the cuda feature) runs it through candle's fused expert kernel, which oomlab has not checked; use the default build, which measures it on the CPU",
        )
    }

    /// What one measured forward computes.
    #[must_use]
    pub fn forward_label(self) -> &'static str {
        if self.is_decoder() {
            "decoder prefill with KV cache, logits for the last position only (candle 0.11); a Hugging Face evaluation forward computes logits for every position and needs more"
        } else {
            "encoder forward over all positions (hidden states, no task head)"
        }
    }

    /// Reads `model_type`, then `architectures`. Returns what was found when unsupported.
    pub fn detect(obj: &Map<String, Value>) -> Result<Self, String> {
        let model_type = obj.get("model_type").and_then(Value::as_str);
        let archs: Vec<&str> = obj
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(mt) = model_type {
            let mt = mt.to_ascii_lowercase();
            if mt == "xlm-roberta" {
                return Ok(Self::Roberta);
            }
            if let Some(f) = Self::ALL.iter().find(|f| f.name() == mt) {
                return Ok(*f);
            }
        }
        for arch in &archs {
            let lower = arch.to_ascii_lowercase();
            // The family's name, then the task ("ForCausalLM", "Model") or nothing: a prefix
            // alone would read Qwen3-Next or Qwen2-MoE as the dense model it is not.
            let named = |key: &str| {
                lower.strip_prefix(key).is_some_and(|rest| {
                    rest.is_empty() || rest.starts_with("for") || rest.starts_with("model")
                })
            };
            if named("xlmroberta") {
                return Ok(Self::Roberta);
            }
            if let Some(f) = Self::ALL
                .into_iter()
                .find(|f| named(&f.name().replace('_', "")))
            {
                return Ok(f);
            }
        }
        let found = match (model_type, archs.first()) {
            (Some(mt), Some(a)) => format!("'{a}' (model_type '{mt}')"),
            (Some(mt), None) => format!("model_type '{mt}'"),
            (None, Some(a)) => format!("'{a}'"),
            (None, None) => "(no \"model_type\" or \"architectures\" field)".to_string(),
        };
        Err(found)
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The dimensions oomlab needs, read from the config with each family's field names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dims {
    pub layers: usize,
    pub hidden: usize,
    pub heads: usize,
    pub kv_heads: usize,
    pub intermediate: usize,
    pub vocab: usize,
    pub max_positions: usize,
    /// BERT token type vocabulary (0 elsewhere).
    pub type_vocab: usize,
    /// Decoders: `lm_head` shares the embedding matrix.
    pub tied_embeddings: bool,
    /// `RoBERTa`: position ids start after the padding id, so the position table has this many
    /// rows more than the longest sequence (`pad_token_id + 1`; 0 elsewhere).
    #[serde(default)]
    pub position_offset: usize,
    /// Gemma 2: the config's `head_dim`, which need not be hidden / heads.
    #[serde(default)]
    pub head_dim_override: Option<usize>,
    /// Mixtral: experts per layer and experts per token (0 for dense models).
    #[serde(default)]
    pub experts: usize,
    #[serde(default)]
    pub experts_per_token: usize,
    /// `ModernBERT`: every this many layers one attends globally (the others locally).
    #[serde(default)]
    pub global_every: usize,
    /// Qwen3: q, k, v and o projections carry biases (`attention_bias`).
    #[serde(default)]
    pub attention_bias: bool,
    /// Qwen3-MoE: each expert's MLP width (`moe_intermediate_size`; `intermediate` is the dense
    /// layers').
    #[serde(default)]
    pub moe_intermediate: usize,
    /// Qwen3-MoE: every this many layers one is a mixture of experts (`decoder_sparse_step`; 0:
    /// none, as candle reads it).
    #[serde(default)]
    pub sparse_step: usize,
}

/// One tensor candle's model loads: name (without any `bert.`-style prefix) and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorShape {
    pub name: String,
    pub shape: Vec<usize>,
}

fn field(v: &Value, name: &str) -> Result<usize, String> {
    match v.get(name) {
        None | Some(Value::Null) => Err(format!("missing field \"{name}\"")),
        Some(x) => x
            .as_u64()
            .and_then(|n| usize::try_from(n).ok())
            .ok_or_else(|| format!("field \"{name}\" must be a non-negative integer, found {x}")),
    }
}

fn opt_field(v: &Value, name: &str) -> Result<Option<usize>, String> {
    match v.get(name) {
        None | Some(Value::Null) => Ok(None),
        Some(_) => field(v, name).map(Some),
    }
}

/// `dense` with Qwen3-MoE's expert fields, as candle 0.11 reads them.
fn with_experts(v: &Value, dense: &Dims) -> Result<Dims, String> {
    let experts = field(v, "num_experts")?;
    let per_token = field(v, "num_experts_per_tok")?;
    if experts > 0 && (per_token == 0 || per_token > experts) {
        return Err(format!(
            "field \"num_experts_per_tok\" = {per_token} must be between 1 and \"num_experts\" = {experts}"
        ));
    }
    // Hugging Face keeps these layers dense; candle 0.11 does not read the field, so it would
    // build experts the checkpoint does not have.
    if v.get("mlp_only_layers")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return Err(
            "field \"mlp_only_layers\" lists dense layers, which candle 0.11's Qwen3-MoE does not read (it would build experts there); oomlab reads configs where it is empty".into(),
        );
    }
    let moe_intermediate = field(v, "moe_intermediate_size")?;
    if experts > 0 && moe_intermediate == 0 {
        return Err("field \"moe_intermediate_size\" must be at least 1, found 0".into());
    }
    Ok(Dims {
        experts,
        experts_per_token: per_token,
        moe_intermediate,
        sparse_step: field(v, "decoder_sparse_step")?,
        ..dense.clone()
    })
}

/// A boolean candle's config requires.
fn bool_field(v: &Value, name: &str) -> Result<bool, String> {
    match v.get(name) {
        None | Some(Value::Null) => Err(format!("missing field \"{name}\"")),
        Some(x) => x
            .as_bool()
            .ok_or_else(|| format!("field \"{name}\" must be true or false, found {x}")),
    }
}

impl Dims {
    /// The fields most configs name alike (`num_hidden_layers`, `hidden_size`,
    /// `num_attention_heads`, `intermediate_size`, `vocab_size`, `max_position_embeddings`),
    /// one key/value head per query head; a family sets what differs.
    fn named_alike(v: &Value) -> Result<Self, String> {
        // Read in this order, so a config missing several names the first of them.
        let layers = field(v, "num_hidden_layers")?;
        let hidden = field(v, "hidden_size")?;
        let heads = field(v, "num_attention_heads")?;
        Ok(Self {
            layers,
            hidden,
            heads,
            kv_heads: heads,
            intermediate: field(v, "intermediate_size")?,
            vocab: field(v, "vocab_size")?,
            max_positions: field(v, "max_position_embeddings")?,
            ..Self::default()
        })
    }

    pub fn from_config(family: Family, v: &Value) -> Result<Self, String> {
        let dims = match family {
            Family::Bert => {
                let base = Self::named_alike(v)?;
                Self {
                    type_vocab: opt_field(v, "type_vocab_size")?.unwrap_or(2),
                    ..base
                }
            }
            Family::Roberta => {
                let table = field(v, "max_position_embeddings")?;
                let pad = field(v, "pad_token_id")?;
                if table <= pad + 1 {
                    return Err(format!(
                        "field \"max_position_embeddings\" = {table} leaves no position after the padding id {pad} (RoBERTa counts positions from pad_token_id + 1)"
                    ));
                }
                let base = Self::named_alike(v)?;
                Self {
                    max_positions: table - pad - 1,
                    type_vocab: opt_field(v, "type_vocab_size")?.unwrap_or(1),
                    position_offset: pad + 1,
                    ..base
                }
            }
            Family::DistilBert => Self {
                layers: field(v, "n_layers")?,
                hidden: field(v, "dim")?,
                heads: field(v, "n_heads")?,
                kv_heads: field(v, "n_heads")?,
                intermediate: field(v, "hidden_dim")?,
                vocab: field(v, "vocab_size")?,
                max_positions: field(v, "max_position_embeddings")?,
                ..Self::default()
            },
            Family::Gemma2 => {
                let heads = field(v, "num_attention_heads")?;
                Self {
                    layers: field(v, "num_hidden_layers")?,
                    hidden: field(v, "hidden_size")?,
                    heads,
                    kv_heads: opt_field(v, "num_key_value_heads")?.unwrap_or(heads),
                    intermediate: field(v, "intermediate_size")?,
                    vocab: field(v, "vocab_size")?,
                    // candle's default when the config has none
                    max_positions: opt_field(v, "max_position_embeddings")?.unwrap_or(4096),
                    // Gemma ties its head to the embeddings, always.
                    tied_embeddings: true,
                    head_dim_override: Some(field(v, "head_dim")?),
                    ..Self::default()
                }
            }
            Family::ModernBert => {
                let base = Self::named_alike(v)?;
                Self {
                    global_every: field(v, "global_attn_every_n_layers")?.max(1),
                    ..base
                }
            }
            Family::Mixtral => {
                let base = Self::named_alike(v)?;
                let experts = field(v, "num_local_experts")?;
                let per_token = field(v, "num_experts_per_tok")?;
                if per_token == 0 || per_token > experts {
                    return Err(format!(
                        "field \"num_experts_per_tok\" = {per_token} must be between 1 and \"num_local_experts\" = {experts}"
                    ));
                }
                Self {
                    kv_heads: opt_field(v, "num_key_value_heads")?.unwrap_or(base.heads),
                    // candle's Mixtral always holds its own lm_head (tied_embeddings false).
                    experts,
                    experts_per_token: per_token,
                    ..base
                }
            }
            Family::Qwen3 | Family::Qwen3Moe => {
                // candle 0.11 refuses it ("sliding window is not supported").
                if bool_field(v, "use_sliding_window")? {
                    return Err(
                        "field \"use_sliding_window\" is true, and candle 0.11's Qwen3 has no sliding window (set it to false to measure full attention)".into(),
                    );
                }
                let base = Self::named_alike(v)?;
                let dense = Self {
                    kv_heads: field(v, "num_key_value_heads")?,
                    tied_embeddings: bool_field(v, "tie_word_embeddings")?,
                    head_dim_override: Some(field(v, "head_dim")?),
                    attention_bias: bool_field(v, "attention_bias")?,
                    ..base
                };
                if family == Family::Qwen3Moe {
                    with_experts(v, &dense)?
                } else {
                    dense
                }
            }
            Family::Llama | Family::Qwen2 | Family::Mistral | Family::Phi3 => {
                let base = Self::named_alike(v)?;
                let (heads, hidden) = (base.heads, base.hidden);
                if family == Family::Phi3
                    && v.get("partial_rotary_factor")
                        .and_then(Value::as_f64)
                        .is_some_and(|f| (f - 1.0).abs() > f64::EPSILON)
                {
                    return Err(
                        "field \"partial_rotary_factor\" (rotary embedding on part of each head, as in Phi-4-mini) is not modelled yet; oomlab reads Phi-3 configs without it".into(),
                    );
                }
                // candle's Mistral reads an explicit head_dim; the others derive it.
                if family == Family::Mistral
                    && let Some(hd) = opt_field(v, "head_dim")?
                    && heads > 0
                    && hd * heads != hidden
                {
                    return Err(format!(
                        "field \"head_dim\" = {hd} differs from hidden_size / num_attention_heads = {hidden} / {heads}; oomlab does not model such Mistral variants yet (remove head_dim only if it really equals that quotient)"
                    ));
                }
                Self {
                    kv_heads: opt_field(v, "num_key_value_heads")?.unwrap_or(heads),
                    // candle's Mistral always holds its own lm_head.
                    tied_embeddings: family != Family::Mistral
                        && v.get("tie_word_embeddings")
                            .and_then(Value::as_bool)
                            .unwrap_or(false),
                    ..base
                }
            }
        };
        dims.check(family)?;
        Ok(dims)
    }

    fn check(&self, family: Family) -> Result<(), String> {
        let names = match family {
            Family::DistilBert => ("n_layers", "dim", "n_heads", "hidden_dim"),
            _ => (
                "num_hidden_layers",
                "hidden_size",
                "num_attention_heads",
                "intermediate_size",
            ),
        };
        for (value, name) in [
            (self.layers, names.0),
            (self.hidden, names.1),
            (self.heads, names.2),
            (self.intermediate, names.3),
            (self.vocab, "vocab_size"),
            (self.max_positions, "max_position_embeddings"),
            (self.kv_heads, "num_key_value_heads"),
        ] {
            if value == 0 {
                return Err(format!("field \"{name}\" must be at least 1, found 0"));
            }
        }
        if self.head_dim_override == Some(0) {
            return Err("field \"head_dim\" must be at least 1, found 0".into());
        }
        if self.head_dim_override.is_none() && !self.hidden.is_multiple_of(self.heads) {
            return Err(format!(
                "field \"{}\" = {} is not divisible by \"{}\" = {}",
                names.1, self.hidden, names.2, self.heads
            ));
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(format!(
                "field \"num_attention_heads\" = {} is not a multiple of \"num_key_value_heads\" = {}",
                self.heads, self.kv_heads
            ));
        }
        // Absurd sizes would overflow shape arithmetic long before they fit anywhere.
        let biggest = (self.vocab as u128) * (self.hidden as u128);
        if biggest > 1 << 40 || self.layers > 10_000 {
            return Err(format!(
                "sizes are implausible (vocab_size × hidden_size = {biggest}, layers = {})",
                self.layers
            ));
        }
        Ok(())
    }

    /// Qwen3-MoE: whether layer `l` (from 0) is a mixture of experts (candle:
    /// `num_experts > 0 && (l + 1) % decoder_sparse_step == 0`).
    #[must_use]
    pub fn is_moe_layer(&self, l: usize) -> bool {
        self.experts > 0 && self.sparse_step > 0 && (l + 1).is_multiple_of(self.sparse_step)
    }

    #[must_use]
    pub fn head_dim(&self) -> usize {
        self.head_dim_override.unwrap_or(self.hidden / self.heads)
    }

    /// The tensors candle's model for this family loads, in candle's names.
    #[must_use]
    pub fn tensors(&self, family: Family) -> Vec<TensorShape> {
        let mut out = Vec::new();
        let mut t = |name: String, shape: &[usize]| {
            out.push(TensorShape {
                name,
                shape: shape.to_vec(),
            });
        };
        let (h, i) = (self.hidden, self.intermediate);
        match family {
            Family::Bert | Family::Roberta => {
                t("embeddings.word_embeddings.weight".into(), &[self.vocab, h]);
                t(
                    "embeddings.position_embeddings.weight".into(),
                    &[self.max_positions + self.position_offset, h],
                );
                t(
                    "embeddings.token_type_embeddings.weight".into(),
                    &[self.type_vocab, h],
                );
                t("embeddings.LayerNorm.weight".into(), &[h]);
                t("embeddings.LayerNorm.bias".into(), &[h]);
                for l in 0..self.layers {
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
            }
            Family::DistilBert => {
                t("embeddings.word_embeddings.weight".into(), &[self.vocab, h]);
                t(
                    "embeddings.position_embeddings.weight".into(),
                    &[self.max_positions, h],
                );
                t("embeddings.LayerNorm.weight".into(), &[h]);
                t("embeddings.LayerNorm.bias".into(), &[h]);
                for l in 0..self.layers {
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
            }
            Family::ModernBert => {
                t(
                    "model.embeddings.tok_embeddings.weight".into(),
                    &[self.vocab, h],
                );
                t("model.embeddings.norm.weight".into(), &[h]);
                for l in 0..self.layers {
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
            }
            Family::Mixtral => {
                let kv = self.kv_heads * self.head_dim();
                t("model.embed_tokens.weight".into(), &[self.vocab, h]);
                for l in 0..self.layers {
                    let p = format!("model.layers.{l}");
                    t(format!("{p}.self_attn.q_proj.weight"), &[h, h]);
                    t(format!("{p}.self_attn.k_proj.weight"), &[kv, h]);
                    t(format!("{p}.self_attn.v_proj.weight"), &[kv, h]);
                    t(format!("{p}.self_attn.o_proj.weight"), &[h, h]);
                    t(
                        format!("{p}.block_sparse_moe.gate.weight"),
                        &[self.experts, h],
                    );
                    for expert in 0..self.experts {
                        let ex = format!("{p}.block_sparse_moe.experts.{expert}");
                        t(format!("{ex}.w1.weight"), &[i, h]);
                        t(format!("{ex}.w2.weight"), &[h, i]);
                        t(format!("{ex}.w3.weight"), &[i, h]);
                    }
                    t(format!("{p}.input_layernorm.weight"), &[h]);
                    t(format!("{p}.post_attention_layernorm.weight"), &[h]);
                }
                t("model.norm.weight".into(), &[h]);
                t("lm_head.weight".into(), &[self.vocab, h]);
            }
            Family::Gemma2 => {
                let (qd, kv) = (
                    self.heads * self.head_dim(),
                    self.kv_heads * self.head_dim(),
                );
                t("model.embed_tokens.weight".into(), &[self.vocab, h]);
                for l in 0..self.layers {
                    let p = format!("model.layers.{l}");
                    t(format!("{p}.self_attn.q_proj.weight"), &[qd, h]);
                    t(format!("{p}.self_attn.k_proj.weight"), &[kv, h]);
                    t(format!("{p}.self_attn.v_proj.weight"), &[kv, h]);
                    t(format!("{p}.self_attn.o_proj.weight"), &[h, qd]);
                    t(format!("{p}.mlp.gate_proj.weight"), &[i, h]);
                    t(format!("{p}.mlp.up_proj.weight"), &[i, h]);
                    t(format!("{p}.mlp.down_proj.weight"), &[h, i]);
                    for n in [
                        "input_layernorm",
                        "post_attention_layernorm",
                        "pre_feedforward_layernorm",
                        "post_feedforward_layernorm",
                    ] {
                        t(format!("{p}.{n}.weight"), &[h]);
                    }
                }
                t("model.norm.weight".into(), &[h]);
            }
            Family::Phi3 => {
                let kv = self.kv_heads * self.head_dim();
                t("model.embed_tokens.weight".into(), &[self.vocab, h]);
                for l in 0..self.layers {
                    let p = format!("model.layers.{l}");
                    t(format!("{p}.self_attn.qkv_proj.weight"), &[h + 2 * kv, h]);
                    t(format!("{p}.self_attn.o_proj.weight"), &[h, h]);
                    t(format!("{p}.mlp.gate_up_proj.weight"), &[2 * i, h]);
                    t(format!("{p}.mlp.down_proj.weight"), &[h, i]);
                    t(format!("{p}.input_layernorm.weight"), &[h]);
                    t(format!("{p}.post_attention_layernorm.weight"), &[h]);
                }
                t("model.norm.weight".into(), &[h]);
                if !self.tied_embeddings {
                    t("lm_head.weight".into(), &[self.vocab, h]);
                }
            }
            Family::Llama | Family::Qwen2 | Family::Qwen3 | Family::Qwen3Moe | Family::Mistral => {
                let hd = self.head_dim();
                let (qd, kv) = (self.heads * hd, self.kv_heads * hd);
                // Qwen2 always has q, k and v biases; Qwen3 has them on o too, when
                // `attention_bias` says so.
                let qkv_bias = family == Family::Qwen2 || self.attention_bias;
                t("model.embed_tokens.weight".into(), &[self.vocab, h]);
                for l in 0..self.layers {
                    let p = format!("model.layers.{l}");
                    for (name, rows) in [("q_proj", qd), ("k_proj", kv), ("v_proj", kv)] {
                        t(format!("{p}.self_attn.{name}.weight"), &[rows, h]);
                        if qkv_bias {
                            t(format!("{p}.self_attn.{name}.bias"), &[rows]);
                        }
                    }
                    t(format!("{p}.self_attn.o_proj.weight"), &[h, qd]);
                    if self.attention_bias {
                        t(format!("{p}.self_attn.o_proj.bias"), &[h]);
                    }
                    if matches!(family, Family::Qwen3 | Family::Qwen3Moe) {
                        t(format!("{p}.self_attn.q_norm.weight"), &[hd]);
                        t(format!("{p}.self_attn.k_norm.weight"), &[hd]);
                    }
                    if self.is_moe_layer(l) {
                        let mi = self.moe_intermediate;
                        t(format!("{p}.mlp.gate.weight"), &[self.experts, h]);
                        for e in 0..self.experts {
                            let ex = format!("{p}.mlp.experts.{e}");
                            t(format!("{ex}.gate_proj.weight"), &[mi, h]);
                            t(format!("{ex}.up_proj.weight"), &[mi, h]);
                            t(format!("{ex}.down_proj.weight"), &[h, mi]);
                        }
                    } else {
                        t(format!("{p}.mlp.gate_proj.weight"), &[i, h]);
                        t(format!("{p}.mlp.up_proj.weight"), &[i, h]);
                        t(format!("{p}.mlp.down_proj.weight"), &[h, i]);
                    }
                    t(format!("{p}.input_layernorm.weight"), &[h]);
                    t(format!("{p}.post_attention_layernorm.weight"), &[h]);
                }
                t("model.norm.weight".into(), &[h]);
                if !self.tied_embeddings {
                    t("lm_head.weight".into(), &[self.vocab, h]);
                }
            }
        }
        out
    }

    /// Parameters candle's model holds (tied embeddings once; BERT has no pooler in candle).
    #[must_use]
    pub fn candle_parameters(&self, family: Family) -> u64 {
        self.tensors(family)
            .iter()
            .map(|t| t.shape.iter().product::<usize>() as u64)
            .sum()
    }

    /// Parameters as published (BERT checkpoints include the pooler: hidden² + hidden).
    #[must_use]
    pub fn published_parameters(&self, family: Family) -> u64 {
        let pooler = if matches!(family, Family::Bert | Family::Roberta) {
            (self.hidden * self.hidden + self.hidden) as u64
        } else {
            0
        };
        self.candle_parameters(family) + pooler
    }
}
