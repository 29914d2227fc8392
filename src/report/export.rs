//! Exports: the recommendation as TOML or JSON (by extension), the trials as CSV, and the atomic
//! write every file output goes through.

use super::records::{Results, TrialRecord};
use crate::plan::{Face, PlanField, Precision, Runtime, Workload};
use crate::search::BoundaryStatus;
use serde::Serialize;
use std::io::Write;
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    #[error("{} already exists; choose another file name or allow overwriting it", path.display())]
    Exists { path: PathBuf },
    #[error("cannot write {}: {source}; choose a folder you can write to", path.display())]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{}: unknown export format '{ext}'; use a .toml, .json or .csv file name", path.display())]
    Format { path: PathBuf, ext: String },
    #[error(
        "no configuration fits under the headroom limit, so there is nothing to recommend; raise the capacity, lower the headroom, or try shorter sequences"
    )]
    NoPick,
    #[error("encoding {what}: {message}")]
    Encode { what: &'static str, message: String },
}

impl ExportError {
    /// One sentence with the fix in `face`'s words.
    #[must_use]
    pub fn describe(&self, face: &dyn Face) -> String {
        match self {
            Self::Exists { path } => format!(
                "{} already exists; {} or choose another file name",
                path.display(),
                face.overwrite()
            ),
            Self::NoPick => format!(
                "no configuration fits under the headroom limit, so there is nothing to recommend; raise {}, lower {}, or try shorter sequences in {}",
                face.control(PlanField::Capacity),
                face.control(PlanField::Headroom),
                face.control(PlanField::Seq)
            ),
            other => other.to_string(),
        }
    }
}

/// Writes `bytes` to `path` atomically (temporary file in the same folder, fsync, rename).
/// Refuses to replace an existing file unless `force`.
pub fn write_atomic(path: &Path, bytes: &[u8], force: bool) -> Result<(), ExportError> {
    if path.exists() && !force {
        return Err(ExportError::Exists {
            path: path.to_path_buf(),
        });
    }
    let werr = |source| ExportError::Write {
        path: path.to_path_buf(),
        source,
    };
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let name = path
        .file_name()
        .map_or_else(|| "export".into(), |n| n.to_string_lossy().to_string());
    let tmp = dir.join(format!(".{name}.tmp-{}", std::process::id()));
    let result = (|| {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(bytes)?;
        f.sync_all()?;
        std::fs::rename(&tmp, path)
    })();
    if let Err(e) = result {
        let _ = std::fs::remove_file(&tmp);
        return Err(werr(e));
    }
    Ok(())
}

#[derive(Debug, Serialize)]
struct ExportDoc<'a> {
    /// What a reader must know before applying the values: an unfinished sweep (naming its
    /// curves), a pick at the top of the range (the boundary lies above it). Empty: none.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    oomlab: OomlabSection<'a>,
    huggingface: HfSection,
    curves: Vec<CurveLine>,
}

#[derive(Debug, Serialize)]
struct OomlabSection<'a> {
    version: &'a str,
    model: &'a str,
    family: &'a str,
    /// The program that measured the pick: candle or torch (PyTorch).
    runtime: &'static str,
    /// What one trial ran: one inference forward, a forward keeping the graph, a training step.
    workload: &'static str,
    /// The runtime, the workload and where it was measured, in words.
    sized: String,
    /// With an inference workload: that a training batch is smaller, and how to measure it.
    #[serde(skip_serializing_if = "Option::is_none")]
    training: Option<&'static str>,
    /// candle: what its forward computes.
    #[serde(skip_serializing_if = "Option::is_none")]
    forward: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    torch_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    torch_cuda: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    transformers_version: Option<&'a str>,
    #[serde(skip_serializing_if = "Option::is_none")]
    python_version: Option<&'a str>,
    batch_size: usize,
    seq_len: usize,
    dtype: &'a str,
    tokens_per_step: usize,
    /// The pick's curve: its boundary b* (the largest batch that fits below the lowest OOM;
    /// absent unless the boundary was found) and its status (`exact`, `above_range`, …).
    #[serde(skip_serializing_if = "Option::is_none")]
    b_star: Option<usize>,
    status: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    total_bytes: Option<u64>,
    /// False when the batch is computed from the measured line and no trial measured it.
    confirmed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    predicted_bytes: Option<u64>,
    capacity_bytes: u64,
    /// The GPU preset the capacity is (a CPU measurement against it unless `device` is cuda).
    #[serde(skip_serializing_if = "Option::is_none")]
    capacity_preset: Option<String>,
    headroom: f64,
    limit_bytes: u64,
    device: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    threads: Option<usize>,
    strategy: &'a str,
    measured: &'static str,
    rule: &'a str,
    /// Where each `[huggingface]` value goes.
    huggingface_keys: &'static str,
}

