//! The sweep plan and its small value types: precisions, strategies, ranges.
//! Pure data shared by the engine, the journal and both faces.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

use crate::catalog::ModelRef;
pub use crate::precision::Precision;
pub use crate::runtime::{Attn, Optimizer, Runtime, Task, Workload};
use std::path::PathBuf;

/// Largest batch a plan may name: far beyond any device, small enough for shape arithmetic.
pub const MAX_BATCH: usize = 65_536;

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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        Self::ALL
            .into_iter()
            .find(|x| x.name() == s.trim().to_ascii_lowercase())
            .ok_or_else(|| format!("unknown strategy '{s}'; use auto, grid or binsearch"))
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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.trim().to_ascii_lowercase().as_str() {
            "pick" => Ok(Self::Pick),
            "all" => Ok(Self::All),
            "none" => Ok(Self::None),
            _ => Err(format!("unknown confirm '{s}'; use pick, all or none")),
        }
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
        if s.starts_with('-') {
            return Err(format!(
                "a batch size cannot be negative ('{s}'); batches start at 1, e.g. 1..256"
            ));
        }
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
        match self {
            Self::Cpu { .. } => "cpu".into(),
            Self::Cuda { index } => format!("cuda:{index}"),
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

/// What `--device` names: the kind of device, without the CPU's thread count.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceKind {
    Cpu,
    Cuda { index: usize },
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
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
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
            .ok_or_else(|| format!("unknown device '{s}'; use cpu or cuda:N (e.g. cuda:0)"))
    }
}

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
    pub attn: Attn,
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
            diff(PlanField::Attn, a.attn.to_string(), b.attn.to_string());
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

/// The fields of a plan, as data: errors name them, and each face words them for its own
/// controls (`--capacity` on the command line, the Capacity field in the window).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum PlanField {
    Model,
    Seq,
    Dtype,
    Batch,
    Capacity,
    Headroom,
    Strategy,
    Device,
    Threads,
    Runtime,
    Workload,
    Python,
    Task,
    Attn,
    Optimizer,
    Checkpointing,
}

/// One field in which two plans differ.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FieldDifference {
    pub field: PlanField,
    /// The value in the first plan (e.g. the journal's).
    pub ours: String,
    /// The value in the second (e.g. what was given now).
    pub theirs: String,
}

/// The one override path: the fields a face was given, laid over a base plan (the defaults for
/// a new sweep, the journal's plan for a resume).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PlanOverrides {
    pub model: Option<ModelRef>,
    pub seqs: Option<Vec<usize>>,
    pub dtypes: Option<Vec<Precision>>,
    pub batch: Option<BatchRange>,
    pub capacity_bytes: Option<u64>,
    pub headroom: Option<f64>,
    pub strategy: Option<Strategy>,
    pub device: Option<DeviceKind>,
    pub threads: Option<usize>,
    pub runtimes: Option<Vec<Runtime>>,
    pub workload: Option<Workload>,
    pub python: Option<PathBuf>,
    pub task: Option<Task>,
    pub attn: Option<Attn>,
    pub optimizer: Option<Optimizer>,
    pub checkpointing: Option<Vec<bool>>,
}

