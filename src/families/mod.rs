//! The model families, one room each: a family's file holds everything oomlab knows about it —
//! how its config.json reads into [`Dims`], the exact tensors candle's model loads, the check
//! and patches candle's own config type needs, the build and forward over candle-transformers,
//! and the estimator's simulated forward. A new family is one new file and one line in the
//! `rooms!` list.
//!
//! Shared pieces stay shared: `config` (the field readers most configs name alike), `candle`
//! (the build helpers and the decoders' prefill), `sim` (the liveness simulator) and `ops` (the
//! simulated ops: linear, norms, softmax, the decoders' mask, attention core and gated MLP).
//!
//! This module depends on no other oomlab module but `precision`: the catalog, the candle
//! runtime and the estimator call into it, never the other way round.

mod candle;
mod config;
pub mod ops;
pub mod sim;
pub mod torch_cuda;
mod torch_gemma;
mod torch_llama;
mod torch_modernbert;
pub mod torch_sim;
pub mod torch_tape;

mod bert;
mod distilbert;
mod gemma2;
mod gemma3;
mod llama;
mod mistral;
mod mixtral;
mod modernbert;
mod phi3;
mod qwen2;
mod qwen3;
mod qwen3_moe;
mod roberta;

pub use candle::{BuildError, CandleModel, Inputs};
pub use config::ConfigError;

use ::candle_core::{DType, Device};
use candle_nn::VarBuilder;
use ops::Run;
use serde::{Deserialize, Deserializer, Serialize, Serializer};
use serde_json::{Map, Value};
use sim::{Dt, T};
use std::fmt;

/// Lists the rooms (each with the candle model its build makes) once, for [`ROOMS`] and
/// [`AnyModel`].
macro_rules! rooms {
    ($($module:ident :: $room:ident => $model:ty),* $(,)?) => {
        /// Every family, in the order `oomlab models` groups them.
        static ROOMS: &[&dyn Room] = &[$(&$module::$room),*];

        /// A built candle model of any family. Held inline (an enum, not a box), so a build
        /// allocates nothing of oomlab's own beside candle's tensors: the worker's baseline is
        /// candle's alone.
        #[allow(clippy::large_enum_variant)]
        pub enum AnyModel {
            $($room($model)),*
        }

        $(impl From<$model> for AnyModel {
            fn from(m: $model) -> Self {
                Self::$room(m)
            }
        })*

        impl AnyModel {
            /// [`CandleModel::inputs`] of the model inside.
            pub fn inputs(&mut self, ids: ::candle_core::Tensor) -> ::candle_core::Result<Inputs> {
                match self {
                    $(Self::$room(m) => CandleModel::inputs(m, ids)),*
                }
            }

            /// [`CandleModel::forward`] of the model inside.
            pub fn forward(&mut self, inputs: Inputs) -> ::candle_core::Result<::candle_core::Tensor> {
                match self {
                    $(Self::$room(m) => CandleModel::forward(m, inputs)),*
                }
            }
        }
    };
}

// A new family is a line here.
rooms! {
    bert::Bert => candle_transformers::models::bert::BertModel,
    distilbert::DistilBert => candle_transformers::models::distilbert::DistilBertModel,
    llama::Llama => llama::LlamaModel,
    qwen2::Qwen2 => candle_transformers::models::qwen2::ModelForCausalLM,
    mistral::Mistral => candle_transformers::models::mistral::Model,
    phi3::Phi3 => candle_transformers::models::phi3::Model,
    roberta::Roberta => candle_transformers::models::xlm_roberta::XLMRobertaModel,
    gemma2::Gemma2 => candle_transformers::models::gemma2::Model,
    mixtral::Mixtral => mixtral::MixtralModel,
    modernbert::ModernBert => candle_transformers::models::modernbert::ModernBert,
    qwen3::Qwen3 => candle_transformers::models::qwen3::ModelForCausalLM,
    qwen3_moe::Qwen3Moe => candle_transformers::models::qwen3_moe::ModelForCausalLM,
    gemma3::Gemma3 => candle_transformers::models::gemma3::Model,
}

