//! `oomlab estimate --runtime torch`: the PyTorch estimator's breakdown for a list of points,
//! `max_batch` under a capacity, and `--check` against the torch runtime's own trials.

use super::estimate::{EstimateArgs, points};
use super::{CliError, Flags};
use crate::catalog::ModelSpec;
use crate::estimate::torch::{self, CudaArm, How, TorchBreakdown, TorchDevice};
use crate::plan::{
    Attn, PlanOverrides, Precision, Runtime, Strategy, Task, Workload, defaults, human_bytes,
};
use crate::sweep::Sweep;
use crate::worker::WorkerConfig;
use serde::Serialize;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// One point, as `--json` writes it.
#[derive(Debug, Serialize)]
struct Point {
    runtime: &'static str,
    workload: Workload,
    task: Task,
    attn: Attn,
    estimated: bool,
    model: String,
    batch: usize,
    seq: usize,
    dtype: Precision,
    threads: usize,
    #[serde(flatten)]
    breakdown: TorchBreakdown,
    capacity_bytes: Option<u64>,
    max_batch: Option<usize>,
    measured_total_bytes: Option<u64>,
    relative_error: Option<f64>,
    /// `--check`: why the trial gave no total, when it gave none (its reason, as the sweep
    /// records it).
    #[serde(skip_serializing_if = "Option::is_none")]
    not_measured: Option<String>,
    /// `--check` on CUDA: the trial's pool high-water marks (`max_memory_allocated`,
    /// `max_memory_reserved`) and the device memory outside the pool, beside the estimate's
    /// (its allocated mark is weights + inputs + activations + workspace).
    #[serde(skip_serializing_if = "Option::is_none")]
    measured_pool_peak_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    measured_pool_reserved_bytes: Option<u64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    measured_context_bytes: Option<u64>,
}

/// What a torch trial measured at one point.
#[derive(Debug, Clone, Default)]
struct Measured {
    total: Option<u64>,
    pool_peak: Option<u64>,
    pool_reserved: Option<u64>,
    /// Why the trial gave no total.
    why_not: Option<String>,
}

/// A torch trial at one point: its measured total.
#[allow(clippy::too_many_arguments)]
fn measure(
    spec: &ModelSpec,
    (batch, seq, dtype): (usize, usize, Precision),
    how: How,
    capacity: Option<u64>,
    threads: usize,
    python: &mut Option<std::path::PathBuf>,
    probed: &mut bool,
    worker: &WorkerConfig,
    cancel: &Arc<AtomicBool>,
) -> Result<Measured, CliError> {
    let given = PlanOverrides {
        model: Some(spec.reference.clone()),
        seqs: Some(vec![seq]),
        dtypes: Some(vec![dtype]),
        batch: Some(
            crate::plan::BatchRange::new(batch, batch)
                .map_err(|e| CliError::usage(e.to_string()))?,
        ),
        // On the CPU far above the point: the trial runs to its end and reports its total. On
        // CUDA the capacity asked for (a GPU holds back the rest).
        capacity_bytes: Some(match how.device {
            TorchDevice::Cpu => 1 << 46,
            TorchDevice::Cuda(_) => capacity.ok_or_else(|| {
                CliError::usage(
                    "--check with --device cuda measures on cuda:0 under a capacity: give --capacity (at most the GPU's free memory)",
                )
            })?,
        }),
        device: matches!(how.device, TorchDevice::Cuda(_))
            .then_some(crate::plan::DeviceKind::Cuda { index: 0 }),
        strategy: Some(Strategy::Grid),
        threads: Some(threads),
        runtimes: Some(vec![Runtime::Torch]),
        workload: Some(how.workload),
        task: Some(how.task),
        attn: Some(how.attn),
        optimizer: Some(how.optimizer),
        checkpointing: Some(vec![how.checkpointing]),
        python: python.clone(),
        ..PlanOverrides::default()
    };
    let (mut plan, spec) =
        crate::plan::plan_from(&given).map_err(|e| CliError::usage(e.describe(&Flags)))?;
    // The interpreter is probed once; later points use the one found.
    if !*probed {
        crate::sweep::probe_python(&mut plan, &worker.exe)
            .map_err(|e| CliError::usage(e.describe(&Flags)))?;
        python.clone_from(&plan.torch.python);
        *probed = true;
    }
    let dir = std::env::temp_dir().join(format!("oomlab-estimate-check-{}", std::process::id()));
    std::fs::create_dir_all(&dir)
        .map_err(|e| CliError::runtime(format!("cannot make {}: {e}", dir.display())))?;
    let journal = dir.join(format!(
        "{}-{batch}-{seq}-{}.jsonl",
        spec.name,
        dtype.name()
    ));
    let _ = std::fs::remove_file(&journal);
    let results = Sweep::with_spec(plan, spec, &journal)
        .map_err(|e| CliError::runtime(e.describe(&Flags)))?
        .run(worker, cancel, &mut |_| {})
        .map_err(|e| CliError::runtime(e.to_string()))?;
    let _ = std::fs::remove_file(&journal);
    if let Some(why) = results.unbuilt() {
        return Err(CliError::runtime(why));
    }
    Ok(results
        .trials
        .iter()
        .find(|t| t.total_bytes.is_some())
        .map_or_else(
            || Measured {
                why_not: Some(
                    results
                        .trials
                        .iter()
                        .find_map(|t| t.reason.clone())
                        .unwrap_or_else(|| "the trial reported no total".into()),
                ),
                ..Measured::default()
            },
            |t| Measured {
                total: t.total_bytes,
                pool_peak: t.pool_peak_bytes,
                pool_reserved: t.pool_reserved_bytes,
                why_not: None,
            },
        ))
}

