//! The records a sweep produces: journal lines, trial records, boundaries, recommendation.

use crate::catalog::Family;
use crate::measure::host::HostMemory;
use crate::plan::{Build, Curve, Device, Precision, Runtime, Strategy, SweepPlan, Workload};
use crate::search::{BoundaryStatus, Contradiction};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    Fit,
    Oom,
    /// Stopped before the machine itself ran out of memory (its ceiling, not the simulated
    /// capacity): the batch cannot be measured here.
    HostMemory,
    Failed,
}

impl Outcome {
    /// The name used in results, CSV and tables.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Fit => "fit",
            Self::Oom => "oom",
            Self::HostMemory => "host_memory",
            Self::Failed => "failed",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// The worker died from a signal without the OOM marker (retried once).
    Killed,
    /// The user cancelled the sweep; the trial is run again on resume.
    Cancelled,
    /// The worker answered with an error, or could not be started.
    Error,
}

impl Failure {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Killed => "killed",
            Self::Cancelled => "cancelled",
            Self::Error => "error",
        }
    }
}

/// Why a trial was run: to find the boundary (counted in `trials_used`) or to confirm the
/// recommendation under the headroom (not counted).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Purpose {
    #[default]
    Search,
    Recommend,
}

impl Purpose {
    /// The name used in results, CSV and tables.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Search => "search",
            Self::Recommend => "recommend",
        }
    }
}

/// One trial, exactly one per request. Unknown numbers are null, never 0.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialRecord {
    /// The program that ran it (journals from before the PyTorch runtime: candle).
    #[serde(default)]
    pub runtime: Runtime,
    pub batch: usize,
    pub seq: usize,
    pub dtype: Precision,
    /// PyTorch training with gradient checkpointing on.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checkpointing: bool,
    pub strategy: Strategy,
    #[serde(default)]
    pub purpose: Purpose,
    pub outcome: Outcome,
    pub peak_bytes: Option<u64>,
    pub total_bytes: Option<u64>,
    pub requested_bytes: Option<u64>,
    pub live_before_bytes: Option<u64>,
    pub baseline_bytes: Option<u64>,
    pub failure: Option<Failure>,
    pub reason: Option<String>,
    pub seconds: f64,
    pub worker_pid: Option<u32>,
    /// CUDA only (null on the CPU): the pool's used high-water mark (the most candle's tensors
    /// held at once; `total_bytes` is what the device gave: reserved + overhead outside the
    /// pool), its reserved high-water mark, the device memory in use after the forward
    /// (`cuMemGetInfo`), and what NVML reports for the worker's process.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pool_peak_bytes: Option<u64>,
    #[serde(default)]
    pub pool_reserved_bytes: Option<u64>,
    #[serde(default)]
    pub device_used_bytes: Option<u64>,
    #[serde(default)]
    pub process_bytes: Option<u64>,
    /// Live bytes over the forward (CPU), to see where in the forward the peak happens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub timeline: Option<Timeline>,
    /// PyTorch training: the totals of the first step (which creates the optimizer state) and
    /// the second (steady); `total_bytes` is the larger.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_bytes: Option<Vec<u64>>,
}

/// Live bytes over one forward, from the worker's allocator: each sample is the most that was
/// live over an equal stretch of allocation events, so the peak survives the reduction.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Timeline {
    /// Allocations and releases during the forward.
    pub events: usize,
    /// Absolute live bytes, in event order.
    pub live_bytes: Vec<u64>,
    /// Where phases begin (PyTorch: forward, backward, optimizer step, step 2), as sample
    /// indices.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub marks: Vec<TimelineMark>,
    /// PyTorch: where each of the model's layers begins in the first forward (sample indices,
    /// from the profiler's module ranges).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub layers: Vec<usize>,
    /// PyTorch: the op that made the peak allocation — the outermost op below oomlab's named
    /// ranges (`aten::gelu`, `SoftmaxBackward0`, `aten::div` in the optimizer step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_op: Option<String>,
    /// PyTorch: the innermost module around it (`bert.encoder.layer.7.attention.self`; in
    /// backward the module whose forward made that autograd node).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub peak_scope: Option<String>,
}

