//! Explains a pasted out-of-memory message: PyTorch's older and newer forms, TensorFlow's and
//! XLA's resource-exhausted forms (JAX and PyTorch/XLA, on a GPU or a TPU), `CuPy`'s and Numba's,
//! and the bare "CUDA error: out of memory". Extracts every
//! figure (units as printed), says what each means, and lists fixes in order of effect for that
//! case, each with the line of code or setting to change. Pure: no I/O.
//!
//! No figure is shown finer than the message's rounding: a figure read from the message is shown
//! in its own unit with two decimals, one computed from others (held elsewhere, reserved less
//! allocated, allocated plus unallocated) in the coarsest unit of those it comes from.

mod advice;

use crate::presets::{self, GpuPreset};
use crate::runtime::{Runtime, Workload};
pub use advice::FRAGMENTATION_FIRST_PERCENT;
use advice::{advice, figures, h, held_elsewhere};
use regex::Regex;
use serde::Serialize;
use std::sync::LazyLock;

/// Which framework's message it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Form {
    /// `CUDA out of memory. Tried to allocate … (GPU 0; … total capacity; … already allocated; …)`
    PytorchOld,
    /// `… GPU 0 has a total capacity of … of which … is free. Process … has … memory in use. …`
    PytorchNew,
    /// `ResourceExhaustedError: OOM when allocating tensor …` / `Allocator … ran out of memory`
    Tensorflow,
    /// `RESOURCE_EXHAUSTED: Out of memory while trying to allocate …`
    Jax,
    /// `CUDA error: out of memory` (or `CUDA_ERROR_OUT_OF_MEMORY`, `CUBLAS_STATUS_ALLOC_FAILED`),
    /// with no figures.
    CudaBare,
    /// `MPS backend out of memory (MPS allocated: …, other allocations: …, max allowed: …)`:
    /// PyTorch on a Mac's GPU, under its high watermark.
    PytorchMps,
    /// `DefaultCPUAllocator: can't allocate memory: you tried to allocate N bytes`: the host's
    /// memory, not a GPU's.
    CpuHost,
    /// `cupy.cuda.memory.OutOfMemoryError: Out of memory allocating N bytes (allocated so far: M
    /// bytes[, limit set to: L bytes])`: `CuPy`'s memory pool.
    Cupy,
    /// `numba.cuda.cudadrv.driver.CudaAPIError: [2] Call to cuMemAlloc results in
    /// CUDA_ERROR_OUT_OF_MEMORY`: Numba's device arrays (often under RAPIDS).
    Numba,
    /// `RESOURCE_EXHAUSTED …` from XLA under PyTorch (`torch_xla`, "Bad `StatusOr` access"),
    /// mostly on a TPU.
    TorchXla,
}

/// Whose GPU a PyTorch message names: NVIDIA's (CUDA), AMD's (`ROCm`'s HIP) or Intel's (XPU).
/// Their messages read alike; the tools and settings differ.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Backend {
    Cuda,
    Hip,
    Xpu,
}

impl Form {
    /// Who printed the message, as a label: `PyTorch (2.1 and later)`.
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::PytorchOld => "PyTorch (before 2.1)",
            Self::PytorchNew => "PyTorch (2.1 and later)",
            Self::Tensorflow => "TensorFlow",
            Self::Jax => "JAX / XLA",
            Self::CudaBare => "CUDA (no figures)",
            Self::PytorchMps => "PyTorch on Apple's MPS",
            Self::CpuHost => "PyTorch on the CPU (host memory)",
            Self::Cupy => "CuPy",
            Self::Numba => "Numba (CUDA)",
            Self::TorchXla => "PyTorch/XLA",
        }
    }

    /// The explanation's first line: what kind of message it is, as a sentence.
    #[must_use]
    pub fn title(self) -> &'static str {
        match self {
            Self::PytorchOld => {
                "A PyTorch out-of-memory message in the format before 2.1 (\"CUDA out of memory. Tried to allocate … total capacity …\")."
            }
            Self::PytorchNew => {
                "A PyTorch out-of-memory message in the format of 2.1 and later (\"CUDA out of memory. Tried to allocate … GPU 0 has a total capacity of …\")."
            }
            Self::Tensorflow => {
                "A TensorFlow out-of-memory message (\"OOM when allocating tensor …\" or \"ran out of memory trying to allocate …\")."
            }
            Self::Jax => {
                "A JAX / XLA out-of-memory message (\"RESOURCE_EXHAUSTED: Out of memory …\")."
            }
            Self::CudaBare => {
                "A CUDA out-of-memory error with no figures (\"CUDA error: out of memory\"): the driver refused an allocation, often outside PyTorch's caching allocator."
            }
            Self::PytorchMps => {
                "A PyTorch out-of-memory message from Apple's MPS backend (\"MPS backend out of memory …\"): the Mac's GPU shares its unified memory with the system, and PyTorch stops at a limit of its own (max allowed)."
            }
            Self::CpuHost => {
                "A PyTorch out-of-memory message from the CPU (\"DefaultCPUAllocator: can't allocate memory …\"): the computer's own memory (RAM) ran out, not a GPU's."
            }
            Self::Cupy => {
                "A CuPy out-of-memory error (\"cupy.cuda.memory.OutOfMemoryError: Out of memory allocating …\"): CuPy's memory pool could not get the bytes from the GPU, or met the limit set on it."
            }
            Self::Numba => {
                "A Numba CUDA out-of-memory error (\"Call to cuMemAlloc results in CUDA_ERROR_OUT_OF_MEMORY\"): the driver refused a device array's memory, after Numba had already freed the arrays waiting for deallocation."
            }
            Self::TorchXla => {
                "A PyTorch/XLA out-of-memory message (\"RESOURCE_EXHAUSTED …\"): XLA, under PyTorch, could not fit the compiled program or a buffer."
            }
        }
    }
}