/// What a family provides. Defaults cover the common case (an f32/f16/bf16 model, no tables
/// beside the weights, the input ids alone).
pub trait Room: Sync {
    /// The family's name everywhere (journals, exports), and the config's `model_type` unless
    /// [`Room::model_type`] says otherwise.
    fn name(&self) -> &'static str;
    /// The `model_type` transformers reads, for a config that leaves it out.
    fn model_type(&self) -> &'static str {
        self.name()
    }
    /// Other `model_type` values, and architecture names without their task, read as this family.
    fn aliases(&self) -> &'static [&'static str] {
        &[]
    }
    fn is_decoder(&self) -> bool;
    /// Why candle 0.11's model runs only in f32, when it does.
    fn f32_only(&self) -> Option<&'static str> {
        None
    }
    /// Why candle 0.11 cannot run this config of the family, when it cannot: the config is
    /// read (the PyTorch runtime and estimator take it), and candle's runs refuse it.
    fn candle_refuses(&self, _d: &Dims) -> Option<String> {
        None
    }
    /// Why this build cannot measure the family, when it cannot.
    fn not_in_this_build(&self) -> Option<&'static str> {
        None
    }
    /// Whether published parameter counts include a pooler (hidden² + hidden) candle does not
    /// load.
    fn has_pooler(&self) -> bool {
        false
    }
    /// Whether the MLP is gated (three matrices per layer rather than two).
    fn gated_mlp(&self) -> bool {
        self.is_decoder()
    }
    /// The dims, read with the family's field names (checked by [`Dims::check`] after).
    fn dims(&self, v: &Value) -> Result<Dims, ConfigError>;
    /// The config's names for layers, hidden size, heads and MLP width (in error messages).
    fn dim_names(&self) -> [&'static str; 4] {
        [
            "num_hidden_layers",
            "hidden_size",
            "num_attention_heads",
            "intermediate_size",
        ]
    }
    /// The tensors candle's model loads, in candle's names.
    fn tensors(&self, d: &Dims) -> Vec<TensorShape>;
    /// Whether candle's own config type reads `config` (every field it requires, of its type).
    fn check_candle(&self, config: &str, d: &Dims) -> Result<(), ConfigError>;
    /// candle's model over the weights in `vb`.
    fn build(
        &self,
        config: &str,
        d: &Dims,
        vb: VarBuilder<'_>,
        dtype: DType,
        device: &Device,
    ) -> Result<AnyModel, BuildError>;
    /// Bytes of the tables the build keeps beside the weights (rotary cos/sin), tensor metadata
    /// included.
    fn table_bytes(&self, _d: &Dims, _dt: Dt) -> u64 {
        0
    }
    /// The simulated inputs oomlab builds before the measured region, `ids` first.
    fn sim_inputs(&self, _r: &Run<'_>, ids: T) -> Vec<T> {
        vec![ids]
    }
    /// One simulated forward; returns its output (alive until the worker has read the peak).
    fn simulate(&self, r: &Run<'_>, inputs: &[T]) -> T;
    /// PyTorch: the parameters and buffers transformers' model makes for `head`, in order
    /// (None: the family's PyTorch memory is not modelled).
    fn torch_weights(
        &self,
        _d: &Dims,
        _head: torch_sim::Head,
        _dt: torch_sim::TDt,
    ) -> Option<torch_sim::Weights> {
        None
    }
    /// PyTorch: one forward under `no_grad` as transformers runs it on the CPU, over the
    /// inputs `ids` and `mask`; returns what the model returns, or why this point is not
    /// modelled.
    fn torch_forward(
        &self,
        _r: &torch_sim::TorchRun<'_>,
        _ids: &torch_sim::Pt,
    ) -> Result<Vec<torch_sim::Pt>, &'static str> {
        Err("its PyTorch forward is not modelled yet")
    }
    /// PyTorch: whether transformers runs this family with sdpa (Gemma 2's soft-capping keeps
    /// it to eager attention); the estimator's default attention follows.
    fn torch_sdpa(&self) -> bool {
        true
    }
    /// PyTorch: puts a training step's parameter gradients, found in the order the forward
    /// first uses each parameter, in `model.parameters()`'s order, which the optimizer walks,
    /// where the two differ in a way that moves the step's peak (by default they are left), for
    /// the model with `head`.
    fn torch_parameter_order(
        &self,
        _d: &Dims,
        _head: torch_sim::Head,
        _grads: &mut [torch_sim::Pt],
    ) {
    }
    /// PyTorch: the forward of a training step in train mode (dropout on), recording autograd's
    /// nodes on `tape`, with the loss from `labels`; returns the loss, or why this point is not
    /// modelled. With `r.eval` the same forward in eval mode without labels, returning the
    /// head's output (autocast outside training).
    fn torch_train_forward<'a>(
        &self,
        _r: &'a torch_sim::TorchRun<'a>,
        _ids: &torch_sim::Pt,
        _labels: &torch_sim::Pt,
        _tape: &torch_tape::Tape<'a>,
    ) -> Result<torch_sim::Pt, &'static str> {
        Err("its PyTorch training step is not modelled yet")
    }
}

