//! PyTorch's CUDA caching allocator (`c10/cuda/CUDACachingAllocator.cpp`) with its defaults, as
//! a model for the PyTorch estimator's CUDA arm: the same requests in the same order give the
//! same blocks, segments and statistics.
//!
//! - A request is rounded up to 512 bytes (`round_size`, no power-of-two divisions).
//! - Requests of 1 MiB or less come from the small pool, whose segments are 2 MiB; larger ones
//!   from the large pool, whose segments are 20 MiB below 10 MiB and else the request rounded
//!   up to 2 MiB (`get_allocation_size`).
//! - A request takes the smallest free block of its pool that holds it, the lowest address
//!   first among equals (`BlockComparatorSize`, one stream).
//! - The block is split when what remains is at least 512 bytes (small pool) or more than
//!   1 MiB (large pool); the request takes the low end (`should_split`, no `max_split_size`).
//! - A freed block merges with free neighbours of its segment; nothing goes back to the device
//!   unless a new segment does not fit: then every wholly free segment is released and the
//!   segment tried once more (`release_cached_blocks`), else the request is out of memory.
//! - `memory_allocated` counts the blocks handed out (rounded, whole when unsplit);
//!   `memory_reserved` the segments.

use std::collections::{BTreeMap, BTreeSet};

/// The rounding of every request.
pub const MIN_BLOCK: u64 = 512;
/// The largest request the small pool serves.
pub const SMALL_SIZE: u64 = 1 << 20;
/// A small-pool segment.
pub const SMALL_BUFFER: u64 = 2 << 20;
/// A large-pool segment for requests below [`MIN_LARGE_ALLOC`].
pub const LARGE_BUFFER: u64 = 20 << 20;
/// From here a large request gets a segment of its own size, rounded to [`ROUND_LARGE`].
pub const MIN_LARGE_ALLOC: u64 = 10 << 20;
/// The rounding of a large segment.
pub const ROUND_LARGE: u64 = 2 << 20;

/// `round_size`: the bytes a request takes.
#[must_use]
pub fn round_size(bytes: u64) -> u64 {
    bytes.max(1).div_ceil(MIN_BLOCK) * MIN_BLOCK
}

/// `get_allocation_size`: the segment a request that finds no free block makes.
#[must_use]
pub fn segment_size(rounded: u64) -> u64 {
    if rounded <= SMALL_SIZE {
        SMALL_BUFFER
    } else if rounded < MIN_LARGE_ALLOC {
        LARGE_BUFFER
    } else {
        rounded.div_ceil(ROUND_LARGE) * ROUND_LARGE
    }
}

#[derive(Debug, Clone, Copy)]
struct Block {
    size: u64,
    segment: usize,
    allocated: bool,
}

#[derive(Debug, Clone, Copy)]
struct Segment {
    base: u64,
    size: u64,
    small: bool,
    released: bool,
}

/// The request did not fit: no free block, and no new segment within the device's limit even
/// after the cached segments were released.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OutOfMemory {
    pub requested: u64,
}

/// The allocator's state and statistics.
#[derive(Debug, Default)]
pub struct CudaAllocator {
    /// Every block by address.
    blocks: BTreeMap<u64, Block>,
    /// Free blocks by (size, address), per pool.
    free_small: BTreeSet<(u64, u64)>,
    free_large: BTreeSet<(u64, u64)>,
    segments: Vec<Segment>,
    /// The next segment's address (segments never overlap; released ones are not reused).
    next_base: u64,
    allocated: u64,
    reserved: u64,
    peak_allocated: u64,
    peak_reserved: u64,
    /// What `cudaMalloc` may hand this pool in all (None: unlimited).
    limit: Option<u64>,
    /// The first request that did not fit.
    oom: Option<OutOfMemory>,
}

impl CudaAllocator {
    /// An empty pool whose segments may take `limit` bytes of the device in all.
    #[must_use]
    pub fn new(limit: Option<u64>) -> Self {
        Self {
            next_base: 1 << 32,
            limit,
            ..Self::default()
        }
    }

    /// Blocks handed out now (`torch.cuda.memory_allocated`).
    #[must_use]
    pub fn allocated(&self) -> u64 {
        self.allocated
    }