/// A process named in the message and the memory it holds.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ProcessUse {
    pub pid: u32,
    pub bytes: u64,
}

/// Everything the message says, and what to do about it. The field names are a contract for
/// scripts (`oomlab explain --json`); unknown figures are null, never 0.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Explanation {
    pub form: Form,
    /// For a CUDA-style PyTorch message (and the bare CUDA error): NVIDIA's CUDA, AMD's HIP or
    /// Intel's XPU; null for the other forms.
    pub backend: Option<Backend>,
    pub gpu_index: Option<u32>,
    pub tried_to_allocate_bytes: Option<u64>,
    pub total_capacity_bytes: Option<u64>,
    pub free_bytes: Option<u64>,
    pub allocated_by_pytorch_bytes: Option<u64>,
    pub reserved_by_pytorch_bytes: Option<u64>,
    pub reserved_unallocated_bytes: Option<u64>,
    /// What the failing process holds on the GPU, all memory included (newer PyTorch).
    pub process_in_use_bytes: Option<u64>,
    /// Every process the message names.
    pub processes: Vec<ProcessUse>,
    /// Memory held outside this process's allocator: other processes and CUDA contexts.
    pub held_elsewhere_bytes: Option<u64>,
    /// Of the allocated memory, what CUDA graphs' private pools hold (newer PyTorch).
    pub private_pools_bytes: Option<u64>,
    /// The most this process may hold: a cap set in the process (`N allowed`, from
    /// `torch.cuda.set_per_process_memory_fraction`), or MPS's high watermark (`max allowed`).
    pub allowed_bytes: Option<u64>,
    /// MPS: what the process holds outside PyTorch's MPS allocator (`other allocations`).
    pub other_allocations_bytes: Option<u64>,
    /// XLA's message from a TPU (its memory is HBM per core).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub tpu: bool,
    /// XLA's compiler on a TPU: the memory space that ran out (`hbm`, a core's memory, then also
    /// `total_capacity_bytes`; `vmem`, a kernel's on-chip vector memory).
    pub memory_space: Option<String>,
    /// XLA's compiler on a TPU: what the program needs in that memory space (`Used N of …`).
    pub needed_bytes: Option<u64>,
    /// XLA's compiler on a TPU: what that memory space has for the program (`… of N hbm`).
    pub space_capacity_bytes: Option<u64>,
    /// XLA's compiler on a TPU: what the runtime keeps of the core's memory (`reserved`).
    pub runtime_reserved_bytes: Option<u64>,
    /// XLA's compiler on a TPU: the program's largest allocation, and its shape as printed
    /// (`f32[32,4096,4096]`).
    pub largest_allocation_bytes: Option<u64>,
    pub largest_allocation_shape: Option<String>,
    /// `CuPy`: what its memory pool held before the request (`allocated so far`), after it had
    /// already returned its cached blocks and retried.
    pub pool_bytes: Option<u64>,
    /// Figures the message prints that cannot be true (more than the GPU has), left out.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub ignored: Vec<String>,
    /// The GPU preset (its id, e.g. `t4`): named with `--gpu`, or the one whose total capacity
    /// is the message's figure ([`presets::from_total_capacity`]); null when unknown. Its
    /// compute capability decides between bf16 and fp16 advice.
    pub gpu: Option<&'static str>,
    /// What each figure means, in words.
    pub figures: Vec<String>,
    /// Fixes, most effective first for this case, each with the line to change.
    pub advice: Vec<String>,
    /// With a model named (`--model`): the estimator's largest batch under the capacity.
    pub largest_batch: Option<LargestBatch>,
    /// How finely each figure was printed (not part of the JSON).
    #[serde(skip)]
    rounding: Roundings,
    /// Numba's error under RAPIDS (cuDF, Dask-CUDA, RMM in the traceback).
    #[serde(skip)]
    rapids: bool,
}

/// The estimator's answer to "which batch would have fitted?": candle's estimate of one
/// inference forward (no gradients, no optimizer state), not a measurement and not a training
/// batch.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LargestBatch {
    pub model: String,
    pub seq: usize,
    pub dtype: crate::precision::Precision,
    pub capacity_bytes: u64,
    /// None: not even batch 1 fits.
    pub batch: Option<usize>,
    /// The runtime whose memory is estimated: always candle.
    pub runtime: Runtime,
    /// What was sized: always one inference forward (`infer`).
    pub workload: Workload,
    /// Always true: the estimator's figure, not a measured trial.
    pub estimated: bool,
    /// `--model` for the command that measures the training batch: the bundled id, or what was
    /// typed (not in the JSON).
    #[serde(skip)]
    pub model_given: String,
    /// For a PyTorch message: the PyTorch estimator's batches (then `batch` is its `no_grad` one).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub torch: Option<TorchBatches>,
}

