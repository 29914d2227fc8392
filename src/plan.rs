//! The sweep plan and its small value types: precisions, strategies, ranges.
//! Pure data shared by the engine, the journal and both faces.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::catalog::ModelRef;

/// Largest batch a plan may name: far beyond any device, small enough for shape arithmetic.
pub const MAX_BATCH: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Precision {
    F32,
    F16,
    Bf16,
}

impl Precision {
    pub const ALL: [Self; 3] = [Self::F32, Self::F16, Self::Bf16];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::F32 => "f32",
            Self::F16 => "f16",
            Self::Bf16 => "bf16",
        }
    }

    #[must_use]
    pub fn bytes(self) -> u64 {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }

    /// The name `PyTorch` / transformers use (`torch_dtype`).
    #[must_use]
    pub fn torch_name(self) -> &'static str {
        match self {
            Self::F32 => "float32",
            Self::F16 => "float16",
            Self::Bf16 => "bfloat16",
        }
    }

    /// Tie-break order for the overall pick: wider first (f32, then bf16's wider range, then f16).
    #[must_use]
    pub fn width_rank(self) -> u8 {
        match self {
            Self::F32 => 3,
            Self::Bf16 => 2,
            Self::F16 => 1,
        }
    }

    #[must_use]
    pub fn candle(self) -> candle_core::DType {
        match self {
            Self::F32 => candle_core::DType::F32,
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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "f32" | "float32" | "fp32" => Ok(Self::F32),
            "f16" | "float16" | "fp16" | "half" => Ok(Self::F16),
            "bf16" | "bfloat16" => Ok(Self::Bf16),
            other => Err(format!("unknown precision '{other}'; use f32, f16 or bf16")),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Probe, predict from the affine memory model, confirm b* and b*+1; bisect on a miss.
    #[default]
    Auto,
    /// Every batch from the minimum up to the first OOM (for teaching plots).
    Grid,
    /// Lightning's power-then-bisect, the baseline auto is compared against.
    Binsearch,
}

impl Strategy {
    pub const ALL: [Self; 3] = [Self::Auto, Self::Grid, Self::Binsearch];

    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Auto => "auto",
            Self::Grid => "grid",
            Self::Binsearch => "binsearch",
        }
    }
}

impl fmt::Display for Strategy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl FromStr for Strategy {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|x| x.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| format!("unknown strategy '{s}'; use auto, grid or binsearch"))
    }
}

/// An inclusive batch range: `1..256` includes both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRange {
    pub min: usize,
    pub max: usize,
}

impl BatchRange {
    pub fn new(min: usize, max: usize) -> Result<Self, String> {
        if min == 0 {
            return Err("batch sizes start at 1; use a range such as 1..256".into());
        }
        if min > max {
            return Err(format!(
                "the batch range {min}..{max} is reversed; write the smaller size first, e.g. {max}..{min}"
            ));
        }
        if max > MAX_BATCH {
            return Err(format!(
                "batch {max} is beyond oomlab's limit of {MAX_BATCH}; choose a smaller maximum"
            ));
        }
        Ok(Self { min, max })
    }
}

impl FromStr for BatchRange {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let num = |t: &str| {
            t.trim()
                .parse::<usize>()
                .map_err(|_| format!("'{t}' is not a batch size; write a range such as 1..256"))
        };
        if let Some((a, b)) = s.split_once("..") {
            let b = b.strip_prefix('=').unwrap_or(b);
            Self::new(num(a)?, num(b)?)
        } else {
            let n = num(s)?;
            Self::new(n, n)
        }
    }
}

impl fmt::Display for BatchRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}..{}", self.min, self.max)
    }
}

/// Everything that defines a sweep. Recorded as the journal's first line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct SweepPlan {
    pub model: ModelRef,
    pub seqs: Vec<usize>,
    pub dtypes: Vec<Precision>,
    pub batch: BatchRange,
    pub capacity_bytes: u64,
    /// Fraction of the capacity kept free by the recommendation (0.1 = 10 %).
    pub headroom: f64,
    pub strategy: Strategy,
    pub device: String,
    /// Threads the worker uses (the baseline, and so b*, depends on it).
    pub threads: usize,
}

impl SweepPlan {
    /// Curves in the order they are run: grouped by precision so one worker build serves each group.
    #[must_use]
    pub fn curves(&self) -> Vec<Curve> {
        let mut out = Vec::new();
        for &dtype in &self.dtypes {
            for &seq in &self.seqs {
                out.push(Curve { seq, dtype });
            }
        }
        out
    }

    /// The byte limit the recommendation keeps under.
    #[must_use]
    pub fn headroom_limit_bytes(&self) -> u64 {
        (self.capacity_bytes as f64 * (1.0 - self.headroom)).floor() as u64
    }
}

/// One curve of the plot: a (sequence length, precision) pair.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Curve {
    pub seq: usize,
    pub dtype: Precision,
}

impl fmt::Display for Curve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "seq {} {}", self.seq, self.dtype)
    }
}

/// Parses sizes such as `600MiB`, `1GiB`, `1.5 GB` or a plain byte count.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if let Ok(n) = t.parse::<u64>() {
        return Ok(n);
    }
    t.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("'{s}' is not a size; write e.g. 600MiB, 1GiB or 8GB"))
}

/// Parses a headroom such as `10%` or `0.1` into a fraction in [0, 0.9].
pub fn parse_headroom(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let v = if let Some(p) = t.strip_suffix('%') {
        p.trim().parse::<f64>().map(|x| x / 100.0)
    } else {
        t.parse::<f64>()
    }
    .map_err(|_| format!("'{s}' is not a headroom; write e.g. 10% or 0.1"))?;
    if !(0.0..=0.9).contains(&v) {
        return Err(format!(
            "headroom {s} is outside 0%..90%; 10% is a common choice"
        ));
    }
    Ok(v)
}

/// Formats bytes as binary units (`598.2 MiB`).
#[must_use]
pub fn human_bytes(b: u64) -> String {
    bytesize::ByteSize::b(b).display().iec().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_include_both_ends_and_reject_nonsense() {
        assert_eq!(
            "1..256".parse::<BatchRange>().unwrap(),
            BatchRange { min: 1, max: 256 }
        );
        assert_eq!(
            "8".parse::<BatchRange>().unwrap(),
            BatchRange { min: 8, max: 8 }
        );
        assert!(
            "0..4"
                .parse::<BatchRange>()
                .unwrap_err()
                .contains("start at 1")
        );
        assert!(
            "9..3"
                .parse::<BatchRange>()
                .unwrap_err()
                .contains("reversed")
        );
        assert!(
            "1..x"
                .parse::<BatchRange>()
                .unwrap_err()
                .contains("not a batch size")
        );
        assert!(
            "1..1000000"
                .parse::<BatchRange>()
                .unwrap_err()
                .contains("limit")
        );
    }

    #[test]
    fn sizes_and_headroom_parse() {
        assert_eq!(parse_bytes("600MiB").unwrap(), 600 * 1024 * 1024);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1234").unwrap(), 1234);
        assert!(parse_bytes("lots").is_err());
        assert!((parse_headroom("10%").unwrap() - 0.1).abs() < 1e-12);
        assert!((parse_headroom("0.25").unwrap() - 0.25).abs() < 1e-12);
        assert!(parse_headroom("95%").is_err());
        assert!("f64".parse::<Precision>().is_err());
        assert_eq!("bfloat16".parse::<Precision>().unwrap(), Precision::Bf16);
    }
}
