//! `oomlab models`: the bundled models, and which fit a GPU preset.

use super::{CliError, group, host_line};
use crate::catalog::{BUNDLED, ModelRef, ModelSpec};
use crate::measure::host::HostMemory;
use crate::models;
use crate::plan::{Precision, human_bytes};
use crate::worker::WorkerConfig;
use std::sync::atomic::AtomicBool;

/// `oomlab models`
pub(super) fn models() -> Result<(), CliError> {
    println!(
        "{:<24} {:<11} {:>15} {:>11} {:>11} {:>11} {:>8}",
        "id", "family", "parameters", "f32", "f16", "bf16", "max seq"
    );
    for b in BUNDLED {
        let spec =
            ModelSpec::resolve(&ModelRef::Catalog(b.id.into())).map_err(CliError::runtime)?;
        let w = |p: Precision| human_bytes(models::weights_bytes(&spec, p.candle()));
        println!(
            "{:<24} {:<11} {:>15} {:>11} {:>11} {:>11} {:>8}{}",
            b.id,
            spec.family.name(),
            group(spec.dims.published_parameters(spec.family)),
            w(Precision::F32),
            w(Precision::F16),
            w(Precision::Bf16),
            spec.dims.max_positions,
            if b.tiny { "  (tiny, for tests)" } else { "" }
        );
    }
    let cache = crate::catalog::hub::cache_dir();
    let cached = crate::catalog::CatalogEntry::cached(&cache);
    if !cached.is_empty() {
        println!("\nin the Hugging Face cache at {}:", cache.display());
        for e in &cached {
            let b = |v: Option<u64>| v.map_or_else(|| "-".into(), human_bytes);
            println!(
                "{:<40} {:<11} {:>15} {:>11} {:>11}{}",
                e.name,
                e.group,
                e.params.map_or_else(|| "-".into(), group),
                b(e.f32_bytes),
                b(e.half_bytes),
                e.problem
                    .as_deref()
                    .map(|p| format!("  ({p})"))
                    .unwrap_or_default()
            );
        }
    }
    println!(
        "\nparameters as published (BERT includes its pooler); weight bytes as candle holds them."
    );
    println!("{}", host_line(HostMemory::read().as_ref()));
    println!(
        "--model also takes a Hugging Face id (org/name[@revision], bundled ones by either name), a config.json, or a folder with config.json + *.safetensors."
    );
    Ok(())
}

/// `oomlab models --gpu G`: per bundled model and precision, whether the weights fit and the
/// largest batch the estimator gives at seq 128 (a CPU estimate: the CUDA context is not in it).
pub(super) fn models_on_gpu(gpu: &str, worker: &WorkerConfig) -> Result<(), CliError> {
    let preset = crate::presets::find(gpu).map_err(CliError::usage)?;
    let threads = crate::plan::defaults::threads();
    let cancel = AtomicBool::new(false);
    println!(
        "{}: {} as CUDA reports it\n  ({})",
        preset.name,
        crate::presets::capacity_label(preset.total_bytes, false),
        preset.source
    );
    println!(
        "{:<24} {:<5} {:>11} {:>9} {:>9}",
        "id", "dtype", "weights", "fits", "max batch"
    );
    for b in BUNDLED.iter().filter(|b| !b.tiny) {
        let spec =
            ModelSpec::resolve(&ModelRef::Catalog(b.id.into())).map_err(CliError::runtime)?;
        let seq = crate::plan::defaults::SEQ.min(spec.dims.max_positions);
        for dtype in Precision::ALL {
            if !spec.family.supports(dtype) {
                continue;
            }
            let (rt, _) = crate::calibrate::runtime(threads, dtype, worker, None, &cancel)
                .map_err(CliError::runtime)?;
            let weights = models::weights_bytes(&spec, dtype.candle());
            let max = crate::estimate::max_batch(
                &spec,
                seq,
                dtype,
                &rt,
                preset.total_bytes,
                crate::cli::estimate::MAX_BATCH,
            );
            println!(
                "{:<24} {:<5} {:>11} {:>9} {:>9}",
                b.id,
                dtype.name(),
                human_bytes(weights),
                if max.is_some() { "yes" } else { "no" },
                max.map_or_else(|| "-".into(), |m| m.to_string())
            );
        }
    }
    println!(
        "\nmax batch: the estimator's largest batch at seq 128 (or the model's maximum), forward only; \n{}.",
        crate::presets::CPU_NOTE
    );
    Ok(())
}