impl PlanOverrides {
    /// Whether no field was given.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        *self == Self::default()
    }

    /// `base` with every given field replaced (lists keep their first occurrence of each value).
    #[must_use]
    pub fn over(&self, base: &SweepPlan) -> SweepPlan {
        let threads = self.threads.unwrap_or_else(|| base.device.threads());
        let device = match self.device {
            Some(kind) => kind.with_threads(threads),
            None => match base.device {
                Device::Cpu { .. } => Device::Cpu { threads },
                cuda @ Device::Cuda { .. } => cuda,
            },
        };
        SweepPlan {
            model: self.model.clone().unwrap_or_else(|| base.model.clone()),
            seqs: self
                .seqs
                .as_deref()
                .map_or_else(|| base.seqs.clone(), dedup),
            dtypes: self
                .dtypes
                .as_deref()
                .map_or_else(|| base.dtypes.clone(), dedup),
            batch: self.batch.unwrap_or(base.batch),
            capacity_bytes: self.capacity_bytes.unwrap_or(base.capacity_bytes),
            headroom: self.headroom.unwrap_or(base.headroom),
            strategy: self.strategy.unwrap_or(base.strategy),
            device,
            runtimes: self
                .runtimes
                .as_deref()
                .map_or_else(|| base.runtimes.clone(), dedup),
            workload: self.workload.unwrap_or(base.workload),
            torch: TorchPlan {
                python: self.python.clone().or_else(|| base.torch.python.clone()),
                task: self.task.or(base.torch.task),
                attn: self.attn.unwrap_or(base.torch.attn),
                optimizer: self.optimizer.unwrap_or(base.torch.optimizer),
                checkpointing: self
                    .checkpointing
                    .as_deref()
                    .map_or_else(|| base.torch.checkpointing.clone(), dedup),
            },
        }
    }
}

/// `v` in its order, each value once (`--dtype float16,half` is one precision).
pub fn dedup<T: PartialEq + Copy>(v: &[T]) -> Vec<T> {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v {
        if !out.contains(x) {
            out.push(*x);
        }
    }
    out
}

/// How a face names its controls, so an error can say what to change in words that fit it:
/// `--capacity` on the command line, "Capacity" in the window.
pub trait Face {
    /// The control that sets `field`.
    fn control(&self, field: PlanField) -> &'static str;
    /// Where this face lists the bundled models.
    fn model_list(&self) -> &'static str;
    /// How this face allows replacing an existing output file.
    fn overwrite(&self) -> &'static str;
    /// How this face allows a capacity above what the machine can hold.
    fn allow_overcommit(&self) -> &'static str;
}

/// Plain nouns, for messages that no face has worded (logs, `Display`).
pub struct PlainWords;

impl Face for PlainWords {
    fn control(&self, field: PlanField) -> &'static str {
        match field {
            PlanField::Model => "the model",
            PlanField::Seq => "the sequence lengths",
            PlanField::Dtype => "the precisions",
            PlanField::Batch => "the batch range",
            PlanField::Capacity => "the capacity",
            PlanField::Headroom => "the headroom",
            PlanField::Strategy => "the strategy",
            PlanField::Device => "the device",
            PlanField::Threads => "the thread count",
            PlanField::Runtime => "the runtime",
            PlanField::Workload => "the workload",
            PlanField::Python => "the Python interpreter",
            PlanField::Task => "the task",
            PlanField::Attn => "the attention",
            PlanField::Optimizer => "the optimizer",
            PlanField::Checkpointing => "gradient checkpointing",
        }
    }
    fn model_list(&self) -> &'static str {
        "the bundled models"
    }
    fn overwrite(&self) -> &'static str {
        "allow overwriting it"
    }
    fn allow_overcommit(&self) -> &'static str {
        "allow overcommitting the machine"
    }
}