/// The PyTorch estimator's largest batches for a PyTorch message, by workload: CPU allocations
/// as PyTorch makes them, without the CUDA context or the caching allocator's rounding.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TorchBatches {
    pub task: crate::runtime::Task,
    pub attn: crate::runtime::Attn,
    /// Under `torch.no_grad()` (None: not even 1).
    pub infer: Option<usize>,
    /// A forward without it (None: not even 1), when modelled.
    pub grad: Option<Option<usize>>,
    /// What one forward holds above the weights and inputs at batch 1, under `no_grad` and
    /// without it (when modelled).
    pub infer_activation_bytes: u64,
    pub grad_activation_bytes: Option<u64>,
    /// Why the forward without `no_grad` is not modelled, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub grad_not_modelled: Option<String>,
    /// A training step (two, as the torch runtime takes them) with `AdamW` and the training
    /// head (`train_task`): the largest batch in f32 and amp-bf16, without and with gradient
    /// checkpointing, in that order (empty when not modelled; then why not).
    pub train_task: crate::runtime::Task,
    pub train: Vec<TrainBatch>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub train_not_modelled: Option<String>,
}

/// One training setting's largest batch by the PyTorch estimate.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct TrainBatch {
    pub dtype: crate::precision::Precision,
    pub checkpointing: bool,
    /// None: not even 1 (or not modelled).
    pub batch: Option<usize>,
    /// Why this setting is not modelled, when it is not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub not_modelled: Option<String>,
}

impl LargestBatch {
    /// candle's estimated largest inference batch of `model` at (`seq`, `dtype`) under
    /// `capacity_bytes`; `model_given` is what `--model` takes to name it again.
    #[must_use]
    pub fn inference(
        model: String,
        model_given: String,
        seq: usize,
        dtype: crate::precision::Precision,
        capacity_bytes: u64,
        batch: Option<usize>,
    ) -> Self {
        Self {
            model,
            seq,
            dtype,
            capacity_bytes,
            batch,
            runtime: Runtime::Candle,
            workload: Workload::Infer,
            estimated: true,
            model_given,
            torch: None,
        }
    }

    /// The PyTorch estimator's answer: its `no_grad` batch is the batch.
    #[must_use]
    pub fn with_torch(mut self, t: TorchBatches) -> Self {
        self.batch = t.infer;
        self.runtime = Runtime::Torch;
        self.torch = Some(t);
        self
    }

    /// The command that measures the training batch in PyTorch against the same capacity.
    fn measure_training_command(&self) -> String {
        let capacity = presets::matching(self.capacity_bytes).map_or_else(
            || format!("--capacity {}", h(self.capacity_bytes).replace(' ', "")),
            |p| format!("--gpu {}", p.id),
        );
        let model = if self.model_given.is_empty() {
            &self.model
        } else {
            &self.model_given
        };
        format!(
            "oomlab sweep --runtime torch --workload train --model {} --seq {} {capacity}",
            shell_word(model),
            self.seq
        )
    }
}

/// `word` as one shell word: quoted when it holds anything but plain path characters.
fn shell_word(word: &str) -> String {
    if !word.is_empty()
        && word
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_./@:=+".contains(c))
    {
        word.to_string()
    } else {
        format!("'{}'", word.replace('\'', r"'\''"))
    }
}

impl Explanation {
    /// Adds the estimator's largest inference batch to the "smaller batch" advice, with what it
    /// sized and how to measure the training batch.
    pub fn set_largest_batch(&mut self, lb: LargestBatch) {
        self.largest_batch = Some(lb);
        self.advice = advice(self);
    }

    /// The GPU, named by the user: it wins over the one identified from the total capacity.
    pub fn set_gpu(&mut self, preset: &'static GpuPreset) {
        self.gpu = Some(preset.id);
        self.advice = advice(self);
    }

    fn preset(&self) -> Option<&'static GpuPreset> {
        self.gpu
            .and_then(|id| presets::PRESETS.iter().find(|p| p.id == id))
    }
}

/// Why a text could not be explained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not an out-of-memory message I recognise; expected PyTorch's \"CUDA out of memory. Tried to allocate …\" (or HIP's, XPU's, MPS's, or the CPU's \"DefaultCPUAllocator: can't allocate memory\"), TensorFlow's \"OOM when allocating tensor …\" or \"ran out of memory trying to allocate …\", XLA's \"RESOURCE_EXHAUSTED: …\" (JAX or PyTorch/XLA, on a GPU or a TPU), CuPy's \"OutOfMemoryError: Out of memory allocating …\", Numba's \"CUDA_ERROR_OUT_OF_MEMORY\", or \"CUDA error: out of memory\""
)]
pub struct NotOom;

const SIZE: &str = r"([0-9]+(?:\.[0-9]+)?)\s*(TiB|GiB|MiB|KiB|TB|GB|MB|KB|bytes|B)\b";

