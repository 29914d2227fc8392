//! The trial process and its supervisor.

mod process;
pub mod protocol;
mod supervisor;

pub use process::run as run_worker;
pub mod python;
pub use supervisor::{Death, Load, LoadError, LocateError, Supervisor, TrialResult, WorkerConfig};

/// Faults a test asks the real worker for. Hidden command-line options of `oomlab worker` (and,
/// to reach it, of `oomlab sweep`): never environment variables, which a user's shell could leak
/// into the shipped binary.
#[derive(Debug, Clone, Default, PartialEq, Eq, clap::Args)]
pub struct WorkerFaults {
    /// Test hook: sleep this long inside each trial, after announcing it and before the forward.
    #[arg(long = "worker-stall-ms", hide = true, default_value_t = 0)]
    pub stall_ms: u64,
    /// Test hook: run out of memory (for real: the allocator refuses the forward's first request)
    /// in trials at these batches.
    #[arg(long = "worker-oom-at", hide = true, value_delimiter = ',')]
    pub oom_at: Vec<usize>,
    /// Test hook: take this machine to have exactly this much memory available (bytes), no
    /// cgroup — for the pre-sweep check and the worker's ceiling.
    #[arg(long = "worker-host-available-bytes", hide = true, value_parser = crate::plan::parse_bytes)]
    pub host_available_bytes: Option<u64>,
    /// Development hook: samples kept of each trial's memory timeline (default 400).
    #[arg(long = "worker-timeline-points", hide = true)]
    pub timeline_points: Option<usize>,
    /// Test hook: the model's build fails in the worker with this message (a model candle refuses
    /// after oomlab has read its config).
    #[arg(long = "worker-build-fails", hide = true)]
    pub build_fails: Option<String>,
}

impl WorkerFaults {
    /// The options that pass these faults on to a worker process.
    #[must_use]
    pub fn to_args(&self) -> Vec<String> {
        let mut out = Vec::new();
        if self.stall_ms > 0 {
            out.push(format!("--worker-stall-ms={}", self.stall_ms));
        }
        if !self.oom_at.is_empty() {
            let list: Vec<String> = self.oom_at.iter().map(ToString::to_string).collect();
            out.push(format!("--worker-oom-at={}", list.join(",")));
        }
        if let Some(b) = self.host_available_bytes {
            out.push(format!("--worker-host-available-bytes={b}B"));
        }
        if let Some(n) = self.timeline_points {
            out.push(format!("--worker-timeline-points={n}"));
        }
        if let Some(m) = &self.build_fails {
            out.push(format!("--worker-build-fails={m}"));
        }
        out
    }

    /// This machine's memory as the sweep sees it: read, or faked by the test hook.
    #[must_use]
    pub fn host_memory(&self) -> Option<crate::measure::host::HostMemory> {
        self.host_available_bytes
            .map(crate::measure::host::HostMemory::faked)
            .or_else(crate::measure::host::HostMemory::read)
    }
}
