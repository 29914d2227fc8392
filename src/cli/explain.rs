//! `oomlab explain`: a pasted out-of-memory message, read figure by figure.

use super::{CliError, estimate};
use crate::catalog::{ModelRef, ModelSpec};
use crate::plan::Precision;
use crate::sweep::{self, PlanError};
use crate::worker::WorkerConfig;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

/// `oomlab explain`: exit 0 with the explanation, 1 for a text that is no OOM message, 2 when
/// the text cannot be read.
pub(super) fn explain(
    text: Option<String>,
    file: Option<PathBuf>,
    json: bool,
    model: Option<&ModelAt>,
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
            let mut s = String::new();
            std::io::stdin()
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
    let explained = crate::explain::explain(&text).map(|mut e| {
        if let Some(m) = model {
            match largest_batch(m, e.total_capacity_bytes) {
                Ok(lb) => e.set_largest_batch(lb),
                Err(why) => return Err(why),
            }
        }
        Ok(e)
    });
    let explained = match explained {
        Ok(Ok(e)) => Ok(e),
        Ok(Err(why)) => {
            eprintln!("oomlab: {}", why.message);
            return why.code;
        }
        Err(not) => Err(not),
    };
    match explained {
        Ok(e) if json => {
            println!("{}", serde_json::to_string_pretty(&e).unwrap_or_default());
            0
        }
        Ok(e) => {
            print!("{}", e.text());
            0
        }
        Err(e) => {
            eprintln!("oomlab: {e}");
            1
        }
    }
}

/// `--model`, `--seq`, `--dtype`, `--gpu` of `oomlab explain`.
pub(super) type ModelAt = (String, Option<usize>, Option<Precision>, Option<u64>);

/// The estimator's largest batch for `explain --model` under the message's total capacity.
fn largest_batch(
    (model, seq, dtype, gpu): &ModelAt,
    total_capacity: Option<u64>,
) -> Result<crate::explain::LargestBatch, CliError> {
    let reference = ModelRef::parse(model).map_err(|e| CliError::from(PlanError::Model(e)))?;
    let spec = ModelSpec::resolve(&reference).map_err(|e| CliError::from(PlanError::Model(e)))?;
    let capacity = gpu.or(total_capacity).ok_or_else(|| {
        CliError::usage(
            "the message does not give the GPU's total capacity; name the GPU with --gpu (e.g. --gpu t4)",
        )
    })?;
    let dtype = dtype.unwrap_or(crate::plan::defaults::DTYPES[0]);
    let seq = seq.unwrap_or(crate::plan::defaults::SEQ.min(spec.dims.max_positions));
    sweep::check_seq(&spec, seq)?;
    sweep::check_dtype(&spec, dtype)?;
    let worker = WorkerConfig::current()
        .map_err(|e| CliError::runtime(format!("cannot locate the oomlab binary: {e}")))?;
    let (rt, _) = crate::calibrate::runtime(
        crate::plan::defaults::threads(),
        dtype,
        &worker,
        None,
        &AtomicBool::new(false),
    )
    .map_err(CliError::runtime)?;
    Ok(crate::explain::LargestBatch {
        model: spec.name.clone(),
        seq,
        dtype,
        capacity_bytes: capacity,
        batch: crate::estimate::max_batch(&spec, seq, dtype, &rt, capacity, estimate::MAX_BATCH),
    })
}