    /// Segments held now (`torch.cuda.memory_reserved`).
    #[must_use]
    pub fn reserved(&self) -> u64 {
        self.reserved
    }

    /// `torch.cuda.max_memory_allocated` since the start.
    #[must_use]
    pub fn peak_allocated(&self) -> u64 {
        self.peak_allocated
    }

    /// `torch.cuda.max_memory_reserved` since the start.
    #[must_use]
    pub fn peak_reserved(&self) -> u64 {
        self.peak_reserved
    }

    /// `torch.cuda.reset_peak_memory_stats`: the high-water marks start again from now.
    pub fn reset_peaks(&mut self) {
        self.peak_allocated = self.allocated;
        self.peak_reserved = self.reserved;
    }

    /// The first request that ran out of memory, if one did.
    #[must_use]
    pub fn out_of_memory(&self) -> Option<OutOfMemory> {
        self.oom
    }

    fn pool(&mut self, small: bool) -> &mut BTreeSet<(u64, u64)> {
        if small {
            &mut self.free_small
        } else {
            &mut self.free_large
        }
    }

    /// `malloc`: the address of a block for `bytes`. A request that does not fit is recorded
    /// (see [`Self::out_of_memory`]) and served anyway from a segment past the limit, so that
    /// the rest of the run can still be followed.
    pub fn malloc(&mut self, bytes: u64) -> u64 {
        let size = round_size(bytes);
        let small = size <= SMALL_SIZE;
        let found = self.pool(small).range((size, 0)..).next().copied();
        let (block_size, addr) = if let Some(free) = found {
            self.pool(small).remove(&free);
            free
        } else {
            let segment = segment_size(size);
            if !self.fits(segment) {
                self.release_cached();
                if !self.fits(segment) && self.oom.is_none() {
                    self.oom = Some(OutOfMemory { requested: size });
                }
            }
            let base = self.next_base;
            self.next_base += segment.div_ceil(ROUND_LARGE) * ROUND_LARGE + ROUND_LARGE;
            self.segments.push(Segment {
                base,
                size: segment,
                small,
                released: false,
            });
            self.reserved += segment;
            self.peak_reserved = self.peak_reserved.max(self.reserved);
            (segment, base)
        };
        let segment = self
            .blocks
            .get(&addr)
            .map_or(self.segments.len() - 1, |b| b.segment);
        let remaining = block_size - size;
        let split = if small {
            remaining >= MIN_BLOCK
        } else {
            remaining > SMALL_SIZE
        };
        let taken = if split { size } else { block_size };
        if split {
            self.blocks.insert(
                addr + size,
                Block {
                    size: remaining,
                    segment,
                    allocated: false,
                },
            );
            self.pool(small).insert((remaining, addr + size));
        }
        self.blocks.insert(
            addr,
            Block {
                size: taken,
                segment,
                allocated: true,
            },
        );
        self.allocated += taken;
        self.peak_allocated = self.peak_allocated.max(self.allocated);
        addr
    }

    fn fits(&self, segment: u64) -> bool {
        self.limit.is_none_or(|l| self.reserved + segment <= l)
    }

    /// `release_cached_blocks`: every segment that is one free block goes back to the device.
    fn release_cached(&mut self) {
        for i in 0..self.segments.len() {
            let seg = self.segments[i];
            if seg.released {
                continue;
            }
            let whole = self
                .blocks
                .get(&seg.base)
                .is_some_and(|b| !b.allocated && b.size == seg.size);
            if whole {
                self.blocks.remove(&seg.base);
                self.pool(seg.small).remove(&(seg.size, seg.base));
                self.segments[i].released = true;
                self.reserved -= seg.size;
            }
        }
    }