/// A named point of a timeline.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimelineMark {
    /// Index into `live_bytes`.
    pub at: usize,
    pub label: String,
    /// PyTorch: the exact live bytes just before the phase's first memory event (absent in
    /// timelines recorded before it was).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub live_bytes: Option<u64>,
}

impl Timeline {
    /// What holds the peak, in words: `aten::softmax in layer 7's attention (bert.encoder.layer.7.attention.self)`.
    #[must_use]
    pub fn peak_label(&self) -> Option<String> {
        let scope = self.peak_scope.as_deref().map(describe_scope);
        match (self.peak_op.as_deref(), scope) {
            (Some(op), Some(scope)) => Some(format!("{op} in {scope}")),
            (Some(op), None) => Some(op.to_string()),
            (None, Some(scope)) => Some(scope),
            (None, None) => None,
        }
    }
}

/// A module path in words where it names a layer: `bert.encoder.layer.7.attention.self` →
/// `layer 7's attention.self (bert.encoder.layer.7.attention.self)`.
fn describe_scope(path: &str) -> String {
    let parts: Vec<&str> = path.split('.').collect();
    let layer = parts
        .iter()
        .position(|p| p.parse::<usize>().is_ok())
        .filter(|&i| i > 0 && matches!(parts[i - 1], "layer" | "layers" | "h" | "blocks"));
    match layer {
        Some(i) if i + 1 < parts.len() => {
            format!("layer {}'s {} ({path})", parts[i], parts[i + 1..].join("."))
        }
        Some(i) => format!("layer {} ({path})", parts[i]),
        None => path.to_string(),
    }
}

impl TrialRecord {
    /// What happened, in words, for progress lines and logs: `fit, total 598.2 MiB (forward
    /// peak 175.8 MiB)`, `OOM, tried to allocate 20.2 MiB`, or `failed: <reason>`.
    #[must_use]
    pub fn outcome_text(&self) -> String {
        let bytes = |v: Option<u64>| v.map_or_else(|| "?".into(), crate::plan::human_bytes);
        match self.outcome {
            Outcome::Fit => format!(
                "fit, total {} (forward peak {})",
                bytes(self.total_bytes),
                bytes(self.peak_bytes)
            ),
            Outcome::Oom => format!("OOM, tried to allocate {}", bytes(self.requested_bytes)),
            Outcome::HostMemory => format!(
                "stopped: this machine's memory, not the capacity, would be exceeded (tried to allocate {})",
                bytes(self.requested_bytes)
            ),
            Outcome::Failed => format!("failed: {}", self.reason.as_deref().unwrap_or("unknown")),
        }
    }

    /// Tokens processed in one step.
    #[must_use]
    pub fn tokens(&self) -> usize {
        self.batch * self.seq
    }
}

/// What a worker reports once its model is built: the same facts on the wire
/// (`protocol::Ready`, beside the worker's pid) and in the journal ([`WorkerInfo`], beside the
/// curve it was built for). Flattened into both, so neither's JSON changes.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Built {
    pub weights_bytes: u64,
    pub baseline_bytes: u64,
    pub threads: usize,
    pub from_checkpoint: bool,
    pub build_seconds: f64,
    /// The most live bytes this machine can hold for the worker (its memory, less a margin, over
    /// the allocator's overhead); a request beyond it ends the trial as `host_memory` (null in
    /// old journals).
    #[serde(default)]
    pub host_ceiling_bytes: Option<u64>,
    /// CUDA: what the process holds outside the memory pool after warm-up (context, kernel
    /// modules, cuBLAS workspace), measured once.
    #[serde(default)]
    pub overhead_bytes: Option<u64>,
    /// CUDA: device memory held back so that only the capacity being simulated remains.
    #[serde(default)]
    pub ballast_bytes: Option<u64>,
    /// CUDA: the most the pool can reach on this worker (the capacity less the overhead).
    #[serde(default)]
    pub pool_capacity_bytes: Option<u64>,
    /// PyTorch: the versions the worker runs with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub versions: Option<Versions>,
}

