//! A counting global allocator with an optional budget (the simulated device capacity).
//!
//! Counts requested bytes (not resident pages): deterministic to the byte across processes.
//! When a budget is set, a request that would take the live bytes over it is refused (null),
//! after writing one marker line to stderr with `write(2)` (no allocation), so that the
//! supervisor can classify the abort that follows as an out-of-memory with the requested size.
//! The budget is lifted at the first refusal so that the panic/abort machinery, which may
//! allocate, does not recurse.

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};

/// Marker written to stderr when the budget refuses a request. The supervisor parses it.
pub const OOM_MARKER: &str = "OOMLAB_OOM requested_bytes=";

/// Marker written when the host's ceiling (not the simulated capacity) refuses a request.
pub const HOST_MARKER: &str = "OOMLAB_HOST_MEMORY requested_bytes=";

pub struct CountingAlloc;

static LIVE: AtomicU64 = AtomicU64::new(0);
static PEAK: AtomicU64 = AtomicU64::new(0);
/// 0 means no budget.
static BUDGET: AtomicU64 = AtomicU64::new(0);
/// The most live bytes the machine can hold for this process (0: no ceiling).
static HOST_BUDGET: AtomicU64 = AtomicU64::new(0);

/// Live bytes after each allocation and release while recording (a trial's timeline). Static and
/// zero-initialised: recording never allocates, and pages are touched only when written.
const TIMELINE_CAP: usize = 1 << 19;
static TIMELINE: [AtomicU64; TIMELINE_CAP] = [const { AtomicU64::new(0) }; TIMELINE_CAP];
static TIMELINE_N: AtomicUsize = AtomicUsize::new(0);
static RECORDING: AtomicBool = AtomicBool::new(false);

#[inline]
fn record(live: u64) {
    if RECORDING.load(Ordering::Relaxed) {
        let i = TIMELINE_N.fetch_add(1, Ordering::Relaxed);
        if i < TIMELINE_CAP {
            TIMELINE[i].store(live, Ordering::Relaxed);
        }
    }
}

impl CountingAlloc {
    #[inline]
    fn reserve(size: u64) -> bool {
        let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
        let budget = BUDGET.load(Ordering::Relaxed);
        let host = HOST_BUDGET.load(Ordering::Relaxed);
        let marker = if budget != 0 && live > budget {
            OOM_MARKER
        } else if host != 0 && live > host {
            HOST_MARKER
        } else {
            PEAK.fetch_max(live, Ordering::Relaxed);
            record(live);
            return true;
        };
        LIVE.fetch_sub(size, Ordering::Relaxed);
        // Lift both limits: the abort that follows may allocate.
        BUDGET.store(0, Ordering::Relaxed);
        HOST_BUDGET.store(0, Ordering::Relaxed);
        report_refusal(marker, size);
        false
    }

    #[inline]
    fn release(size: u64) {
        record(LIVE.fetch_sub(size, Ordering::Relaxed) - size);
    }
}

/// Writes `MARKER N\n` to fd 2 without allocating.
fn report_refusal(marker: &str, size: u64) {
    let mut buf = [0u8; 64];
    let marker = marker.as_bytes();
    buf[..marker.len()].copy_from_slice(marker);
    let mut pos = marker.len();
    let mut digits = [0u8; 20];
    let mut n = size;
    let mut len = 0;
    loop {
        digits[len] = b'0' + (n % 10) as u8;
        len += 1;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for i in (0..len).rev() {
        buf[pos] = digits[i];
        pos += 1;
    }
    buf[pos] = b'\n';
    pos += 1;
    // SAFETY: writing an initialised stack buffer to the process's stderr descriptor.
    unsafe {
        libc::write(2, buf.as_ptr().cast(), pos);
    }
}

// SAFETY: every method forwards to the system allocator with the same layout; the counters are
// only bookkeeping. A refused request returns null, which callers must handle (Rust aborts).
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        if !Self::reserve(layout.size() as u64) {
            return std::ptr::null_mut();
        }
        // SAFETY: same layout contract as the caller's.
        let p = unsafe { System.alloc(layout) };
        if p.is_null() {
            Self::release(layout.size() as u64);
        }
        p
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        if !Self::reserve(layout.size() as u64) {
            return std::ptr::null_mut();
        }
        // SAFETY: same layout contract as the caller's.
        let p = unsafe { System.alloc_zeroed(layout) };
        if p.is_null() {
            Self::release(layout.size() as u64);
        }
        p
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: ptr was returned by this allocator with this layout.
        unsafe { System.dealloc(ptr, layout) };
        Self::release(layout.size() as u64);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let old = layout.size() as u64;
        let new = new_size as u64;
        if new > old && !Self::reserve(new - old) {
            return std::ptr::null_mut();
        }
        // SAFETY: ptr was returned by this allocator with this layout.
        let p = unsafe { System.realloc(ptr, layout, new_size) };
        if p.is_null() {
            if new > old {
                Self::release(new - old);
            }
        } else if new < old {
            Self::release(old - new);
        }
        p
    }
}

/// Bytes currently allocated through the global allocator.
#[must_use]
pub fn live_bytes() -> u64 {
    LIVE.load(Ordering::Relaxed)
}

/// High-water mark since the last [`reset_peak`].
#[must_use]
pub fn peak_bytes() -> u64 {
    PEAK.load(Ordering::Relaxed)
}

/// Starts a new high-water mark at the current live bytes.
pub fn reset_peak() {
    PEAK.store(LIVE.load(Ordering::Relaxed), Ordering::Relaxed);
}

/// Sets the budget in bytes (`None` lifts it). Requests that would exceed it are refused.
pub fn set_budget(bytes: Option<u64>) {
    BUDGET.store(bytes.unwrap_or(0), Ordering::Relaxed);
}

/// Sets the host's ceiling on live bytes (`None` lifts it). Requests that would exceed it are
/// refused with [`HOST_MARKER`].
pub fn set_host_budget(bytes: Option<u64>) {
    HOST_BUDGET.store(bytes.unwrap_or(0), Ordering::Relaxed);
}

/// Starts recording live bytes at every allocation and release (the previous record is dropped).
pub fn start_timeline() {
    TIMELINE_N.store(0, Ordering::Relaxed);
    RECORDING.store(true, Ordering::Relaxed);
}

/// Stops recording and returns the timeline reduced to at most `points` samples that keep its
/// shape: each sample is the largest live count of its stretch of events, so the peak survives.
/// Also returns how many events there were (beyond the buffer, later events were not kept).
#[must_use]
pub fn take_timeline(points: usize) -> (Vec<u64>, usize) {
    RECORDING.store(false, Ordering::Relaxed);
    let events = TIMELINE_N.load(Ordering::Relaxed);
    let n = events.min(TIMELINE_CAP);
    let points = points.max(1);
    let per = n.div_ceil(points).max(1);
    let out = (0..n)
        .step_by(per)
        .map(|start| {
            (start..(start + per).min(n))
                .map(|i| TIMELINE[i].load(Ordering::Relaxed))
                .max()
                .unwrap_or(0)
        })
        .collect();
    (out, events)
}

/// Parses the marker line written at a capacity refusal.
#[must_use]
pub fn parse_oom_marker(line: &str) -> Option<u64> {
    line.trim().strip_prefix(OOM_MARKER)?.parse().ok()
}

/// Parses the marker line written at a refusal for the host's sake.
#[must_use]
pub fn parse_host_marker(line: &str) -> Option<u64> {
    line.trim().strip_prefix(HOST_MARKER)?.parse().ok()
}