/// The arm `--device` picks: cuda with `--gpu` unless told otherwise; its cuBLAS workspace
/// from the preset's compute capability (Ampere's when none is named), its context given or
/// assumed.
fn device(args: &EstimateArgs) -> Result<TorchDevice, CliError> {
    use super::estimate::TorchDeviceArg;
    let cuda = match args.device {
        Some(TorchDeviceArg::Cuda) => true,
        Some(TorchDeviceArg::Cpu) => false,
        None => args.what.gpu.is_some(),
    };
    if !cuda {
        if args.cuda_context.is_some() || args.cuda_workspace.is_some() {
            return Err(CliError::usage(
                "--cuda-context and --cuda-workspace belong to the CUDA arm: add --device cuda (or --gpu)",
            ));
        }
        return Ok(TorchDevice::Cpu);
    }
    let mut arm = CudaArm::assumed(args.what.gpu.map_or((8, 0), |g| g.compute_capability));
    if let Some(context) = args.cuda_context {
        arm.context_bytes = context;
        arm.context_measured = true;
    }
    if let Some(workspace) = args.cuda_workspace {
        arm.cublas_workspace_bytes = workspace;
    }
    Ok(TorchDevice::Cuda(arm))
}

/// `oomlab estimate --runtime torch`
pub fn run(args: &EstimateArgs, worker: &WorkerConfig) -> Result<(), CliError> {
    let threads = args.what.threads.unwrap_or_else(defaults::threads).max(1);
    let workload = args.workload.unwrap_or(Workload::Infer);
    let points = points(args, false)?;
    let capacity = args.what.capacity.or(args.what.gpu.map(|g| g.total_bytes));
    let device = device(args)?;
    let cancel = Arc::new(AtomicBool::new(false));
    let on_signal = Arc::clone(&cancel);
    let _ = crate::signals::on_terminate(move || on_signal.store(true, Ordering::Relaxed));
    let mut rows = Vec::new();
    let (mut python, mut probed) = (args.python.clone(), false);
    for (spec, batch, seq, dtype) in &points {
        let attn = args.attn.unwrap_or_else(|| spec.family.torch_attn());
        let task = args
            .task
            .unwrap_or_else(|| Task::default_for(workload, spec.family.room().is_decoder()));
        let how = How {
            optimizer: args.optimizer.unwrap_or_default(),
            checkpointing: args.gradient_checkpointing.unwrap_or(false),
            device,
            ..How::new(workload, task, attn)
        };
        let breakdown = torch::estimate(spec, *batch, *seq, *dtype, how, threads)
            .map_err(|e| CliError::usage(format!("{}: {e}", spec.name)))?;
        let measured = if args.check {
            if cancel.load(Ordering::Relaxed) {
                break;
            }
            measure(
                spec,
                (*batch, *seq, *dtype),
                how,
                // On CUDA only a capacity given as such (a preset's is the card's total, more
                // than is free).
                args.what.capacity,
                threads,
                &mut python,
                &mut probed,
                worker,
                &cancel,
            )?
        } else {
            Measured::default()
        };
        rows.push(Point {
            runtime: "torch",
            workload,
            task,
            attn,
            estimated: true,
            model: spec.name.clone(),
            batch: *batch,
            seq: *seq,
            dtype: *dtype,
            threads,
            breakdown,
            capacity_bytes: capacity,
            max_batch: capacity.and_then(|c| {
                torch::max_batch(
                    spec,
                    *seq,
                    *dtype,
                    how,
                    threads,
                    c,
                    super::estimate::MAX_BATCH,
                )
                .flatten()
            }),
            relative_error: measured
                .total
                .map(|m| (breakdown.total_bytes as f64 - m as f64) / m as f64),
            measured_total_bytes: measured.total,
            not_measured: measured.why_not,
            measured_pool_peak_bytes: measured.pool_peak,
            measured_pool_reserved_bytes: measured.pool_reserved,
            measured_context_bytes: measured
                .total
                .zip(measured.pool_reserved)
                .map(|(t, r)| t.saturating_sub(r)),
        });
    }
    if args.json {
        for p in &rows {
            out!("{}", serde_json::to_string(p).unwrap_or_default());
        }
        return Ok(());
    }
    out!(
        "{:<24} {:>6} {:<5} {:>6} {:>11} {:>11} {:>11} {:>11}{}{}",
        "model",
        "batch",
        "dtype",
        "seq",
        "weights",
        "inputs",
        "activations",
        "total",
        if capacity.is_some() {
            "   max_batch"
        } else {
            ""
        },
        if args.check {
            "    measured    error"
        } else {
            ""
        }
    );
    for p in &rows {
        let b = &p.breakdown;
        out_part!(
            "{:<24} {:>6} {:<5} {:>6} {:>11} {:>11} {:>11} {:>11}",
            p.model,
            p.batch,
            p.dtype.name(),
            p.seq,
            human_bytes(b.weights_bytes),
            human_bytes(b.input_bytes),
            human_bytes(b.activation_bytes),
            human_bytes(b.total_bytes)
        );
        if capacity.is_some() {
            out_part!(
                " {:>11}",
                p.max_batch.map_or_else(|| "none".into(), |m| m.to_string())
            );
        }
        if let (Some(m), Some(e)) = (p.measured_total_bytes, p.relative_error) {
            out_part!(" {:>11} {:>+7.3}%", human_bytes(m), e * 100.0);
        } else if p.not_measured.is_some() {
            out_part!(" {:>11} {:>8}", "-", "-");
        }
        out!("");
        if let Some(why) = &p.not_measured {
            out!("{:<24} not measured: {why}", "");
        }
        if let (Some(state), Some(grads), Some(saved)) = (
            b.optimizer_bytes,
            b.gradient_bytes,
            b.saved_activation_bytes,
        ) {
            out!(
                "{:<24} optimizer state {}, gradients {}, saved activations {} (step 2's phases, as the torch trial's timeline splits them)",
                "",
                human_bytes(state),
                human_bytes(grads),
                human_bytes(saved)
            );
        }
        if let (Some(workspace), Some(cached), Some(context)) =
            (b.workspace_bytes, b.pool_cached_bytes, b.context_bytes)
        {
            out!(
                "{:<24} CUDA: cuBLAS workspace {}, pool cached above its blocks {}, context {} ({})",
                "",
                human_bytes(workspace),
                human_bytes(cached),
                human_bytes(context),
                if b.context_measured == Some(true) {
                    "given with --cuda-context"
                } else {
                    "assumed: --cuda-context gives yours"
                }
            );
        }
        if let (Some(peak), Some(reserved), Some(context)) = (
            p.measured_pool_peak_bytes,
            p.measured_pool_reserved_bytes,
            p.measured_context_bytes,
        ) {
            let allocated = b.weights_bytes
                + b.input_bytes
                + b.activation_bytes
                + b.workspace_bytes.unwrap_or(0);
            let reserved_est = b.total_bytes - b.context_bytes.unwrap_or(0);
            let err = |e: u64, m: u64| (e as f64 - m as f64) / m.max(1) as f64 * 100.0;
            out!(
                "{:<24} measured on the GPU: pool allocated {} (estimate {:+.3}%), reserved {} ({:+.3}%), outside the pool {}",
                "",
                human_bytes(peak),
                err(allocated, peak),
                human_bytes(reserved),
                err(reserved_est, reserved),
                human_bytes(context)
            );
        }
    }
    let optimizer = if workload == Workload::Train {
        format!(", optimizer {}", args.optimizer.unwrap_or_default())
    } else {
        String::new()
    };
    let arm = match device {
        TorchDevice::Cpu => "a simulation of transformers' forward as PyTorch runs it on the CPU; --check measures with the torch runtime".to_string(),
        TorchDevice::Cuda(arm) => format!(
            "CUDA arm: transformers' forward with CUDA's kernels, the caching allocator's 512-byte blocks and segments (total = its reserved high-water mark + the context), a cuBLAS workspace of {} per thread that runs a matmul (the forward's, and in training the autograd engine's); followed from PyTorch's source and not yet checked on a GPU (--check on a GPU measures)",
            human_bytes(arm.cublas_workspace_bytes)
        ),
    };
    out!(
        "PyTorch · {} · task {}, attention {}{optimizer} · estimated by oomlab's PyTorch estimator from the model's dims ({arm})",
        workload.describe(),
        rows.first().map_or(Task::Base, |p| p.task),
        rows.first().map_or(Attn::Sdpa, |p| p.attn)
    );
    Ok(())
}
