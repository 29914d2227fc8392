//! Problems with a plan as data, and their words: each face names its own controls ([`Face`]),
//! and [`PlanProblem::describe`] says what is wrong and what to change in them.

use super::{Device, PlanField, Precision, Workload, human_bytes};

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

/// The command line's words for the plan's fields: its flags.
pub struct Flags;

impl Face for Flags {
    fn control(&self, field: PlanField) -> &'static str {
        match field {
            PlanField::Model => "--model",
            PlanField::Seq => "--seq",
            PlanField::Dtype => "--dtype",
            PlanField::Batch => "--batch",
            PlanField::Capacity => "--capacity",
            PlanField::Headroom => "--headroom",
            PlanField::Strategy => "--strategy",
            PlanField::Device => "--device",
            PlanField::Threads => "--threads",
            PlanField::Runtime => "--runtime",
            PlanField::Workload => "--workload",
            PlanField::Python => "--python",
            PlanField::Task => "--task",
            PlanField::Attn => "--attn",
            PlanField::Optimizer => "--optimizer",
            PlanField::Checkpointing => "--gradient-checkpointing",
        }
    }
    fn model_list(&self) -> &'static str {
        "`oomlab models`"
    }
    fn overwrite(&self) -> &'static str {
        "pass --force to overwrite it"
    }
    fn allow_overcommit(&self) -> &'static str {
        "pass --allow-overcommit"
    }
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
    /// candle 0.11 cannot run this config of a family it runs (the PyTorch runtime can).
    CandleCannotRun {
        model: String,
        reason: String,
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
    /// sdpa asked of a family transformers runs with eager attention only (Gemma 2).
    SdpaUnsupported {
        family: String,
        model: String,
    },
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
            Self::CandleCannotRun { model, reason } => format!(
                "{model} cannot run on the candle runtime: {reason}; the torch runtime runs it: choose torch alone in {here}"
            ),
            Self::DtypeUnsupported {
                dtype,
                family,
                model,
            } => format!(
                "{model} is a {family} model, which candle 0.11 runs only in f32 ({}); remove {dtype} from {here}",
                crate::catalog::Family::named(family)
                    .and_then(crate::catalog::Family::f32_only)
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
            Self::SdpaUnsupported { family, model } => format!(
                "transformers runs {family} models such as {model} with eager attention only (their attention soft-caps its scores, which sdpa cannot); choose eager or the default in {here}"
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
