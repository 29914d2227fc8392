//! The sweep plan and its small value types (precisions, strategies, ranges), the overrides a
//! face lays over the defaults, the checks before any trial, and their words.
//! Pure data shared by the engine, the journal and both faces.

pub use crate::units::{UnitError, human_bytes, parse_bytes, parse_headroom};
use serde::{Deserialize, Serialize};
use std::fmt;

use crate::catalog::ModelRef;
pub use crate::precision::Precision;
use crate::presets::GpuPreset;
pub use crate::runtime::{Attn, Optimizer, Runtime, Task, Workload};
use std::path::PathBuf;

mod checks;
mod overrides;
mod types;
mod words;
pub use checks::{
    PlanError, check, check_dtype, check_host, check_seq, check_weights_host, plan_for, plan_from,
    validate, weights_per_dtype,
};
pub use overrides::{FieldDifference, PlanField, PlanOverrides, dedup};
pub use types::{BatchRange, Confirm, Device, DeviceKind, Strategy};
pub use words::{CandleLacks, Face, Flags, PlainWords, PlanProblem};

/// Largest batch a plan may name: far beyond any device, small enough for shape arithmetic.
pub const MAX_BATCH: usize = 65_536;

/// Everything that defines a sweep. Recorded as the journal's first line.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(try_from = "legacy::PlanRepr")]
pub struct SweepPlan {
    pub model: ModelRef,
    pub seqs: Vec<usize>,
    pub dtypes: Vec<Precision>,
    pub batch: BatchRange,
    pub capacity_bytes: u64,
    /// Fraction of the capacity kept free by the recommendation (0.1 = 10 %).
    pub headroom: f64,
    pub strategy: Strategy,
    pub device: Device,
    /// The programs that run the trials; one curve per (runtime, seq, precision). Journals
    /// written before the PyTorch runtime read as candle's.
    pub runtimes: Vec<Runtime>,
    /// What each trial runs (candle: inference only).
    pub workload: Workload,
    /// The PyTorch runtime's settings (ignored by candle).
    pub torch: TorchPlan,
    /// The GPU whose memory `capacity_bytes` is (`--gpu`, the window's GPU preset); null when
    /// the capacity was given as a size or is a real device's.
    pub gpu: Option<&'static GpuPreset>,
}

/// What the PyTorch runtime runs, beside the fields every runtime shares.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct TorchPlan {
    /// The interpreter the sweep found (`--python`, a `python` beside oomlab, the active
    /// virtualenv or conda env, `python3` on PATH).
    pub python: Option<PathBuf>,
    /// The model's head; `None` takes the workload's default ([`Task::default_for`]).
    pub task: Option<Task>,
    /// transformers' attention; `None` takes the model's default ([`SweepPlan::torch_attn`]).
    /// Journals written before it was optional read `"sdpa"` as `Some(Sdpa)`.
    pub attn: Option<Attn>,
    pub optimizer: Optimizer,
    /// Gradient checkpointing, off and/or on: one curve each (training only).
    pub checkpointing: Vec<bool>,
}

impl TorchPlan {
    /// The checkpointing settings curves are run with (off when none was given).
    #[must_use]
    pub fn checkpointing_list(&self) -> Vec<bool> {
        if self.checkpointing.is_empty() {
            vec![false]
        } else {
            dedup(&self.checkpointing)
        }
    }
}

/// The defaults both faces start from (one place). The command line asks for the model
/// explicitly (a script should say what it measures); the window starts on bert-base-uncased.
pub mod defaults {
    use super::{BatchRange, Precision, Strategy};

    pub const SEQ: usize = 128;
    pub const DTYPES: [Precision; 1] = [Precision::F32];
    pub const BATCH: BatchRange = BatchRange { min: 1, max: 256 };
    /// 1 GiB: bert-base-uncased's boundary at seq 128 in f32 is then about 90, a sweep of a few
    /// minutes on a laptop CPU. Size for a real GPU with `--capacity 11GiB` and the like.
    pub const CAPACITY_BYTES: u64 = 1 << 30;
    pub const HEADROOM: f64 = 0.1;
    pub const STRATEGY: Strategy = Strategy::Auto;
    /// candle: the built-in runtime, one binary and no Python.
    pub const RUNTIMES: [super::Runtime; 1] = [super::Runtime::Candle];
    /// The model the window starts with.
    pub const WINDOW_MODEL: &str = "bert-base-uncased";

    /// Every core (the worker runs niced, so the UI stays responsive).
    #[must_use]
    pub fn threads() -> usize {
        std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
    }
}

