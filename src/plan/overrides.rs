//! The one override path: the fields a face sets over the defaults (or over a journal's plan),
//! the plan's fields as data, and how two plans differ (resume checks).

use super::{
    Attn, BatchRange, Device, DeviceKind, ModelRef, Optimizer, Precision, Runtime, Strategy,
    SweepPlan, Task, TorchPlan, Workload,
};
use std::path::PathBuf;

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
    /// A GPU preset: its memory is the capacity unless a capacity is given beside it.
    pub gpu: Option<&'static crate::presets::GpuPreset>,
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
            capacity_bytes: self
                .capacity_bytes
                .or(self.gpu.map(|g| g.total_bytes))
                .unwrap_or(base.capacity_bytes),
            // A capacity given as a size replaces the base's preset with none.
            gpu: match (self.gpu, self.capacity_bytes) {
                (Some(g), _) => Some(g),
                (None, Some(_)) => None,
                (None, None) => base.gpu,
            },
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
                attn: self.attn.or(base.torch.attn),
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