/// What is wrong with a plan, as data. Faces word the fix for their own controls.
#[derive(Debug, Clone, PartialEq)]
pub enum PlanProblem {
    /// The field is required and was not given (the model, at least one seq or precision).
    Missing,
    /// The text given for the field does not parse; the message says what was expected.
    Unparsable(String),
    ZeroSeq,
    SeqAboveMax {
        seq: usize,
        max: usize,
        model: String,
        /// Where the config came from (file or bundled id).
        origin: String,
    },
    ZeroCapacity,
    /// The weights alone do not fit under the capacity.
    WeightsAboveCapacity {
        dtype: Precision,
        weights_bytes: u64,
        capacity_bytes: u64,
        model: String,
    },
    /// This build cannot measure the family (see `Family::not_in_this_build`).
    FamilyNotInBuild {
        family: String,
        model: String,
        reason: &'static str,
    },
    /// candle 0.11 cannot run this family in this precision.
    DtypeUnsupported {
        dtype: Precision,
        family: String,
        model: String,
    },
    ZeroThreads,
    /// The device is not compiled into this build (CUDA without the `cuda` feature).
    DeviceNotBuilt {
        device: Device,
    },
    /// The GPU index is not on this machine; `gpus` names those that are (`cuda:0 NVIDIA H200`).
    NoSuchGpu {
        index: usize,
        gpus: Vec<String>,
    },
    /// No capacity was given and the GPU's free memory (the default) cannot be read.
    GpuFreeUnknown {
        index: usize,
        why: String,
    },
    /// The capacity is above what the GPU has free.
    CapacityAboveGpu {
        index: usize,
        capacity_bytes: u64,
        free_bytes: u64,
        total_bytes: u64,
    },
    /// The machine cannot hold the simulated capacity (CPU device).
    CapacityAboveHost {
        capacity_bytes: u64,
        host: crate::measure::host::HostMemory,
    },
    /// candle runs inference forwards in one precision only; `what` needs PyTorch.
    CandleCannot {
        what: CandleLacks,
    },
    /// Gradient checkpointing is asked for a workload that does not train.
    CheckpointingWithoutTraining {
        workload: Workload,
    },
    /// Training asked of a head without a loss (`--task base`).
    TrainingWithoutLoss,
    /// The Python interpreter cannot run the PyTorch worker (one sentence naming it and the fix).
    Python(String),
    /// The model's weights alone in a chosen precision do not fit this machine (CPU device),
    /// whatever the capacity; `fits` is the widest precision whose weights would.
    WeightsAboveHost {
        model: String,
        dtype: Precision,
        weights_bytes: u64,
        host: crate::measure::host::HostMemory,
        fits: Option<(Precision, u64)>,
    },
}