/// A model family: a handle on its room.
#[derive(Clone, Copy)]
pub struct Family(&'static dyn Room);

impl Family {
    /// Every family, in [`ROOMS`] order.
    pub fn all() -> impl Iterator<Item = Self> {
        ROOMS.iter().map(|r| Self(*r))
    }

    /// Every family's `model_type`, in [`ROOMS`] order, with the other `model_type`s read as it
    /// (`roberta (and xlm-roberta)`): what a config's `model_type` may say.
    #[must_use]
    pub fn supported_model_types() -> String {
        Self::all()
            .map(|f| {
                let room = f.room();
                // Aliases with a separator are model_types; the others architecture names.
                let others: Vec<&str> = room
                    .aliases()
                    .iter()
                    .copied()
                    .filter(|a| *a != room.model_type() && a.contains(['-', '_']))
                    .collect();
                if others.is_empty() {
                    room.model_type().to_string()
                } else {
                    format!("{} (and {})", room.model_type(), others.join(", "))
                }
            })
            .collect::<Vec<_>>()
            .join(", ")
    }

    /// The family called `name` (its `model_type`).
    #[must_use]
    pub fn named(name: &str) -> Option<Self> {
        Self::all().find(|f| f.name() == name)
    }

    #[must_use]
    pub fn room(self) -> &'static dyn Room {
        self.0
    }

    #[must_use]
    pub fn name(self) -> &'static str {
        self.0.name()
    }

    #[must_use]
    pub fn is_decoder(self) -> bool {
        self.0.is_decoder()
    }

    /// transformers' default attention for the family: sdpa where it runs it (not Gemma 2).
    #[must_use]
    pub fn torch_attn(self) -> crate::runtime::Attn {
        crate::runtime::Attn::default_for(self.0.torch_sdpa())
    }

    /// Whether candle 0.11's model for this family runs in `p`.
    #[must_use]
    pub fn supports(self, p: crate::precision::Precision) -> bool {
        self.f32_only().is_none() || p == crate::precision::Precision::F32
    }

    /// Why candle 0.11's model for this family runs only in f32, when it does.
    #[must_use]
    pub fn f32_only(self) -> Option<&'static str> {
        self.0.f32_only()
    }

    /// Why this build cannot measure the family, when it cannot.
    #[must_use]
    pub fn not_in_this_build(self) -> Option<&'static str> {
        self.0.not_in_this_build()
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

    /// Reads `model_type`, then `architectures`. Says what was found when unsupported.
    pub fn detect(obj: &Map<String, Value>) -> Result<Self, UnknownFamily> {
        let model_type = obj.get("model_type").and_then(Value::as_str);
        let archs: Vec<&str> = obj
            .get("architectures")
            .and_then(Value::as_array)
            .map(|a| a.iter().filter_map(Value::as_str).collect())
            .unwrap_or_default();
        if let Some(mt) = model_type {
            let mt = mt.to_ascii_lowercase();
            if let Some(f) = Self::all().find(|f| f.name() == mt || f.0.aliases().contains(&&*mt)) {
                return Ok(f);
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
            if let Some(f) = Self::all().find(|f| {
                named(&f.name().replace('_', "")) || f.0.aliases().iter().any(|a| named(a))
            }) {
                return Ok(f);
            }
        }
        let found = match (model_type, archs.first()) {
            (Some(mt), Some(a)) => format!("'{a}' (model_type '{mt}')"),
            (Some(mt), None) => format!("model_type '{mt}'"),
            (None, Some(a)) => format!("'{a}'"),
            (None, None) => "(no \"model_type\" or \"architectures\" field)".to_string(),
        };
        Err(UnknownFamily { found })
    }
}

