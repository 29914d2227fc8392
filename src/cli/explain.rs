//! `oomlab explain`: a pasted out-of-memory message, read figure by figure.

use super::{CliError, estimate};
use crate::catalog::{ModelRef, ModelSpec};
use crate::explain::LargestBatch;
use crate::plan::PlanError;
use crate::plan::Precision;
use crate::presets::GpuPreset;
use crate::worker::WorkerConfig;
use std::io::{IsTerminal, Write};
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

/// What a person at a terminal reads when `explain` waits for the message on stdin.
pub const PASTE_PROMPT: &str = if cfg!(windows) {
    "Paste the out-of-memory message, then press Ctrl-Z and Enter on an empty line (or pass it quoted, or --file PATH):"
} else {
    "Paste the out-of-memory message, then press Ctrl-D on an empty line (or pass it quoted, or --file PATH):"
};

/// `--gpu` of `oomlab explain`: the preset itself (its compute capability picks the precision
/// advice; its memory is the capacity for `--model` when the message gives none).
pub(super) fn parse_gpu_preset(
    text: &str,
) -> Result<&'static GpuPreset, crate::presets::UnknownGpu> {
    crate::presets::find(text)
}

/// `--model`, `--seq`, `--dtype` of `oomlab explain`.
pub(super) type ModelAt = (String, Option<usize>, Option<Precision>);

/// `oomlab explain`: exit 0 with the explanation, 1 for a text that is no OOM message, 2 when
/// the text cannot be read.
pub(super) fn explain(
    text: Option<String>,
    file: Option<PathBuf>,
    json: bool,
    model: Option<&ModelAt>,
    gpu: Option<&'static GpuPreset>,
    runtime: Option<crate::plan::Runtime>,
) -> i32 {
    use std::io::Read;
    let text = match (text, file) {
        (_, Some(path)) => std::fs::read_to_string(&path).map_err(|e| {
            format!(
                "cannot read {}: {e}; check the path given to --file",
                path.display()
            )
        }),
        (Some(t), None) if t != "-" => Ok(t),
        _ => {
            let stdin = std::io::stdin();
            if stdin.is_terminal() {
                eprintln!("{PASTE_PROMPT}");
            }
            let mut s = String::new();
            stdin
                .lock()
                .read_to_string(&mut s)
                .map(|_| s)
                .map_err(|e| format!("cannot read the message from stdin: {e}"))
        }
    };
    let text = match text {
        Ok(t) => t,
        Err(e) => {
            eprintln!("oomlab: {e}");
            return 2;
        }
    };
    let mut e = match crate::explain::explain(&text) {
        Ok(e) => e,
        Err(not) => {
            eprintln!("oomlab: {not}");
            return 1;
        }
    };
    if let Some(p) = gpu {
        e.set_gpu(p);
    }
    if let Some(m) = model {
        // A model that cannot be read is an error, with or without a capacity to size it under.
        let resolved = ModelRef::parse(&m.0)
            .and_then(|r| ModelSpec::resolve(&r).map(|spec| (r, spec)))
            .map_err(|e| CliError::from(PlanError::Model(e)));
        let (reference, spec) = match resolved {
            Ok(resolved) => resolved,
            Err(why) => {
                eprintln!("oomlab: {}", why.message);
                return why.code;
            }
        };
        // The most the process could hold: --gpu's memory, else the message's total, or the
        // cap it names (`N allowed`, MPS's `max allowed`) when lower.
        let capacity = gpu.map(|p| p.total_bytes).or_else(|| {
            match (e.total_capacity_bytes, e.allowed_bytes) {
                (Some(t), Some(a)) => Some(t.min(a)),
                (t, a) => t.or(a),
            }
        });
        let pytorch = matches!(
            e.form,
            crate::explain::Form::PytorchOld
                | crate::explain::Form::PytorchNew
                | crate::explain::Form::PytorchMps
        );
        let torch = runtime.map_or(pytorch, |r| r == crate::plan::Runtime::Torch);
        if let Some(capacity) = capacity {
            match largest_batch(m, (&reference, &spec), capacity, torch) {
                Ok(lb) => e.set_largest_batch(lb),
                Err(why) => {
                    eprintln!("oomlab: {}", why.message);
                    return why.code;
                }
            }
        } else {
            // The explanation stands without the batches.
            eprintln!(
                "oomlab: the message gives no capacity to size {}'s batches under, so they are left out; name the GPU with --gpu (e.g. --gpu t4)",
                m.0
            );
        }
    }
    let out = if json {
        format!("{}\n", serde_json::to_string_pretty(&e).unwrap_or_default())
    } else {
        e.text()
    };
    // A closed pipe (`| head`) is the reader's choice, not an error.
    let _ = std::io::stdout().lock().write_all(out.as_bytes());
    0
}

