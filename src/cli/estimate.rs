//! `oomlab estimate`: the analytic estimate of a forward's memory, by part, for a list of points;
//! `--check` measures the same points with the real worker beside it.

use super::CliError;
use crate::calibrate::{self, Source};
use crate::catalog::{ModelRef, ModelSpec};
use crate::estimate::{self, Breakdown, Runtime};
use crate::plan::PlanError;
use crate::plan::{BatchRange, Device, PlanField, PlanProblem, Precision, defaults, human_bytes};
use crate::worker::{Supervisor, TrialResult, WorkerConfig};
use clap::Args;
use serde::Serialize;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// The largest batch the estimator considers (and accepts in `--batch`).
pub const MAX_BATCH: usize = 1 << 24;

#[derive(Debug, Args)]
#[command(after_long_help = AFTER_ESTIMATE)]
pub struct EstimateArgs {
    #[command(flatten)]
    pub what: super::ModelArgs,
    /// Batch sizes, comma-separated; ranges as in `sweep` (1..64: every batch when 32 or fewer,
    /// else the powers of two and both ends), e.g. 1,8,32 or 1..16. Default: 1.
    #[arg(long, value_delimiter = ',', allow_hyphen_values = true)]
    pub batch: Vec<BatchRange>,
    /// Write one JSON object per point on stdout (one per line).
    #[arg(long)]
    pub json: bool,
    /// Measure each point with the real worker too and print the relative error. Without
    /// --model: a handful of points of the bundled models.
    #[arg(long)]
    pub check: bool,
    /// The runtime to estimate: candle (the default) or torch (PyTorch + transformers: the
    /// PyTorch estimator, for inference, a forward keeping its graph and a training step, with
    /// the CPU's kernels or CUDA's (--device), for the families it names).
    #[arg(long, help_heading = "PyTorch runtime")]
    pub runtime: Option<crate::plan::Runtime>,
    /// With --runtime torch: infer (a forward under `no_grad`, the default), grad (a forward
    /// keeping the autograd graph) or train (two training steps as the torch runtime takes them).
    #[arg(long, help_heading = "PyTorch runtime")]
    pub workload: Option<crate::plan::Workload>,
    /// With --runtime torch: the model's head (default as the torch runtime's sweep picks it).
    #[arg(long, help_heading = "PyTorch runtime")]
    pub task: Option<crate::plan::Task>,
    /// With --runtime torch: sdpa (the default where transformers runs it; Gemma 2: eager) or eager attention.
    #[arg(long, help_heading = "PyTorch runtime")]
    pub attn: Option<crate::plan::Attn>,
    /// With --runtime torch --workload train: adamw (the default) or sgd (momentum 0.9).
    #[arg(long, help_heading = "PyTorch runtime")]
    pub optimizer: Option<crate::runtime::Optimizer>,
    /// With --runtime torch --workload train: gradient checkpointing, off (the default) or on.
    #[arg(long, value_parser = crate::runtime::parse_on_off, help_heading = "PyTorch runtime")]
    pub gradient_checkpointing: Option<bool>,
    /// With --runtime torch: the kernels and allocator to follow, cpu (the torch runtime's CPU
    /// trials, exact) or cuda (CUDA's kernels, the caching allocator's 512-byte blocks and
    /// segments, and the context outside it). Default: cuda with --gpu, else cpu.
    #[arg(long, value_enum, help_heading = "PyTorch runtime")]
    pub device: Option<TorchDeviceArg>,
    /// With --device cuda: the device memory the process holds outside PyTorch's pool (CUDA
    /// context, kernel modules), e.g. 600MiB, as `oomlab sweep --runtime torch` measured it on
    /// your GPU (its overhead). Default: 512 MiB, assumed.
    #[arg(long, value_parser = crate::plan::parse_bytes, help_heading = "PyTorch runtime")]
    pub cuda_context: Option<u64>,
    /// With --device cuda: cuBLAS's workspace, e.g. 32MiB (default: PyTorch's for the --gpu
    /// preset's compute capability, 32 MiB from Hopper on, else 8.125 MiB; set it when
    /// `CUBLAS_WORKSPACE_CONFIG` is set).
    #[arg(long, value_parser = crate::plan::parse_bytes, help_heading = "PyTorch runtime")]
    pub cuda_workspace: Option<u64>,
    /// With --runtime torch --check: the Python with torch and transformers.
    #[arg(long, help_heading = "PyTorch runtime")]
    pub python: Option<std::path::PathBuf>,
    /// Also say where the runtime's own memory came from (the per-machine cache); without it
    /// that line appears only when the runtime was just measured.
    #[arg(long, short)]
    pub verbose: bool,
}

