//! Explains a pasted out-of-memory message: PyTorch's older and newer forms, TensorFlow's and
//! JAX's resource-exhausted forms, and the bare "CUDA error: out of memory". Extracts every
//! figure (units as printed), says what each means, and lists fixes in order of effect for that
//! case, each with the line of code or setting to change. Pure: no I/O.

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
    /// `CUDA error: out of memory` (or `CUDA_ERROR_OUT_OF_MEMORY`), with no figures.
    CudaBare,
}

impl Form {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::PytorchOld => "PyTorch (before 2.1)",
            Self::PytorchNew => "PyTorch (2.1 and later)",
            Self::Tensorflow => "TensorFlow",
            Self::Jax => "JAX / XLA",
            Self::CudaBare => "CUDA, without figures",
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
    /// What each figure means, in words.
    pub figures: Vec<String>,
    /// Fixes, most effective first for this case, each with the line to change.
    pub advice: Vec<String>,
    /// With a model named (`--model`): the estimator's largest batch under the capacity.
    pub largest_batch: Option<LargestBatch>,
}

/// The estimator's answer to "which batch would have fitted?".
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LargestBatch {
    pub model: String,
    pub seq: usize,
    pub dtype: crate::precision::Precision,
    pub capacity_bytes: u64,
    /// None: not even batch 1 fits.
    pub batch: Option<usize>,
}

impl Explanation {
    /// Names the largest batch in the "smaller batch" advice.
    pub fn set_largest_batch(&mut self, lb: LargestBatch) {
        let what = match lb.batch {
            Some(b) => format!(
                "the largest batch that fits is {b} for {} at seq {} in {} under {} (oomlab's estimate of one forward; the CUDA context, optimizer state and gradients are not in it)",
                lb.model,
                lb.seq,
                lb.dtype,
                h(lb.capacity_bytes)
            ),
            None => format!(
                "not even batch 1 of {} at seq {} in {} fits under {}: use a smaller precision or shorter sequences",
                lb.model,
                lb.seq,
                lb.dtype,
                h(lb.capacity_bytes)
            ),
        };
        for a in &mut self.advice {
            if a.starts_with("use a smaller batch") {
                *a = format!(
                    "use a smaller batch — {what}; {}",
                    &a["use a smaller batch: ".len()..]
                );
            }
        }
        self.largest_batch = Some(lb);
    }
}

/// Why a text could not be explained.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "not an out-of-memory message I recognise; expected PyTorch's \"CUDA out of memory. Tried to allocate …\", TensorFlow's \"OOM when allocating tensor …\" or \"ran out of memory trying to allocate …\", JAX's \"RESOURCE_EXHAUSTED: Out of memory …\", or \"CUDA error: out of memory\""
)]
pub struct NotOom;

const SIZE: &str = r"([0-9]+(?:\.[0-9]+)?)\s*(TiB|GiB|MiB|KiB|TB|GB|MB|KB|bytes|B)\b";

fn re(pattern: &str) -> Regex {
    Regex::new(&pattern.replace("SIZE", SIZE)).expect("a valid pattern")
}

/// Bytes of a size as printed: binary units (KiB …) by 1024, decimal ones (KB …) by 1000.
fn bytes(num: &str, unit: &str) -> Option<u64> {
    let v: f64 = num.parse().ok()?;
    let scale: f64 = match unit {
        "B" | "bytes" => 1.0,
        "KiB" => 1024.0,
        "MiB" => 1024.0 * 1024.0,
        "GiB" => 1024.0 * 1024.0 * 1024.0,
        "TiB" => 1024.0 * 1024.0 * 1024.0 * 1024.0,
        "KB" => 1e3,
        "MB" => 1e6,
        "GB" => 1e9,
        "TB" => 1e12,
        _ => return None,
    };
    Some((v * scale).round() as u64)
}