/// A config whose family oomlab does not read: what its `architectures` / `model_type` say.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("no family reads {found}")]
pub struct UnknownFamily {
    pub found: String,
}

impl PartialEq for Family {
    fn eq(&self, other: &Self) -> bool {
        self.name() == other.name()
    }
}

impl Eq for Family {}

impl fmt::Debug for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl fmt::Display for Family {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Serialize for Family {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.name())
    }
}

impl<'de> Deserialize<'de> for Family {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let name = String::deserialize(d)?;
        Self::named(&name).ok_or_else(|| {
            let known: Vec<&str> = Self::all().map(Self::name).collect();
            serde::de::Error::custom(format!(
                "unknown family '{name}' (known: {})",
                known.join(", ")
            ))
        })
    }
}

/// The dimensions oomlab needs, read from the config with each family's field names.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::struct_excessive_bools)] // one per config flag a family's forward follows
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
    /// `ModernBERT` and Gemma 3: every this many layers one attends globally (the others
    /// locally).
    #[serde(default)]
    pub global_every: usize,
    /// Gemma 3: the local layers' window (`sliding_window`), the length of their rotating KV
    /// cache.
    #[serde(default)]
    pub sliding_window: usize,
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
    /// Train mode: the dropouts that are on (p > 0) on the hidden states (BERT:
    /// `hidden_dropout_prob`), the attention probabilities (`attention_probs_dropout_prob`) and
    /// before a classification head (`classifier_dropout`, else the hidden one).
    #[serde(default)]
    pub dropout: Dropout,
    /// Why the PyTorch estimator does not model this config, when a field asks for a forward it
    /// does not follow (Phi-3's longrope, Qwen2's sliding window): it refuses the config naming
    /// the field before any forward, rather than estimate another model.
    #[serde(skip)]
    pub torch_refuses: Option<String>,
    /// Why candle's model does not run this config, when a field asks for what it lacks
    /// (Qwen3's sliding window): the candle runtime refuses it, naming the field; the PyTorch
    /// runtime reads it as transformers does.
    #[serde(skip)]
    pub candle_refuses: Option<String>,
    /// Llama: biases on the MLP's projections (`mlp_bias`), which only PyTorch's estimator reads.
    #[serde(default)]
    pub mlp_bias: bool,
    /// What the activation (`hidden_act`, `DistilBERT`'s `activation`) saves for the backward:
    /// its input (gelu, silu) or its output (`ReLU`).
    #[serde(default)]
    pub act_saves: ActSaves,
    /// XLM-RoBERTa: transformers 5 registers the task head's parameters before the model's,
    /// so the optimizer walks them first.
    #[serde(default)]
    pub head_registered_first: bool,
    /// Mistral: whether transformers ties the head to the embeddings (`tie_word_embeddings`),
    /// where candle's model never does (`tied_embeddings` is candle's); None: as candle.
    #[serde(default)]
    pub torch_tied: Option<bool>,
    /// Gemma 2: which of its soft-cappings the config sets.
    #[serde(default)]
    pub softcapping: Softcapping,
    /// `ModernBERT`: what its config sets beside the common fields.
    #[serde(default)]
    pub modern: Modern,
    /// A classification head's labels (`id2label`'s length, else `num_labels`); 0: the torch
    /// runtime's default ([`Dims::labels`]).
    #[serde(default)]
    pub num_labels: usize,
    /// Why a classification head's training loss is not modelled (a regression or multi-label
    /// head: `num_labels` 1 or a `problem_type` other than single-label).
    #[serde(skip)]
    pub loss_refuses: Option<String>,
}