impl PlanProblem {
    /// One sentence, naming the face's control for the field.
    #[must_use]
    pub fn describe(&self, field: PlanField, face: &dyn Face) -> String {
        let control = |f| face.control(f);
        let here = control(field);
        match self {
            Self::Missing => match field {
                PlanField::Dtype => format!("no precision chosen; choose at least one in {here}"),
                PlanField::Seq => {
                    format!("no sequence length given; give at least one in {here}, e.g. 128")
                }
                _ => format!("{here} is required"),
            },
            Self::Unparsable(message) => format!("{here}: {message}"),
            Self::ZeroSeq => {
                format!("sequence length 0 is not allowed; use lengths of at least 1 in {here}")
            }
            Self::SeqAboveMax {
                seq,
                max,
                model,
                origin,
            } => format!(
                "sequence length {seq} is above {model}'s maximum of {max} positions (max_position_embeddings in {origin}); choose {max} or less in {here}"
            ),
            Self::ZeroCapacity => format!("{here} must be more than 0 bytes, e.g. 8GiB"),
            Self::WeightsAboveCapacity {
                dtype,
                weights_bytes,
                capacity_bytes,
                model,
            } => format!(
                "the {dtype} weights of {model} alone need {}, but the capacity is {}; raise {here} above {} or remove {dtype} from {}",
                human_bytes(*weights_bytes),
                human_bytes(*capacity_bytes),
                human_bytes(*weights_bytes),
                control(PlanField::Dtype)
            ),
            Self::FamilyNotInBuild {
                family,
                model,
                reason,
            } => format!("{model} is a {family} model: {reason}; choose another in {here}"),
            Self::DtypeUnsupported {
                dtype,
                family,
                model,
            } => format!(
                "{model} is a {family} model, which candle 0.11 runs only in f32 ({}); remove {dtype} from {here}",
                crate::catalog::Family::ALL
                    .iter()
                    .find(|f| f.name() == family)
                    .and_then(|f| f.f32_only())
                    .unwrap_or("its code mixes f32 with the run precision")
            ),
            Self::ZeroThreads => format!("{here} must be at least 1"),
            Self::CandleCannot { what } => {
                let runtime = control(PlanField::Runtime);
                match what {
                    CandleLacks::Workload(w) => format!(
                        "the candle runtime runs inference forwards only: the {w} workload ({}) needs the torch runtime; choose torch alone in {runtime}, or infer in {here}",
                        w.describe()
                    ),
                    CandleLacks::Amp(d) => format!(
                        "the candle runtime has no mixed precision: {d} needs the torch runtime; choose torch alone in {runtime}, or remove {d} from {here}"
                    ),
                    CandleLacks::Checkpointing => format!(
                        "the candle runtime does not train, so it has no gradient checkpointing; choose torch alone in {runtime}, or off in {here}"
                    ),
                }
            }
            Self::CheckpointingWithoutTraining { workload } => format!(
                "gradient checkpointing only changes a training step, and the workload is {workload}; choose train in {} or off in {here}",
                control(PlanField::Workload)
            ),
            Self::TrainingWithoutLoss => format!(
                "a training step needs a head with a loss, and the base model has none; choose sequence-classification, causal-lm or masked-lm in {here}"
            ),
            Self::Python(sentence) => format!("{sentence} (set in {here})"),
            Self::CapacityAboveHost {
                capacity_bytes,
                host,
            } => {
                let largest = host.largest_capacity_bytes();
                format!(
                    "a capacity of {} cannot be simulated on this machine ({}): the largest it can simulate is {} ({} usable, less {} for the window and the system, over {} for the allocator's overhead); lower {here} to {} or less, or {}",
                    human_bytes(*capacity_bytes),
                    host.describe(),
                    human_bytes(largest),
                    human_bytes(host.usable_bytes()),
                    human_bytes(host.margin_bytes()),
                    crate::measure::host::RESIDENT_PER_COUNTED,
                    human_bytes(largest),
                    face.allow_overcommit()
                )
            }
            Self::WeightsAboveHost {
                model,
                dtype,
                weights_bytes,
                host,
                fits,
            } => format!(
                "the {dtype} weights of {model} alone take {}, more than this machine can hold for a trial ({} of {}); {}",
                human_bytes(*weights_bytes),
                human_bytes(host.largest_capacity_bytes()),
                host.describe(),
                match fits {
                    Some((d, b)) => format!(
                        "in {d} they take {}: choose {d} in {here}, or run on a machine (or GPU) with more memory",
                        human_bytes(*b)
                    ),
                    None => "no precision makes them fit: choose a smaller model, or run on a machine (or GPU) with more memory".into(),
                }
            ),
            Self::DeviceNotBuilt { device } => format!(
                "{} needs CUDA, which this build of oomlab does not include; rebuild it with `scripts/build-cuda.sh` (or `cargo build --release --features cuda` where nvcc is installed), or choose cpu in {here}",
                device.name()
            ),
            Self::NoSuchGpu { index, gpus } => format!(
                "there is no cuda:{index}: {}; choose one of them, or cpu, in {here}",
                if gpus.is_empty() {
                    "the NVIDIA driver sees no GPU here".to_string()
                } else {
                    format!("this machine has {}", gpus.join(", "))
                }
            ),
            Self::GpuFreeUnknown { index, why } => format!(
                "cannot read cuda:{index}'s free memory to use as the capacity ({why}); give the capacity in {here}"
            ),
            Self::CapacityAboveGpu {
                index,
                capacity_bytes,
                free_bytes,
                total_bytes,
            } => format!(
                "a capacity of {} is more than cuda:{index} has free ({} of {}; other processes hold the rest, see `oomlab devices`); lower {here} to {} or less, or free the GPU",
                human_bytes(*capacity_bytes),
                human_bytes(*free_bytes),
                human_bytes(*total_bytes),
                human_bytes(*free_bytes)
            ),
        }
    }
}

/// What the candle runtime lacks, for [`PlanProblem::CandleCannot`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CandleLacks {
    Workload(Workload),
    Amp(Precision),
    Checkpointing,
}

