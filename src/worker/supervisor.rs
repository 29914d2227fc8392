//! Spawns `oomlab worker`, speaks JSON lines to it, restarts it after an abort or a kill, and
//! turns every request into exactly one result.

use super::WorkerFaults;
use super::protocol::{Ready, Request, Response, TorchLoad, TrialMeasure};
use crate::catalog::ModelRef;
use crate::measure::alloc::{parse_host_marker, parse_oom_marker};
use crate::plan::{Device, Precision};
use std::collections::VecDeque;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, sync_channel};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// The oneDNN instruction set the PyTorch worker's CPU trials are held to (see `spawn`).
pub const ONEDNN_ISA: (&str, &str) = ("ONEDNN_MAX_CPU_ISA", "AVX2");

/// How to start workers.
#[derive(Debug, Clone)]
pub struct WorkerConfig {
    /// The oomlab binary (`std::env::current_exe()` in the app, `CARGO_BIN_EXE_oomlab` in tests).
    pub exe: PathBuf,
    /// Test hooks passed to the worker as hidden options (none in normal use).
    pub faults: WorkerFaults,
    /// A new worker for every trial on the CPU too (on a CUDA device always; see
    /// [`Supervisor::trial`]).
    pub fresh_per_trial: bool,
}

/// The running binary could not be found (to start it again as a worker).
#[derive(Debug, thiserror::Error)]
#[error("cannot locate the oomlab binary: {0}")]
pub struct LocateError(#[from] std::io::Error);

impl WorkerConfig {
    /// The running binary as worker.
    pub fn current() -> Result<Self, LocateError> {
        Ok(Self {
            exe: std::env::current_exe()?,
            faults: WorkerFaults::default(),
            fresh_per_trial: false,
        })
    }
}

/// How a request ended when it did not end with an answer.
#[derive(Debug, Clone, PartialEq)]
pub enum Death {
    /// The allocator refused a request above the capacity and the process aborted.
    Oom { requested_bytes: Option<u64> },
    /// The allocator refused a request the machine could not hold (its ceiling, not the
    /// simulated capacity), and the process aborted.
    HostMemory { requested_bytes: Option<u64> },
    /// Killed by a signal with no OOM marker (the kernel's OOM killer, a user, a crash).
    Signal { signal: i32, stderr_tail: String },
    /// Exited on its own without answering.
    Exited { code: i32, stderr_tail: String },
    /// The user cancelled; the worker was killed by us.
    Cancelled,
    /// The worker could not be started at all.
    Spawn(String),
}

impl Death {
    #[must_use]
    pub fn describe(&self) -> String {
        match self {
            Self::Oom { requested_bytes } => match requested_bytes {
                Some(n) => format!("out of memory (tried to allocate {n} bytes)"),
                None => "out of memory".into(),
            },
            Self::HostMemory { requested_bytes } => format!(
                "stopped before this machine ran out of memory{}",
                requested_bytes
                    .map_or_else(String::new, |n| format!(" (tried to allocate {n} bytes)"))
            ),
            Self::Signal {
                signal,
                stderr_tail,
            } => {
                let mut s = format!("killed by signal {signal} ({})", signal_name(*signal));
                if !stderr_tail.is_empty() {
                    s.push_str(": ");
                    s.push_str(stderr_tail);
                }
                s
            }
            Self::Exited { code, stderr_tail } => {
                format!("worker exited with status {code} without answering: {stderr_tail}")
            }
            Self::Cancelled => "cancelled".into(),
            Self::Spawn(e) => format!("cannot start the worker: {e}"),
        }
    }
}

fn signal_name(sig: i32) -> &'static str {
    match sig {
        libc::SIGKILL => "SIGKILL",
        libc::SIGABRT => "SIGABRT",
        libc::SIGSEGV => "SIGSEGV",
        libc::SIGTERM => "SIGTERM",
        libc::SIGINT => "SIGINT",
        libc::SIGBUS => "SIGBUS",
        _ => "signal",
    }
}

