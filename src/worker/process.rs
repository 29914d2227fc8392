//! The trial process (`oomlab worker`): reads requests on stdin, answers on stdout.
//!
//! Requires the counting allocator to be the global allocator (the binary installs it).
//! An out-of-memory under the simulated capacity aborts the process; the supervisor
//! classifies that from the exit signal and the marker on stderr.

use super::WorkerFaults;
use super::protocol::{Ready, Request, Response, STARTED_LINE, TrialMeasure};
use crate::catalog::ModelSpec;
use crate::measure::alloc;
use crate::models::{self, LoadedModel};
use crate::plan::{self, Precision, human_bytes};
use candle_core::Device;
use std::io::{BufRead, Write};
use std::time::Instant;

struct State {
    model: LoadedModel,
    baseline_bytes: u64,
    device: Device,
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
        let response = match request {
            Err(e) => Response::Error {
                message: format!("bad request: {e}"),
            },
            Ok(Request::Shutdown) => break,
            Ok(Request::Load {
                model,
                dtype,
                capacity_bytes,
                device,
            }) => match load(&model, dtype, capacity_bytes, device, faults) {
                Ok((s, ready)) => {
                    state = Some(s);
                    Response::Ready(ready)
                }
                Err(message) => Response::Error { message },
            },
            Ok(Request::Trial { batch, seq }) => match state.as_mut() {
                None => Response::Error {
                    message: "trial before load".into(),
                },
                Some(s) => match trial(s, batch, seq, faults, &mut stdout) {
                    Ok(m) => Response::Trial(m),
                    Err(message) => Response::Error { message },
                },
            },
        };
        let Ok(text) = serde_json::to_string(&response) else {
            break;
        };
        if writeln!(stdout, "{text}")
            .and_then(|()| stdout.flush())
            .is_err()
        {
            break;
        }
    }
    0
}

fn load(
    model: &crate::catalog::ModelRef,
    dtype: Precision,
    capacity_bytes: u64,
    device: plan::Device,
    faults: &WorkerFaults,
) -> Result<(State, Ready), String> {
    let t0 = Instant::now();
    alloc::set_budget(None);
    // The machine's ceiling holds from the build on: the kernel's OOM killer never decides.
    let host_ceiling_bytes = faults
        .host_memory()
        .map(|h| alloc::live_bytes() + h.largest_capacity_bytes());
    alloc::set_host_budget(host_ceiling_bytes);
    let spec = ModelSpec::resolve(model).map_err(|e| e.to_string())?;
    let need = models::weights_bytes(&spec, dtype.candle());
    if need > capacity_bytes {
        // The plan is checked before any worker starts; this guards a request made otherwise.
        return Err(format!(
            "the {} weights of {} alone need {} but the capacity is {}",
            dtype,
            spec.name,
            human_bytes(need),
            human_bytes(capacity_bytes)
        ));
    }
    let device = match device {
        plan::Device::Cpu { .. } => Device::Cpu,
        cuda @ plan::Device::Cuda { .. } => {
            return Err(format!(
                "{} needs CUDA, which this build of oomlab does not include",
                cuda.name()
            ));
        }
    };
    let mut m = models::build(&spec, dtype.candle(), &device).map_err(|e| e.to_string())?;
    models::warm_up_threads(dtype.candle(), &device);
    // One small forward initialises everything lazy (thread-local scratch, caches) before
    // anything is measured.
    let warm_seq = spec.dims.max_positions.min(8);
    let inputs = m.inputs(1, warm_seq, &device).map_err(|e| e.to_string())?;
    drop(m.forward(inputs).map_err(|e| e.to_string())?);
    let baseline_bytes = alloc::live_bytes();
    let ready = Ready {
        weights_bytes: m.weights_bytes,
        baseline_bytes,
        threads: rayon::current_num_threads(),
        build_seconds: t0.elapsed().as_secs_f64(),
        from_checkpoint: m.from_checkpoint,
        pid: std::process::id(),
        host_ceiling_bytes,
    };
    // From here on the capacity is enforced: a request beyond it aborts the process.
    alloc::set_budget(Some(capacity_bytes));
    Ok((
        State {
            model: m,
            baseline_bytes,
            device,
        },
        ready,
    ))
}

fn trial(
    s: &mut State,
    batch: usize,
    seq: usize,
    faults: &WorkerFaults,
    stdout: &mut impl Write,
) -> Result<TrialMeasure, String> {
    let inputs = s
        .model
        .inputs(batch, seq, &s.device)
        .map_err(|e| e.to_string())?;
    // Announce the forward (a static line into a buffer that already exists: nothing allocated).
    stdout
        .write_all(STARTED_LINE.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(|e| format!("writing to the supervisor: {e}"))?;
    let live_before = alloc::live_bytes();
    alloc::reset_peak();
    if faults.stall_ms > 0 {
        std::thread::sleep(std::time::Duration::from_millis(faults.stall_ms));
    }
    if faults.oom_at.contains(&batch) {
        // A real out-of-memory: the forward's first request is refused by the allocator.
        alloc::set_budget(Some(live_before));
    }
    let t0 = Instant::now();
    let out = s.model.forward(inputs).map_err(|e| e.to_string())?;
    let seconds = t0.elapsed().as_secs_f64();
    let total = alloc::peak_bytes();
    drop(out);
    Ok(TrialMeasure {
        peak_bytes: total - live_before,
        total_bytes: total,
        live_before_bytes: live_before,
        baseline_bytes: s.baseline_bytes,
        seconds,
    })
}