mod legacy {
    //! Journals written before the device was typed said `"device": "cpu", "threads": N`.
    use super::{
        BatchRange, Device, ModelRef, Precision, Runtime, Strategy, SweepPlan, TorchPlan, Workload,
    };
    use serde::Deserialize;

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
    }

    fn candle_only() -> Vec<Runtime> {
        vec![Runtime::Candle]
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

/// Parses sizes such as `600MiB`, `1GiB`, `1.5 GB` or `1234B`. A number without a unit is
/// refused (is `16` sixteen bytes or 16 GiB?), with the unit it most likely meant; a negative
/// size gets a sentence of its own.
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim();
    if let Some(rest) = t.strip_prefix('-') {
        return Err(format!(
            "a size cannot be negative ('{t}'); write a positive size such as {}",
            if rest.trim().is_empty() {
                "11GiB".to_string()
            } else {
                rest.trim().to_string()
            }
        ));
    }
    if let Ok(n) = t.parse::<f64>() {
        let guess = if n < 4096.0 {
            format!("{t}GiB or {t}MiB")
        } else {
            human_bytes(n as u64).replace(".0 ", " ").replace(' ', "")
        };
        return Err(format!(
            "'{t}' has no unit; write {guess} (or {t}B if you mean bytes)"
        ));
    }
    t.parse::<bytesize::ByteSize>()
        .map(|b| b.as_u64())
        .map_err(|_| format!("'{s}' is not a size; write e.g. 600MiB, 1GiB or 8GB"))
}

