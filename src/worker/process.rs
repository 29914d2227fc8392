//! The trial process (`oomlab worker`): reads requests on stdin, answers on stdout.
//!
//! Requires the counting allocator to be the global allocator (the binary installs it).
//! On the CPU an out-of-memory under the simulated capacity aborts the process; the supervisor
//! classifies that from the exit signal and the marker on stderr. On a GPU (feature `cuda`) the
//! device's own out-of-memory comes back as an error: the worker answers `oom` and exits, so the
//! next trial starts in a clean context.

use super::WorkerFaults;
use super::protocol::{Ready, Request, Response, STARTED_LINE, TrialMeasure};
use crate::catalog::{ModelRef, ModelSpec};
use crate::measure::alloc;
use crate::models::{self, LoadedModel, ModelError};
use crate::plan::{self, Precision, human_bytes};
use crate::report::Built;
use candle_core::Device;
use std::io::{BufRead, Write};
use std::time::Instant;

struct State {
    model: LoadedModel,
    baseline_bytes: u64,
    device: Device,
    #[cfg(feature = "cuda")]
    meter: Option<gpu::Gpu>,
}

/// Lowers priority and disables core dumps: every simulated OOM ends in SIGABRT.
fn hygiene() {
    // SAFETY: plain libc calls on this process with valid arguments.
    unsafe {
        let zero = libc::rlimit {
            rlim_cur: 0,
            rlim_max: 0,
        };
        libc::setrlimit(libc::RLIMIT_CORE, &raw const zero);
        libc::nice(10);
    }
}

/// A failed request: the device's out-of-memory, or anything else.
enum Failure {
    Oom(String),
    Other(String),
}

impl From<ModelError> for Failure {
    fn from(e: ModelError) -> Self {
        match e {
            ModelError::OutOfMemory(m) => Self::Oom(m),
            other => Self::Other(other.to_string()),
        }
    }
}

#[cfg(feature = "cuda")]
impl From<crate::measure::cuda::CudaCallError> for Failure {
    fn from(e: crate::measure::cuda::CudaCallError) -> Self {
        Self::Other(e.to_string())
    }
}

impl From<String> for Failure {
    fn from(e: String) -> Self {
        Self::Other(e)
    }
}

#[must_use]
pub fn run(faults: &WorkerFaults) -> i32 {
    hygiene();
    let stdin = std::io::stdin();
    let mut stdout = std::io::stdout().lock();
    let mut state: Option<State> = None;
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        if line.trim().is_empty() {
            continue;
        }
        let request = serde_json::from_str::<Request>(&line);
        // The line's buffer capacity depends on how the pipe delivered it: free it before
        // measuring, or the live bytes jitter by a few bytes between runs.
        drop(line);
        let result = match request {
            Err(e) => Err(Failure::Other(format!("bad request: {e}"))),
            Ok(Request::Shutdown) => break,
            Ok(Request::Load { torch: Some(_), .. }) => Err(Failure::Other(
                "this is candle's worker; PyTorch loads go to the Python worker".into(),
            )),
            Ok(Request::Load {
                model,
                dtype,
                capacity_bytes,
                device,
                torch: None,
            }) => load(&model, dtype, capacity_bytes, device, faults).map(|(s, ready)| {
                state = Some(s);
                Response::Ready(ready)
            }),
            Ok(Request::Trial { batch, seq }) => match state.as_mut() {
                None => Err(Failure::Other("trial before load".into())),
                Some(s) => trial(s, batch, seq, faults, &mut stdout).map(Response::Trial),
            },
        };
        let (response, exit) = match result {
            Ok(r) => (r, false),
            Err(Failure::Other(message)) => (Response::Error { message }, false),
            // A clean context for the next trial: this worker ends after answering.
            Err(Failure::Oom(message)) => (
                Response::Oom {
                    message,
                    requested_bytes: None,
                },
                true,
            ),
        };
        let Ok(text) = serde_json::to_string(&response) else {
            break;
        };
        if writeln!(stdout, "{text}")
            .and_then(|()| stdout.flush())
            .is_err()
            || exit
        {
            break;
        }
    }
    0
}