/// Hugging Face names: `TrainingArguments` (batch size, checkpointing, bf16/fp16, optim), the
/// tokenizer (`max_length`) and `from_pretrained` (`torch_dtype`, `attn_implementation`).
#[derive(Debug, Serialize)]
struct HfSection {
    #[serde(skip_serializing_if = "Option::is_none")]
    per_device_train_batch_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    per_device_eval_batch_size: Option<usize>,
    #[serde(skip_serializing_if = "Option::is_none")]
    gradient_checkpointing: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    bf16: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    fp16: Option<bool>,
    #[serde(skip_serializing_if = "Option::is_none")]
    optim: Option<&'static str>,
    /// SGD was measured with momentum 0.9 (Trainer's `sgd` has none unless told).
    #[serde(skip_serializing_if = "Option::is_none")]
    optim_args: Option<&'static str>,
    max_length: usize,
    torch_dtype: &'static str,
    #[serde(skip_serializing_if = "Option::is_none")]
    attn_implementation: Option<&'static str>,
}

#[derive(Debug, Serialize)]
struct CurveLine {
    runtime: &'static str,
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    gradient_checkpointing: bool,
    seq_len: usize,
    dtype: &'static str,
    /// `exact`, `above_range`, `none_fits`, `non_monotone`, `host_limited` or `incomplete`.
    status: &'static str,
    /// The boundary: the largest batch that fits below the lowest OOM (only when one was
    /// found: never the top of the range).
    #[serde(skip_serializing_if = "Option::is_none")]
    b_star: Option<usize>,
    /// `above_range`: the largest batch tried, every one up to it fitting.
    #[serde(skip_serializing_if = "Option::is_none")]
    largest_tried: Option<usize>,
    /// The largest batch under the headroom limit; absent when none is.
    #[serde(skip_serializing_if = "Option::is_none")]
    safe_batch_size: Option<usize>,
    /// What the status means for this curve, when it is not exact.
    #[serde(skip_serializing_if = "Option::is_none")]
    note: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    total_bytes: Option<u64>,
    confirmed: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    predicted_bytes: Option<u64>,
}

const MEASURED: &str = "peak bytes counted by oomlab's allocator during a real candle forward (requested bytes, not resident pages), against a simulated capacity";
const MEASURED_TORCH_CPU: &str = "PyTorch's own count of tensor bytes (its profiler's memory events, from before the model was built) at the peak of the trial, against a simulated capacity; a CPU trial runs to its end and is then compared; on x86 the worker holds oneDNN to AVX2 (ONEDNN_MAX_CPU_ISA), so an AVX-512 CPU's per-call bf16 matmul scratchpad, a CPU artefact, is not counted";
const MEASURED_TORCH_CUDA: &str = "torch.cuda's statistics: the caching allocator's reserved high-water mark plus the memory outside it (CUDA context, kernel modules), against the capacity made real on the GPU";

