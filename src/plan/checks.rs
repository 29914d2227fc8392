//! Every check before a trial runs: the plan against its model, this machine and the runtimes
//! it names, and the plan built from a face's fields over the defaults. Problems are data
//! ([`PlanError`]); each face words them for its own controls. Probing the PyTorch runtime's
//! interpreter runs a program, and lives with the driver (`sweep::probe_python`).

use super::{
    Attn, CandleLacks, Device, Face, FieldDifference, PlainWords, PlanField, PlanOverrides,
    PlanProblem, Runtime, SweepPlan, Workload,
};
use crate::catalog::{CatalogError, ModelSpec};
use crate::measure::host::HostMemory;
use std::path::PathBuf;

/// Problems found before any trial runs: usage errors (exit code 2 on the command line). Data,
/// not text: each face words the fix for its own controls with [`PlanError::describe`].
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    /// The model cannot be resolved (unknown id, unreadable or malformed config, checkpoint that
    /// does not match it).
    #[error("{}", self.describe(&PlainWords))]
    Model(#[from] CatalogError),
    /// A field of the plan is missing or wrong.
    #[error("{}", self.describe(&PlainWords))]
    Invalid {
        field: PlanField,
        problem: PlanProblem,
    },
    /// Fields given with a resume contradict the journal's plan.
    #[error("{}", self.describe(&PlainWords))]
    Contradicts {
        journal: PathBuf,
        differences: Vec<FieldDifference>,
    },
    /// The model's config changed since the journal was written.
    #[error("{}", self.describe(&PlainWords))]
    ConfigChanged { origin: String, journal: PathBuf },
}

impl PlanError {
    #[must_use]
    pub fn invalid(field: PlanField, problem: PlanProblem) -> Self {
        Self::Invalid { field, problem }
    }

    /// The field at fault, when one is.
    #[must_use]
    pub fn field(&self) -> Option<PlanField> {
        match self {
            Self::Model(_) | Self::ConfigChanged { .. } => Some(PlanField::Model),
            Self::Invalid { field, .. } => Some(*field),
            Self::Contradicts { differences, .. } => differences.first().map(|d| d.field),
        }
    }

    /// One sentence naming what is wrong and the fix, in `face`'s words.
    #[must_use]
    pub fn describe(&self, face: &dyn Face) -> String {
        match self {
            Self::Model(CatalogError::Unknown { name }) if name.is_empty() => format!(
                "no model given; choose one with {} ({} lists them), a config.json or a model folder",
                face.control(PlanField::Model),
                face.model_list()
            ),
            Self::Model(e @ CatalogError::Unknown { .. }) => {
                format!("{e}; {} lists the bundled ones", face.model_list())
            }
            Self::Model(e) => e.to_string(),
            Self::Invalid { field, problem } => problem.describe(*field, face),
            Self::Contradicts {
                journal,
                differences,
            } => format!(
                "{} {} the journal being resumed ({}); resume it without {} to continue as planned, or start a new sweep",
                differences
                    .iter()
                    .map(|d| face.control(d.field))
                    .collect::<Vec<_>>()
                    .join(", "),
                if differences.len() == 1 {
                    "contradicts"
                } else {
                    "contradict"
                },
                differences
                    .iter()
                    .map(|d| format!(
                        "{}: {} in {}, {} given",
                        face.control(d.field),
                        d.ours,
                        journal.display(),
                        d.theirs
                    ))
                    .collect::<Vec<_>>()
                    .join("; "),
                if differences.len() == 1 { "it" } else { "them" }
            ),
            Self::ConfigChanged { origin, journal } => format!(
                "the model config ({origin}) changed since {} was written; its results would not match — start a new sweep",
                journal.display()
            ),
        }
    }
}

/// Resolves the plan's model and checks the plan against it. Returns the resolved model.
pub fn validate(plan: &SweepPlan) -> Result<ModelSpec, PlanError> {
    check_device(plan)?;
    let spec = ModelSpec::resolve(&plan.model)?;
    check(plan, &spec)?;
    Ok(spec)
}

fn check_device(plan: &SweepPlan) -> Result<(), PlanError> {
    if !plan.device.available_in_this_build() {
        return Err(PlanError::invalid(
            PlanField::Device,
            PlanProblem::DeviceNotBuilt {
                device: plan.device,
            },
        ));
    }
    if let Device::Cuda { index } = plan.device {
        let report = crate::measure::nvml::query().map_err(|_| {
            PlanError::invalid(
                PlanField::Device,
                PlanProblem::NoSuchGpu {
                    index,
                    gpus: Vec::new(),
                },
            )
        })?;
        let Some(gpu) = report.gpus.iter().find(|g| g.index as usize == index) else {
            return Err(PlanError::invalid(
                PlanField::Device,
                PlanProblem::NoSuchGpu {
                    index,
                    gpus: report
                        .gpus
                        .iter()
                        .map(|g| format!("cuda:{} ({})", g.index, g.name))
                        .collect(),
                },
            ));
        };
        if plan.capacity_bytes > gpu.free_bytes {
            return Err(PlanError::invalid(
                PlanField::Capacity,
                PlanProblem::CapacityAboveGpu {
                    index,
                    capacity_bytes: plan.capacity_bytes,
                    free_bytes: gpu.free_bytes,
                    total_bytes: gpu.total_bytes,
                },
            ));
        }
    }
    if plan.device.threads() == 0 {
        return Err(PlanError::invalid(
            PlanField::Threads,
            PlanProblem::ZeroThreads,
        ));
    }
    Ok(())
}

