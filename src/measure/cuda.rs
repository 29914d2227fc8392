//! CUDA memory meters (feature `cuda`). candle 0.11 allocates through cudarc with
//! `cuMemAllocAsync` from the device's current memory pool, with no caching allocator above it,
//! so the pool's high-water marks are the exact peak of a trial. Outside the pool, and so not in
//! its counters: the CUDA context, loaded kernel modules, cuBLAS's workspace — the per-process
//! overhead, measured once after warm-up — and the ballast that makes a smaller capacity real.

use candle_core::cuda_backend::cudarc::driver::{CudaContext, CudaStream, result, sys};
use std::sync::Arc;

/// The pool, the context and the ballast of one worker on one GPU.
pub struct CudaMeter {
    ctx: Arc<CudaContext>,
    stream: Arc<CudaStream>,
    pool: sys::CUmemoryPool,
    ballast: Option<(sys::CUdeviceptr, u64)>,
}

/// A CUDA driver call that failed: what oomlab was doing, and the driver's error.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{what}: {detail}")]
pub struct CudaCallError {
    pub what: &'static str,
    pub detail: String,
}

fn err(what: &'static str, e: impl std::fmt::Debug) -> CudaCallError {
    CudaCallError {
        what,
        detail: format!("{e:?}"),
    }
}

impl CudaMeter {
    /// The meter of a candle CUDA device.
    pub fn new(device: &candle_core::Device) -> Result<Self, CudaCallError> {
        let dev = device
            .as_cuda_device()
            .map_err(|e| err("not a CUDA device", e))?;
        let stream = dev.cuda_stream();
        let ctx = Arc::clone(stream.context());
        ctx.bind_to_thread()
            .map_err(|e| err("binding the CUDA context", e))?;
        // SAFETY: the context is current on this thread and the device handle is its own.
        let pool = unsafe { result::device::get_mem_pool(ctx.cu_device()) }
            .map_err(|e| err("reading the device's memory pool", e))?;
        Ok(Self {
            ctx,
            stream,
            pool,
            ballast: None,
        })
    }

    /// `(free, total)` bytes of the device now, as `cuMemGetInfo` reports them.
    pub fn mem_info(&self) -> Result<(u64, u64), CudaCallError> {
        self.ctx
            .mem_get_info()
            .map(|(free, total)| (free as u64, total as u64))
            .map_err(|e| err("cuMemGetInfo", e))
    }

    /// Allocates `bytes` outside the pool and keeps them until the worker exits, so that what
    /// remains free is the capacity being simulated.
    pub fn reserve_ballast(&mut self, bytes: u64) -> Result<(), CudaCallError> {
        if bytes == 0 {
            return Ok(());
        }
        self.ctx
            .bind_to_thread()
            .map_err(|e| err("binding the CUDA context", e))?;
        // SAFETY: a plain device allocation on the current context, freed only by process exit.
        let ptr = unsafe { result::malloc_sync(bytes as usize) }
            .map_err(|e| err("allocating the ballast", e))?;
        self.ballast = Some((ptr, bytes));
        Ok(())
    }

    #[must_use]
    pub fn ballast_bytes(&self) -> u64 {
        self.ballast.map_or(0, |(_, b)| b)
    }

    fn attribute(&self, attr: sys::CUmemPool_attribute) -> Result<u64, CudaCallError> {
        let mut v: u64 = 0;
        // SAFETY: these pool attributes are 64-bit values; `v` outlives the call.
        unsafe { result::mem_pool::get_attribute(self.pool, attr, (&raw mut v).cast()) }
            .map_err(|e| err("reading a memory-pool attribute", e))?;
        Ok(v)
    }

    /// Bytes in use and reserved by the pool now.
    pub fn pool_current(&self) -> Result<(u64, u64), CudaCallError> {
        Ok((
            self.attribute(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_CURRENT)?,
            self.attribute(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_CURRENT)?,
        ))
    }

    /// Starts new high-water marks at the current usage.
    pub fn reset_high(&self) -> Result<(), CudaCallError> {
        for attr in [
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH,
            sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH,
        ] {
            let mut zero: u64 = 0;
            // SAFETY: the high-water attributes may only be set to 0, which resets them.
            unsafe { result::mem_pool::set_attribute(self.pool, attr, (&raw mut zero).cast()) }
                .map_err(|e| err("resetting a memory-pool high-water mark", e))?;
        }
        Ok(())
    }

    /// The pool's `(used, reserved)` high-water marks since the last reset.
    pub fn high(&self) -> Result<(u64, u64), CudaCallError> {
        Ok((
            self.attribute(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_USED_MEM_HIGH)?,
            self.attribute(sys::CUmemPool_attribute::CU_MEMPOOL_ATTR_RESERVED_MEM_HIGH)?,
        ))
    }

    pub fn synchronize(&self) -> Result<(), CudaCallError> {
        self.stream
            .synchronize()
            .map_err(|e| err("synchronizing the stream", e))
    }

    /// Returns the pool's unused memory to the device.
    pub fn trim(&self) -> Result<(), CudaCallError> {
        self.synchronize()?;
        // SAFETY: the pool belongs to this context; keeping 0 bytes only releases free blocks.
        unsafe { result::mem_pool::trim_to(self.pool, 0) }.map_err(|e| err("trimming the pool", e))
    }
}

/// Whether a candle error is the device running out of memory: a driver
/// `CUDA_ERROR_OUT_OF_MEMORY`, a cuBLAS allocation failure or a curand one, wherever it sits in
/// the error's chain; a string match is the fallback for errors candle only wraps as text.
#[must_use]
pub fn is_oom(e: &candle_core::Error) -> bool {
    use candle_core::Error as E;
    use candle_core::cuda_backend::CudaError;
    use candle_core::cuda_backend::cudarc::{cublas, curand};
    match e {
        E::WithBacktrace { inner, .. } | E::Context { inner, .. } | E::WithPath { inner, .. } => {
            is_oom(inner)
        }
        E::Cuda(b) => match b.downcast_ref::<CudaError>() {
            Some(CudaError::Cuda(d) | CudaError::Load { cuda: d, .. }) => {
                d.0 == sys::CUresult::CUDA_ERROR_OUT_OF_MEMORY
            }
            Some(CudaError::Cublas(c)) => {
                c.0 == cublas::sys::cublasStatus_t::CUBLAS_STATUS_ALLOC_FAILED
            }
            Some(CudaError::Curand(r)) => {
                r.0 == curand::sys::curandStatus_t::CURAND_STATUS_ALLOCATION_FAILED
            }
            _ => super::text_says_oom(&b.to_string()),
        },
        other => super::text_says_oom(&other.to_string()),
    }
}
