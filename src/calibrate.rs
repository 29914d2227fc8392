//! The runtime's own bytes on this machine (the estimator's CPU overhead): measured once per
//! machine, thread count and precision from a worker that builds the tiny BERT and runs its
//! warm-up forward, and cached under `$XDG_CACHE_HOME/oomlab/runtime.json`.
//!
//! Why measured rather than modelled: the bytes are gemm's per-thread packing scratch, rayon's
//! pool and the allocator's state, whose sizes depend on the CPU's cache sizes and SIMD width as
//! much as on the thread count. A tiny model's baseline less its weights and build metadata is
//! that figure alone (bert-base at 2 threads carries the same bytes as the tiny BERT).

use crate::catalog::{CatalogError, ModelRef, ModelSpec};
use crate::estimate::Runtime;
use crate::plan::{Device, Precision};
use crate::worker::{Supervisor, WorkerConfig};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::AtomicBool;

/// The model whose worker baseline gives the runtime's bytes.
const PROBE_MODEL: &str = "tiny-bert";

/// Why the runtime's own bytes could not be measured.
#[derive(Debug, thiserror::Error)]
pub enum CalibrateError {
    /// The probe model does not resolve (a broken build of oomlab).
    #[error(transparent)]
    Model(#[from] CatalogError),
    #[error("measuring the runtime's own memory failed: {0}")]
    Worker(#[from] crate::worker::LoadError),
}

/// Where a runtime figure came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    Measured,
    Cached,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Cache {
    /// Key: see [`key`].
    entries: BTreeMap<String, u64>,
}

/// The cache entry's key: the build (a new build may allocate differently), the CPU, the
/// threads and the precision.
fn key(threads: usize, dtype: Precision) -> String {
    format!(
        "{}|{}|{}|{threads}|{dtype}",
        env!("CARGO_PKG_VERSION"),
        std::env::consts::ARCH,
        cpu_brand()
    )
}

fn cpu_brand() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|t| {
            t.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split(':').nth(1))
                .map(|s| s.trim().to_string())
        })
        .unwrap_or_default()
}

/// `$XDG_CACHE_HOME/oomlab/runtime.json` (or `~/.cache/...`).
#[must_use]
pub fn cache_path() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .filter(|p| p.is_absolute())
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    Some(base.join("oomlab").join("runtime.json"))
}

fn read_cache(path: &std::path::Path) -> Cache {
    std::fs::read_to_string(path)
        .ok()
        .and_then(|t| serde_json::from_str(&t).ok())
        .unwrap_or_default()
}

/// The runtime bytes for `threads` and `dtype`: from the cache, or measured by a worker (about
/// a second) and cached. `cache` overrides the cache file (tests); a cache that cannot be written
/// costs a measurement next time, nothing else.
pub fn runtime(
    threads: usize,
    dtype: Precision,
    worker: &WorkerConfig,
    cache: Option<PathBuf>,
    cancel: &AtomicBool,
) -> Result<(Runtime, Source), CalibrateError> {
    let path = cache.or_else(cache_path);
    let k = key(threads, dtype);
    if let Some(p) = &path
        && let Some(&bytes) = read_cache(p).entries.get(&k)
    {
        return Ok((Runtime { threads, bytes }, Source::Cached));
    }
    let rt = measure(threads, dtype, worker, cancel)?;
    if let Some(p) = &path {
        let mut c = read_cache(p);
        c.entries.insert(k, rt.bytes);
        if let Some(dir) = p.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Ok(text) = serde_json::to_string_pretty(&c) {
            let tmp = p.with_extension(format!("tmp{}", std::process::id()));
            if std::fs::write(&tmp, text).is_ok() {
                let _ = std::fs::rename(&tmp, p);
            }
        }
    }
    Ok((rt, Source::Measured))
}

/// Builds the probe model in a worker and reads its baseline.
pub fn measure(
    threads: usize,
    dtype: Precision,
    worker: &WorkerConfig,
    cancel: &AtomicBool,
) -> Result<Runtime, CalibrateError> {
    let model = ModelRef::Catalog(PROBE_MODEL.into());
    let spec = ModelSpec::resolve(&model)?;
    let mut sup = Supervisor::new(worker.clone());
    let load = crate::worker::Load::candle(model, dtype, 1 << 30, Device::Cpu { threads });
    let ready = sup.ensure_loaded(&load, None, cancel);
    sup.shutdown();
    let ready = ready?;
    Ok(Runtime::from_baseline(
        &spec,
        dtype,
        ready.built.threads,
        ready.built.baseline_bytes,
    ))
}
