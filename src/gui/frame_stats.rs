//! Time the UI thread spends in oomlab's own code per frame (drawing, draining messages,
//! applying commands), in wall time and in the thread's CPU time.

use std::time::Instant;

/// The UI thread's budget per frame for the app's own code.
pub const FRAME_BUDGET_MS: f64 = 5.0;

/// The variable that makes the window print every frame over budget to stderr. Read once, when
/// the window opens. Values: unset, empty or `0` — off; anything else (e.g. `1`) — on.
pub const FRAME_LOG_ENV: &str = "OOMLAB_FRAME_LOG";

/// Whether [`FRAME_LOG_ENV`] asks for the log.
#[must_use]
pub fn frame_log_enabled() -> bool {
    std::env::var_os(FRAME_LOG_ENV).is_some_and(|v| !v.is_empty() && v != "0")
}

/// Per-frame time spent in the app's own code. Wall time includes being preempted by the
/// worker; CPU time is this thread's own work.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameStats {
    pub last_ms: f64,
    pub last_cpu_ms: f64,
    pub frames_during_sweep: u64,
    pub total_ms_during_sweep: f64,
    pub max_ms_during_sweep: f64,
    pub total_cpu_ms_during_sweep: f64,
    pub max_cpu_ms_during_sweep: f64,
    /// Frames during the sweep whose wall time exceeded the 5 ms budget.
    pub frames_over_budget: u64,
}

impl FrameStats {
    fn mean(total: f64, n: u64) -> f64 {
        if n == 0 { 0.0 } else { total / n as f64 }
    }

    #[must_use]
    pub fn mean_ms_during_sweep(&self) -> f64 {
        Self::mean(self.total_ms_during_sweep, self.frames_during_sweep)
    }

    #[must_use]
    pub fn mean_cpu_ms_during_sweep(&self) -> f64 {
        Self::mean(self.total_cpu_ms_during_sweep, self.frames_during_sweep)
    }

    pub fn record(&mut self, wall_ms: f64, cpu_ms: f64, during_sweep: bool) {
        self.last_ms = wall_ms;
        self.last_cpu_ms = cpu_ms;
        if during_sweep {
            self.frames_during_sweep += 1;
            self.total_ms_during_sweep += wall_ms;
            self.max_ms_during_sweep = self.max_ms_during_sweep.max(wall_ms);
            self.total_cpu_ms_during_sweep += cpu_ms;
            self.max_cpu_ms_during_sweep = self.max_cpu_ms_during_sweep.max(cpu_ms);
            if wall_ms > FRAME_BUDGET_MS {
                self.frames_over_budget += 1;
            }
        }
    }

    /// One line for the log and stderr.
    #[must_use]
    pub fn summary(&self) -> String {
        format!(
            "UI frame time during the sweep: mean {:.2} ms (cpu {:.2} ms), max {:.2} ms (cpu {:.2} ms), {} of {} frames over {FRAME_BUDGET_MS} ms",
            self.mean_ms_during_sweep(),
            self.mean_cpu_ms_during_sweep(),
            self.max_ms_during_sweep,
            self.max_cpu_ms_during_sweep,
            self.frames_over_budget,
            self.frames_during_sweep
        )
    }
}

/// Started at the top of a frame; [`Self::elapsed_ms`] gives (wall, cpu) so far.
pub struct FrameTimer {
    wall: Instant,
    cpu_ms: f64,
}

impl FrameTimer {
    #[must_use]
    pub fn start() -> Self {
        Self {
            wall: Instant::now(),
            cpu_ms: thread_cpu_ms(),
        }
    }

    #[must_use]
    pub fn elapsed_ms(&self) -> (f64, f64) {
        (
            self.wall.elapsed().as_secs_f64() * 1000.0,
            thread_cpu_ms() - self.cpu_ms,
        )
    }
}

/// CPU time this thread has used, in milliseconds.
fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts);
    }
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}
