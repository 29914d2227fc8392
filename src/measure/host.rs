//! This machine's memory, as this process can use it: physical memory, what is available now,
//! and the memory cgroup's limit when one is set (cgroup v1 `memory.limit_in_bytes` or v2
//! `memory.max`, along this process's own cgroup path), read through sysinfo.
//!
//! A simulated capacity is only honest while the machine can hold it: the worker's counted
//! bytes must fit in what is available, with room for the window and the system, and with the
//! allocator's overhead on top (resident memory ran 1.11–1.23× the counted bytes).

use serde::{Deserialize, Serialize};

/// Resident memory per counted byte assumed when sizing what the machine can simulate (the
/// measured 1.11–1.23, rounded up).
pub const RESIDENT_PER_COUNTED: f64 = 1.25;

/// The most kept back for the window and the system.
const MARGIN_MAX_BYTES: u64 = 512 << 20;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct HostMemory {
    pub physical_bytes: u64,
    /// What the kernel says is available now (`MemAvailable`).
    pub available_bytes: u64,
    /// The memory cgroup's limit for this process, when one is set.
    pub cgroup_limit_bytes: Option<u64>,
    /// What that cgroup has left (limit − usage).
    pub cgroup_free_bytes: Option<u64>,
}

impl HostMemory {
    /// Reads the machine's memory now. `None` where the system cannot tell (then nothing is
    /// refused on its account).
    #[must_use]
    pub fn read() -> Option<Self> {
        let mut sys = sysinfo::System::new().ok()?;
        sys.refresh_memory();
        let pid = sysinfo::Pid::from_u32(std::process::id());
        sys.refresh_processes_specifics(
            sysinfo::ProcessesToUpdate::Some(&[pid]),
            false,
            sysinfo::ProcessRefreshKind::nothing(),
        );
        let cgroup = sys
            .process(pid)
            .and_then(sysinfo::Process::cgroup_limits)
            .or_else(|| sys.cgroup_limits());
        let physical_bytes = sys.total_memory();
        (physical_bytes > 0).then(|| Self {
            physical_bytes,
            available_bytes: sys.available_memory(),
            cgroup_limit_bytes: cgroup.as_ref().map(|c| c.total_memory),
            cgroup_free_bytes: cgroup.as_ref().map(|c| c.free_memory),
        })
    }

    /// A machine with exactly `available_bytes` free and no cgroup (tests).
    #[must_use]
    pub fn faked(available_bytes: u64) -> Self {
        Self {
            physical_bytes: available_bytes,
            available_bytes,
            cgroup_limit_bytes: None,
            cgroup_free_bytes: None,
        }
    }

    /// What this process may really use: the available memory, or what the cgroup leaves,
    /// whichever is less.
    #[must_use]
    pub fn usable_bytes(&self) -> u64 {
        self.cgroup_free_bytes
            .map_or(self.available_bytes, |c| c.min(self.available_bytes))
    }

    /// Kept back for the window and the system: an eighth of what is usable, at most 512 MiB.
    #[must_use]
    pub fn margin_bytes(&self) -> u64 {
        (self.usable_bytes() / 8).min(MARGIN_MAX_BYTES)
    }

    /// The largest number of bytes a worker may count on top of what it holds now: the usable
    /// memory less the margin, divided by the allocator's overhead.
    #[must_use]
    pub fn largest_capacity_bytes(&self) -> u64 {
        ((self.usable_bytes() - self.margin_bytes()) as f64 / RESIDENT_PER_COUNTED) as u64
    }

    /// `23.4 GiB, 21.0 GiB available` (+ `, cgroup limit 3.0 GiB with 2.5 GiB free`).
    #[must_use]
    pub fn describe(&self) -> String {
        use crate::units::human_bytes as h;
        let cgroup = match (self.cgroup_limit_bytes, self.cgroup_free_bytes) {
            (Some(limit), Some(free)) => {
                format!(", cgroup limit {} with {} free", h(limit), h(free))
            }
            _ => String::new(),
        };
        format!(
            "{}, {} available{cgroup}",
            h(self.physical_bytes),
            h(self.available_bytes)
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cgroup_and_the_margin_shrink_what_can_be_simulated() {
        let free = HostMemory::faked(64 << 20);
        assert_eq!(free.usable_bytes(), 64 << 20);
        assert_eq!(free.margin_bytes(), 8 << 20);
        assert_eq!(free.largest_capacity_bytes(), (56 << 20) * 4 / 5);
        let boxed = HostMemory {
            physical_bytes: 24 << 30,
            available_bytes: 20 << 30,
            cgroup_limit_bytes: Some(3 << 30),
            cgroup_free_bytes: Some(2 << 30),
        };
        assert_eq!(boxed.usable_bytes(), 2 << 30);
        assert_eq!(boxed.margin_bytes(), 256 << 20);
        assert!(
            boxed.describe().contains("cgroup limit 3.0 GiB"),
            "{}",
            boxed.describe()
        );
        let big = HostMemory::faked(64 << 30);
        assert_eq!(big.margin_bytes(), 512 << 20);
    }

    #[test]
    fn this_machine_can_be_read() {
        let h = HostMemory::read().expect("Linux reports its memory");
        assert!(h.physical_bytes > 0 && h.available_bytes <= h.physical_bytes);
        assert!(h.largest_capacity_bytes() < h.usable_bytes());
    }
}