/// A size as XLA's TPU code prints it: binary, one letter (`21.95G`, `530.00M`, `0B`).
const XSIZE: &str = r"([0-9]+(?:\.[0-9]+)?)([KMGT]?)B?";

fn re(pattern: &str) -> Regex {
    Regex::new(&pattern.replace("XSIZE", XSIZE).replace("SIZE", SIZE)).expect("a valid pattern")
}

/// A unit as the message printed it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Unit {
    name: &'static str,
    bytes: u64,
}

/// Binary units (KiB …) by 1024, decimal ones (KB …) by 1000.
fn unit(name: &str) -> Option<Unit> {
    let (name, bytes) = match name {
        "B" | "bytes" => ("B", 1),
        "KiB" => ("KiB", 1 << 10),
        "MiB" => ("MiB", 1 << 20),
        "GiB" => ("GiB", 1 << 30),
        "TiB" => ("TiB", 1 << 40),
        "KB" => ("KB", 1_000),
        "MB" => ("MB", 1_000_000),
        "GB" => ("GB", 1_000_000_000),
        "TB" => ("TB", 1_000_000_000_000),
        _ => return None,
    };
    Some(Unit { name, bytes })
}

/// Bytes of a size as printed.
#[cfg(test)]
fn bytes(num: &str, unit_name: &str) -> Option<u64> {
    sized(num, unit_name).map(|(b, _)| b)
}

/// Bytes of a size as printed, and how it was rounded.
fn sized(num: &str, unit_name: &str) -> Option<(u64, Rounding)> {
    let v: f64 = num.parse().ok()?;
    let u = unit(unit_name)?;
    Some((
        (v * u.bytes as f64).round() as u64,
        Rounding {
            unit: u,
            derived: false,
        },
    ))
}

/// The first size captured by `r` (its first two groups), in bytes, and its rounding.
fn size(r: &Regex, text: &str) -> Option<(u64, Rounding)> {
    let c = r.captures(text)?;
    sized(c.get(1)?.as_str(), c.get(2)?.as_str())
}

/// How finely a figure is known: the unit it is shown in (two decimals), and whether it was
/// computed from other figures (then a result under 0.01 reads "under 0.01 …").
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Rounding {
    unit: Unit,
    derived: bool,
}

impl Rounding {
    /// A figure computed from figures rounded as `parts`: the coarsest of their units.
    fn derived(parts: &[Option<Self>]) -> Option<Self> {
        parts
            .iter()
            .flatten()
            .max_by_key(|r| r.unit.bytes)
            .map(|r| Self {
                unit: r.unit,
                derived: true,
            })
    }
}

/// The rounding of each figure (None: exact, e.g. computed from a tensor's shape).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct Roundings {
    tried: Option<Rounding>,
    total: Option<Rounding>,
    free: Option<Rounding>,
    allocated: Option<Rounding>,
    reserved: Option<Rounding>,
    unallocated: Option<Rounding>,
    in_use: Option<Rounding>,
    private_pools: Option<Rounding>,
    allowed: Option<Rounding>,
    other_allocations: Option<Rounding>,
    processes: Vec<Option<Rounding>>,
    held_elsewhere: Option<Rounding>,
    needed: Option<Rounding>,
    space: Option<Rounding>,
    runtime_reserved: Option<Rounding>,
    largest: Option<Rounding>,
    /// XLA's "Exceeded hbm capacity by N", as printed (the figure with its rounding).
    exceeded: Option<(u64, Rounding)>,
}

/// A figure as shown: two decimals of its unit, never finer than the message printed it.
fn shown(b: u64, rounding: Option<Rounding>) -> String {
    match rounding {
        Some(r) if r.unit.bytes > 1 => {
            let v = format!("{:.2}", b as f64 / r.unit.bytes as f64);
            if r.derived && v == "0.00" {
                format!("under 0.01 {}", r.unit.name)
            } else {
                format!("{v} {}", r.unit.name)
            }
        }
        _ => h(b),
    }
}

struct Patterns {
    tried: Regex,
    gpu: Regex,
    total_old: Regex,
    total_new: Regex,
    allocated_old: Regex,
    free_old: Regex,
    free_new: Regex,
    reserved_old: Regex,
    cached_old: Regex,
    of_allocated: Regex,
    allowed: Regex,
    mps_allocated: Regex,
    mps_other: Regex,
    mps_max: Regex,
    cpu_bytes: Regex,
    stream_executor: Regex,
    cupy_bytes: Regex,
    process: Regex,
    non_pytorch: Regex,
    tf_shape: Regex,
    tf_allocator: Regex,
    jax_bytes: Regex,
    jax_request: Regex,
    xla_async: Regex,
    xla_free_total: Regex,
    cupy_so_far: Regex,
    cupy_total_old: Regex,
    cupy_limit: Regex,
    tpu_space: Regex,
    tpu_reserved: Regex,
    tpu_largest: Regex,
    tpu_buffer: Regex,
    tpu_word: Regex,
    tpu_exceeded: Regex,
}