/// A worker, as the journal records it: what was built, for which curve.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct WorkerInfo {
    #[serde(default)]
    pub runtime: Runtime,
    pub dtype: Precision,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checkpointing: bool,
    #[serde(flatten)]
    pub built: Built,
}

impl WorkerInfo {
    #[must_use]
    pub fn build(&self) -> Build {
        Build {
            runtime: self.runtime,
            dtype: self.dtype,
            checkpointing: self.checkpointing,
        }
    }
}

/// The journal's first line: the plan and what identifies the model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Header {
    pub oomlab_version: String,
    pub plan: SweepPlan,
    pub model_name: String,
    pub family: Family,
    pub config_hash: String,
    pub forward: String,
    pub started_unix: u64,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "snake_case")]
pub enum JournalLine {
    Plan(Header),
    Worker(WorkerInfo),
    Trial(TrialRecord),
    /// This machine's memory when a run (or a resume) started.
    Host(HostMemory),
    /// A load that failed for a whole precision (e.g. weights above the capacity).
    LoadFailed {
        #[serde(flatten)]
        build: Build,
        reason: String,
    },
    End {
        cancelled: bool,
    },
}

/// Why a curve stopped before its answer, as data (faces word what to do about it).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Stop {
    /// Cancelled or interrupted; resuming the journal continues it.
    NotFinished,
    /// The model could not be built in this precision.
    LoadFailed { message: String },
    /// The worker answered a trial with an error.
    TrialError { batch: usize, message: String },
    /// The worker was killed twice at the same batch.
    KilledTwice { batch: usize, reason: String },
    /// More trials than the search may take (a guard against a search that does not end).
    TrialCap { trials: usize },
}

impl Stop {
    /// One sentence, in words that fit every face.
    #[must_use]
    pub fn text(&self) -> String {
        match self {
            Self::NotFinished => {
                "not finished (cancelled or interrupted); resume the journal to continue it".into()
            }
            Self::LoadFailed { message } => message.clone(),
            Self::TrialError { batch, message } => format!("batch {batch}: {message}"),
            Self::KilledTwice { batch, reason } => format!(
                "the worker was killed twice at batch {batch} ({reason}); the kernel's OOM killer or another program may be involved"
            ),
            Self::TrialCap { trials } => format!(
                "stopped after {trials} trials, more than the search may take; this is a bug, please report it with the journal"
            ),
        }
    }
}

/// The machine's memory stopping a curve: the lowest batch that did not fit was refused for the
/// host's sake, not the capacity's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostLimit {
    pub batch: usize,
    pub ceiling_bytes: Option<u64>,
}

impl HostLimit {
    #[must_use]
    pub fn text(&self) -> String {
        format!(
            "batch {} would need more memory than this machine can give the worker{}; b* is this machine's boundary, not the simulated device's (a lower bound of it)",
            self.batch,
            self.ceiling_bytes.map_or_else(String::new, |c| format!(
                " (ceiling {})",
                crate::plan::human_bytes(c)
            ))
        )
    }
}

/// A curve's boundary. Each fact is stored once: why the curve stopped ([`Stop`]), the
/// contradiction, the machine's limit; [`Self::reason`] words them, and the JSON carries those
/// words as `reason` for its readers (ignored when read back).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(from = "BoundaryRepr", into = "BoundaryRepr")]
pub struct BoundaryRecord {
    #[serde(default)]
    pub runtime: Runtime,
    pub seq: usize,
    pub dtype: Precision,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checkpointing: bool,
    pub strategy: Strategy,
    /// Largest measured fit below the lowest measured OOM; null when none fits or unknown.
    pub max_batch: Option<usize>,
    pub status: BoundaryStatus,
    pub trials_used: usize,
    /// With status `non_monotone`: the fit at or above an OOM that contradicts monotone memory.
    pub contradiction: Option<Contradiction>,
    /// Why the curve is incomplete, as data.
    pub stop: Option<Stop>,
    /// With status `host_limited`: the batch this machine's memory refused.
    pub host_limit: Option<HostLimit>,
}

