//! Memory meters. CPU: the counting allocator (installed as global allocator by the binary), and
//! the machine's own memory (what a simulated capacity must fit in), and NVIDIA GPUs through NVML.

pub mod alloc;
#[cfg(feature = "cuda")]
pub mod cuda;
pub mod host;
pub mod nvml;

/// Whether a candle error is the device running out of memory (CUDA; on the CPU the counting
/// allocator aborts instead, so no error is one).
#[must_use]
pub fn device_oom(e: &candle_core::Error) -> bool {
    #[cfg(feature = "cuda")]
    {
        cuda::is_oom(e)
    }
    #[cfg(not(feature = "cuda"))]
    {
        let _ = e;
        false
    }
}

/// The names the CUDA libraries give an allocation failure (the fallback for errors that candle
/// only passes on as text).
#[must_use]
pub fn text_says_oom(text: &str) -> bool {
    [
        "CUDA_ERROR_OUT_OF_MEMORY",
        "CUBLAS_STATUS_ALLOC_FAILED",
        "CURAND_STATUS_ALLOCATION_FAILED",
        "out of memory",
    ]
    .iter()
    .any(|m| text.contains(m))
}

#[cfg(test)]
mod tests {
    #[test]
    fn cuda_allocation_failures_are_recognised_by_their_names() {
        for t in [
            "DriverError(CUDA_ERROR_OUT_OF_MEMORY, \"out of memory\")",
            "cublas error: CublasError(CUBLAS_STATUS_ALLOC_FAILED)",
            "CurandError(CURAND_STATUS_ALLOCATION_FAILED)",
        ] {
            assert!(super::text_says_oom(t), "{t}");
        }
        assert!(!super::text_says_oom(
            "DriverError(CUDA_ERROR_INVALID_VALUE)"
        ));
    }
}