/// `ModernBERT`'s own config fields, as its PyTorch model reads them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[allow(clippy::struct_excessive_bools)] // one per config flag the forward follows
pub struct Modern {
    /// The local layers' window each side (`local_attention / 2`).
    pub window: usize,
    /// The layer norms' biases (`norm_bias`).
    pub norm_bias: bool,
    /// The prediction head's dense bias (`classifier_bias`).
    pub classifier_bias: bool,
    /// The masked-LM decoder's bias (`decoder_bias`).
    pub decoder_bias: bool,
    /// The classifier pools the mean of the rows (`classifier_pooling` "mean"), not the first.
    pub mean_pooling: bool,
    /// The prediction head's activation (`classifier_activation`) saves its output (`ReLU`).
    pub head_saves_output: bool,
    /// The masked-LM decoder has a weight of its own (`tie_word_embeddings` false).
    pub untied: bool,
    /// With labels, the masked-LM head runs on the masked rows only (`sparse_prediction`).
    pub sparse_prediction: bool,
}

/// Gemma 2's soft-capping (`tanh(x / cap) * cap`): of the attention scores
/// (`attn_logit_softcapping`) and of the logits (`final_logit_softcapping`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Softcapping {
    pub attention: bool,
    pub logits: bool,
}

/// What an activation saves for its backward.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub enum ActSaves {
    /// gelu, gelu-tanh, silu: their input.
    #[default]
    Input,
    /// `ReLU`: its output (which the next op usually saves too).
    Output,
}

/// Which of a model's dropouts are on in train mode (probability above 0).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dropout {
    pub hidden: bool,
    pub attention: bool,
    pub classifier: bool,
}

/// One tensor candle's model loads: name (without any `bert.`-style prefix) and shape.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TensorShape {
    pub name: String,
    pub shape: Vec<usize>,
}

impl Dims {
    /// The family's dims from a parsed config.json, checked.
    pub fn from_config(family: Family, v: &Value) -> Result<Self, ConfigError> {
        let mut dims = family.0.dims(v)?;
        config::check(&dims, family.0.dim_names())?;
        (dims.num_labels, dims.loss_refuses) = config::labels(v)?;
        Ok(dims)
    }

    /// A classification head's labels: the config's, else the torch runtime's default (2).
    #[must_use]
    pub fn labels(&self) -> usize {
        if self.num_labels == 0 {
            torch_sim::NUM_LABELS
        } else {
            self.num_labels
        }
    }

    /// Qwen3-MoE: whether layer `l` (from 0) is a mixture of experts (candle:
    /// `num_experts > 0 && (l + 1) % decoder_sparse_step == 0`).
    #[must_use]
    pub fn is_moe_layer(&self, l: usize) -> bool {
        self.experts > 0 && self.sparse_step > 0 && (l + 1).is_multiple_of(self.sparse_step)
    }

    /// Whether the activation saves its output (`ReLU`) rather than its input.
    #[must_use]
    pub fn act_saves_output(&self) -> bool {
        self.act_saves == ActSaves::Output
    }

    /// Whether PyTorch's model ties its head to the embeddings.
    #[must_use]
    pub fn torch_tied_embeddings(&self) -> bool {
        self.torch_tied.unwrap_or(self.tied_embeddings)
    }

    #[must_use]
    pub fn head_dim(&self) -> usize {
        self.head_dim_override.unwrap_or(self.hidden / self.heads)
    }