impl BoundaryRecord {
    /// Why the curve is incomplete, not monotone or limited by this machine, in words.
    #[must_use]
    pub fn reason(&self) -> Option<String> {
        self.stop
            .as_ref()
            .map(Stop::text)
            .or_else(|| self.contradiction.map(|c| c.text()))
            .or_else(|| {
                (self.status == BoundaryStatus::HostLimited)
                    .then(|| self.host_limit.as_ref().map(HostLimit::text))
                    .flatten()
            })
    }
}

/// [`BoundaryRecord`] as stored: its fields and the words of its reason.
#[derive(Serialize, Deserialize)]
struct BoundaryRepr {
    #[serde(default)]
    runtime: Runtime,
    seq: usize,
    dtype: Precision,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    checkpointing: bool,
    strategy: Strategy,
    max_batch: Option<usize>,
    status: BoundaryStatus,
    trials_used: usize,
    contradiction: Option<Contradiction>,
    stop: Option<Stop>,
    reason: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    host_limit: Option<HostLimit>,
}

impl From<BoundaryRecord> for BoundaryRepr {
    fn from(b: BoundaryRecord) -> Self {
        Self {
            reason: b.reason(),
            runtime: b.runtime,
            seq: b.seq,
            dtype: b.dtype,
            checkpointing: b.checkpointing,
            strategy: b.strategy,
            max_batch: b.max_batch,
            status: b.status,
            trials_used: b.trials_used,
            contradiction: b.contradiction,
            stop: b.stop,
            host_limit: b.host_limit,
        }
    }
}