fn load(
    model: &ModelRef,
    dtype: Precision,
    capacity_bytes: u64,
    device: plan::Device,
    faults: &WorkerFaults,
) -> Result<(State, Ready), Failure> {
    let t0 = Instant::now();
    alloc::set_budget(None);
    let spec = ModelSpec::resolve(model).map_err(|e| e.to_string())?;
    let need = spec.weights_bytes(dtype.candle());
    if need > capacity_bytes {
        // The plan is checked before any worker starts; this guards a request made otherwise.
        return Err(Failure::Other(format!(
            "the {} weights of {} alone need {} but the capacity is {}",
            dtype,
            spec.name,
            human_bytes(need),
            human_bytes(capacity_bytes)
        )));
    }
    if let Some(message) = &faults.build_fails {
        return Err(Failure::Other(format!(
            "building the {} model failed: {message}",
            spec.family
        )));
    }
    match device {
        plan::Device::Cpu { .. } => load_cpu(&spec, dtype, capacity_bytes, faults, t0),
        plan::Device::Cuda { index } => load_cuda(&spec, dtype, capacity_bytes, index, t0),
    }
}

/// Builds the model and runs one small forward, so everything lazy (thread-local scratch, kernel
/// modules, cuBLAS workspace) is in place before anything is measured.
fn build_warm(spec: &ModelSpec, dtype: Precision, device: &Device) -> Result<LoadedModel, Failure> {
    let mut m = models::build(spec, dtype.candle(), device)?;
    models::warm_up_threads(dtype.candle(), device);
    let warm_seq = spec.dims.max_positions.min(8);
    let inputs = m.inputs(1, warm_seq, device)?;
    drop(m.forward(inputs)?);
    Ok(m)
}

fn load_cpu(
    spec: &ModelSpec,
    dtype: Precision,
    capacity_bytes: u64,
    faults: &WorkerFaults,
    t0: Instant,
) -> Result<(State, Ready), Failure> {
    // The machine's ceiling holds from the build on: the kernel's OOM killer never decides.
    let host_ceiling_bytes = faults
        .host_memory()
        .map(|h| alloc::live_bytes() + h.largest_capacity_bytes());
    alloc::set_host_budget(host_ceiling_bytes);
    let device = Device::Cpu;
    let m = build_warm(spec, dtype, &device)?;
    let baseline_bytes = alloc::live_bytes();
    let ready = Ready {
        pid: std::process::id(),
        built: Built {
            weights_bytes: m.weights_bytes,
            baseline_bytes,
            threads: rayon::current_num_threads(),
            build_seconds: t0.elapsed().as_secs_f64(),
            from_checkpoint: m.from_checkpoint,
            host_ceiling_bytes,
            overhead_bytes: None,
            ballast_bytes: None,
            pool_capacity_bytes: None,
            versions: None,
        },
    };
    // From here on the capacity is enforced: a request beyond it aborts the process.
    alloc::set_budget(Some(capacity_bytes));
    let state = State {
        model: m,
        baseline_bytes,
        device,
        #[cfg(feature = "cuda")]
        meter: None,
    };
    Ok((state, ready))
}

#[cfg(not(feature = "cuda"))]
fn load_cuda(
    _spec: &ModelSpec,
    _dtype: Precision,
    _capacity_bytes: u64,
    index: usize,
    _t0: Instant,
) -> Result<(State, Ready), Failure> {
    Err(Failure::Other(format!(
        "cuda:{index} needs CUDA, which this build of oomlab does not include"
    )))
}

#[cfg(feature = "cuda")]
fn load_cuda(
    spec: &ModelSpec,
    dtype: Precision,
    capacity_bytes: u64,
    index: usize,
    t0: Instant,
) -> Result<(State, Ready), Failure> {
    let (device, meter, prepared) = gpu::Gpu::open(index, capacity_bytes)?;
    let m = build_warm(spec, dtype, &device)?;
    let (meter, ready_gpu) = meter.settle(prepared)?;
    let ready = Ready {
        pid: std::process::id(),
        built: Built {
            weights_bytes: m.weights_bytes,
            baseline_bytes: ready_gpu.baseline_bytes,
            threads: 1,
            build_seconds: t0.elapsed().as_secs_f64(),
            from_checkpoint: m.from_checkpoint,
            host_ceiling_bytes: None,
            overhead_bytes: Some(ready_gpu.overhead_bytes),
            ballast_bytes: Some(ready_gpu.ballast_bytes),
            pool_capacity_bytes: Some(ready_gpu.pool_capacity_bytes),
            versions: None,
        },
    };
    let state = State {
        model: m,
        baseline_bytes: ready_gpu.baseline_bytes,
        device,
        meter: Some(meter),
    };
    Ok((state, ready))
}