    /// The tensors candle's model for this family loads, in candle's names.
    #[must_use]
    pub fn tensors(&self, family: Family) -> Vec<TensorShape> {
        family.0.tensors(self)
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
        let pooler = if family.0.has_pooler() {
            (self.hidden * self.hidden + self.hidden) as u64
        } else {
            0
        };
        self.candle_parameters(family) + pooler
    }
}

/// A collector for [`Room::tensors`]: `t(name, shape)` pushes one.
fn tensor_list(fill: impl FnOnce(&mut dyn FnMut(String, &[usize]))) -> Vec<TensorShape> {
    let mut out = Vec::new();
    fill(&mut |name, shape| {
        out.push(TensorShape {
            name,
            shape: shape.to_vec(),
        });
    });
    out
}

/// A room's PyTorch methods (`Room::torch_weights`, `torch_forward`, `torch_train_forward`)
/// delegated to the forward module it shares (`torch_llama`, `torch_gemma`): `$of` maps the dims
/// to that module's per-family argument (Llama's `Shape`, which `Gemma`). With
/// `parameter_order`, the module's `parameter_order` is the room's too.
macro_rules! torch_room {
    ($module:ident, $of:expr) => {
        fn torch_weights(
            &self,
            d: &$crate::families::Dims,
            head: $crate::families::torch_sim::Head,
            dt: $crate::families::torch_sim::TDt,
        ) -> Option<$crate::families::torch_sim::Weights> {
            $crate::families::$module::weights(d, head, dt, $of(d))
        }
        fn torch_forward(
            &self,
            r: &$crate::families::torch_sim::TorchRun<'_>,
            ids: &$crate::families::torch_sim::Pt,
        ) -> std::result::Result<Vec<$crate::families::torch_sim::Pt>, &'static str> {
            $crate::families::$module::forward(r, ids, $of(r.d))
        }
        fn torch_train_forward<'a>(
            &self,
            r: &'a $crate::families::torch_sim::TorchRun<'a>,
            ids: &$crate::families::torch_sim::Pt,
            labels: &$crate::families::torch_sim::Pt,
            tape: &$crate::families::torch_tape::Tape<'a>,
        ) -> std::result::Result<$crate::families::torch_sim::Pt, &'static str> {
            $crate::families::$module::train_forward(r, ids, labels, tape, $of(r.d))
        }
    };
    ($module:ident, $of:expr, parameter_order) => {
        $crate::families::torch_room!($module, $of);
        fn torch_parameter_order(
            &self,
            d: &$crate::families::Dims,
            _head: $crate::families::torch_sim::Head,
            grads: &mut [$crate::families::torch_sim::Pt],
        ) {
            $crate::families::$module::parameter_order(d, grads, $of(d));
        }
    };
}
pub(crate) use torch_room;

#[cfg(test)]
mod tests {
    use super::{Family, ROOMS};
    use serde_json::json;

    /// Each room answers to its own name, its aliases and its architectures, and a family
    /// travels through a journal by name.
    #[test]
    fn every_room_is_found_by_name_alias_and_architecture_and_round_trips() {
        let mut names: Vec<&str> = ROOMS.iter().map(|r| r.name()).collect();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), ROOMS.len(), "room names are unique");
        for f in Family::all() {
            let v = json!({ "model_type": f.name() });
            assert_eq!(Family::detect(v.as_object().unwrap()), Ok(f));
            for a in f.room().aliases() {
                let by_type = json!({ "model_type": a });
                let by_arch =
                    json!({ "architectures": [format!("{}ForCausalLM", a.replace('-', ""))] });
                assert_eq!(Family::detect(by_type.as_object().unwrap()), Ok(f), "{a}");
                assert_eq!(Family::detect(by_arch.as_object().unwrap()), Ok(f), "{a}");
            }
            let text = serde_json::to_string(&f).unwrap();
            assert_eq!(text, format!("\"{}\"", f.name()));
            assert_eq!(serde_json::from_str::<Family>(&text).unwrap(), f);
        }
        let e = serde_json::from_str::<Family>("\"gpt2\"")
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("unknown family 'gpt2'") && e.contains("bert"),
            "{e}"
        );
    }
}
