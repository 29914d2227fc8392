//! The plan's small value types: strategies, confirmations, batch ranges, devices.

use super::{Curve, MAX_BATCH};
use crate::runtime::UnknownName;
use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Strategy {
    /// Start at the estimator's b*, measure b* and b*+1; follow the measured line, then bisect, on a miss.
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
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        Self::ALL
            .into_iter()
            .find(|x| x.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| UnknownName {
                what: "strategy",
                given: s.to_string(),
                choices: "auto, grid or binsearch".into(),
            })
    }
}

/// Which recommendations a sweep confirms with a trial. Each curve's recommendation is computed
/// from its measured line; confirming one costs a forward at that batch.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub enum Confirm {
    /// Only the overall pick (the default: the configuration that is handed over is measured).
    #[default]
    Pick,
    /// Every curve's recommendation.
    All,
    /// None: every recommendation stays computed (marked so).
    None,
    /// These curves' recommendations (the window's Confirm button).
    Curves(Vec<Curve>),
}

impl FromStr for Confirm {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pick" => Ok(Self::Pick),
            "all" => Ok(Self::All),
            "none" => Ok(Self::None),
            _ => Err(UnknownName {
                what: "confirm",
                given: s.to_string(),
                choices: "pick, all or none".into(),
            }),
        }
    }
}

/// An inclusive batch range: `1..256` includes both ends.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchRange {
    pub min: usize,
    pub max: usize,
}

/// A batch range that does not read or cannot be, in words that say what to write.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct BatchRangeError(String);

impl BatchRange {
    pub fn new(min: usize, max: usize) -> Result<Self, BatchRangeError> {
        if min == 0 {
            return Err(BatchRangeError(
                "batch sizes start at 1; use a range such as 1..256".into(),
            ));
        }
        if min > max {
            return Err(BatchRangeError(format!(
                "the batch range {min}..{max} is reversed; write the smaller size first, e.g. {max}..{min}"
            )));
        }
        if max > MAX_BATCH {
            return Err(BatchRangeError(format!(
                "batch {max} is beyond oomlab's limit of {MAX_BATCH}; choose a smaller maximum"
            )));
        }
        Ok(Self { min, max })
    }
}

impl FromStr for BatchRange {
    type Err = BatchRangeError;
    fn from_str(s: &str) -> Result<Self, BatchRangeError> {
        let s = s.trim();
        if s.starts_with('-') {
            return Err(BatchRangeError(format!(
                "a batch size cannot be negative ('{s}'); batches start at 1, e.g. 1..256"
            )));
        }
        let num = |t: &str| {
            t.trim().parse::<usize>().map_err(|_| {
                BatchRangeError(format!(
                    "'{t}' is not a batch size; write a range such as 1..256"
                ))
            })
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

/// Where trials run. Travels in the plan, the journal header, the worker's load request and
/// the results.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Device {
    /// Forward passes on the CPU, against a simulated capacity.
    Cpu {
        /// Threads the worker uses (the bytes held before a forward, and so b*, depend on it).
        threads: usize,
    },
    /// An NVIDIA GPU through CUDA (needs a build with the `cuda` feature).
    Cuda { index: usize },
}

impl Device {
    /// Threads the worker runs with (CUDA trials are driven by one host thread).
    #[must_use]
    pub fn threads(self) -> usize {
        match self {
            Self::Cpu { threads } => threads,
            Self::Cuda { .. } => 1,
        }
    }

    /// `cpu` or `cuda:N`, as `--device` takes it.
    #[must_use]
    pub fn name(self) -> String {
        self.kind().to_string()
    }

    /// The kind of device, without the CPU's thread count.
    #[must_use]
    pub fn kind(self) -> DeviceKind {
        match self {
            Self::Cpu { .. } => DeviceKind::Cpu,
            Self::Cuda { index } => DeviceKind::Cuda { index },
        }
    }

    /// Whether this build can run trials on the device.
    #[must_use]
    pub fn available_in_this_build(self) -> bool {
        match self {
            Self::Cpu { .. } => true,
            Self::Cuda { .. } => cfg!(feature = "cuda"),
        }
    }
}

impl fmt::Display for Device {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu { threads } => write!(
                f,
                "cpu ({threads} thread{})",
                if *threads == 1 { "" } else { "s" }
            ),
            Self::Cuda { index } => write!(f, "cuda:{index}"),
        }
    }
}

/// What `--device` names: the kind of device, without the CPU's thread count. Stored as its
/// name (`cpu`, `cuda:N`), as the window's settings always were.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(into = "String", try_from = "String")]
pub enum DeviceKind {
    #[default]
    Cpu,
    Cuda {
        index: usize,
    },
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Cpu => f.write_str("cpu"),
            Self::Cuda { index } => write!(f, "cuda:{index}"),
        }
    }
}

impl From<DeviceKind> for String {
    fn from(d: DeviceKind) -> Self {
        d.to_string()
    }
}

impl TryFrom<String> for DeviceKind {
    type Error = UnknownName;
    fn try_from(s: String) -> Result<Self, UnknownName> {
        s.parse()
    }
}

impl DeviceKind {
    /// The device, with `threads` for the CPU.
    #[must_use]
    pub fn with_threads(self, threads: usize) -> Device {
        match self {
            Self::Cpu => Device::Cpu { threads },
            Self::Cuda { index } => Device::Cuda { index },
        }
    }
}

impl FromStr for DeviceKind {
    type Err = UnknownName;
    fn from_str(s: &str) -> Result<Self, UnknownName> {
        let t = s.trim().to_ascii_lowercase();
        if t == "cpu" {
            return Ok(Self::Cpu);
        }
        let index = match t.as_str() {
            "cuda" | "gpu" => Some(0),
            _ => t
                .strip_prefix("cuda:")
                .or_else(|| t.strip_prefix("gpu:"))
                .and_then(|n| n.parse().ok()),
        };
        index
            .map(|index| Self::Cuda { index })
            .ok_or_else(|| UnknownName {
                what: "device",
                given: s.to_string(),
                choices: "cpu or cuda:N (e.g. cuda:0)".into(),
            })
    }
}