/// The estimator's largest inference batch for `explain --model` under `capacity` (`--gpu`'s, or
/// the message's total).
fn largest_batch(
    (model, seq, dtype): &ModelAt,
    (reference, spec): (&ModelRef, &ModelSpec),
    capacity: u64,
    torch: bool,
) -> Result<LargestBatch, CliError> {
    let dtype = dtype.unwrap_or(crate::plan::defaults::DTYPES[0]);
    let seq = seq.unwrap_or(crate::plan::defaults::SEQ.min(spec.dims.max_positions));
    crate::plan::check_seq(spec, seq)?;
    // A config candle cannot run (a Gemma 3 with several key/value heads) gets PyTorch's
    // figures alone; candle's estimate is then no fallback.
    let candle_refuses = spec.candle_refuses();
    if !(torch && candle_refuses.is_some()) {
        crate::plan::check_dtype(spec, dtype)?;
    }
    let worker = WorkerConfig::current().map_err(CliError::from)?;
    let (rt, source) = crate::calibrate::runtime(
        crate::plan::defaults::threads(),
        dtype,
        &worker,
        None,
        &AtomicBool::new(false),
    )
    .map_err(CliError::runtime)?;
    // Only news is worth a line: a cached figure says nothing.
    if source == crate::calibrate::Source::Measured {
        eprintln!(
            "oomlab: measured candle's own memory on this CPU once for the estimate{}",
            crate::calibrate::cache_path()
                .map_or_else(String::new, |p| format!(" (cached in {})", p.display()))
        );
    }
    // The command that measures training names a bundled model by its id (however it was
    // typed), anything else as typed.
    let model_given = match reference {
        ModelRef::Catalog(_) => spec.name.clone(),
        _ => model.clone(),
    };
    let lb = LargestBatch::inference(
        spec.name.clone(),
        model_given,
        seq,
        dtype,
        capacity,
        crate::estimate::max_batch(spec, seq, dtype, &rt, capacity, estimate::MAX_BATCH),
    );
    if !torch {
        return Ok(lb);
    }
    match torch_batches(spec, seq, dtype, capacity) {
        Ok(t) => Ok(lb.with_torch(t)),
        Err(why) if candle_refuses.is_some() => {
            Err(CliError::usage(format!("{}: {why}", spec.name)))
        }
        Err(why) => {
            eprintln!("oomlab: {why}; the batch below is candle's estimate");
            Ok(lb)
        }
    }
}

/// The PyTorch estimator's largest batches under `capacity`: under `no_grad`, and without it.
fn torch_batches(
    spec: &ModelSpec,
    seq: usize,
    dtype: Precision,
    capacity: u64,
) -> Result<crate::explain::TorchBatches, crate::estimate::torch::NotModelled> {
    use crate::plan::{Task, Workload};
    let threads = crate::plan::defaults::threads();
    let task = Task::default_for(Workload::Infer, spec.family.room().is_decoder());
    let attn = spec.family.torch_attn();
    let how = |w| crate::estimate::torch::How::new(w, task, attn);
    let one = |w| crate::estimate::torch::estimate(spec, 1, seq, dtype, how(w), threads);
    let largest = |w| {
        crate::estimate::torch::max_batch(
            spec,
            seq,
            dtype,
            how(w),
            threads,
            capacity,
            estimate::MAX_BATCH,
        )
        .flatten()
    };
    let infer = one(Workload::Infer)?;
    let grad = one(Workload::Grad);
    let train_task = Task::default_for(Workload::Train, spec.family.room().is_decoder());
    let train = [
        (Precision::F32, false),
        (Precision::F32, true),
        (Precision::AmpBf16, false),
        (Precision::AmpBf16, true),
    ]
    .into_iter()
    .map(|(dtype, checkpointing)| {
        let how = crate::estimate::torch::How {
            checkpointing,
            ..crate::estimate::torch::How::new(Workload::Train, train_task, attn)
        };
        let modelled = crate::estimate::torch::estimate(spec, 1, seq, dtype, how, threads);
        crate::explain::TrainBatch {
            dtype,
            checkpointing,
            batch: modelled
                .is_ok()
                .then(|| {
                    crate::estimate::torch::max_batch(
                        spec,
                        seq,
                        dtype,
                        how,
                        threads,
                        capacity,
                        estimate::MAX_BATCH,
                    )
                    .flatten()
                })
                .flatten(),
            not_modelled: modelled.err().map(|e| e.to_string()),
        }
    })
    .collect::<Vec<_>>();
    // When not even f32 without checkpointing is modelled, the line says why and measures.
    let train_not_modelled = train[0].not_modelled.clone();
    Ok(crate::explain::TorchBatches {
        task,
        attn,
        infer: largest(Workload::Infer),
        grad: grad.as_ref().ok().map(|_| largest(Workload::Grad)),
        infer_activation_bytes: infer.activation_bytes,
        grad_activation_bytes: grad.as_ref().ok().map(|g| g.activation_bytes),
        grad_not_modelled: grad.err().map(|e| e.to_string()),
        train_task,
        train: if train_not_modelled.is_some() {
            Vec::new()
        } else {
            train
        },
        train_not_modelled,
    })
}