/// Checks a plan against its resolved model: every usage error before any trial runs.
pub fn check(plan: &SweepPlan, spec: &ModelSpec) -> Result<(), PlanError> {
    use PlanProblem as P;
    check_device(plan)?;
    if plan.seqs.is_empty() {
        return Err(PlanError::invalid(PlanField::Seq, P::Missing));
    }
    if plan.dtypes.is_empty() {
        return Err(PlanError::invalid(PlanField::Dtype, P::Missing));
    }
    for &seq in &plan.seqs {
        check_seq(spec, seq)?;
    }
    if plan.capacity_bytes == 0 {
        return Err(PlanError::invalid(PlanField::Capacity, P::ZeroCapacity));
    }
    check_runtimes(plan, spec)?;
    let candle = plan.runtimes.contains(&Runtime::Candle);
    if candle && let Some(reason) = spec.family.not_in_this_build() {
        return Err(PlanError::invalid(
            PlanField::Model,
            P::FamilyNotInBuild {
                family: spec.family.to_string(),
                model: spec.name.clone(),
                reason,
            },
        ));
    }
    for &dtype in &plan.dtypes {
        if candle {
            check_dtype(spec, dtype)?;
        }
        let weights_bytes = spec.weights_bytes(dtype.candle());
        if weights_bytes >= plan.capacity_bytes {
            return Err(PlanError::invalid(
                PlanField::Capacity,
                P::WeightsAboveCapacity {
                    dtype,
                    weights_bytes,
                    capacity_bytes: plan.capacity_bytes,
                    model: spec.name.clone(),
                },
            ));
        }
    }
    Ok(())
}

/// What each runtime can run: candle runs inference forwards; PyTorch's
/// checkpointing needs training, and training a head with a loss.
fn check_runtimes(plan: &SweepPlan, spec: &ModelSpec) -> Result<(), PlanError> {
    use PlanProblem as P;
    if plan.runtimes.is_empty() {
        return Err(PlanError::invalid(PlanField::Runtime, P::Missing));
    }
    let checkpointing = plan.torch.checkpointing_list().contains(&true);
    if plan.runtimes.contains(&Runtime::Candle) {
        let lacks = |field, what| Err(PlanError::invalid(field, P::CandleCannot { what }));
        if plan.workload != Workload::Infer {
            return lacks(PlanField::Workload, CandleLacks::Workload(plan.workload));
        }
        // Mixed precision: `check_dtype`, which the estimator shares.
        if checkpointing && !plan.uses_torch() {
            return lacks(PlanField::Checkpointing, CandleLacks::Checkpointing);
        }
    }
    if plan.uses_torch() {
        if checkpointing && plan.workload != Workload::Train {
            return Err(PlanError::invalid(
                PlanField::Checkpointing,
                P::CheckpointingWithoutTraining {
                    workload: plan.workload,
                },
            ));
        }
        if plan.workload == Workload::Train && !plan.torch_task(spec.family.is_decoder()).has_loss()
        {
            return Err(PlanError::invalid(PlanField::Task, P::TrainingWithoutLoss));
        }
        if plan.torch.attn == Some(Attn::Sdpa) && !spec.family.room().torch_sdpa() {
            return Err(PlanError::invalid(
                PlanField::Attn,
                P::SdpaUnsupported {
                    family: spec.family.to_string(),
                    model: spec.name.clone(),
                },
            ));
        }
    }
    Ok(())
}

/// A sequence length the model can take (1 to its maximum positions).
pub fn check_seq(spec: &ModelSpec, seq: usize) -> Result<(), PlanError> {
    if seq == 0 {
        return Err(PlanError::invalid(PlanField::Seq, PlanProblem::ZeroSeq));
    }
    if seq > spec.dims.max_positions {
        return Err(PlanError::invalid(
            PlanField::Seq,
            PlanProblem::SeqAboveMax {
                seq,
                max: spec.dims.max_positions,
                model: spec.name.clone(),
                origin: spec.origin.clone(),
            },
        ));
    }
    Ok(())
}