/// The recommendation document in the format the extension names (`.toml` or `.json`).
pub fn recommendation_text(results: &Results, ext: &str) -> Result<String, ExportError> {
    let pick = results
        .recommendation
        .pick
        .as_ref()
        .ok_or(ExportError::NoPick)?;
    let torch = pick.runtime == Runtime::Torch;
    let workload = if torch {
        results.plan.workload
    } else {
        Workload::Infer
    };
    let versions = results.torch_versions.get(&pick.curve().build().label());
    let train = workload == Workload::Train;
    let boundary =
        |curve: crate::plan::Curve| results.boundaries.iter().find(|b| b.curve() == curve);
    let pick_boundary = boundary(pick.curve());
    let doc = ExportDoc {
        warnings: warnings(results),
        oomlab: OomlabSection {
            version: &results.oomlab_version,
            model: &results.model,
            family: results.family.name(),
            runtime: pick.runtime.name(),
            workload: workload.describe(),
            sized: results.sized(pick.runtime),
            training: (workload == Workload::Infer).then_some(super::records::TRAINING_NEEDS_MORE),
            forward: (!torch).then_some(results.forward.as_str()),
            torch_version: versions.map(|v| v.torch.as_str()),
            torch_cuda: versions.and_then(|v| v.torch_cuda.as_deref()),
            transformers_version: versions.map(|v| v.transformers.as_str()),
            python_version: versions.map(|v| v.python.as_str()),
            batch_size: pick.batch,
            seq_len: pick.seq,
            dtype: pick.dtype.name(),
            tokens_per_step: pick.tokens_per_step,
            b_star: pick_boundary.and_then(b_star),
            status: pick_boundary.map_or("incomplete", |b| b.status.name()),
            total_bytes: pick.total_bytes,
            confirmed: !pick.computed,
            predicted_bytes: pick.predicted_bytes.filter(|_| pick.computed),
            capacity_bytes: results.capacity_bytes,
            capacity_preset: results.plan.gpu.map(|p| {
                if results.on_gpu() {
                    p.name.to_string()
                } else {
                    format!("{} ({})", p.name, crate::presets::CPU_NOTE)
                }
            }),
            headroom: results.headroom,
            limit_bytes: results.recommendation.limit_bytes,
            device: results.device.name(),
            threads: results.threads,
            strategy: results.strategy.name(),
            measured: match (torch, results.on_gpu()) {
                (false, _) => MEASURED,
                (true, false) => MEASURED_TORCH_CPU,
                (true, true) => MEASURED_TORCH_CUDA,
            },
            rule: &results.recommendation.rule,
            huggingface_keys: HF_KEYS,
        },
        huggingface: HfSection {
            per_device_train_batch_size: train.then_some(pick.batch),
            per_device_eval_batch_size: (!train).then_some(pick.batch),
            gradient_checkpointing: train.then_some(pick.checkpointing),
            bf16: (torch && pick.dtype == Precision::AmpBf16).then_some(true),
            fp16: (torch && pick.dtype == Precision::AmpF16).then_some(true),
            optim: train.then(|| results.plan.torch.optimizer.hf_optim()),
            optim_args: (train && results.plan.torch.optimizer == crate::plan::Optimizer::Sgd)
                .then_some("momentum=0.9"),
            max_length: pick.seq,
            torch_dtype: pick.dtype.torch_name(),
            attn_implementation: torch.then_some(results.plan.torch_attn(results.family).name()),
        },
        curves: results
            .recommendation
            .curves
            .iter()
            .map(|c| {
                let b = boundary(c.curve());
                let status = b.map_or(BoundaryStatus::Incomplete, |b| b.status);
                CurveLine {
                    runtime: c.runtime.name(),
                    gradient_checkpointing: c.checkpointing,
                    seq_len: c.seq,
                    dtype: c.dtype.name(),
                    status: status.name(),
                    b_star: b.and_then(b_star),
                    largest_tried: b
                        .filter(|b| b.status == BoundaryStatus::AboveRange)
                        .and_then(|b| b.max_batch),
                    safe_batch_size: c.batch,
                    note: b.and_then(|b| curve_note(b, results)),
                    total_bytes: c.total_bytes,
                    confirmed: !c.computed,
                    predicted_bytes: c.predicted_bytes.filter(|_| c.computed),
                }
            })
            .collect(),
    };
    match ext {
        "toml" => toml::to_string_pretty(&doc)
            .map(|t| toml_header(&doc.warnings) + &t)
            .map_err(|e| ExportError::Encode {
                what: "TOML",
                message: e.to_string(),
            }),
        "json" => serde_json::to_string_pretty(&doc)
            .map(|s| s + "\n")
            .map_err(|e| ExportError::Encode {
                what: "JSON",
                message: e.to_string(),
            }),
        _ => Err(ExportError::Format {
            path: PathBuf::new(),
            ext: ext.into(),
        }),
    }
}

/// Where each `[huggingface]` value goes.
const HF_KEYS: &str = "per_device_train_batch_size / per_device_eval_batch_size, gradient_checkpointing, bf16, fp16, optim, optim_args: TrainingArguments(...); max_length: the tokenizer (tokenizer(texts, truncation=True, max_length=...)); torch_dtype, attn_implementation: from_pretrained(..., dtype=..., attn_implementation=...)";

/// A boundary's b*: only a boundary that was found (not the top of the range, not none).
fn b_star(b: &super::records::BoundaryRecord) -> Option<usize> {
    match b.status {
        BoundaryStatus::Exact | BoundaryStatus::NonMonotone | BoundaryStatus::HostLimited => {
            b.max_batch
        }
        BoundaryStatus::AboveRange | BoundaryStatus::NoneFits | BoundaryStatus::Incomplete => None,
    }
}

/// What a curve's status means for a reader of the export, when it is not exact.
fn curve_note(b: &super::records::BoundaryRecord, results: &Results) -> Option<String> {
    match b.status {
        BoundaryStatus::Exact => None,
        BoundaryStatus::AboveRange => Some(format!(
            "every batch tried fits, up to {} (the top of the batch range {}..{}): the boundary lies above it and was not found; widen --batch to find it",
            b.max_batch.unwrap_or(results.batch_range[1]),
            results.batch_range[0],
            results.batch_range[1]
        )),
        BoundaryStatus::NoneFits => Some(format!(
            "not even batch {} fits: use a smaller precision, shorter sequences or a larger capacity",
            results.batch_range[0]
        )),
        BoundaryStatus::NonMonotone | BoundaryStatus::HostLimited | BoundaryStatus::Incomplete => {
            b.reason().or_else(|| Some(b.status.name().to_string()))
        }
    }
}

