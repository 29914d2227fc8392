//! JSON lines between the supervisor and `oomlab worker`: one request, one response (a trial
//! request is first acknowledged with `started`, written just before the measured forward).

use crate::catalog::ModelRef;
use crate::plan::{Attn, Device, Optimizer, Precision, Task, Workload};
use serde::{Deserialize, Serialize};
use std::path::PathBuf;

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Request {
    /// Build the model once for this precision on this device, warm up, then enforce the
    /// capacity.
    Load {
        model: ModelRef,
        dtype: Precision,
        capacity_bytes: u64,
        device: Device,
        /// The PyTorch worker's part (absent for candle's).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        torch: Option<TorchLoad>,
    },
    /// One measured forward.
    Trial {
        batch: usize,
        seq: usize,
    },
    Shutdown,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "reply", rename_all = "snake_case")]
pub enum Response {
    Ready(Ready),
    /// The inputs are built and the measured forward begins now.
    Started,
    Trial(TrialMeasure),
    /// The device (CUDA) ran out of memory; the worker exits after saying so, so the next trial
    /// starts in a clean context.
    Oom {
        message: String,
        /// The request that did not fit (PyTorch: its "tried to allocate"), when known.
        #[serde(default)]
        requested_bytes: Option<u64>,
    },
    Error {
        message: String,
    },
}

/// What the PyTorch worker builds and runs (see docs/torch-protocol.md).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TorchLoad {
    /// The model's config.json, as transformers reads it (`model_type` filled in when the file
    /// left it out).
    pub config: serde_json::Value,
    /// A folder with the checkpoint's safetensors, loaded with `from_pretrained`.
    pub weights_dir: Option<PathBuf>,
    pub workload: Workload,
    pub task: Task,
    pub attn: Attn,
    pub optimizer: Optimizer,
    pub checkpointing: bool,
}

pub use crate::report::Versions;

/// The `started` line, written without allocating (the trial's bytes are being counted).
pub const STARTED_LINE: &str = "{\"reply\":\"started\"}\n";

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Ready {
    pub pid: u32,
    #[serde(flatten)]
    pub built: crate::report::Built,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrialMeasure {
    /// Forward high-water mark minus the live bytes just before it.
    pub peak_bytes: u64,
    /// Absolute high-water mark during the forward (compared with the capacity). CUDA: what the
    /// device had to give the worker, the pool's reserved high-water mark plus the overhead
    /// outside the pool (context, kernel modules, cuBLAS workspace).
    pub total_bytes: u64,
    /// Live bytes just before the forward (baseline + inputs).
    pub live_before_bytes: u64,
    pub baseline_bytes: u64,
    pub seconds: f64,
    /// CUDA: the pool's used high-water mark (the most candle's tensors held at once, exact).
    #[serde(default)]
    pub pool_peak_bytes: Option<u64>,
    /// CUDA: the pool's reserved high-water mark during the forward.
    #[serde(default)]
    pub pool_reserved_bytes: Option<u64>,
    /// CUDA: device memory in use (`cuMemGetInfo` total − free) right after the forward.
    #[serde(default)]
    pub device_used_bytes: Option<u64>,
    /// CUDA: what NVML says this process holds right after the forward.
    #[serde(default)]
    pub process_bytes: Option<u64>,
    /// CPU: live bytes over the forward, from the worker's allocator.
    #[serde(default)]
    pub timeline: Option<crate::report::Timeline>,
    /// PyTorch training: the first and the second step's totals.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub steps_bytes: Option<Vec<u64>>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_started_line_is_the_started_response() {
        let r: Response = serde_json::from_str(STARTED_LINE.trim()).unwrap();
        assert_eq!(r, Response::Started);
    }

    /// Both ends of the PyTorch protocol read the same fixture lines (the Python worker's
    /// `selftest` reads them too): every line parses, and writes back to the same JSON.
    #[test]
    fn the_protocol_fixtures_parse_on_the_rust_side() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/fixtures/protocol");
        let lines = |name: &str| -> Vec<serde_json::Value> {
            std::fs::read_to_string(dir.join(name))
                .unwrap()
                .lines()
                .filter(|l| !l.trim().is_empty())
                .map(|l| serde_json::from_str(l).unwrap())
                .collect()
        };
        let requests = lines("requests.jsonl");
        let responses = lines("responses.jsonl");
        assert!(requests.len() >= 3 && responses.len() >= 4);
        for v in requests {
            let r: Request =
                serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("request {v}: {e}"));
            if let Request::Load { torch, .. } = &r {
                assert!(torch.is_some(), "a fixture load is PyTorch's: {v}");
            }
            let back = serde_json::to_value(&r).unwrap();
            for (k, x) in v.as_object().unwrap() {
                assert_eq!(back.get(k), Some(x), "{k} in {v}");
            }
        }
        let mut kinds = std::collections::BTreeSet::new();
        for v in responses {
            let r: Response =
                serde_json::from_value(v.clone()).unwrap_or_else(|e| panic!("response {v}: {e}"));
            kinds.insert(v["reply"].as_str().unwrap().to_string());
            if let Response::Trial(t) = &r {
                assert!(t.total_bytes >= t.live_before_bytes, "{v}");
            }
        }
        for k in ["ready", "started", "trial", "oom", "error"] {
            assert!(kinds.contains(k), "no {k} line in responses.jsonl");
        }
    }
}