/// Classifies a worker that ended without answering, from its exit and the end of its stderr.
#[must_use]
pub fn classify_exit(signal: Option<i32>, code: Option<i32>, stderr: &[String]) -> Death {
    let marker = stderr.iter().find_map(|l| parse_oom_marker(l));
    let host = stderr.iter().find_map(|l| parse_host_marker(l));
    let rust_oom = stderr.iter().find_map(|l| {
        let rest = l.trim().strip_prefix("memory allocation of ")?;
        rest.strip_suffix(" bytes failed")?.parse::<u64>().ok()
    });
    let tail = stderr
        .iter()
        .rev()
        .find(|l| !l.trim().is_empty())
        .cloned()
        .unwrap_or_default();
    match signal {
        Some(libc::SIGABRT) if host.is_some() => Death::HostMemory {
            requested_bytes: host,
        },
        Some(libc::SIGABRT) if marker.is_some() || rust_oom.is_some() => Death::Oom {
            requested_bytes: marker.or(rust_oom),
        },
        Some(signal) => Death::Signal {
            signal,
            stderr_tail: tail,
        },
        None => Death::Exited {
            code: code.unwrap_or(-1),
            stderr_tail: tail,
        },
    }
}

struct Running {
    child: Child,
    stdin: ChildStdin,
    lines: Receiver<String>,
    stderr: Arc<Mutex<VecDeque<String>>>,
    stderr_thread: Option<JoinHandle<()>>,
}

/// What a worker is asked to build: a request for anything else restarts it.
#[derive(Debug, Clone, PartialEq)]
pub struct Load {
    pub model: ModelRef,
    pub dtype: Precision,
    pub capacity_bytes: u64,
    pub device: Device,
    /// The PyTorch runtime: the interpreter and what it builds and runs (`None`: candle).
    pub torch: Option<(PathBuf, TorchLoad)>,
}

impl Load {
    /// A candle worker's build.
    #[must_use]
    pub fn candle(model: ModelRef, dtype: Precision, capacity_bytes: u64, device: Device) -> Self {
        Self {
            model,
            dtype,
            capacity_bytes,
            device,
            torch: None,
        }
    }

    fn request(&self) -> Request {
        Request::Load {
            model: self.model.clone(),
            dtype: self.dtype,
            capacity_bytes: self.capacity_bytes,
            device: self.device,
            torch: self.torch.as_ref().map(|(_, t)| t.clone()),
        }
    }
}

/// Why a worker could not build a model; each says what happened in the worker's words.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum LoadError {
    /// The worker did not start.
    #[error("{0}")]
    Start(String),
    /// The worker refused the model (its own message).
    #[error("{0}")]
    Refused(String),
    #[error(
        "the device ran out of memory while building the model ({0}); raise the capacity above the weights and the context"
    )]
    Oom(String),
    #[error("unexpected answer to load: {0}")]
    Unexpected(String),
    #[error("cancelled")]
    Cancelled,
    #[error(
        "building the model would take more memory than this machine can give the worker ({0})"
    )]
    HostMemory(String),
    /// The worker died while building, twice.
    #[error("the worker died while building the model: {0}")]
    Died(String),
}

/// Owns at most one worker process at a time.
pub struct Supervisor {
    config: WorkerConfig,
    running: Option<Running>,
    loaded: Option<Load>,
    ready: Option<Ready>,
    /// The PyTorch worker is watched from outside (its allocations are not oomlab's): resident
    /// bytes above this end it as `host_memory` before the kernel's OOM killer would.
    rss_ceiling_bytes: Option<u64>,
}

/// Result of one trial request.
#[derive(Debug, Clone, PartialEq)]
pub enum TrialResult {
    /// Boxed: a measure carries its timeline, far larger than the other answers.
    Measured(Box<TrialMeasure>),
    /// The worker answered with an error (bad shapes, a candle error).
    Error(String),
    Died(Death),
}

impl Supervisor {
    #[must_use]
    pub fn new(config: WorkerConfig) -> Self {
        Self {
            config,
            running: None,
            loaded: None,
            ready: None,
            rss_ceiling_bytes: None,
        }
    }

    /// The current worker's process id.
    #[must_use]
    pub fn pid(&self) -> Option<u32> {
        self.running.as_ref().map(|r| r.child.id())
    }