/// Announces the forward (a static line into a buffer that already exists: nothing allocated).
fn announce(stdout: &mut impl Write) -> Result<(), Failure> {
    stdout
        .write_all(STARTED_LINE.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| Failure::Other(format!("writing to the supervisor: {e}")))
}

fn trial(
    s: &mut State,
    batch: usize,
    seq: usize,
    faults: &WorkerFaults,
    stdout: &mut impl Write,
) -> Result<TrialMeasure, Failure> {
    #[cfg(feature = "cuda")]
    if let Some(meter) = &s.meter {
        let baseline = s.baseline_bytes;
        return gpu::trial(
            meter,
            &mut s.model,
            &s.device,
            baseline,
            (batch, seq),
            faults,
            stdout,
        );
    }
    let inputs = s.model.inputs(batch, seq, &s.device)?;
    announce(stdout)?;
    let live_before = alloc::live_bytes();
    alloc::reset_peak();
    if faults.stall_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(faults.stall_ms));
    }
    if faults.oom_at.contains(&batch) {
        // A real out-of-memory: the forward's first request is refused by the allocator.
        alloc::set_budget(Some(live_before));
    }
    alloc::start_timeline();
    let t0 = Instant::now();
    let out = s.model.forward(inputs)?;
    let seconds = t0.elapsed().as_secs_f64();
    let total = alloc::peak_bytes();
    let (live_bytes, events) = alloc::take_timeline(faults.timeline_points.unwrap_or(400));
    drop(out);
    Ok(TrialMeasure {
        peak_bytes: total - live_before,
        total_bytes: total,
        live_before_bytes: live_before,
        baseline_bytes: s.baseline_bytes,
        seconds,
        pool_peak_bytes: None,
        pool_reserved_bytes: None,
        device_used_bytes: None,
        process_bytes: None,
        timeline: Some(crate::report::Timeline {
            events,
            live_bytes,
            marks: Vec::new(),
            // candle's allocator sees bytes, not layers (the window takes the estimator's).
            layers: Vec::new(),
            peak_op: None,
            peak_scope: None,
        }),
        steps_bytes: None,
    })
}

#[cfg(feature = "cuda")]
mod gpu {
    //! Trials on a CUDA device: the capacity made real with a ballast, exact peaks from the
    //! memory pool's high-water marks, and the device-level views beside them.
    use super::{Failure, TrialMeasure, WorkerFaults, announce};
    use crate::measure::cuda::CudaMeter;
    use crate::measure::nvml;
    use crate::models::LoadedModel;
    use candle_core::Device;
    use std::io::Write;
    use std::time::Instant;

    pub struct Gpu {
        meter: CudaMeter,
        index: usize,
        /// Device memory in use (by every process) before this worker's context existed.
        used_before_context: Option<u64>,
        ballast_bytes: u64,
        /// Outside the pool after warm-up; the fallback when NVML cannot say what was in use
        /// before the context.
        overhead_bytes: u64,
    }

    /// What the device looked like before the model was built.
    pub struct Prepared {
        capacity_bytes: u64,
    }

    pub struct ReadyGpu {
        pub baseline_bytes: u64,
        pub overhead_bytes: u64,
        pub ballast_bytes: u64,
        pub pool_capacity_bytes: u64,
    }

    fn nvml_gpu(index: usize) -> Option<nvml::GpuInfo> {
        nvml::query()
            .ok()?
            .gpus
            .into_iter()
            .find(|g| g.index as usize == index)
    }