/// `--device` of `estimate --runtime torch`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum TorchDeviceArg {
    Cpu,
    Cuda,
}

const AFTER_ESTIMATE: &str = "\
What is estimated:
  weights       the parameters in the run precision, as candle holds them;
  activations   what the forward holds at its peak besides the KV cache: a liveness simulation
                of the forward candle runs (each op's output, the views that share it, when
                Rust drops it; bf16 matmuls widen both operands to f32 on the CPU);
  kv_cache      the decoders' keys and values alive at the peak;
  overhead      the model's tensor metadata and rotary tables (from its dims), plus the runtime's
                own buffers (matmul scratch per thread, thread pool, allocator): measured once per
                machine, thread count and precision with a tiny model and cached in
                ~/.cache/oomlab/runtime.json.
  total         comparable with a sweep's total_bytes for the same threads.

Example:
  oomlab estimate --model bert-base-uncased --seq 128,512 --batch 1,8,32 --dtype f32,bf16 \\
                  --capacity 11GiB";

/// What every estimate sizes, said under the table.
const SIZED: &str = "candle · one inference forward (no gradients, no optimizer state) · estimated by oomlab's estimator from the model's dims (not measured; --check measures), as candle counts it on the CPU: a GPU adds its CUDA context, kernels and cuBLAS workspace";

/// One estimated point, as `--json` writes it.
#[derive(Debug, Serialize)]
struct Point {
    /// What was sized: candle's inference forward, estimated.
    runtime: &'static str,
    workload: &'static str,
    estimated: bool,
    model: String,
    batch: usize,
    seq: usize,
    dtype: Precision,
    threads: usize,
    weights_bytes: u64,
    activation_bytes: u64,
    kv_cache_bytes: u64,
    overhead_bytes: u64,
    total_bytes: u64,
    /// The runtime's share of the overhead (measured on this machine).
    runtime_bytes: u64,
    capacity_bytes: Option<u64>,
    /// The largest batch for this (seq, dtype) whose estimate fits the capacity.
    max_batch: Option<usize>,
    /// With `--check`: the worker's measured high-water mark, and (estimate − measured) / measured.
    measured_total_bytes: Option<u64>,
    relative_error: Option<f64>,
}

/// The points `--check` measures when no model is named: the bundled models at small batches
/// (a few seconds each on two cores).
const CHECK_POINTS: &[(&str, usize, usize, Precision)] = &[
    ("bert-base-uncased", 4, 128, Precision::F32),
    ("bert-base-uncased", 2, 384, Precision::F16),
    ("bert-base-uncased", 3, 256, Precision::Bf16),
    ("distilbert-base-uncased", 8, 96, Precision::F32),
    ("distilbert-base-uncased", 2, 320, Precision::F32),
    ("TinyLlama-1.1B", 2, 96, Precision::F16),
    ("TinyLlama-1.1B", 1, 160, Precision::Bf16),
    ("Qwen2-0.5B", 2, 128, Precision::F32),
    ("Qwen2-0.5B", 3, 64, Precision::F16),
    // Qwen3's CPU attention: the batch-1 kernel, then the packed one above it.
    ("Qwen3-0.6B", 1, 128, Precision::Bf16),
    ("Qwen3-0.6B", 2, 96, Precision::F32),
];