/// The export's warnings: an unfinished sweep, a pick whose boundary lies above the range.
fn warnings(results: &Results) -> Vec<String> {
    let mut out = Vec::new();
    let unfinished = results.unfinished_curves();
    if results.incomplete || !unfinished.is_empty() {
        out.push(format!(
            "INCOMPLETE SWEEP: {} not finished ({}); the recommendation is among the finished curves only. Resume it with `oomlab sweep --resume JOURNAL` and export again",
            if unfinished.len() == 1 { "1 curve".to_string() } else { format!("{} curves", unfinished.len()) },
            if unfinished.is_empty() { "the sweep stopped early".to_string() } else { unfinished.join(", ") }
        ));
    }
    if let Some(pick) = &results.recommendation.pick
        && results
            .boundaries
            .iter()
            .any(|b| b.curve() == pick.curve() && b.status == BoundaryStatus::AboveRange)
    {
        out.push(format!(
            "ABOVE RANGE: the picked curve ({}) fits every batch tried, up to {}: batch_size {} is the largest safe batch tried, not the boundary; larger batches may fit (widen --batch)",
            pick.curve(),
            results.batch_range[1],
            pick.batch
        ));
    }
    out
}

/// The TOML's opening comment: the warnings (also in `warnings`), then where the keys go.
fn toml_header(warnings: &[String]) -> String {
    let mut s = String::from("# oomlab recommendation\n");
    for w in warnings {
        s.push_str("# ");
        s.push_str(w);
        s.push('\n');
    }
    s.push_str("# [huggingface] values: ");
    s.push_str(HF_KEYS);
    s.push_str("\n\n");
    s
}

/// Every trial as CSV rows (empty cells for unknown numbers).
pub fn trials_csv(trials: &[TrialRecord]) -> Result<String, ExportError> {
    let enc = |e: csv::Error| ExportError::Encode {
        what: "CSV",
        message: e.to_string(),
    };
    let mut w = csv::Writer::from_writer(Vec::new());
    w.write_record([
        "batch",
        "seq",
        "dtype",
        "strategy",
        "purpose",
        "outcome",
        "peak_bytes",
        "total_bytes",
        "requested_bytes",
        "reason",
        "seconds",
        "runtime",
        "gradient_checkpointing",
    ])
    .map_err(enc)?;
    let opt = |v: Option<u64>| v.map(|x| x.to_string()).unwrap_or_default();
    for t in trials {
        w.write_record([
            t.batch.to_string(),
            t.seq.to_string(),
            t.dtype.name().to_string(),
            t.strategy.name().to_string(),
            format!("{:?}", t.purpose).to_lowercase(),
            format!("{:?}", t.outcome).to_lowercase(),
            opt(t.peak_bytes),
            opt(t.total_bytes),
            opt(t.requested_bytes),
            t.reason.clone().unwrap_or_default(),
            format!("{:.4}", t.seconds),
            t.runtime.name().to_string(),
            crate::runtime::on_off(t.checkpointing).to_string(),
        ])
        .map_err(enc)?;
    }
    let bytes = w.into_inner().map_err(|e| ExportError::Encode {
        what: "CSV",
        message: e.to_string(),
    })?;
    String::from_utf8(bytes).map_err(|e| ExportError::Encode {
        what: "CSV",
        message: e.to_string(),
    })
}

/// Writes the export named by `path`'s extension: `.toml`/`.json` recommendation, `.csv` trials.
pub fn export(results: &Results, path: &Path, force: bool) -> Result<(), ExportError> {
    let ext = path
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    let text = match ext.as_str() {
        "toml" | "json" => recommendation_text(results, &ext)?,
        "csv" => trials_csv(&results.trials)?,
        _ => {
            return Err(ExportError::Format {
                path: path.to_path_buf(),
                ext,
            });
        }
    };
    write_atomic(path, text.as_bytes(), force)
}

/// Writes the results document (`--json`).
pub fn write_results(results: &Results, path: &Path, force: bool) -> Result<(), ExportError> {
    let text = serde_json::to_string_pretty(results).map_err(|e| ExportError::Encode {
        what: "JSON",
        message: e.to_string(),
    })?;
    write_atomic(path, (text + "\n").as_bytes(), force)
}