    /// `free`: the block at `addr` goes back to its pool, merged with its free neighbours.
    pub fn free(&mut self, addr: u64) {
        let Some(block) = self.blocks.get(&addr).copied() else {
            return;
        };
        if !block.allocated {
            return;
        }
        self.allocated -= block.size;
        let small = self.segments[block.segment].small;
        let (mut start, mut size) = (addr, block.size);
        if let Some(next) = self.blocks.get(&(addr + size)).copied()
            && next.segment == block.segment
            && !next.allocated
        {
            self.pool(small).remove(&(next.size, addr + size));
            self.blocks.remove(&(addr + size));
            size += next.size;
        }
        if let Some((&prev_addr, &prev)) = self.blocks.range(..addr).next_back()
            && prev.segment == block.segment
            && !prev.allocated
            && prev_addr + prev.size == addr
        {
            self.pool(small).remove(&(prev.size, prev_addr));
            self.blocks.remove(&addr);
            start = prev_addr;
            size += prev.size;
        }
        self.blocks.insert(
            start,
            Block {
                size,
                segment: block.segment,
                allocated: false,
            },
        );
        self.pool(small).insert((size, start));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    #[test]
    fn requests_round_to_512_bytes_and_pick_their_segment() {
        assert_eq!(round_size(1), 512);
        assert_eq!(round_size(512), 512);
        assert_eq!(round_size(513), 1024);
        assert_eq!(segment_size(round_size(MIB)), 2 * MIB);
        assert_eq!(segment_size(round_size(MIB + 1)), 20 * MIB);
        assert_eq!(segment_size(round_size(10 * MIB - 512)), 20 * MIB);
        assert_eq!(segment_size(round_size(10 * MIB)), 10 * MIB);
        assert_eq!(segment_size(round_size(10 * MIB + 1)), 12 * MIB);
    }

    /// Small requests share a 2 MiB segment; a freed block is reused by the next request that
    /// fits it, and merges back with its free neighbours.
    #[test]
    fn small_blocks_split_a_segment_and_merge_back() {
        let mut a = CudaAllocator::new(None);
        let x = a.malloc(100);
        let y = a.malloc(1000);
        assert_eq!(y, x + 512);
        assert_eq!((a.allocated(), a.reserved()), (512 + 1024, 2 * MIB));
        a.free(x);
        // The 512-byte hole is the best fit for a 300-byte request.
        assert_eq!(a.malloc(300), x);
        a.free(x);
        a.free(y);
        assert_eq!(a.allocated(), 0);
        // All merged into one 2 MiB block: a 1 MiB request starts at the segment's base.
        assert_eq!(a.malloc(MIB), x);
        assert_eq!(a.reserved(), 2 * MIB);
        assert_eq!(a.peak_allocated(), MIB);
    }

    /// A 4 MiB request takes a 20 MiB segment and leaves 16 MiB for the next; a remainder of
    /// 1 MiB or less is not split off (the whole block counts as allocated).
    #[test]
    #[allow(clippy::many_single_char_names)]
    fn large_blocks_split_only_above_one_mebibyte() {
        let mut a = CudaAllocator::new(None);
        let w = a.malloc(4 * MIB);
        let v = a.malloc(15 * MIB + 1);
        assert_eq!(v, w + 4 * MIB);
        // 16 MiB free held 15 MiB + 512: the rest (just under 1 MiB) stays with the block.
        assert_eq!(a.allocated(), 20 * MIB);
        assert_eq!(a.reserved(), 20 * MIB);
        // A large request never takes a small-pool block, nor the other way round.
        let s = a.malloc(10);
        assert_eq!(a.reserved(), 22 * MIB);
        a.free(s);
        let l = a.malloc(MIB + 512);
        assert_eq!(a.reserved(), 42 * MIB);
        a.free(l);
        a.free(v);
        a.free(w);
        assert_eq!(a.peak_reserved(), 42 * MIB);
        assert_eq!(a.peak_allocated(), 20 * MIB + MIB + 512);
    }

    /// At the device's limit the cached segments go back and the segment is tried again; a
    /// request that still does not fit is out of memory.
    #[test]
    fn the_limit_releases_cached_segments_before_running_out() {
        let mut a = CudaAllocator::new(Some(40 * MIB));
        let x = a.malloc(20 * MIB);
        a.free(x);
        // No free block holds 22 MiB; 20 + 22 > 40, so the free 20 MiB segment is released.
        let y = a.malloc(22 * MIB);
        assert_eq!(a.reserved(), 22 * MIB);
        assert_eq!(a.out_of_memory(), None);
        let _z = a.malloc(20 * MIB);
        assert_eq!(
            a.out_of_memory(),
            Some(OutOfMemory {
                requested: 20 * MIB
            })
        );
        a.free(y);
        assert_eq!(a.peak_reserved(), 42 * MIB);
    }
}