impl From<BoundaryRepr> for BoundaryRecord {
    fn from(r: BoundaryRepr) -> Self {
        Self {
            runtime: r.runtime,
            seq: r.seq,
            dtype: r.dtype,
            checkpointing: r.checkpointing,
            strategy: r.strategy,
            max_batch: r.max_batch,
            status: r.status,
            trials_used: r.trials_used,
            contradiction: r.contradiction,
            stop: r.stop,
            host_limit: r.host_limit,
        }
    }
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurvePick {
    #[serde(default)]
    pub runtime: Runtime,
    pub seq: usize,
    pub dtype: Precision,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checkpointing: bool,
    pub batch: usize,
    pub total_bytes: Option<u64>,
    pub tokens_per_step: usize,
    /// Computed from the measured line, not confirmed by a trial (a sweep confirms its pick
    /// unless run with `--confirm none`, or cancelled first).
    #[serde(default)]
    pub computed: bool,
    #[serde(default)]
    pub predicted_bytes: Option<u64>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Recommendation {
    pub headroom: f64,
    pub limit_bytes: u64,
    pub rule: String,
    /// Per curve: the largest batch measured under the headroom limit (null when none).
    pub curves: Vec<CurveRecommendation>,
    pub pick: Option<CurvePick>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CurveRecommendation {
    #[serde(default)]
    pub runtime: Runtime,
    pub seq: usize,
    pub dtype: Precision,
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub checkpointing: bool,
    pub batch: Option<usize>,
    /// Measured at `batch` (absent while the batch is computed).
    pub total_bytes: Option<u64>,
    /// The batch comes from the measured line, not from a trial at it.
    #[serde(default)]
    pub computed: bool,
    /// What the line predicts at a computed batch.
    #[serde(default)]
    pub predicted_bytes: Option<u64>,
}

pub const PICK_RULE: &str = "per (seq, dtype): the largest batch below every measured OOM whose total the measured line puts under capacity × (1 - headroom) (computed; a trial at that batch confirms it, and one over the limit sends the curve to a measured search); overall: the most tokens per step (batch × seq), ties to the wider dtype (f32, then bf16, then f16), then the longer sequence";

impl Results {
    /// Whether the trials ran on a GPU (they carry the device-level figures).
    #[must_use]
    pub fn on_gpu(&self) -> bool {
        matches!(self.device, Device::Cuda { .. })
    }

    /// Why nothing was measured, when every curve stopped because its model could not be built
    /// (then "nothing fits" would mislead): the first curve's reason.
    #[must_use]
    pub fn unbuilt(&self) -> Option<String> {
        // A rebuild can fail after trials ran (the worker is rebuilt after each OOM): then
        // something was measured.
        if !self.trials.is_empty() {
            return None;
        }
        let mut stops = self.boundaries.iter().map(|b| match &b.stop {
            Some(Stop::LoadFailed { message }) => Some(message.clone()),
            _ => None,
        });
        let first = stops.next()??;
        stops.all(|s| s.is_some()).then_some(first)
    }

    /// What a trial of `runtime` ran: candle runs only an inference forward.
    #[must_use]
    pub fn workload_of(&self, runtime: Runtime) -> Workload {
        match runtime {
            Runtime::Candle => Workload::Infer,
            Runtime::Torch => self.plan.workload,
        }
    }

    /// What the figures of `runtime` size, in one line: the runtime, the workload and where
    /// it was measured (`candle · one inference forward (no_grad) · measured on this CPU
    /// against a simulated capacity`).
    #[must_use]
    pub fn sized(&self, runtime: Runtime) -> String {
        let place = match self.device {
            Device::Cuda { .. } => format!("measured on the GPU ({})", self.device.name()),
            Device::Cpu { .. } => match self.plan.gpu {
                Some(p) => format!("measured on this CPU against a {}'s capacity", p.name),
                None => "measured on this CPU against a simulated capacity".into(),
            },
        };
        format!(
            "{} · {} · {place}",
            runtime.label(),
            self.workload_of(runtime).describe()
        )
    }

    /// Whether every figure is an inference forward's (then a training batch needs its own
    /// measurement, [`TRAINING_NEEDS_MORE`]).
    #[must_use]
    pub fn inference_only(&self) -> bool {
        self.plan
            .runtimes
            .iter()
            .all(|r| self.workload_of(*r) == Workload::Infer)
    }

    /// The curves that have no final answer yet (a killed or cancelled sweep), by name.
    #[must_use]
    pub fn unfinished_curves(&self) -> Vec<String> {
        self.boundaries
            .iter()
            .filter(|b| b.status == BoundaryStatus::Incomplete)
            .map(|b| b.curve().to_string())
            .collect()
    }

    /// Whether the overall pick comes from a curve that this machine's memory, not the
    /// capacity, limited (then it is a lower bound for the simulated device).
    #[must_use]
    pub fn pick_is_host_limited(&self) -> bool {
        self.recommendation.pick.as_ref().is_some_and(|p| {
            self.boundaries
                .iter()
                .any(|b| b.curve() == p.curve() && b.status == BoundaryStatus::HostLimited)
        })
    }
}

/// How the CUDA figures relate, in one line (people compare with nvidia-smi).
pub const CUDA_FIGURES: &str = "total = what the GPU gave the trial's worker, compared with the capacity: the memory pool's reserved high-water mark + the overhead outside the pool (CUDA context, kernel modules, cuBLAS workspace); pool peak = the most candle's tensors held at once (exact, the pool's used high-water mark); nvidia-smi shows the whole process, the ballast oomlab holds back to simulate the capacity included. Each trial runs in a fresh worker, as a program's first forward would";

/// Said wherever an inference forward's batch is shown: it is no training batch.
pub const TRAINING_NEEDS_MORE: &str = "this is an inference batch: a training step also holds gradients, optimizer state and the activations autograd keeps (an AdamW step about 4x an inference forward on bert-base), so its batch is smaller; measure it with `oomlab sweep --runtime torch --workload train`";

/// Said under a pick that [`Results::pick_is_host_limited`].
pub const HOST_LIMITED_PICK: &str = "a lower bound: this machine's memory, not the capacity, limited this curve; the simulated device fits at least this much";

/// The results document (`--json`). Field names are a contract for scripts.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Results {
    pub oomlab_version: String,
    /// The plan the sweep ran (what Run repeats when the results are reopened).
    pub plan: SweepPlan,
    pub model: String,
    pub model_ref: crate::catalog::ModelRef,
    pub family: Family,
    pub forward: String,
    pub config_hash: String,
    pub device: Device,
    /// Threads the worker reported (null before a worker was ready).
    pub threads: Option<usize>,
    /// This machine's physical memory and what was available when the sweep (last) started.
    pub host_memory_bytes: Option<u64>,
    pub host_available_bytes: Option<u64>,
    /// The memory cgroup's limit, when one was set.
    pub host_cgroup_limit_bytes: Option<u64>,
    pub capacity_bytes: u64,
    pub headroom: f64,
    pub strategy: Strategy,
    pub batch_range: [usize; 2],
    /// Keyed by [`Build::label`]: the precision for candle (`f32`), `torch f32` for PyTorch.
    pub weights_bytes: BTreeMap<String, u64>,
    pub baseline_bytes: BTreeMap<String, u64>,
    /// CUDA only (empty on the CPU): what the worker held outside the memory pool (context,
    /// kernel modules, cuBLAS workspace) and the ballast it held back to simulate the capacity.
    #[serde(default)]
    pub overhead_bytes: BTreeMap<String, u64>,
    #[serde(default)]
    pub ballast_bytes: BTreeMap<String, u64>,
    /// PyTorch's versions per build label, as its workers reported them.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub torch_versions: BTreeMap<String, Versions>,
    pub trials: Vec<TrialRecord>,
    pub boundaries: Vec<BoundaryRecord>,
    pub recommendation: Recommendation,
    /// True when the sweep stopped before every curve finished.
    pub incomplete: bool,
    pub notes: Vec<String>,
    /// Seconds in all trials, and in the floor: for each curve, the trials at b* and b*+1 that
    /// any exact search must run. Their ratio is the search's and recommendation's cost.
    #[serde(default)]
    pub trial_seconds: f64,
    #[serde(default)]
    pub floor_seconds: f64,
}

macro_rules! curve_of {
    ($($ty:ty),+) => {$(
        impl $ty {
            /// The curve this row belongs to.
            #[must_use]
            pub fn curve(&self) -> Curve {
                Curve {
                    runtime: self.runtime,
                    seq: self.seq,
                    dtype: self.dtype,
                    checkpointing: self.checkpointing,
                }
            }
        }
    )+};
}

curve_of!(TrialRecord, BoundaryRecord, CurvePick, CurveRecommendation);

#[cfg(test)]
mod tests;

/// What a PyTorch worker ran with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Versions {
    pub python: String,
    pub torch: String,
    /// `torch.version.cuda`: the CUDA the wheel was built for (null for a CPU build).
    pub torch_cuda: Option<String>,
    pub transformers: String,
    pub accelerate: Option<String>,
    /// `cpu`, or the GPU's name.
    pub device_name: String,
}

impl Versions {
    /// `PyTorch 2.15.0 (CUDA 13.0), transformers 5.25.0, Python 3.11.7`.
    #[must_use]
    pub fn text(&self) -> String {
        format!(
            "PyTorch {}{}, transformers {}{}, Python {}",
            self.torch,
            self.torch_cuda
                .as_deref()
                .map_or_else(|| " (CPU build)".into(), |c| format!(" (CUDA {c})")),
            self.transformers,
            self.accelerate
                .as_deref()
                .map_or_else(String::new, |a| format!(", accelerate {a}")),
            self.python
        )
    }
}
