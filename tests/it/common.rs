//! Helpers shared by the integration tests.

use oomlab::catalog::ModelRef;
use oomlab::plan::{BatchRange, Device, Precision, Strategy, SweepPlan};
use oomlab::report::{Purpose, Results};
use oomlab::sweep::{Sweep, SweepEvent};
use oomlab::worker::{WorkerConfig, WorkerFaults};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// The tiny config of every family (tests that must cover them all).
pub const TINY_MODELS: &[&str] = &[
    "tiny-bert",
    "tiny-distilbert",
    "tiny-llama",
    "tiny-qwen2",
    "tiny-mistral",
    "tiny-phi3",
    "tiny-roberta",
    "tiny-gemma2",
    "tiny-mixtral",
    "tiny-modernbert",
    "tiny-qwen3",
    "tiny-qwen3-moe",
    "tiny-gemma3",
];

pub fn bin() -> PathBuf {
    PathBuf::from(env!("CARGO_BIN_EXE_oomlab"))
}

/// A bundled config (`assets/models/{name}.json`) as JSON, for a test to vary.
pub fn bundled_config(name: &str) -> serde_json::Value {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("assets/models/{name}.json"));
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

pub fn fixtures() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures")
}

pub fn worker() -> WorkerConfig {
    WorkerConfig {
        exe: bin(),
        faults: WorkerFaults::default(),
        fresh_per_trial: false,
    }
}

/// A worker that sleeps `stall_ms` inside each trial (after announcing it, before the forward)
/// and runs out of memory for real at the batches in `oom_at`.
pub fn faulty_worker(stall_ms: u64, oom_at: &[usize]) -> WorkerConfig {
    WorkerConfig {
        exe: bin(),
        faults: WorkerFaults {
            stall_ms,
            oom_at: oom_at.to_vec(),
            ..WorkerFaults::default()
        },
        fresh_per_trial: false,
    }
}

/// What a worker's main thread is doing: `running`, or the number and arguments of the system
/// call it is blocked in (`/proc/PID/syscall`; `0 …` is `read`, i.e. waiting for a request).
pub fn main_thread_syscall(pid: u32) -> String {
    std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_else(|e| e.to_string())
}

/// Sends SIGKILL to a worker process.
pub fn kill(pid: u32) {
    // SAFETY: sending a signal to a child process the test's sweep started.
    unsafe {
        libc::kill(pid.cast_signed(), libc::SIGKILL);
    }
}

/// A fresh temporary directory under the target dir (removed on drop).
pub struct TempDir(pub PathBuf);

impl TempDir {
    pub fn new(tag: &str) -> Self {
        static N: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
        let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let p = std::env::temp_dir().join(format!("oomlab-it-{tag}-{}-{n}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        std::fs::create_dir_all(&p).unwrap();
        Self(p)
    }
    pub fn join(&self, s: &str) -> PathBuf {
        self.0.join(s)
    }
}

impl Drop for TempDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

pub fn plan(
    model: ModelRef,
    seqs: &[usize],
    dtypes: &[Precision],
    batch: (usize, usize),
    capacity: u64,
    strategy: Strategy,
) -> SweepPlan {
    SweepPlan {
        gpu: None,
        model,
        seqs: seqs.to_vec(),
        dtypes: dtypes.to_vec(),
        batch: BatchRange::new(batch.0, batch.1).unwrap(),
        capacity_bytes: capacity,
        headroom: 0.1,
        strategy,
        device: Device::Cpu { threads: 1 },
        runtimes: vec![oomlab::plan::Runtime::Candle],
        workload: oomlab::plan::Workload::default(),
        torch: oomlab::plan::TorchPlan::default(),
    }
}

/// Runs a sweep to the end with the real worker, collecting its events.
pub fn run(plan: SweepPlan, journal: &Path, worker: &WorkerConfig) -> (Results, Vec<SweepEvent>) {
    let sweep = Sweep::new(plan, journal).unwrap();
    let mut events = Vec::new();
    let cancel = Arc::new(AtomicBool::new(false));
    let r = sweep.run(worker, &cancel, &mut |e| events.push(e)).unwrap();
    (r, events)
}

/// Capacity that puts the boundary of a tiny model near `target` batches, from a measured
/// two-point line (the experiment is designed, the boundary is still found by the search).
pub fn capacity_for(model: &str, seq: usize, dtype: Precision, target: u64, dir: &TempDir) -> u64 {
    let p = plan(
        ModelRef::Catalog(model.into()),
        &[seq],
        &[dtype],
        (1, 2),
        1 << 32,
        Strategy::Grid,
    );
    let (r, _) = run(
        p,
        &dir.join(&format!("cal-{model}-{seq}-{dtype}.jsonl")),
        &worker(),
    );
    let t1 = r
        .trials
        .iter()
        .find(|t| t.batch == 1)
        .unwrap()
        .total_bytes
        .unwrap();
    let t2 = r
        .trials
        .iter()
        .find(|t| t.batch == 2)
        .unwrap()
        .total_bytes
        .unwrap();
    t1 + (t2 - t1) * (target - 1) + (t2 - t1) / 2
}

/// The tiny-bert auto sweep the non-monotone tests share: seq 64 in f32 with a capacity that puts
/// b* near 27. Returns the plan, the clean run's b* and the batch its recommendation confirmed
/// (where the tests then inject an OOM below b*).
pub fn contradiction_setup(dir: &TempDir) -> (SweepPlan, usize, usize) {
    let cap = capacity_for("tiny-bert", 64, Precision::F32, 27, dir);
    let p = plan(
        ModelRef::Catalog("tiny-bert".into()),
        &[64],
        &[Precision::F32],
        (1, 256),
        cap,
        Strategy::Auto,
    );
    let (clean, _) = run(p.clone(), &dir.join("clean.jsonl"), &worker());
    let star = clean.boundaries[0].max_batch.unwrap();
    let confirmed = clean
        .trials
        .iter()
        .find(|t| t.purpose == Purpose::Recommend)
        .expect("the recommendation confirms a batch below b*")
        .batch;
    assert!(confirmed < star);
    (p, star, confirmed)
}

/// A copy of the sharded tiny-llama checkpoint without its second shard, in `dir/name`.
pub fn folder_missing_a_shard(dir: &TempDir, name: &str) -> PathBuf {
    let folder = dir.join(name);
    std::fs::create_dir_all(&folder).unwrap();
    let src = fixtures().join("checkpoints/tiny-llama");
    for f in [
        "config.json",
        "model.safetensors.index.json",
        "model-00001-of-00002.safetensors",
    ] {
        std::fs::copy(src.join(f), folder.join(f)).unwrap();
    }
    folder
}