    fn spawn(&mut self, device: Device, python: Option<&PathBuf>) -> Result<(), Death> {
        let threads = device.threads().to_string();
        let mut cmd = match python {
            None => {
                let mut cmd = Command::new(&self.config.exe);
                cmd.arg("worker")
                    .args(self.config.faults.to_args())
                    .env("RAYON_NUM_THREADS", &threads)
                    // candle's own barrier pool (CPU flash attention) sizes itself from this first.
                    .env("CANDLE_NUM_THREADS", &threads)
                    .env_remove("RUST_BACKTRACE")
                    .env_remove("RUST_LIB_BACKTRACE");
                cmd
            }
            Some(python) => {
                let mut cmd = super::python::worker_command(python, "worker");
                cmd.env("OMP_NUM_THREADS", &threads)
                    .env("MKL_NUM_THREADS", &threads)
                    .env("PYTHONUNBUFFERED", "1")
                    .env("HF_HUB_OFFLINE", "1")
                    .env("TOKENIZERS_PARALLELISM", "false");
                // A CPU trial counts the same tensors on every x86 CPU: on one with AVX-512
                // (and AMX), oneDNN runs bf16 matmuls with a scratchpad booked per call and
                // sized by that CPU's caches (up to a sixth of a tiny model's forward, 0.05% of
                // SmolLM2-135M's), a CPU artefact no GPU has and the estimator cannot follow.
                // Held to AVX2, every x86 CPU takes the same path, one without it.
                if cfg!(target_arch = "x86_64") && matches!(device, Device::Cpu { .. }) {
                    cmd.env(ONEDNN_ISA.0, ONEDNN_ISA.1);
                }
                cmd
            }
        };
        cmd.stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            // Own process group: a Ctrl-C in the terminal reaches the app, which cancels cleanly.
            .process_group(0);
        // SAFETY: prctl is async-signal-safe; it only asks the kernel to kill the worker
        // when the app dies, so no orphan keeps computing.
        // The Python worker gets the candle worker's hygiene here (no core dumps, lower
        // priority); candle's applies its own (nice values add up, so only once).
        let hygiene = python.is_some();
        unsafe {
            cmd.pre_exec(move || {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                if hygiene {
                    let zero = libc::rlimit {
                        rlim_cur: 0,
                        rlim_max: 0,
                    };
                    libc::setrlimit(libc::RLIMIT_CORE, &raw const zero);
                    libc::nice(10);
                }
                Ok(())
            });
        }
        let program = python.unwrap_or(&self.config.exe).display().to_string();
        let mut child = cmd
            .spawn()
            .map_err(|e| Death::Spawn(format!("{program}: {e}")))?;
        let (Some(stdin), Some(stdout), Some(stderr)) =
            (child.stdin.take(), child.stdout.take(), child.stderr.take())
        else {
            let _ = child.kill();
            let _ = child.wait();
            return Err(Death::Spawn("no pipes to the worker".into()));
        };
        let (tx, rx) = sync_channel::<String>(4);
        std::thread::Builder::new()
            .name("oomlab-worker-stdout".into())
            .spawn(move || {
                for line in BufReader::new(stdout).lines() {
                    let Ok(line) = line else { break };
                    if tx.send(line).is_err() {
                        break;
                    }
                }
            })
            .map_err(|e| Death::Spawn(e.to_string()))?;
        let tail = Arc::new(Mutex::new(VecDeque::new()));
        let tail2 = Arc::clone(&tail);
        let stderr_thread = std::thread::Builder::new()
            .name("oomlab-worker-stderr".into())
            .spawn(move || {
                for line in BufReader::new(stderr).lines() {
                    let Ok(line) = line else { break };
                    if let Ok(mut t) = tail2.lock() {
                        if t.len() >= 64 {
                            t.pop_front();
                        }
                        t.push_back(line);
                    }
                }
            })
            .map_err(|e| Death::Spawn(e.to_string()))?;
        self.running = Some(Running {
            child,
            stdin,
            lines: rx,
            stderr: tail,
            stderr_thread: Some(stderr_thread),
        });
        Ok(())
    }

    /// Waits for the dead (or killed) worker and classifies how it ended.
    fn reap(&mut self, cancelled: bool) -> Death {
        self.loaded = None;
        self.ready = None;
        let Some(mut r) = self.running.take() else {
            return Death::Exited {
                code: -1,
                stderr_tail: "no worker".into(),
            };
        };
        if cancelled {
            let _ = r.child.kill();
        }
        drop(r.stdin);
        let status = r.child.wait();
        if let Some(t) = r.stderr_thread.take() {
            let _ = t.join();
        }
        if cancelled {
            return Death::Cancelled;
        }
        let lines: Vec<String> = r
            .stderr
            .lock()
            .map(|t| t.iter().cloned().collect())
            .unwrap_or_default();
        match status {
            Ok(s) => classify_exit(s.signal(), s.code(), &lines),
            Err(e) => Death::Exited {
                code: -1,
                stderr_tail: e.to_string(),
            },
        }
    }