/// The first size captured by `r` (its first two groups), in bytes.
fn size(r: &Regex, text: &str) -> Option<u64> {
    let c = r.captures(text)?;
    bytes(c.get(1)?.as_str(), c.get(2)?.as_str())
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
    of_allocated: Regex,
    process: Regex,
    non_pytorch: Regex,
    tf_shape: Regex,
    tf_allocator: Regex,
    jax_bytes: Regex,
    jax_request: Regex,
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
    // Before "reserved", PyTorch called it "cached".
    reserved_old: re(r"SIZE (?:reserved in total by PyTorch|cached)"),
    of_allocated: re(
        r"Of the allocated memory SIZE is allocated by PyTorch, and SIZE is reserved by PyTorch but unallocated",
    ),
    process: re(r"Process (\d+) has SIZE memory in use"),
    non_pytorch: re(r"this process has SIZE memory in use"),
    tf_shape: re(
        r"OOM when allocating tensor with shape\s*\[([0-9,\s]*)\]\s*and type (\w+) on [^\s]*?device:GPU:(\d+)",
    ),
    tf_allocator: re(r"Allocator \(GPU_(\d+)_bfc\) ran out of memory trying to allocate SIZE"),
    jax_bytes: re(r"Out of memory while trying to allocate (\d+) bytes"),
    jax_request: re(
        r"Failed to allocate request for SIZE(?:\s*\((\d+)B\))? on device ordinal (\d+)",
    ),
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

/// Reads the message and explains it.
pub fn explain(text: &str) -> Result<Explanation, NotOom> {
    let p = &*P;
    let mut e = Explanation {
        form: Form::CudaBare,
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
        figures: Vec::new(),
        advice: Vec::new(),
        largest_batch: None,
    };
    let pytorch = text.contains("CUDA out of memory") || text.contains("OutOfMemoryError");
    if pytorch && (p.total_new.is_match(text) || p.of_allocated.is_match(text)) {
        e.form = Form::PytorchNew;
        e.total_capacity_bytes = size(&p.total_new, text);
        e.free_bytes = size(&p.free_new, text);
        if let Some(c) = p.of_allocated.captures(text) {
            e.allocated_by_pytorch_bytes = bytes(&c[1], &c[2]);
            e.reserved_unallocated_bytes = bytes(&c[3], &c[4]);
            e.reserved_by_pytorch_bytes = e
                .allocated_by_pytorch_bytes
                .zip(e.reserved_unallocated_bytes)
                .map(|(a, r)| a + r);
        }
        e.processes = p
            .process
            .captures_iter(text)
            .filter_map(|c| {
                Some(ProcessUse {
                    pid: c[1].parse().ok()?,
                    bytes: bytes(&c[2], &c[3])?,
                })
            })
            .collect();
        e.process_in_use_bytes = size(&p.non_pytorch, text)
            .or_else(|| (e.processes.len() == 1).then(|| e.processes[0].bytes));
    } else if pytorch {
        e.form = Form::PytorchOld;
        e.total_capacity_bytes = size(&p.total_old, text);
        e.allocated_by_pytorch_bytes = size(&p.allocated_old, text);
        e.free_bytes = size(&p.free_old, text);
        e.reserved_by_pytorch_bytes = size(&p.reserved_old, text);
        e.reserved_unallocated_bytes = e
            .reserved_by_pytorch_bytes
            .zip(e.allocated_by_pytorch_bytes)
            .map(|(r, a)| r.saturating_sub(a));
    } else if let Some(c) = p.tf_shape.captures(text) {
        e.form = Form::Tensorflow;
        let elems = c[1]
            .split(',')
            .map(|d| d.trim().parse::<u64>())
            .collect::<Result<Vec<_>, _>>()
            .ok();
        e.tried_to_allocate_bytes = elems
            .zip(tf_dtype_bytes(&c[2]))
            .map(|(dims, b)| dims.iter().product::<u64>() * b);
        e.gpu_index = c[3].parse().ok();
    } else if let Some(c) = p.tf_allocator.captures(text) {
        e.form = Form::Tensorflow;
        e.gpu_index = c[1].parse().ok();
        e.tried_to_allocate_bytes = bytes(&c[2], &c[3]);
    } else if let Some(c) = p.jax_bytes.captures(text) {
        e.form = Form::Jax;
        e.tried_to_allocate_bytes = c[1].parse().ok();
    } else if let Some(c) = p.jax_request.captures(text) {
        e.form = Form::Jax;
        e.tried_to_allocate_bytes = c
            .get(3)
            .and_then(|b| b.as_str().parse().ok())
            .or_else(|| bytes(&c[1], &c[2]));
        e.gpu_index = c[4].parse().ok();
    } else if text.contains("CUDA error: out of memory")
        || text.contains("CUDA_ERROR_OUT_OF_MEMORY")
        || text.contains("RESOURCE_EXHAUSTED")
    {
        e.form = if text.contains("RESOURCE_EXHAUSTED") {
            Form::Jax
        } else {
            Form::CudaBare
        };
    } else {
        return Err(NotOom);
    }
    if e.tried_to_allocate_bytes.is_none() {
        e.tried_to_allocate_bytes = size(&p.tried, text);
    }
    if e.gpu_index.is_none() {
        e.gpu_index = p.gpu.captures(text).and_then(|c| c[1].parse().ok());
    }
    e.held_elsewhere_bytes = held_elsewhere(&e);
    e.figures = figures(&e);
    e.advice = advice(&e);
    Ok(e)
}

/// Memory neither free nor this process's allocator's: other processes and CUDA contexts.
fn held_elsewhere(e: &Explanation) -> Option<u64> {
    let (total, free) = (e.total_capacity_bytes?, e.free_bytes?);
    let mine = e.process_in_use_bytes.or(e.reserved_by_pytorch_bytes)?;
    Some(total.saturating_sub(free).saturating_sub(mine))
}

/// Bytes with two decimals in the largest binary unit, as PyTorch prints them (`11.17 GiB`).
fn h(b: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    UNITS.iter().find(|(size, _)| b >= *size).map_or_else(
        || format!("{b} B"),
        |(size, unit)| format!("{:.2} {unit}", b as f64 / *size as f64),
    )
}

fn figures(e: &Explanation) -> Vec<String> {
    let mut out = Vec::new();
    if let Some(b) = e.tried_to_allocate_bytes {
        out.push(format!(
            "tried to allocate {}: the one request that failed — often a single layer's activation, not the whole step",
            h(b)
        ));
    }
    if let Some(b) = e.total_capacity_bytes {
        out.push(format!(
            "total capacity {}: the GPU's memory as the driver reports it{}",
            h(b),
            e.gpu_index
                .map_or_else(String::new, |i| format!(" (GPU {i})"))
        ));
    }
    if let Some(b) = e.free_bytes {
        out.push(format!(
            "free {}: unused by any process when the request failed",
            h(b)
        ));
    }
    if let Some(b) = e.allocated_by_pytorch_bytes {
        out.push(format!(
            "allocated by PyTorch {}: tensors alive at that moment (weights, activations, gradients, optimizer state)",
            h(b)
        ));
    }
    if let Some(b) = e.reserved_by_pytorch_bytes {
        out.push(format!(
            "reserved by PyTorch {}: what its caching allocator holds from the driver, tensors and cached free blocks together",
            h(b)
        ));
    }
    if let Some(b) = e.reserved_unallocated_bytes {
        out.push(format!(
            "reserved but unallocated {}: cached blocks no tensor uses; when large, free memory is there but split into pieces too small for the request (fragmentation)",
            h(b)
        ));
    }
    for p in &e.processes {
        out.push(format!(
            "process {} holds {} on the GPU, CUDA context and non-PyTorch memory included",
            p.pid,
            h(p.bytes)
        ));
    }
    if let Some(b) = e.held_elsewhere_bytes {
        out.push(format!(
            "held elsewhere {}: neither free nor this process's allocator's — other processes, and CUDA contexts",
            h(b)
        ));
    }
    out
}

fn advice(e: &Explanation) -> Vec<String> {
    let need = e.tried_to_allocate_bytes.unwrap_or(0);
    let total = e.total_capacity_bytes.unwrap_or(u64::MAX);
    let fragmented = e
        .reserved_unallocated_bytes
        .is_some_and(|r| r >= need.max(1) || r.saturating_mul(10) >= total);
    // Freeing what others hold would satisfy the request. The older form counts this process's
    // own CUDA context there too (a few hundred MiB), so leave that out.
    let context = if e.form == Form::PytorchOld {
        512 << 20
    } else {
        0
    };
    let others = e
        .held_elsewhere_bytes
        .is_some_and(|b| b.saturating_sub(context) >= need.max(1));
    let mut out = Vec::new();
    if fragmented {
        out.push(if e.form == Form::PytorchOld {
            "reduce fragmentation: run with PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:128 (or, on PyTorch 2.1 and later, `export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`); reserved memory is then reused instead of split into unusable pieces".into()
        } else {
            "reduce fragmentation: run with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (e.g. `export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` before starting Python); the cached blocks then grow in place instead of splitting".into()
        });
    }
    if others {
        out.push(
            "free the GPU: other processes hold memory you need — see them with `nvidia-smi` and stop them; `torch.cuda.empty_cache()` in *another* PyTorch process returns its cached blocks to the GPU (in the failing process it does not help)".into(),
        );
    }
    out.push(
        "use a smaller batch: activations grow linearly with batch — e.g. `per_device_train_batch_size=…` (Hugging Face Trainer) or `DataLoader(dataset, batch_size=…)`; gradient accumulation (`gradient_accumulation_steps=…`) keeps the effective batch".into(),
    );
    out.push(
        "use mixed precision: halves activations and weights — `with torch.autocast(\"cuda\", dtype=torch.bfloat16):` around the forward, `bf16=True` (Trainer), or `model.half()` for inference".into(),
    );
    out.push(
        "use shorter sequences: attention's memory grows with the square of the length — `tokenizer(..., truncation=True, max_length=…)`".into(),
    );
    out.push(
        "trade compute for memory in training: `model.gradient_checkpointing_enable()` keeps fewer activations for the backward pass".into(),
    );
    if !others && e.held_elsewhere_bytes.is_some() {
        out.push(
            "check other processes anyway with `nvidia-smi`: memory they hold is never available to yours".into(),
        );
    }
    out
}

impl Explanation {
    /// The explanation for a person: the form, the figures and the fixes.
    #[must_use]
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = format!(
            "{} out-of-memory message.\n\nWhat it says:\n",
            self.form.name()
        );
        if self.figures.is_empty() {
            s.push_str("- no figures: the device ran out of memory (run with the framework's own allocator to see sizes)\n");
        }
        for f in &self.figures {
            let _ = writeln!(s, "- {f}");
        }
        s.push_str("\nWhat to do, most effective first:\n");
        for (i, a) in self.advice.iter().enumerate() {
            let _ = writeln!(s, "{}. {a}", i + 1);
        }
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Real messages from public issue trackers (each with its source in the fixture).
    #[test]
    fn real_messages_from_public_trackers_are_read() {
        let path = concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/tests/fixtures/oom_messages.json"
        );
        let fixtures: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap();
        for m in fixtures.as_array().unwrap() {
            let (id, text) = (m["id"].as_str().unwrap(), m["text"].as_str().unwrap());
            assert!(
                m["source"].as_str().unwrap().starts_with("https://"),
                "{id}"
            );
            let want = match m["form"].as_str().unwrap() {
                "pytorch-old" => Form::PytorchOld,
                "pytorch-new" => Form::PytorchNew,
                "tensorflow" => Form::Tensorflow,
                "jax" => Form::Jax,
                "cuda-bare" => Form::CudaBare,
                _ => {
                    assert!(explain(text).is_err(), "{id} is no OOM message");
                    continue;
                }
            };
            let e = explain(text).unwrap_or_else(|_| panic!("{id} not read"));
            assert_eq!(e.form, want, "{id}");
            // Every figure the text states is extracted.
            let says = |phrase: &str| text.contains(phrase);
            assert_eq!(
                e.tried_to_allocate_bytes.is_some(),
                says("llocat") && !says("CUDA error"),
                "{id}"
            );
            assert_eq!(
                e.total_capacity_bytes.is_some(),
                says("total capac"),
                "{id}"
            );
            let pytorch = matches!(want, Form::PytorchOld | Form::PytorchNew);
            assert_eq!(e.free_bytes.is_some(), pytorch && says(" free"), "{id}");
            assert_eq!(
                e.reserved_unallocated_bytes.is_some(),
                says("reserved") || says("cached"),
                "{id}"
            );
            assert_eq!(
                e.process_in_use_bytes.is_some(),
                says("memory in use"),
                "{id}"
            );
            assert!(!e.advice.is_empty(), "{id}");
        }
    }

    #[test]
    fn figures_in_each_form_come_out_in_bytes() {
        let new = explain("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 572.00 MiB. GPU 0 has a total capacity of 39.49 GiB of which 321.31 MiB is free. Process 3721648 has 414.00 MiB memory in use. Including non-PyTorch memory, this process has 37.46 GiB memory in use. Process 1374765 has 414.00 MiB memory in use. Of the allocated memory 36.04 GiB is allocated by PyTorch, and 321.37 MiB is reserved by PyTorch but unallocated.").unwrap();
        assert_eq!(new.tried_to_allocate_bytes, Some(572 << 20));
        assert_eq!(new.process_in_use_bytes, bytes("37.46", "GiB"));
        assert_eq!(new.processes.len(), 2);
        assert_eq!(new.reserved_unallocated_bytes, bytes("321.37", "MiB"));
        // Other processes hold more than the request: freeing them comes first.
        assert!(
            new.advice[0].starts_with("free the GPU"),
            "{:?}",
            new.advice
        );
        let tf = explain("ResourceExhaustedError: OOM when allocating tensor with shape[8,64,256,256] and type float on /job:localhost/replica:0/task:0/device:GPU:0 by allocator GPU_0_bfc").unwrap();
        assert_eq!(tf.tried_to_allocate_bytes, Some(8 * 64 * 256 * 256 * 4));
        assert_eq!(tf.gpu_index, Some(0));
        let jax = explain("Resource exhausted: Failed to allocate request for 32.00MiB (33554432B) on device ordinal 0").unwrap();
        assert_eq!(jax.tried_to_allocate_bytes, Some(33_554_432));
        let frag = explain("torch.cuda.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.00 GiB. GPU 0 has a total capacty of 23.65 GiB of which 1.66 GiB is free. Including non-PyTorch memory, this process has 20.81 GiB memory in use. Of the allocated memory 12.09 GiB is allocated by PyTorch, and 4.84 GiB is reserved by PyTorch but unallocated.").unwrap();
        assert!(
            frag.advice[0].contains("expandable_segments:True"),
            "{:?}",
            frag.advice
        );
    }

    #[test]
    fn the_classic_report_is_read_figure_by_figure() {
        let e = explain("RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 11.17 GiB total capacity; 9.00 GiB already allocated; 1.50 GiB free; 9.50 GiB reserved in total by PyTorch)").unwrap();
        assert_eq!(e.form, Form::PytorchOld);
        assert_eq!(e.gpu_index, Some(0));
        assert_eq!(e.tried_to_allocate_bytes, Some(2 << 30));
        assert_eq!(
            e.total_capacity_bytes,
            Some((11.17 * f64::from(1u32 << 30)).round() as u64)
        );
        assert_eq!(e.allocated_by_pytorch_bytes, Some(9 << 30));
        assert_eq!(e.free_bytes, Some(3 << 29));
        assert_eq!(e.reserved_by_pytorch_bytes, Some(19 << 29));
        assert_eq!(e.reserved_unallocated_bytes, Some(1 << 29));
        assert!(e.process_in_use_bytes.is_none());
        // 11.17 − 1.5 free − 9.5 reserved ≈ 0.17 GiB held elsewhere (contexts, other processes).
        assert!(e.held_elsewhere_bytes.unwrap() < 200 << 20);
        assert!(
            e.advice[0].starts_with("use a smaller batch"),
            "{:?}",
            e.advice
        );
    }

    #[test]
    fn text_that_is_not_an_oom_message_is_refused() {
        let e = explain("RuntimeError: CUDA error: device-side assert triggered").unwrap_err();
        assert!(
            e.to_string()
                .contains("not an out-of-memory message I recognise")
        );
    }
}