static P: LazyLock<Patterns> = LazyLock::new(|| Patterns {
    tried: re(r"(?i)tried to allocate SIZE"),
    gpu: re(r"\bGPU\s*(\d+)\b"),
    total_old: re(r"SIZE total capacity"),
    // "capacty" is a real typo in some PyTorch releases.
    total_new: re(r"total capac\w* of SIZE"),
    allocated_old: re(r"SIZE already allocated"),
    free_old: re(r"SIZE free\b"),
    free_new: re(r"of which SIZE is free"),
    reserved_old: re(r"SIZE reserved in total by PyTorch"),
    // Before "reserved", PyTorch printed what it held beyond its tensors as "cached" (its
    // source: `amount_cached - amount_allocated`), the reserved-but-unallocated figure.
    cached_old: re(r"SIZE cached\b"),
    // CUDA graphs' private pools, when any, sit between the two figures.
    of_allocated: re(
        r"Of the allocated memory SIZE is allocated by PyTorch,(?: with SIZE allocated in private pools(?: \([^)]*\))?,)? and SIZE is reserved by PyTorch but unallocated",
    ),
    allowed: re(r"SIZE allowed;"),
    mps_allocated: re(r"MPS allocated: SIZE"),
    mps_other: re(r"other allocations: SIZE"),
    mps_max: re(r"max allowed: SIZE"),
    cpu_bytes: re(r"you tried to allocate (\d+) bytes"),
    // TensorFlow's and XLA's stream executor (`cuda_driver.cc`, ROCm's `rocm_driver.cc`).
    stream_executor: re(
        r"failed to allocate \S+ \((\d+) bytes\) from device: (?:CUDA_ERROR_OUT_OF_MEMORY|HIP_ERROR_OutOfMemory)",
    ),
    // CuPy's wording before and after 2019 (`Out of memory allocating 200,000,000,000 bytes`).
    cupy_bytes: re(r"(?i)out of memory (?:to allocate|allocating) ([\d,]+) bytes"),
    process: re(r"Process (\d+) has SIZE memory in use"),
    non_pytorch: re(r"this process has SIZE memory in use"),
    // "of shape" and a missing type or device occur too.
    tf_shape: re(
        r"OOM when allocating tensor (?:with|of) shape\s*\[([0-9,\s]*)\](?:\s*and type (\w+))?(?: on [^\s]*?device:GPU:(\d+))?",
    ),
    tf_allocator: re(r"Allocator \(GPU_(\d+)_bfc\) ran out of memory trying to allocate SIZE"),
    jax_bytes: re(r"Out of memory while trying to allocate (\d+) bytes"),
    jax_request: re(
        r"Failed to allocate request for SIZE(?:\s*\((\d+)B\))? on device ordinal (\d+)",
    ),
    // XLA's asynchronous allocator (JAX, and TensorFlow with TF_GPU_ALLOCATOR=cuda_malloc_async).
    xla_async: re(r"cuMemAllocAsync failed to allocate (\d+) bytes"),
    xla_free_total: re(r"Free memory/Total memory:\s*(\d+)\s*/\s*(\d+)"),
    cupy_so_far: re(r"allocated so far: ([\d,]+) bytes"),
    // Before "allocated so far", `CuPy` printed the pool's bytes with the request added.
    cupy_total_old: re(r"\(total ([\d,]+) bytes\)"),
    cupy_limit: re(r"limit set to: ([\d,]+) bytes"),
    // XLA's TPU compiler: "Ran out of memory in memory space hbm. Used 21.95G of 15.48G hbm."
    tpu_space: re(r"Ran out of memory in memory space (\w+)\. Used XSIZE of XSIZE"),
    tpu_reserved: re(r"usage >= XSIZE: reserved XSIZE"),
    tpu_largest: re(r"Largest program allocations in \w+: 1\. Size: XSIZE .*?Shape: ([^\s{]+)"),
    tpu_word: re(r"(?i)\btpu"),
    tpu_exceeded: re(r"Exceeded \w+ capacity by XSIZE"),
    // XLA's TPU runtime: "Attempting to allocate 4.39G. That was not possible. There are 2.30G free."
    tpu_buffer: re(r"Attempting to allocate XSIZE\. That was not possible\. There are XSIZE free"),
});

fn tf_dtype_bytes(t: &str) -> Option<u64> {
    Some(match t {
        "float" | "float32" | "int32" | "uint32" => 4,
        "half" | "float16" | "bfloat16" | "int16" | "uint16" => 2,
        "double" | "float64" | "int64" | "uint64" | "complex64" => 8,
        "int8" | "uint8" | "bool" => 1,
        _ => return None,
    })
}

/// Bytes of a size XLA's TPU code printed (binary units by one letter), and its rounding.
fn xla_sized(num: &str, letter: &str) -> Option<(u64, Rounding)> {
    let unit = match letter {
        "" => "B",
        "K" => "KiB",
        "M" => "MiB",
        "G" => "GiB",
        "T" => "TiB",
        _ => return None,
    };
    sized(num, unit)
}

/// The `n`th and `n + 1`th groups of `c` as an XLA size.
fn xla_at(c: &regex::Captures<'_>, n: usize) -> Option<(u64, Rounding)> {
    xla_sized(c.get(n)?.as_str(), c.get(n + 1)?.as_str())
}