    /// Sends one request to the running worker and waits for its answer, the worker's death, or
    /// a cancel. A `started` acknowledgement calls `on_started` with the worker's pid.
    fn request(
        &mut self,
        req: &Request,
        cancel: &AtomicBool,
        on_started: &mut dyn FnMut(u32),
    ) -> Result<Response, Death> {
        let text = serde_json::to_string(req).map_err(|e| Death::Spawn(e.to_string()))?;
        let Some(r) = self.running.as_mut() else {
            return Err(Death::Spawn("no worker is running".into()));
        };
        if writeln!(r.stdin, "{text}")
            .and_then(|()| r.stdin.flush())
            .is_err()
        {
            return Err(self.reap(false));
        }
        let mut ticks = 0u32;
        loop {
            let Some(r) = self.running.as_ref() else {
                return Err(Death::Spawn("no worker is running".into()));
            };
            match r.lines.recv_timeout(Duration::from_millis(25)) {
                Ok(line) => {
                    let response = serde_json::from_str(&line).map_err(|e| Death::Exited {
                        code: -1,
                        stderr_tail: format!("unreadable answer from worker ({e}): {line}"),
                    })?;
                    if response == Response::Started {
                        on_started(r.child.id());
                        continue;
                    }
                    return Ok(response);
                }
                Err(RecvTimeoutError::Timeout) => {
                    if cancel.load(Ordering::Relaxed) {
                        return Err(self.reap(true));
                    }
                    ticks += 1;
                    if ticks.is_multiple_of(4)
                        && let Some(ceiling) = self.rss_ceiling_bytes
                        && resident_bytes(r.child.id()).is_some_and(|rss| rss > ceiling)
                    {
                        let _ = self.reap(true);
                        return Err(Death::HostMemory {
                            requested_bytes: None,
                        });
                    }
                }
                Err(RecvTimeoutError::Disconnected) => return Err(self.reap(false)),
            }
        }
    }

    /// Makes sure a worker has `load` built. A worker killed during the build is restarted
    /// once. The PyTorch worker is watched against this machine's memory (`host`).
    pub fn ensure_loaded(
        &mut self,
        load: &Load,
        host: Option<&crate::measure::host::HostMemory>,
        cancel: &AtomicBool,
    ) -> Result<Ready, LoadError> {
        if let (Some(loaded), Some(ready)) = (&self.loaded, &self.ready)
            && loaded == load
            && self.running.is_some()
        {
            return Ok(ready.clone());
        }
        if self.running.is_some() {
            self.shutdown();
        }
        self.rss_ceiling_bytes = match (&load.torch, host) {
            (Some(_), Some(h)) => Some(h.usable_bytes().saturating_sub(h.margin_bytes())),
            _ => None,
        };
        let req = load.request();
        let python = load.torch.as_ref().map(|(p, _)| p.clone());
        let mut last = LoadError::Died(String::new());
        for _attempt in 0..2 {
            if self.running.is_none()
                && let Err(d) = self.spawn(load.device, python.as_ref())
            {
                return Err(LoadError::Start(d.describe()));
            }
            match self.request(&req, cancel, &mut |_| {}) {
                Ok(Response::Ready(ready)) => {
                    self.loaded = Some(load.clone());
                    self.ready = Some(ready.clone());
                    return Ok(ready);
                }
                Ok(Response::Error { message }) => return Err(LoadError::Refused(message)),
                Ok(Response::Oom { message, .. }) => {
                    // The worker ends after an out-of-memory; reap it.
                    let _ = self.reap(false);
                    return Err(LoadError::Oom(message));
                }
                Ok(other) => return Err(LoadError::Unexpected(format!("{other:?}"))),
                Err(Death::Cancelled) => return Err(LoadError::Cancelled),
                Err(d @ Death::Spawn(_)) => return Err(LoadError::Start(d.describe())),
                Err(d @ Death::HostMemory { .. }) => {
                    return Err(LoadError::HostMemory(d.describe()));
                }
                Err(d) => last = LoadError::Died(d.describe()),
            }
        }
        Err(last)
    }

    /// Runs one forward on the loaded worker (after [`Self::ensure_loaded`]); `on_started` hears
    /// the worker's pid once it has begun the measured forward.
    pub fn trial(
        &mut self,
        batch: usize,
        seq: usize,
        cancel: &AtomicBool,
        on_started: &mut dyn FnMut(u32),
    ) -> (TrialResult, f64) {
        let t0 = Instant::now();
        if self.running.is_none() {
            let death = Death::Exited {
                code: -1,
                stderr_tail: "no worker is loaded".into(),
            };
            return (TrialResult::Died(death), 0.0);
        }
        let one_trial = self.one_trial_per_worker();
        let r = match self.request(&Request::Trial { batch, seq }, cancel, on_started) {
            Ok(Response::Trial(m)) => {
                if self.fresh_per_trial() {
                    self.shutdown();
                }
                TrialResult::Measured(Box::new(m))
            }
            Ok(Response::Error { message }) => {
                if one_trial {
                    self.shutdown();
                }
                TrialResult::Error(message)
            }
            Ok(Response::Oom {
                requested_bytes, ..
            }) => {
                // The worker said it: the device's out-of-memory (CUDA's errors carry no size;
                // PyTorch's say what it tried to allocate), or on the CPU PyTorch's peak over
                // the capacity. The worker ends after answering, so the next trial starts clean.
                let _ = self.reap(false);
                TrialResult::Died(Death::Oom { requested_bytes })
            }
            Ok(other) => TrialResult::Error(format!("unexpected answer to trial: {other:?}")),
            Err(d) => TrialResult::Died(d),
        };
        (r, t0.elapsed().as_secs_f64())
    }

