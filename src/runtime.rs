//! Which program runs the trials: candle (built in) or PyTorch (the user's Python), and what a
//! PyTorch trial runs: the workload, the model's head, the attention kernel, the optimizer.
//! Pure data shared by the plan, the journal, the worker protocol and both faces.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// A name that is none of a small set: what was being named, what was given, and the names
/// there are.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown {what} '{given}'; use {choices}")]
pub struct UnknownName {
    pub what: &'static str,
    pub given: String,
    pub choices: String,
}

/// Parses one of a small set of names, or says which ones there are.
fn named<T: Copy>(
    all: &[T],
    name: fn(T) -> &'static str,
    what: &'static str,
    s: &str,
) -> Result<T, UnknownName> {
    let t = s.trim().to_ascii_lowercase();
    all.iter().copied().find(|x| name(*x) == t).ok_or_else(|| {
        let names: Vec<&str> = all.iter().map(|x| name(*x)).collect();
        UnknownName {
            what,
            given: s.trim().to_string(),
            choices: names.join(", "),
        }
    })
}

macro_rules! words {
    ($ty:ident, $what:literal, { $($variant:ident => $word:literal),+ $(,)? }) => {
        impl $ty {
            pub const ALL: &'static [Self] = &[$(Self::$variant),+];

            #[must_use]
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$variant => $word),+
                }
            }
        }

        impl fmt::Display for $ty {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }

        impl FromStr for $ty {
            type Err = UnknownName;
            fn from_str(s: &str) -> Result<Self, UnknownName> {
                named(Self::ALL, Self::name, $what, s)
            }
        }
    };
}

/// The program that runs a curve's trials.
#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Runtime {
    /// candle-transformers 0.11, inside oomlab's own worker (one binary, no Python).
    #[default]
    Candle,
    /// PyTorch + transformers in the user's Python, driven over the same protocol.
    Torch,
}

words!(Runtime, "runtime", { Candle => "candle", Torch => "torch" });

impl Runtime {
    /// The name people know it by, for tables and legends.
    #[must_use]
    pub fn label(self) -> &'static str {
        match self {
            Self::Candle => "candle",
            Self::Torch => "PyTorch",
        }
    }
}

/// What one trial runs.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Workload {
    /// A forward under `torch.no_grad()` (candle: its forward, which keeps no graph).
    #[default]
    Infer,
    /// A forward with autograd on, its output kept until it returns: a script that forgot
    /// `no_grad`.
    Grad,
    /// A full training step: forward with labels, loss, backward, optimizer step, `zero_grad`.
    Train,
}

words!(Workload, "workload", { Infer => "infer", Grad => "grad", Train => "train" });

impl Workload {
    /// What one trial of this workload is, in words.
    #[must_use]
    pub fn describe(self) -> &'static str {
        match self {
            Self::Infer => "one inference forward (no_grad)",
            Self::Grad => "one forward keeping the autograd graph (no no_grad)",
            Self::Train => "one training step (forward, backward, optimizer step)",
        }
    }
}

/// The model's head, as transformers' Auto classes build it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Task {
    /// `AutoModel`: hidden states, no head.
    Base,
    /// `AutoModelForSequenceClassification` (two labels).
    SequenceClassification,
    /// `AutoModelForCausalLM`: logits for every position.
    CausalLm,
    /// `AutoModelForMaskedLM`: logits for every position.
    MaskedLm,
}

words!(Task, "task", {
    Base => "base",
    SequenceClassification => "sequence-classification",
    CausalLm => "causal-lm",
    MaskedLm => "masked-lm",
});

impl Task {
    /// The head a workload gets when none is chosen: inference measures what oomlab always
    /// measured (encoders without a head; decoders with logits for every position, as
    /// `model(**inputs)` computes them); training needs a loss (encoders: sequence
    /// classification; decoders: causal LM).
    #[must_use]
    pub fn default_for(workload: Workload, decoder: bool) -> Self {
        match (workload, decoder) {
            (_, true) => Self::CausalLm,
            (Workload::Train, false) => Self::SequenceClassification,
            (_, false) => Self::Base,
        }
    }

    /// Whether the head computes a loss from labels (training needs one).
    #[must_use]
    pub fn has_loss(self) -> bool {
        self != Self::Base
    }
}

/// transformers' attention implementation.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Attn {
    /// `torch.nn.functional.scaled_dot_product_attention` (transformers' default).
    #[default]
    Sdpa,
    /// The Python matmul-softmax-matmul, with the full score matrix.
    Eager,
}

words!(Attn, "attention", { Sdpa => "sdpa", Eager => "eager" });

impl Attn {
    /// transformers' default: sdpa where the model supports it, else eager.
    #[must_use]
    pub fn default_for(sdpa: bool) -> Self {
        if sdpa { Self::Sdpa } else { Self::Eager }
    }
}

/// The optimizer of a training step.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Optimizer {
    /// `torch.optim.AdamW`, PyTorch's default implementation (two state tensors per parameter).
    #[default]
    Adamw,
    /// `torch.optim.SGD` with momentum 0.9 (one state tensor per parameter).
    Sgd,
}

words!(Optimizer, "optimizer", { Adamw => "adamw", Sgd => "sgd" });

impl Optimizer {
    /// The Hugging Face `TrainingArguments.optim` value.
    #[must_use]
    pub fn hf_optim(self) -> &'static str {
        match self {
            Self::Adamw => "adamw_torch",
            Self::Sgd => "sgd",
        }
    }
}

/// A word that is neither on nor off.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("'{0}' is not on or off; write e.g. off,on")]
pub struct NotOnOff(String);

/// Parses `off`/`on` (and the usual spellings) for `--gradient-checkpointing`.
pub fn parse_on_off(s: &str) -> Result<bool, NotOnOff> {
    match s.trim().to_ascii_lowercase().as_str() {
        "on" | "true" | "yes" | "1" => Ok(true),
        "off" | "false" | "no" | "0" => Ok(false),
        other => Err(NotOnOff(other.to_string())),
    }
}

/// `on` or `off`.
#[must_use]
pub fn on_off(b: bool) -> &'static str {
    if b { "on" } else { "off" }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_round_trip_and_unknown_names_list_the_choices() {
        for &r in Runtime::ALL {
            assert_eq!(r.name().parse::<Runtime>().unwrap(), r);
        }
        for &t in Task::ALL {
            assert_eq!(t.name().parse::<Task>().unwrap(), t);
            assert_eq!(
                serde_json::to_string(&t).unwrap(),
                format!("\"{}\"", t.name())
            );
        }
        let e = "tensorflow".parse::<Runtime>().unwrap_err();
        assert_eq!(
            e.to_string(),
            "unknown runtime 'tensorflow'; use candle, torch"
        );
        assert!(
            "adam"
                .parse::<Optimizer>()
                .unwrap_err()
                .to_string()
                .contains("adamw, sgd")
        );
        assert!(parse_on_off(" On ").unwrap());
        assert!(parse_on_off("maybe").is_err());
    }

    #[test]
    fn training_defaults_to_a_head_with_a_loss() {
        assert_eq!(Task::default_for(Workload::Infer, false), Task::Base);
        assert_eq!(
            Task::default_for(Workload::Train, false),
            Task::SequenceClassification
        );
        assert_eq!(Task::default_for(Workload::Grad, true), Task::CausalLm);
        assert!(Task::default_for(Workload::Train, false).has_loss());
        assert!(!Task::Base.has_loss());
    }
}
