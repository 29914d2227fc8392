//! `oomlab models`: the bundled models, and which fit a GPU preset.

use super::{CliError, group, host_line};
use crate::catalog::{BUNDLED, ModelRef, ModelSpec};
use crate::measure::host::HostMemory;
use crate::plan::{Precision, human_bytes};
use crate::presets::GpuPreset;
use crate::worker::WorkerConfig;
use std::sync::atomic::AtomicBool;

/// `oomlab models`
pub(super) fn models() -> Result<(), CliError> {
    out!(
        "{}",
        format_args!(
            "{:<24} {:<11} {:>15} {:>11} {:>11} {:>11} {:>8}",
            "id", "family", "parameters", "f32", "f16", "bf16", "max seq"
        )
    );
    for b in BUNDLED {
        let spec =
            ModelSpec::resolve(&ModelRef::Catalog(b.id.into())).map_err(CliError::runtime)?;
        let w = |p: Precision| human_bytes(spec.weights_bytes(p.candle()));
        out!(
            "{}",
            format_args!(
                "{:<24} {:<11} {:>15} {:>11} {:>11} {:>11} {:>8}{}",
                b.id,
                spec.family.name(),
                group(spec.dims.published_parameters(spec.family)),
                w(Precision::F32),
                w(Precision::F16),
                w(Precision::Bf16),
                spec.dims.max_positions,
                if b.tiny { "  (tiny, for tests)" } else { "" }
            )
        );
    }
    let cache = crate::catalog::hub::cache_dir();
    let cached = crate::catalog::CatalogEntry::cached(&cache);
    if !cached.is_empty() {
        out!(
            "{}",
            format_args!("\nin the Hugging Face cache at {}:", cache.display())
        );
        for e in &cached {
            let b = |v: Option<u64>| v.map_or_else(|| "-".into(), human_bytes);
            out!(
                "{}",
                format_args!(
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
                )
            );
        }
    }
    out!(
        "{}",
        "\nparameters as published (BERT includes its pooler); weight bytes as candle holds them.",
    );
    out!("{}", host_line(HostMemory::read().as_ref()));
    out!(
        "{}",
        "--model also takes a Hugging Face id (org/name[@revision], bundled ones by either name), a config.json, or a folder with config.json + *.safetensors.",
    );
    Ok(())
}

/// The first line of `oomlab models --gpu G`: the preset's memory and compute capability.
fn preset_line(preset: &GpuPreset) -> String {
    format!(
        "{}: {} as CUDA reports it (PyTorch's \"total capacity\"), compute capability {}{}",
        preset.name,
        preset.total_label(),
        preset.compute_capability_label(),
        if preset.supports_bf16() {
            ""
        } else {
            " (no bf16)"
        }
    )
}

/// The lines after `oomlab models --gpu G`'s table: what the figures are, and are not.
fn estimate_note(preset: &GpuPreset) -> String {
    use std::fmt::Write as _;
    let example = BUNDLED.iter().find(|b| !b.tiny).map_or("ID", |b| b.id);
    let mut note = format!(
        "max batch (est., infer): estimated by oomlab's estimator for candle's inference forward at seq {seq} (or the model's maximum) — no gradients, no optimizer state — against this GPU's capacity; the CUDA context, kernels and cuBLAS workspace a real GPU holds are not in it.\ntraining needs more: measure it with `oomlab sweep --runtime torch --workload train --gpu {gpu} --model {example} --seq {seq}`.",
        seq = crate::plan::defaults::SEQ,
        gpu = preset.id
    );
    if !preset.supports_bf16() {
        let _ = write!(
            note,
            "\nthe {} has no bf16 (compute capability {}; bf16 needs 8.0): its bf16 rows are for comparison; train with fp16 autocast and a GradScaler.",
            preset.name,
            preset.compute_capability_label()
        );
    }
    note
}

/// `oomlab models --gpu G`: per bundled model and precision, whether the weights fit and the
/// largest batch the estimator gives for candle's inference forward at seq 128 (estimated, not
/// measured; no CUDA context, no training state).
pub(super) fn models_on_gpu(gpu: &str, worker: &WorkerConfig) -> Result<(), CliError> {
    let preset = crate::presets::find(gpu).map_err(|e| CliError::usage(e.to_string()))?;
    let threads = crate::plan::defaults::threads();
    let cancel = AtomicBool::new(false);
    out!("{}", preset_line(preset));
    out!(
        "{}",
        format_args!(
            "{:<24} {:<5} {:>11} {:>5} {:>23}",
            "id", "dtype", "weights", "fits", "max batch (est., infer)"
        )
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
            let weights = spec.weights_bytes(dtype.candle());
            let max = crate::estimate::max_batch(
                &spec,
                seq,
                dtype,
                &rt,
                preset.total_bytes,
                crate::cli::estimate::MAX_BATCH,
            );
            out!(
                "{}",
                format_args!(
                    "{:<24} {:<5} {:>11} {:>5} {:>23}",
                    b.id,
                    dtype.name(),
                    human_bytes(weights),
                    if max.is_some() { "yes" } else { "no" },
                    max.map_or_else(|| "-".into(), |m| m.to_string())
                )
            );
        }
    }
    out!("\n{}", estimate_note(preset));
    Ok(())
}
