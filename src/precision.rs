//! Precisions (f32, f16, bf16, and PyTorch's mixed precisions amp-bf16/amp-f16): the one value
//! type the catalog, the plan and the models share.
//! It lives on its own so that neither `plan` nor `catalog` has to import the other back.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(
    Debug, Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    #[default]
    F32,
    F16,
    Bf16,
    /// PyTorch's automatic mixed precision: f32 weights, the forward under
    /// `torch.autocast(dtype=bfloat16)` (low-precision copies of the weights it multiplies).
    #[serde(rename = "amp-bf16")]
    AmpBf16,
    /// As `AmpBf16` with float16, and a `GradScaler` in training.
    #[serde(rename = "amp-f16")]
    AmpF16,
}

impl Precision {
    /// The precisions candle runs (the weights and the forward in one dtype).
    pub const ALL: [Self; 3] = [Self::F32, Self::F16, Self::Bf16];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
            Self::AmpBf16 => "amp-bf16",
            Self::AmpF16 => "amp-f16",
        }
    }

    /// Whether this is automatic mixed precision (f32 weights, low-precision compute).
    #[must_use]
    pub fn is_amp(self) -> bool {
        matches!(self, Self::AmpBf16 | Self::AmpF16)
    }

    /// Bytes per stored weight element (mixed precision keeps f32 weights).
    #[must_use]
    pub fn bytes(self) -> u64 {
        match self {
            Self::F32 | Self::AmpBf16 | Self::AmpF16 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }

    /// The name `PyTorch` / transformers use (`torch_dtype`) for the weights.
    #[must_use]
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 | Self::AmpBf16 | Self::AmpF16 => "float32",
            Self::F16 => "float16",
            Self::Bf16 => "bfloat16",
        }
    }

    /// Tie-break order for the overall pick: wider first (f32, then bf16's wider range, then
    /// f16; mixed precision between f32 and its low precision).
    #[must_use]
    pub fn width_rank(self) -> u8 {
        match self {
            Self::F32 => 5,
            Self::AmpBf16 => 4,
            Self::Bf16 => 3,
            Self::AmpF16 => 2,
            Self::F16 => 1,
        }
    }

    /// The dtype candle stores the weights in (mixed precision: f32; candle itself refuses
    /// mixed precision at plan time).
    #[must_use]
    pub fn candle(self) -> candle_core::DType {
        match self {
            Self::F32 | Self::AmpBf16 | Self::AmpF16 => candle_core::DType::F32,
            Self::F16 => candle_core::DType::F16,
            Self::Bf16 => candle_core::DType::BF16,
        }
    }
}

impl fmt::Display for Precision {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Precision {
    type Err = crate::runtime::UnknownName;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(Self::F32),
            "f16" | "float16" | "fp16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            "amp-bf16" | "amp_bf16" => Ok(Self::AmpBf16),
            "amp-f16" | "amp_f16" | "amp-fp16" => Ok(Self::AmpF16),
            other => Err(crate::runtime::UnknownName {
                what: "precision",
                given: other.to_string(),
                choices: "f32, f16, bf16, amp-bf16 or amp-f16".into(),
            }),
        }
    }
}