    impl Gpu {
        /// Opens the device and reserves the ballast: afterwards exactly `capacity` minus what
        /// this process already holds is free, so the next out-of-memory is a real one at the
        /// boundary a card of that size would hit.
        pub fn open(
            index: usize,
            capacity_bytes: u64,
        ) -> Result<(Device, Self, Prepared), Failure> {
            let used_before_context = nvml_gpu(index).map(|g| g.used_bytes);
            let device = Device::new_cuda(index)
                .map_err(|e| Failure::Other(format!("cannot open cuda:{index}: {e}")))?;
            let mut meter = CudaMeter::new(&device)?;
            let (free, total) = meter.mem_info()?;
            // What this process holds already (its context), seen from outside the process.
            let held =
                used_before_context.map_or(0, |before| (total - free).saturating_sub(before));
            let room = capacity_bytes.saturating_sub(held);
            if room > free {
                return Err(Failure::Other(format!(
                    "a capacity of {} is more than cuda:{index} can give: {} free, and this worker holds {} already; lower the capacity to {} or free the GPU",
                    crate::plan::human_bytes(capacity_bytes),
                    crate::plan::human_bytes(free),
                    crate::plan::human_bytes(held),
                    crate::plan::human_bytes(free + held)
                )));
            }
            let ballast_bytes = free - room;
            meter.reserve_ballast(ballast_bytes)?;
            Ok((
                device,
                Self {
                    meter,
                    index,
                    used_before_context,
                    ballast_bytes,
                    overhead_bytes: 0,
                },
                Prepared { capacity_bytes },
            ))
        }

        /// What this worker holds outside the pool now (context, kernel modules, cuBLAS
        /// workspace): the device's use less what was there before, the ballast and the pool.
        fn overhead_now(&self, pool_reserved_now: u64) -> Result<u64, Failure> {
            let (free, total) = self.meter.mem_info()?;
            Ok(match self.used_before_context {
                Some(before) => (total - free)
                    .saturating_sub(before)
                    .saturating_sub(pool_reserved_now + self.ballast_bytes),
                None => self.overhead_bytes,
            })
        }

        /// After build and warm-up: the overhead outside the pool, and the baseline — what the
        /// device gives this worker at rest, the pool's reserved bytes and that overhead.
        pub fn settle(mut self, p: Prepared) -> Result<(Self, ReadyGpu), Failure> {
            self.meter.trim()?;
            let (_, reserved) = self.meter.pool_current()?;
            let overhead_bytes = self.overhead_now(reserved)?;
            self.overhead_bytes = overhead_bytes;
            let ready = ReadyGpu {
                baseline_bytes: reserved + overhead_bytes,
                overhead_bytes,
                ballast_bytes: self.ballast_bytes,
                pool_capacity_bytes: p.capacity_bytes.saturating_sub(overhead_bytes),
            };
            Ok((self, ready))
        }
    }

    pub fn trial(
        gpu: &Gpu,
        model: &mut LoadedModel,
        device: &Device,
        baseline_bytes: u64,
        (batch, seq): (usize, usize),
        faults: &WorkerFaults,
        stdout: &mut impl Write,
    ) -> Result<TrialMeasure, Failure> {
        let m = &gpu.meter;
        let inputs = model.inputs(batch, seq, device)?;
        m.synchronize()?;
        announce(stdout)?;
        let (live_before, _) = m.pool_current()?;
        m.reset_high()?;
        if faults.stall_ms > 0 {
            std::thread::sleep(std::time::Duration::from_millis(faults.stall_ms));
        }
        let t0 = Instant::now();
        let out = model.forward(inputs)?;
        m.synchronize()?;
        let seconds = t0.elapsed().as_secs_f64();
        let (used_high, reserved_high) = m.high()?;
        let (_, reserved_now) = m.pool_current()?;
        // Kernel modules a new shape loaded lazily count as much as the pool's bytes.
        let overhead = gpu.overhead_now(reserved_now)?;
        let (free, total) = m.mem_info()?;
        let process_bytes = nvml_gpu(gpu.index).and_then(|g| g.process_bytes(std::process::id()));
        drop(out);
        m.trim()?;
        Ok(TrialMeasure {
            peak_bytes: used_high.saturating_sub(live_before),
            total_bytes: reserved_high.max(used_high) + overhead,
            live_before_bytes: live_before,
            baseline_bytes,
            seconds,
            pool_peak_bytes: Some(used_high),
            pool_reserved_bytes: Some(reserved_high),
            device_used_bytes: Some(total - free),
            process_bytes,
            timeline: None,
            steps_bytes: None,
        })
    }
}