/// `oomlab estimate`
pub fn run(args: &EstimateArgs, worker: &WorkerConfig) -> Result<(), CliError> {
    if args.workload.is_some()
        || args.task.is_some()
        || args.attn.is_some()
        || args.optimizer.is_some()
        || args.gradient_checkpointing.is_some()
        || args.python.is_some()
        || args.device.is_some()
        || args.cuda_context.is_some()
        || args.cuda_workspace.is_some()
    {
        return Err(CliError::usage(
            "--workload, --task, --attn, --optimizer, --gradient-checkpointing, --device, --cuda-context, --cuda-workspace and --python belong to the PyTorch estimator: add --runtime torch",
        ));
    }
    let threads = args.what.threads.unwrap_or_else(defaults::threads);
    if threads == 0 {
        return Err(invalid(PlanField::Threads, PlanProblem::ZeroThreads));
    }
    let points = points(args, true)?;
    let capacity = args.what.capacity.or(args.what.gpu.map(|g| g.total_bytes));
    let cancel = Arc::new(AtomicBool::new(false));
    let on_signal = Arc::clone(&cancel);
    let _ = crate::signals::on_terminate(move || on_signal.store(true, Ordering::Relaxed));
    // The runtime's bytes for each precision used, measured once per machine.
    let mut runtimes: BTreeMap<Precision, Runtime> = BTreeMap::new();
    for (_, _, _, dtype) in &points {
        if runtimes.contains_key(dtype) {
            continue;
        }
        let (rt, source) = calibrate::runtime(threads, *dtype, worker, None, &cancel)
            .map_err(CliError::runtime)?;
        if !args.json && (args.verbose || source == Source::Measured) {
            eprintln!(
                "runtime's own memory for {threads} thread{} in {dtype}: {} ({})",
                if threads == 1 { "" } else { "s" },
                human_bytes(rt.bytes),
                match source {
                    Source::Measured => "measured now, cached".to_string(),
                    Source::Cached => calibrate::cache_path()
                        .map_or_else(|| "cached".into(), |p| format!("cached in {}", p.display()),),
                }
            );
        }
        runtimes.insert(*dtype, rt);
    }
    let mut out = Vec::with_capacity(points.len());
    let mut sup = args.check.then(|| Supervisor::new(worker.clone()));
    for (spec, batch, seq, dtype) in &points {
        let rt = &runtimes[dtype];
        let e = estimate::estimate(spec, *batch, *seq, *dtype, rt);
        let measured = match &mut sup {
            Some(sup) => Some(measure(
                sup,
                (spec, *batch, *seq, *dtype),
                threads,
                &e,
                &cancel,
            )?),
            None => None,
        };
        out.push(Point {
            runtime: "candle",
            workload: "infer",
            estimated: true,
            model: spec.name.clone(),
            batch: *batch,
            seq: *seq,
            dtype: *dtype,
            threads,
            weights_bytes: e.weights_bytes,
            activation_bytes: e.activation_bytes,
            kv_cache_bytes: e.kv_cache_bytes,
            overhead_bytes: e.overhead_bytes,
            total_bytes: e.total_bytes,
            runtime_bytes: rt.bytes,
            capacity_bytes: capacity,
            max_batch: capacity
                .and_then(|c| estimate::max_batch(spec, *seq, *dtype, rt, c, MAX_BATCH)),
            measured_total_bytes: measured,
            relative_error: measured.map(|m| (e.total_bytes as f64 - m as f64) / m as f64),
        });
        if args.json {
            // One line per point as soon as it is known (a --check can take minutes).
            let p = out.last().expect("just pushed");
            out!("{}", serde_json::to_string(p).unwrap_or_default());
        }
    }
    if let Some(mut s) = sup {
        s.shutdown();
    }
    if !args.json {
        print_table(&out, capacity);
    }
    Ok(())
}

fn invalid(field: PlanField, problem: PlanProblem) -> CliError {
    CliError::from(PlanError::invalid(field, problem))
}

/// Every (model, batch, seq, dtype) to estimate, checked (`candle`: its precisions too).
pub(super) fn points(
    args: &EstimateArgs,
    candle: bool,
) -> Result<Vec<(ModelSpec, usize, usize, Precision)>, CliError> {
    let Some(model) = &args.what.model else {
        if args.check {
            return CHECK_POINTS
                .iter()
                .map(|&(id, b, s, d)| {
                    ModelSpec::resolve(&ModelRef::Catalog(id.into()))
                        .map(|spec| (spec, b, s, d))
                        .map_err(CliError::runtime)
                })
                .collect();
        }
        return Err(CliError::from(PlanError::Model(
            crate::catalog::CatalogError::Unknown {
                name: String::new(),
            },
        )));
    };
    let model = ModelRef::parse(model).map_err(|e| CliError::from(PlanError::Model(e)))?;
    let spec = ModelSpec::resolve(&model).map_err(|e| CliError::from(PlanError::Model(e)))?;
    let seqs = if args.what.seq.is_empty() {
        vec![defaults::SEQ.min(spec.dims.max_positions)]
    } else {
        args.what.seq.clone()
    };
    let dtypes = if args.what.dtype.is_empty() {
        vec![defaults::DTYPES[0]]
    } else {
        crate::plan::dedup(&args.what.dtype)
    };
    let seqs = crate::plan::dedup(&seqs);
    let batches = if args.batch.is_empty() {
        vec![1]
    } else {
        let all: Vec<usize> = args.batch.iter().flat_map(|r| batches_in(*r)).collect();
        crate::plan::dedup(&all)
    };
    for &seq in &seqs {
        crate::plan::check_seq(&spec, seq)?;
    }
    // candle's precisions; the PyTorch estimator says itself what it does not model.
    for &dtype in dtypes.iter().filter(|_| candle) {
        crate::plan::check_dtype(&spec, dtype)?;
    }
    let mut out = Vec::new();
    for &dtype in &dtypes {
        for &seq in &seqs {
            for &b in &batches {
                out.push((spec.clone(), b, seq, dtype));
            }
        }
    }
    Ok(out)
}