/// Parses a headroom such as `10%` or `0.1` into a fraction in [0, 0.9].
pub fn parse_headroom(s: &str) -> Result<f64, String> {
    let t = s.trim();
    let percent = t.strip_suffix('%');
    let v = percent
        .map_or(t, str::trim)
        .parse::<f64>()
        .map(|x| if percent.is_some() { x / 100.0 } else { x })
        .map_err(|_| format!("'{s}' is not a headroom; write e.g. 10% or 0.1"))?;
    if percent.is_none() && v > 1.0 && v <= 90.0 {
        return Err(format!(
            "headroom {t} is read as a fraction of the capacity (0 to 0.9); for {t} percent write {t}%"
        ));
    }
    if v < 0.0 {
        return Err(format!(
            "a headroom cannot be negative ('{t}'); write e.g. 10% (0% keeps none)"
        ));
    }
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

    fn tiny_plan() -> SweepPlan {
        SweepPlan::defaults(ModelRef::Catalog("tiny-bert".into()), 64)
    }

    #[test]
    fn defaults_shorten_the_sequence_to_the_model() {
        let p = tiny_plan();
        assert_eq!(p.seqs, [64]);
        assert_eq!(p.capacity_bytes, defaults::CAPACITY_BYTES);
        assert_eq!(
            p.device,
            Device::Cpu {
                threads: defaults::threads()
            }
        );
    }

    #[test]
    fn overrides_replace_only_what_was_given() {
        let base = tiny_plan();
        assert_eq!(PlanOverrides::default().over(&base), base);
        assert!(PlanOverrides::default().is_empty());
        let given = PlanOverrides {
            seqs: Some(vec![32, 16, 32]),
            threads: Some(3),
            ..PlanOverrides::default()
        };
        let p = given.over(&base);
        assert_eq!(p.seqs, [32, 16]);
        assert_eq!(p.device, Device::Cpu { threads: 3 });
        assert_eq!(
            base.differences(&p)
                .iter()
                .map(|d| d.field)
                .collect::<Vec<_>>(),
            [PlanField::Seq, PlanField::Threads]
        );
        let cuda = PlanOverrides {
            device: Some("cuda:1".parse().unwrap()),
            ..PlanOverrides::default()
        }
        .over(&base);
        assert_eq!(cuda.device, Device::Cuda { index: 1 });
        let d = base.differences(&cuda);
        assert_eq!(d[0].field, PlanField::Device);
        assert_eq!(
            (d[0].ours.as_str(), d[0].theirs.as_str()),
            ("cpu", "cuda:1")
        );
    }

    /// The cuda build's refusal of Qwen3-MoE (the plans of the default build never raise it).
    #[test]
    fn a_family_this_build_cannot_measure_is_named_with_its_reason() {
        let reason = "this build (the cuda feature) runs it through candle's fused expert kernel";
        let text = PlanProblem::FamilyNotInBuild {
            family: "qwen3_moe".into(),
            model: "Qwen3-30B-A3B".into(),
            reason,
        }
        .describe(PlanField::Model, &PlainWords);
        assert!(
            text.starts_with("Qwen3-30B-A3B is a qwen3_moe model: this build (the cuda feature)")
                && text.ends_with("choose another in the model"),
            "{text}"
        );
        assert_eq!(
            crate::catalog::Family::Qwen3Moe
                .not_in_this_build()
                .is_some(),
            cfg!(feature = "cuda")
        );
    }

    #[test]
    fn gpu_problems_name_the_gpus_and_the_way_on() {
        let words = PlainWords;
        let none = PlanProblem::NoSuchGpu {
            index: 7,
            gpus: vec!["cuda:0 (NVIDIA H200)".into()],
        }
        .describe(PlanField::Device, &words);
        assert!(
            none.starts_with("there is no cuda:7: this machine has cuda:0 (NVIDIA H200)"),
            "{none}"
        );
        let no_driver = PlanProblem::NoSuchGpu {
            index: 0,
            gpus: Vec::new(),
        }
        .describe(PlanField::Device, &words);
        assert!(
            no_driver.contains("the NVIDIA driver sees no GPU here"),
            "{no_driver}"
        );
        let full = PlanProblem::CapacityAboveGpu {
            index: 0,
            capacity_bytes: 80 << 30,
            free_bytes: 60 << 30,
            total_bytes: 80 << 30,
        }
        .describe(PlanField::Capacity, &words);
        assert!(
            full.contains("60.0 GiB of 80.0 GiB") && full.contains("`oomlab devices`"),
            "{full}"
        );
    }

    #[test]
    fn journals_from_before_the_typed_device_still_read() {
        let mut v = serde_json::to_value(tiny_plan()).unwrap();
        assert_eq!(v["device"]["kind"], "cpu");
        v["device"] = "cpu".into();
        v["threads"] = 3.into();
        let p: SweepPlan = serde_json::from_value(v.clone()).unwrap();
        assert_eq!(p.device, Device::Cpu { threads: 3 });
        v["device"] = "tpu".into();
        let e = serde_json::from_value::<SweepPlan>(v)
            .unwrap_err()
            .to_string();
        assert!(e.contains("unknown device 'tpu'"), "{e}");
    }

    #[test]
    fn sizes_and_headroom_parse() {
        assert_eq!(parse_bytes("600MiB").unwrap(), 600 * 1024 * 1024);
        assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
        assert_eq!(parse_bytes("1234B").unwrap(), 1234);
        let bare = parse_bytes("16").unwrap_err();
        assert!(
            bare.contains("no unit") && bare.contains("16GiB") && bare.contains("16B"),
            "{bare}"
        );
        let big = parse_bytes("1073741824").unwrap_err();
        assert!(big.contains("1GiB") && big.contains("1073741824B"), "{big}");
        let neg = parse_bytes("-1GiB").unwrap_err();
        assert!(
            neg.contains("cannot be negative") && neg.contains("1GiB"),
            "{neg}"
        );
        let h = parse_headroom("10").unwrap_err();
        assert!(h.contains("10%"), "{h}");
        assert!(
            parse_headroom("-5%")
                .unwrap_err()
                .contains("cannot be negative")
        );
        assert!((parse_headroom("0.1").unwrap() - 0.1).abs() < 1e-12);
        assert!(parse_headroom("1").unwrap_err().contains("outside"));
        assert!(parse_bytes("lots").is_err());
        assert!((parse_headroom("10%").unwrap() - 0.1).abs() < 1e-12);
        assert!((parse_headroom("0.25").unwrap() - 0.25).abs() < 1e-12);
        assert!(parse_headroom("95%").is_err());
        assert!("f64".parse::<Precision>().is_err());
        assert_eq!("bfloat16".parse::<Precision>().unwrap(), Precision::Bf16);
    }
}