impl SweepPlan {
    /// The default plan for `model`, whose longest sequence is `max_positions` (the default
    /// sequence length is shortened to it).
    #[must_use]
    pub fn defaults(model: ModelRef, max_positions: usize) -> Self {
        Self {
            model,
            seqs: vec![defaults::SEQ.min(max_positions.max(1))],
            dtypes: defaults::DTYPES.to_vec(),
            batch: defaults::BATCH,
            capacity_bytes: defaults::CAPACITY_BYTES,
            headroom: defaults::HEADROOM,
            strategy: defaults::STRATEGY,
            device: Device::Cpu {
                threads: defaults::threads(),
            },
            runtimes: defaults::RUNTIMES.to_vec(),
            workload: Workload::default(),
            torch: TorchPlan::default(),
            gpu: None,
        }
    }

    /// Curves in the order they are run: grouped by runtime, checkpointing and precision so one
    /// worker build serves each group.
    #[must_use]
    pub fn curves(&self) -> Vec<Curve> {
        let mut out = Vec::new();
        for &runtime in &self.runtimes {
            let checkpointing = match runtime {
                Runtime::Candle => vec![false],
                Runtime::Torch => self.torch.checkpointing_list(),
            };
            for &checkpointing in &checkpointing {
                for &dtype in &self.dtypes {
                    for &seq in &self.seqs {
                        out.push(Curve {
                            runtime,
                            seq,
                            dtype,
                            checkpointing,
                        });
                    }
                }
            }
        }
        out
    }

    /// Whether any curve runs on the PyTorch runtime.
    #[must_use]
    pub fn uses_torch(&self) -> bool {
        self.runtimes.contains(&Runtime::Torch)
    }

    /// The PyTorch head this plan's model gets (`decoder`: whether the model is a decoder).
    #[must_use]
    pub fn torch_task(&self, decoder: bool) -> Task {
        self.torch
            .task
            .unwrap_or_else(|| Task::default_for(self.workload, decoder))
    }

    /// The attention the PyTorch runtime runs `family` with: the one asked for, else
    /// transformers' default for it (sdpa, eager for Gemma 2).
    #[must_use]
    pub fn torch_attn(&self, family: crate::families::Family) -> Attn {
        self.torch.attn.unwrap_or_else(|| family.torch_attn())
    }

    /// The byte limit the recommendation keeps under.
    #[must_use]
    pub fn headroom_limit_bytes(&self) -> u64 {
        (self.capacity_bytes as f64 * (1.0 - self.headroom)).floor() as u64
    }

    /// The fields in which `other` differs from this plan, each with both values in words.
    #[must_use]
    pub fn differences(&self, other: &Self) -> Vec<FieldDifference> {
        let list = |v: &[usize]| {
            v.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(",")
        };
        let dtypes = |v: &[Precision]| v.iter().map(|d| d.name()).collect::<Vec<_>>().join(",");
        let pct = |h: f64| format!("{}%", (h * 1e5).round() / 1e3);
        let mut out = Vec::new();
        let mut diff = |field, ours: String, theirs: String| {
            if ours != theirs {
                out.push(FieldDifference {
                    field,
                    ours,
                    theirs,
                });
            }
        };
        diff(
            PlanField::Model,
            self.model.to_string(),
            other.model.to_string(),
        );
        diff(PlanField::Seq, list(&self.seqs), list(&other.seqs));
        diff(
            PlanField::Dtype,
            dtypes(&self.dtypes),
            dtypes(&other.dtypes),
        );
        diff(
            PlanField::Batch,
            self.batch.to_string(),
            other.batch.to_string(),
        );
        diff(
            PlanField::Capacity,
            format!("{} B", self.capacity_bytes),
            format!("{} B", other.capacity_bytes),
        );
        diff(PlanField::Headroom, pct(self.headroom), pct(other.headroom));
        diff(
            PlanField::Strategy,
            self.strategy.to_string(),
            other.strategy.to_string(),
        );
        diff(PlanField::Device, self.device.name(), other.device.name());
        // Threads belong to the CPU; a different device is already named above.
        if let (Device::Cpu { threads: a }, Device::Cpu { threads: b }) =
            (self.device, other.device)
        {
            diff(PlanField::Threads, a.to_string(), b.to_string());
        }
        let names = |v: &[Runtime]| v.iter().map(|r| r.name()).collect::<Vec<_>>().join(",");
        diff(
            PlanField::Runtime,
            names(&self.runtimes),
            names(&other.runtimes),
        );
        diff(
            PlanField::Workload,
            self.workload.to_string(),
            other.workload.to_string(),
        );
        // PyTorch's settings matter only where PyTorch runs.
        if self.uses_torch() || other.uses_torch() {
            let (a, b) = (&self.torch, &other.torch);
            // The interpreter is not compared: a resume may name another one (a moved venv);
            // each worker records the versions it ran with.
            let task = |t: Option<Task>| t.map_or_else(|| "default".into(), |t| t.to_string());
            diff(PlanField::Task, task(a.task), task(b.task));
            let attn = |t: Option<Attn>| t.map_or_else(|| "default".into(), |t| t.to_string());
            diff(PlanField::Attn, attn(a.attn), attn(b.attn));
            diff(
                PlanField::Optimizer,
                a.optimizer.to_string(),
                b.optimizer.to_string(),
            );
            let ck = |v: Vec<bool>| {
                v.into_iter()
                    .map(crate::runtime::on_off)
                    .collect::<Vec<_>>()
                    .join(",")
            };
            diff(
                PlanField::Checkpointing,
                ck(a.checkpointing_list()),
                ck(b.checkpointing_list()),
            );
        }
        out
    }
}