/// The batches `estimate` shows for a range: every one when 32 or fewer, else the powers of
/// two inside it and both ends.
fn batches_in(r: BatchRange) -> Vec<usize> {
    if r.max - r.min < 32 {
        return (r.min..=r.max).collect();
    }
    let mut out = vec![r.min];
    out.extend(
        (0..usize::BITS)
            .map(|k| 1usize << k)
            .take_while(|&b| b < r.max)
            .filter(|&b| b > r.min),
    );
    out.push(r.max);
    out
}

/// Runs one point on the real worker, under a capacity the estimate fits in with room to spare
/// (or the machine's largest); returns the measured high-water mark.
fn measure(
    sup: &mut Supervisor,
    (spec, batch, seq, dtype): (&ModelSpec, usize, usize, Precision),
    threads: usize,
    e: &Breakdown,
    cancel: &AtomicBool,
) -> Result<u64, CliError> {
    let host = crate::measure::host::HostMemory::read();
    let want = e.total_bytes.saturating_mul(3) / 2 + (256 << 20);
    let capacity = host.map_or(want, |h| want.min(h.largest_capacity_bytes()));
    let load = crate::worker::Load::candle(
        spec.reference.clone(),
        dtype,
        capacity,
        Device::Cpu { threads },
    );
    sup.ensure_loaded(&load, None, cancel).map_err(|e| {
        CliError::runtime(format!(
            "--check could not build {} in {dtype}: {e}",
            spec.name
        ))
    })?;
    match sup.trial(batch, seq, cancel, &mut |_| {}).0 {
        TrialResult::Measured(m) => Ok(m.total_bytes),
        TrialResult::Died(d) => Err(CliError::runtime(format!(
            "--check: {} batch {batch} seq {seq} {dtype} did not finish: {}",
            spec.name,
            d.describe()
        ))),
        TrialResult::Error(m) => Err(CliError::runtime(format!(
            "--check: {} batch {batch} seq {seq} {dtype} failed: {m}",
            spec.name
        ))),
    }
}

fn print_table(points: &[Point], capacity: Option<u64>) {
    let check = points.iter().any(|p| p.measured_total_bytes.is_some());
    out_part!(
        "{:<24} {:>6} {:<5} {:>6} {:>11} {:>11} {:>11} {:>11} {:>11}",
        "model",
        "seq",
        "dtype",
        "batch",
        "weights",
        "activations",
        "kv_cache",
        "overhead",
        "total"
    );
    if check {
        out_part!(" {:>11} {:>9}", "measured", "error");
    }
    out!();
    for p in points {
        out_part!(
            "{:<24} {:>6} {:<5} {:>6} {:>11} {:>11} {:>11} {:>11} {:>11}",
            p.model,
            p.seq,
            p.dtype.name(),
            p.batch,
            human_bytes(p.weights_bytes),
            human_bytes(p.activation_bytes),
            human_bytes(p.kv_cache_bytes),
            human_bytes(p.overhead_bytes),
            human_bytes(p.total_bytes)
        );
        if let (Some(m), Some(err)) = (p.measured_total_bytes, p.relative_error) {
            out_part!(" {:>11} {:>+8.3}%", human_bytes(m), err * 100.0);
        }
        out!();
    }
    out!("\nwhat was sized: {SIZED}");
    if let Some(c) = capacity {
        out!();
        let mut seen = Vec::new();
        for p in points {
            if seen.contains(&(p.seq, p.dtype)) {
                continue;
            }
            seen.push((p.seq, p.dtype));
            if let Some(b) = p.max_batch {
                out!(
                    "largest inference batch under {} at seq {} in {}: {b} (estimated)",
                    human_bytes(c),
                    p.seq,
                    p.dtype
                );
            } else {
                out!(
                    "at seq {} in {} not even batch 1 fits under {}",
                    p.seq,
                    p.dtype,
                    human_bytes(c)
                );
            }
        }
    }
    if capacity.is_some() {
        out!("({})", crate::report::TRAINING_NEEDS_MORE);
    }
    if check {
        let worst = points
            .iter()
            .filter_map(|p| p.relative_error)
            .fold(0.0_f64, |a, e| a.max(e.abs()));
        out!("\nlargest relative error: {:.3}%", worst * 100.0);
    }
}