/// A byte count `CuPy` printed with thousands separators.
fn cupy_count(r: &Regex, text: &str) -> Option<u64> {
    r.captures(text)?[1].replace(',', "").parse().ok()
}

/// Splits an optional (bytes, rounding) into the figure and its rounding.
fn split(v: Option<(u64, Rounding)>) -> (Option<u64>, Option<Rounding>) {
    (v.map(|(b, _)| b), v.map(|(_, r)| r))
}

/// Whether XLA's or CUDA's message came from TensorFlow rather than JAX: a TensorFlow path, but
/// not JAX's copy of XLA (`external/org_tensorflow/…` in older JAX, or a `jax` path).
fn mentions_tensorflow(text: &str) -> bool {
    let lower = text.to_ascii_lowercase();
    lower.contains("tensorflow")
        && !lower.contains("jax")
        && !lower.contains("external/org_tensorflow")
}

/// Who printed a message from XLA's or TensorFlow's shared code: PyTorch/XLA where it says so
/// (its module, its profiler, or its "Bad `StatusOr` access" wrapper), TensorFlow where its paths
/// say so, else JAX.
fn xla_form(text: &str) -> Form {
    let lower = text.to_ascii_lowercase();
    if lower.contains("torch_xla")
        || lower.contains("pt-xla")
        || text.contains("Bad StatusOr access")
    {
        Form::TorchXla
    } else if mentions_tensorflow(text) {
        Form::Tensorflow
    } else {
        Form::Jax
    }
}

/// Bytes of a size MPS printed: its allocator writes binary sizes with decimal names
/// (`format_size` divides by 1024³ and prints "GB").
fn mps_size(r: &Regex, text: &str) -> Option<(u64, Rounding)> {
    let c = r.captures(text)?;
    let binary = match c.get(2)?.as_str() {
        "KB" => "KiB",
        "MB" => "MiB",
        "GB" => "GiB",
        "TB" => "TiB",
        other => other,
    };
    sized(c.get(1)?.as_str(), binary)
}