mod legacy {
    //! Journals written before the device was typed said `"device": "cpu", "threads": N`.
    use super::{
        BatchRange, Device, ModelRef, Precision, Runtime, Strategy, SweepPlan, TorchPlan, Workload,
    };
    use serde::{Deserialize, Deserializer};

    #[derive(Deserialize)]
    #[serde(untagged)]
    enum DeviceRepr {
        Typed(Device),
        Name(String),
    }

    #[derive(Deserialize)]
    pub struct PlanRepr {
        model: ModelRef,
        seqs: Vec<usize>,
        dtypes: Vec<Precision>,
        batch: BatchRange,
        capacity_bytes: u64,
        headroom: f64,
        strategy: Strategy,
        device: DeviceRepr,
        threads: Option<usize>,
        #[serde(default = "candle_only")]
        runtimes: Vec<Runtime>,
        #[serde(default)]
        workload: Workload,
        #[serde(default)]
        torch: TorchPlan,
        /// Absent before plans named their preset (then the capacity's bytes name it, as
        /// `--gpu` wrote them); present and null when there is none.
        #[serde(default)]
        gpu: GpuField,
    }

    fn candle_only() -> Vec<Runtime> {
        vec![Runtime::Candle]
    }

    /// A plan's `gpu` as written: absent, or given (a preset's id, or null).
    #[derive(Default)]
    enum GpuField {
        #[default]
        Absent,
        Given(Option<String>),
    }

    impl<'de> Deserialize<'de> for GpuField {
        fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
            Option::<String>::deserialize(d).map(Self::Given)
        }
    }

    impl TryFrom<PlanRepr> for SweepPlan {
        type Error = String;
        fn try_from(p: PlanRepr) -> Result<Self, String> {
            let device = match p.device {
                DeviceRepr::Typed(d) => d,
                DeviceRepr::Name(n) if n == "cpu" => Device::Cpu {
                    threads: p.threads.unwrap_or(1),
                },
                DeviceRepr::Name(n) => return Err(format!("unknown device '{n}'")),
            };
            let gpu = match p.gpu {
                GpuField::Absent => crate::presets::matching(p.capacity_bytes),
                GpuField::Given(None) => None,
                GpuField::Given(Some(id)) => {
                    Some(crate::presets::find(&id).map_err(|e| e.to_string())?)
                }
            };
            Ok(Self {
                model: p.model,
                seqs: p.seqs,
                dtypes: p.dtypes,
                batch: p.batch,
                capacity_bytes: p.capacity_bytes,
                headroom: p.headroom,
                strategy: p.strategy,
                device,
                runtimes: p.runtimes,
                workload: p.workload,
                torch: p.torch,
                gpu,
            })
        }
    }
}

/// One curve of the plot: a (runtime, sequence length, precision) and, for PyTorch training,
/// whether gradient checkpointing is on.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Curve {
    #[serde(default)]
    pub runtime: Runtime,
    pub seq: usize,
    pub dtype: Precision,
    #[serde(default)]
    pub checkpointing: bool,
}

/// What one worker is built for: every curve with the same build shares its worker's baseline.
/// (In the journal's `load_failed` lines; those written before PyTorch read as candle's.)
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Build {
    #[serde(default)]
    pub runtime: Runtime,
    pub dtype: Precision,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checkpointing: bool,
}

impl Build {
    /// A short label: `f32` for candle (as results always said), `torch f32`, `torch f32 ckpt`.
    #[must_use]
    pub fn label(self) -> String {
        match (self.runtime, self.checkpointing) {
            (Runtime::Candle, _) => self.dtype.name().to_string(),
            (Runtime::Torch, false) => format!("torch {}", self.dtype),
            (Runtime::Torch, true) => format!("torch {} ckpt", self.dtype),
        }
    }
}

impl Curve {
    #[must_use]
    pub fn build(self) -> Build {
        Build {
            runtime: self.runtime,
            dtype: self.dtype,
            checkpointing: self.checkpointing,
        }
    }
}

impl fmt::Display for Curve {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.runtime == Runtime::Torch {
            f.write_str("torch ")?;
        }
        write!(f, "seq {} {}", self.seq, self.dtype)?;
        if self.checkpointing {
            f.write_str(" ckpt")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