    /// Whether each trial gets a worker of its own. On a CUDA device it must: what a forward
    /// can reach there depends on what ran before it in the process (measured on an H200 with
    /// bert-large f16 at seq 128 under 11 GiB: batch 1900 runs out of memory as a process's
    /// first forward, while 2016 fits after a ladder of smaller ones, as the memory pool and
    /// lazily loaded kernels are left by them). A fresh process is what a user's program meets
    /// on its first step, and it makes every trial independent of the search's order.
    ///
    /// A PyTorch worker runs one trial: on the CPU its count starts with the profiler, before
    /// the model is built (the profiler cannot see frees of blocks older than itself).
    fn fresh_per_trial(&self) -> bool {
        self.config.fresh_per_trial
            || self.one_trial_per_worker()
            || self
                .loaded
                .as_ref()
                .is_some_and(|l| matches!(l.device, Device::Cuda { .. }))
    }

    fn one_trial_per_worker(&self) -> bool {
        self.loaded.as_ref().is_some_and(|l| l.torch.is_some())
    }

    /// Asks the worker to exit, or kills it if it does not within a second.
    pub fn shutdown(&mut self) {
        if let Some(mut r) = self.running.take() {
            let _ = writeln!(r.stdin, "{{\"op\":\"shutdown\"}}");
            drop(r.stdin);
            let deadline = Instant::now() + Duration::from_secs(1);
            loop {
                match r.child.try_wait() {
                    Ok(Some(_)) | Err(_) => break,
                    Ok(None) if Instant::now() > deadline => {
                        let _ = r.child.kill();
                        let _ = r.child.wait();
                        break;
                    }
                    Ok(None) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
            if let Some(t) = r.stderr_thread.take() {
                let _ = t.join();
            }
        }
        self.loaded = None;
        self.ready = None;
    }
}

/// A process's resident bytes (`VmRSS`), read from /proc; a safety watch, never a measurement.
fn resident_bytes(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let line = status.lines().find(|l| l.starts_with("VmRSS:"))?;
    let kib: u64 = line.split_whitespace().nth(1)?.parse().ok()?;
    Some(kib * 1024)
}

impl Drop for Supervisor {
    fn drop(&mut self) {
        self.shutdown();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_worker_endings() {
        let oom = classify_exit(
            Some(libc::SIGABRT),
            None,
            &[
                "OOMLAB_OOM requested_bytes=4096".into(),
                "memory allocation of 4096 bytes failed".into(),
            ],
        );
        assert_eq!(
            oom,
            Death::Oom {
                requested_bytes: Some(4096)
            }
        );
        let rust_only = classify_exit(
            Some(libc::SIGABRT),
            None,
            &["memory allocation of 77 bytes failed".into()],
        );
        assert_eq!(
            rust_only,
            Death::Oom {
                requested_bytes: Some(77)
            }
        );
        let host = classify_exit(
            Some(libc::SIGABRT),
            None,
            &[
                "OOMLAB_HOST_MEMORY requested_bytes=64".into(),
                "memory allocation of 64 bytes failed".into(),
            ],
        );
        assert_eq!(
            host,
            Death::HostMemory {
                requested_bytes: Some(64)
            }
        );
        let killed = classify_exit(Some(libc::SIGKILL), None, &[]);
        assert!(matches!(killed, Death::Signal { signal: 9, .. }));
        assert!(killed.describe().contains("killed by signal 9"));
        // An abort without the marker is a crash, never an OOM and never a fit.
        let abort = classify_exit(Some(libc::SIGABRT), None, &["thread panicked".into()]);
        assert!(matches!(abort, Death::Signal { signal: 6, .. }));
        let exited = classify_exit(None, Some(3), &["boom".into()]);
        assert!(matches!(exited, Death::Exited { code: 3, .. }));
    }
}