/// Reads the message and explains it.
pub fn explain(text: &str) -> Result<Explanation, NotOom> {
    let p = &*P;
    // A message wrapped across lines (as terminals and trackers wrap it) reads as one.
    let joined = text.split_whitespace().collect::<Vec<_>>().join(" ");
    let text = joined.as_str();
    let mut e = Explanation {
        form: Form::CudaBare,
        backend: None,
        gpu_index: None,
        tried_to_allocate_bytes: None,
        total_capacity_bytes: None,
        free_bytes: None,
        allocated_by_pytorch_bytes: None,
        reserved_by_pytorch_bytes: None,
        reserved_unallocated_bytes: None,
        process_in_use_bytes: None,
        processes: Vec::new(),
        held_elsewhere_bytes: None,
        private_pools_bytes: None,
        allowed_bytes: None,
        other_allocations_bytes: None,
        tpu: false,
        memory_space: None,
        needed_bytes: None,
        space_capacity_bytes: None,
        runtime_reserved_bytes: None,
        largest_allocation_bytes: None,
        largest_allocation_shape: None,
        pool_bytes: None,
        ignored: Vec::new(),
        gpu: None,
        figures: Vec::new(),
        advice: Vec::new(),
        largest_batch: None,
        rounding: Roundings::default(),
        rapids: false,
    };
    let r = &mut e.rounding;
    let backend = if text.contains("HIP out of memory") {
        Backend::Hip
    } else if text.contains("XPU out of memory") {
        Backend::Xpu
    } else {
        Backend::Cuda
    };
    // CuPy names its error OutOfMemoryError too; MPS's and the CPU's come as
    // `torch.OutOfMemoryError` (and an application's hint may mention CUDA beside them).
    let cupy = text.contains("cupy");
    let pytorch = ["CUDA", "HIP", "XPU"]
        .iter()
        .any(|b| text.contains(&format!("{b} out of memory")))
        || (text.contains("OutOfMemoryError") && !cupy);
    if text.contains("MPS backend out of memory") {
        e.form = Form::PytorchMps;
        (e.allocated_by_pytorch_bytes, r.allocated) = split(mps_size(&p.mps_allocated, text));
        (e.other_allocations_bytes, r.other_allocations) = split(mps_size(&p.mps_other, text));
        (e.allowed_bytes, r.allowed) = split(mps_size(&p.mps_max, text));
        (e.tried_to_allocate_bytes, r.tried) = split(mps_size(&p.tried, text));
    } else if text.contains("DefaultCPUAllocator") {
        e.form = Form::CpuHost;
        e.tried_to_allocate_bytes = p.cpu_bytes.captures(text).and_then(|c| c[1].parse().ok());
    } else if pytorch && (p.total_new.is_match(text) || p.of_allocated.is_match(text)) {
        e.form = Form::PytorchNew;
        (e.total_capacity_bytes, r.total) = split(size(&p.total_new, text));
        (e.free_bytes, r.free) = split(size(&p.free_new, text));
        if let Some(c) = p.of_allocated.captures(text) {
            (e.allocated_by_pytorch_bytes, r.allocated) = split(sized(&c[1], &c[2]));
            if let (Some(n), Some(u)) = (c.get(3), c.get(4)) {
                (e.private_pools_bytes, r.private_pools) = split(sized(n.as_str(), u.as_str()));
            }
            (e.reserved_unallocated_bytes, r.unallocated) = split(sized(&c[5], &c[6]));
            e.reserved_by_pytorch_bytes = e
                .allocated_by_pytorch_bytes
                .zip(e.reserved_unallocated_bytes)
                .map(|(a, r)| a.saturating_add(r));
            r.reserved = Rounding::derived(&[r.allocated, r.unallocated]);
        }
        (e.allowed_bytes, r.allowed) = split(size(&p.allowed, text));
        let processes: Vec<(ProcessUse, Rounding)> = p
            .process
            .captures_iter(text)
            .filter_map(|c| {
                let (bytes, rounding) = sized(&c[2], &c[3])?;
                Some((
                    ProcessUse {
                        pid: c[1].parse().ok()?,
                        bytes,
                    },
                    rounding,
                ))
            })
            .collect();
        // A figure far above the GPU's capacity is a miscount (PyTorch has printed an unsigned
        // underflow, 17179869184.00 GiB): left out, and said so. (Windows' WDDM lets a process
        // hold more than the card has, so only a figure beyond any such oversubscription is.)
        let possible = |b: u64| {
            e.total_capacity_bytes
                .is_none_or(|t| u128::from(b) <= u128::from(t) * 16)
        };
        let mut ignored = Vec::new();
        let (kept, over): (Vec<_>, Vec<_>) =
            processes.into_iter().partition(|(u, _)| possible(u.bytes));
        for (u, rounding) in over {
            ignored.push(format!(
                "process {} holds {}",
                u.pid,
                shown(u.bytes, Some(rounding))
            ));
        }
        r.processes = kept.iter().map(|(_, r)| Some(*r)).collect();
        e.processes = kept.into_iter().map(|(p, _)| p).collect();
        let only_process = match (e.processes.as_slice(), r.processes.as_slice()) {
            ([only], [Some(rounding)]) => Some((only.bytes, *rounding)),
            _ => None,
        };
        let in_use = size(&p.non_pytorch, text);
        let in_use = match in_use {
            Some((b, rounding)) if !possible(b) => {
                ignored.push(format!(
                    "this process has {} in use",
                    shown(b, Some(rounding))
                ));
                None
            }
            other => other,
        };
        (e.process_in_use_bytes, r.in_use) = split(in_use.or(only_process));
        e.ignored = ignored;
    } else if pytorch {
        e.form = Form::PytorchOld;
        (e.total_capacity_bytes, r.total) = split(size(&p.total_old, text));
        (e.allocated_by_pytorch_bytes, r.allocated) = split(size(&p.allocated_old, text));
        (e.free_bytes, r.free) = split(size(&p.free_old, text));
        // PyTorch 1.8 to 2.0 print a per-process cap there too.
        (e.allowed_bytes, r.allowed) = split(size(&p.allowed, text));
        if let Some(reserved) = size(&p.reserved_old, text) {
            (e.reserved_by_pytorch_bytes, r.reserved) = split(Some(reserved));
            e.reserved_unallocated_bytes = e
                .reserved_by_pytorch_bytes
                .zip(e.allocated_by_pytorch_bytes)
                .map(|(r, a)| r.saturating_sub(a));
            r.unallocated = Rounding::derived(&[r.reserved, r.allocated]);
        } else if let Some(cached) = size(&p.cached_old, text) {
            (e.reserved_unallocated_bytes, r.unallocated) = split(Some(cached));
            e.reserved_by_pytorch_bytes = e
                .allocated_by_pytorch_bytes
                .map(|a| a.saturating_add(cached.0));
            r.reserved = Rounding::derived(&[r.allocated, r.unallocated]);
        }
    } else if let Some(c) = p.tf_shape.captures(text) {
        e.form = Form::Tensorflow;
        let elems = c[1]
            .split(',')
            .map(|d| d.trim().parse::<u64>())
            .collect::<Result<Vec<_>, _>>()
            .ok();
        e.tried_to_allocate_bytes = elems
            .zip(c.get(2).and_then(|t| tf_dtype_bytes(t.as_str())))
            .and_then(|(dims, b)| dims.iter().try_fold(b, |acc, &d| acc.checked_mul(d)));
        e.gpu_index = c.get(3).and_then(|g| g.as_str().parse().ok());
    } else if let Some(c) = p.tf_allocator.captures(text) {
        e.form = Form::Tensorflow;
        e.gpu_index = c[1].parse().ok();
        (e.tried_to_allocate_bytes, r.tried) = split(sized(&c[2], &c[3]));
    } else if let Some(c) = p.xla_async.captures(text) {
        // The same allocator serves JAX and TensorFlow; the message's paths tell them apart.
        e.form = xla_form(text);
        e.tried_to_allocate_bytes = c[1].parse().ok();
        if let Some(ft) = p.xla_free_total.captures(text) {
            e.free_bytes = ft[1].parse().ok();
            e.total_capacity_bytes = ft[2].parse().ok();
        }
    } else if let Some(c) = p.tpu_space.captures(text) {
        e.form = xla_form(text);
        e.memory_space = Some(c[1].to_ascii_lowercase());
        (e.needed_bytes, r.needed) = split(xla_at(&c, 2));
        (e.space_capacity_bytes, r.space) = split(xla_at(&c, 4));
        // A core's HBM is the device's memory; VMEM is a kernel's, not a capacity to size a
        // batch under.
        if e.memory_space.as_deref() == Some("hbm") {
            (e.total_capacity_bytes, r.total) = (e.space_capacity_bytes, r.space);
        }
        r.exceeded = p.tpu_exceeded.captures(text).and_then(|c| xla_at(&c, 1));
        (e.runtime_reserved_bytes, r.runtime_reserved) =
            split(p.tpu_reserved.captures(text).and_then(|c| xla_at(&c, 3)));
        if let Some(c) = p.tpu_largest.captures(text) {
            (e.largest_allocation_bytes, r.largest) = split(xla_at(&c, 1));
            e.largest_allocation_shape = Some(c[3].to_string());
        }
    } else if let Some(c) = p.tpu_buffer.captures(text) {
        e.form = xla_form(text);
        (e.tried_to_allocate_bytes, r.tried) = split(xla_at(&c, 1));
        (e.free_bytes, r.free) = split(xla_at(&c, 3));
    } else if let Some(c) = p.jax_bytes.captures(text) {
        e.form = Form::Jax;
        e.tried_to_allocate_bytes = c[1].parse().ok();
    } else if let Some(c) = p.jax_request.captures(text) {
        e.form = Form::Jax;
        // The exact bytes when printed beside the rounded figure.
        (e.tried_to_allocate_bytes, r.tried) = match c.get(3).and_then(|b| b.as_str().parse().ok())
        {
            Some(exact) => (Some(exact), None),
            None => split(sized(&c[1], &c[2])),
        };
        e.gpu_index = c[4].parse().ok();
    } else if let Some(c) = p.stream_executor.captures(text) {
        // TensorFlow's stream executor, which JAX's XLA shares.
        e.form = xla_form(text);
        e.tried_to_allocate_bytes = c[1].parse().ok();
    } else if cupy && text.contains("OutOfMemoryError") {
        e.form = Form::Cupy;
        e.tried_to_allocate_bytes = cupy_count(&p.cupy_bytes, text);
        e.pool_bytes = cupy_count(&p.cupy_so_far, text).or_else(|| {
            cupy_count(&p.cupy_total_old, text)
                .zip(e.tried_to_allocate_bytes)
                .map(|(total, tried)| total.saturating_sub(tried))
        });
        e.allowed_bytes = cupy_count(&p.cupy_limit, text);
    } else if (text.contains("numba") || text.contains("CudaAPIError"))
        && text.contains("CUDA_ERROR_OUT_OF_MEMORY")
    {
        e.form = Form::Numba;
        e.rapids = ["cudf", "dask_cuda", "dask-cuda", "rmm"]
            .iter()
            .any(|w| text.contains(w));
    } else if text.contains("ResourceExhaustedError") || text.contains("OOM when allocating") {
        e.form = Form::Tensorflow;
    } else if [
        "CUDA error: out of memory",
        "CUDA_ERROR_OUT_OF_MEMORY",
        "CUBLAS_STATUS_ALLOC_FAILED",
        "cudaErrorMemoryAllocation",
        "cuda runtime error (2) : out of memory",
    ]
    .iter()
    .any(|s| text.contains(s))
        || text.contains("RESOURCE_EXHAUSTED")
    {
        e.form = if text.contains("RESOURCE_EXHAUSTED") {
            match xla_form(text) {
                Form::TorchXla => Form::TorchXla,
                _ => Form::Jax,
            }
        } else if mentions_tensorflow(text) {
            // TensorFlow's own CUDA calls (`cuda_blas.cc`: failed to create cublas handle).
            Form::Tensorflow
        } else {
            Form::CudaBare
        };
    } else {
        return Err(NotOom);
    }
    if e.tried_to_allocate_bytes.is_none() {
        (e.tried_to_allocate_bytes, r.tried) = split(size(&p.tried, text));
    }
    if matches!(e.form, Form::PytorchOld | Form::PytorchNew | Form::CudaBare) {
        e.backend = Some(backend);
    }
    // A word starting "tpu" (not "output"), or HBM (`0x0x0_HBM0`).
    e.tpu = matches!(e.form, Form::Jax | Form::Tensorflow | Form::TorchXla)
        && (p.tpu_word.is_match(text) || text.to_ascii_lowercase().contains("hbm"));
    if e.gpu_index.is_none() && e.form != Form::CpuHost {
        e.gpu_index = p.gpu.captures(text).and_then(|c| c[1].parse().ok());
    }
    (e.held_elsewhere_bytes, e.rounding.held_elsewhere) = held_elsewhere(&e);
    // The presets are NVIDIA's cards: an AMD or Intel GPU of the same size is none of them.
    e.gpu = e
        .total_capacity_bytes
        .filter(|_| e.backend.is_none_or(|b| b == Backend::Cuda) && !e.tpu)
        .and_then(presets::from_total_capacity)
        .map(|p| p.id);
    e.figures = figures(&e);
    e.advice = advice(&e);
    Ok(e)
}

#[cfg(test)]
mod tests;