/// A model, and a precision, candle can run.
pub fn check_dtype(spec: &ModelSpec, dtype: crate::plan::Precision) -> Result<(), PlanError> {
    if let Some(reason) = spec.candle_refuses() {
        return Err(PlanError::invalid(
            PlanField::Runtime,
            PlanProblem::CandleCannotRun {
                model: spec.name.clone(),
                reason,
            },
        ));
    }
    if dtype.is_amp() {
        return Err(PlanError::invalid(
            PlanField::Dtype,
            PlanProblem::CandleCannot {
                what: CandleLacks::Amp(dtype),
            },
        ));
    }
    if spec.family.supports(dtype) {
        return Ok(());
    }
    Err(PlanError::invalid(
        PlanField::Dtype,
        PlanProblem::DtypeUnsupported {
            dtype,
            family: spec.family.to_string(),
            model: spec.name.clone(),
        },
    ))
}

/// The weights of `model` in each precision the plan names, for [`check_weights_host`].
#[must_use]
pub fn weights_per_dtype(spec: &ModelSpec) -> Vec<(crate::plan::Precision, u64)> {
    crate::plan::Precision::ALL
        .iter()
        .map(|&d| (d, spec.weights_bytes(d.candle())))
        .collect()
}

/// On the CPU, a model whose weights alone in a chosen precision exceed what this machine can
/// hold for a trial is refused before anything is allocated, whatever the capacity (with
/// `--allow-overcommit` too), naming the widest precision that would fit.
pub fn check_weights_host(
    plan: &SweepPlan,
    model: &str,
    weights: &[(crate::plan::Precision, u64)],
    host: Option<&HostMemory>,
) -> Result<(), PlanError> {
    let (Device::Cpu { .. }, Some(h)) = (plan.device, host) else {
        return Ok(());
    };
    let room = h.largest_capacity_bytes();
    for &dtype in &plan.dtypes {
        let Some(&(_, weights_bytes)) = weights.iter().find(|(d, _)| *d == dtype) else {
            continue;
        };
        if weights_bytes > room {
            let fits = weights
                .iter()
                .filter(|(_, b)| *b <= room)
                .max_by_key(|(d, b)| (*b, d.name() == "bf16"))
                .copied();
            return Err(PlanError::invalid(
                PlanField::Dtype,
                PlanProblem::WeightsAboveHost {
                    model: model.to_string(),
                    dtype,
                    weights_bytes,
                    host: *h,
                    fits,
                },
            ));
        }
    }
    Ok(())
}

/// Checks that this machine can hold the simulated capacity (CPU device): the worker's counted
/// bytes, with the allocator's overhead, in what is available less a margin. `host` is `None`
/// where the machine's memory cannot be read.
pub fn check_host(plan: &SweepPlan, host: Option<&HostMemory>) -> Result<(), PlanError> {
    match (plan.device, host) {
        (Device::Cpu { .. }, Some(h)) if plan.capacity_bytes > h.largest_capacity_bytes() => {
            Err(PlanError::invalid(
                PlanField::Capacity,
                PlanProblem::CapacityAboveHost {
                    capacity_bytes: plan.capacity_bytes,
                    host: *h,
                },
            ))
        }
        _ => Ok(()),
    }
}

/// A new plan: the given fields over the defaults, checked against its model. The model is the
/// one field without a default.
pub fn plan_from(given: &PlanOverrides) -> Result<(SweepPlan, ModelSpec), PlanError> {
    let model = given.model.clone().ok_or(CatalogError::Unknown {
        name: String::new(),
    })?;
    let spec = ModelSpec::resolve(&model)?;
    let plan = plan_for(given, &spec)?;
    Ok((plan, spec))
}

/// The given fields over the defaults for an already resolved model, checked against it. On a
/// GPU the default capacity is the device's free memory when the sweep starts (memory held by
/// other processes is never assumed free).
pub fn plan_for(given: &PlanOverrides, spec: &ModelSpec) -> Result<SweepPlan, PlanError> {
    let base = SweepPlan::defaults(spec.reference.clone(), spec.dims.max_positions);
    let mut plan = given.over(&base);
    if let (Device::Cuda { index }, None) = (plan.device, given.capacity_bytes)
        && plan.device.available_in_this_build()
    {
        plan.capacity_bytes = crate::measure::nvml::query()
            .and_then(|r| {
                r.gpus
                    .iter()
                    .find(|g| g.index as usize == index)
                    .map(|g| g.free_bytes)
                    .ok_or_else(|| {
                        crate::measure::nvml::GpuQueryError(format!(
                            "the driver lists no cuda:{index}"
                        ))
                    })
            })
            .map_err(|why| {
                PlanError::invalid(
                    PlanField::Capacity,
                    PlanProblem::GpuFreeUnknown {
                        index,
                        why: why.to_string(),
                    },
                )
            })?;
    }
    check(&plan, spec)?;
    Ok(plan)
}
