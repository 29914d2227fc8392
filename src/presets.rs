//! Common GPUs and their memory as the driver reports it (what PyTorch prints as "total
//! capacity" in its out-of-memory message), for planning on a GPU one does not have.
//!
//! A preset is only a capacity. A sweep on the CPU against it is a CPU measurement: the CUDA
//! context, kernel images and cuBLAS workspace a real GPU holds beside the tensors are not in it,
//! and every place that shows such a result says so ([`CPU_NOTE`]).

/// One GPU model.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GpuPreset {
    /// What `--gpu` takes (lower case, no spaces).
    pub id: &'static str,
    pub name: &'static str,
    /// Total device memory as CUDA reports it (`cudaMemGetInfo` total; PyTorch's "total
    /// capacity"), less than the marketing figure.
    pub total_bytes: u64,
    /// CUDA compute capability (major, minor): bf16 needs 8.0 or newer (Ampere, Ada, Hopper).
    pub compute_capability: (u32, u32),
    /// Where the figure was seen with the GPU named.
    pub source: &'static str,
}

impl GpuPreset {
    /// Whether the GPU computes in bf16 (`torch.cuda.is_bf16_supported()`): compute capability
    /// 8.0 or newer. Older GPUs train in fp16 with a `GradScaler`.
    #[must_use]
    pub fn supports_bf16(&self) -> bool {
        self.compute_capability >= (8, 0)
    }

    /// The compute capability as NVIDIA writes it: `7.5`.
    #[must_use]
    pub fn compute_capability_label(&self) -> String {
        format!(
            "{}.{}",
            self.compute_capability.0, self.compute_capability.1
        )
    }

    /// The total as PyTorch prints it: `14.56 GiB`.
    #[must_use]
    pub fn total_label(&self) -> String {
        format!("{:.2} GiB", gib(self.total_bytes))
    }
}

const MIB: u64 = 1 << 20;

/// A figure PyTorch prints with two decimals, in bytes (the nearest MiB).
const fn gib_2dp(hundredths: u64) -> u64 {
    (hundredths * 1024 + 50) / 100 * MIB
}

pub const PRESETS: &[GpuPreset] = &[
    GpuPreset {
        id: "k80",
        name: "Tesla K80 (one GPU of the board)",
        total_bytes: 11_441 * MIB,
        compute_capability: (3, 7),
        source: "nvidia-smi 11441MiB, PyTorch \"11.17 GiB total capacity\" (the classic message): github.com/piegu/fastai-projects/issues/2, github.com/lllyasviel/Fooocus/issues/2436",
    },
    GpuPreset {
        id: "gtx1080ti",
        name: "GeForce GTX 1080 Ti",
        total_bytes: 11_178 * MIB,
        compute_capability: (6, 1),
        source: "Linux: nvidia-smi 11178MiB, \"totalMemory: 10.92GiB\" (Windows shows 11264MiB, 11.00 GiB): github.com/fyu/drn/issues/22",
    },
    GpuPreset {
        id: "t4",
        name: "Tesla T4",
        total_bytes: gib_2dp(1456),
        compute_capability: (7, 5),
        source: "recent drivers: PyTorch \"14.56 GiB\" with nvidia-smi 15360MiB (older drivers: 14.75 GiB): github.com/Zheng-Chong/CatVTON/issues/133",
    },
    GpuPreset {
        id: "v100-16",
        name: "Tesla V100 16 GB",
        total_bytes: gib_2dp(1578),
        compute_capability: (7, 0),
        source: "PyTorch \"15.78 GiB total capacity\": github.com/kchengiva/Shift-GCN/issues/34",
    },
    GpuPreset {
        id: "rtx3090",
        name: "GeForce RTX 3090",
        total_bytes: gib_2dp(2369),
        compute_capability: (8, 6),
        source: "PyTorch \"23.69 GiB total capacity\": github.com/JiaweiLian/AP-PA/issues/3",
    },
    GpuPreset {
        id: "rtx4090",
        name: "GeForce RTX 4090",
        total_bytes: gib_2dp(2364),
        compute_capability: (8, 9),
        source: "PyTorch \"23.64 GiB\" (23.61 to 23.68 by driver): github.com/ali-vilab/VGen/issues/104",
    },
    GpuPreset {
        id: "l4",
        name: "L4",
        total_bytes: gib_2dp(2205),
        compute_capability: (8, 9),
        source: "PyTorch \"22.05 GiB\" on L4 CI runners, nvidia-smi 23034MiB: github.com/vllm-project/vllm/issues/20214",
    },
    GpuPreset {
        id: "a10g",
        name: "A10G",
        total_bytes: gib_2dp(2249),
        compute_capability: (8, 6),
        source: "PyTorch \"22.49 GiB total capacity\": github.com/AUTOMATIC1111/stable-diffusion-webui/issues/1259",
    },
    GpuPreset {
        id: "a100-40",
        name: "A100 40 GB",
        total_bytes: 42_298_834_944,
        compute_capability: (8, 0),
        source: "deviceQuery A100-SXM4-40GB: 42298834944 bytes (39.39 GiB): github.com/bottlerocket-os/bottlerocket/issues/3873",
    },
    GpuPreset {
        id: "a100-80",
        name: "A100 80 GB",
        total_bytes: gib_2dp(7914),
        compute_capability: (8, 0),
        source: "recent drivers: PyTorch \"79.14 GiB\" (older: 79.35 GiB): github.com/lianqi1008/Control-GIC/issues/6",
    },
    GpuPreset {
        id: "h100",
        name: "H100 80 GB (SXM)",
        total_bytes: gib_2dp(7911),
        compute_capability: (9, 0),
        source: "PyTorch \"79.11 GiB\": github.com/vllm-project/vllm/issues/27508",
    },
    GpuPreset {
        id: "h200",
        name: "H200",
        total_bytes: gib_2dp(13980),
        compute_capability: (9, 0),
        source: "PyTorch \"139.80 GiB\", nvidia-smi about 143771MiB: github.com/vllm-project/recipes/issues/381",
    },
];

/// What a CPU sweep against a preset is, said wherever its results are shown.
pub const CPU_NOTE: &str = "a CPU measurement against this GPU's capacity: the CUDA context, kernels and cuBLAS workspace a real GPU holds are not in it";

/// A GPU name no preset answers to, in words that list the presets.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct UnknownGpu(String);

/// The preset `text` names (its id, case and `-`/`_`/spaces ignored; `a100` alone is refused
/// as ambiguous).
pub fn find(text: &str) -> Result<&'static GpuPreset, UnknownGpu> {
    let norm = |s: &str| {
        s.chars()
            .filter(|c| !matches!(c, '-' | '_' | ' '))
            .collect::<String>()
            .to_ascii_lowercase()
    };
    let want = norm(text);
    PRESETS
        .iter()
        .find(|p| norm(p.id) == want || norm(p.name) == want)
        .ok_or_else(|| {
            UnknownGpu(format!(
                "unknown GPU '{}'; choose one of {}",
                text.trim(),
                PRESETS.iter().map(|p| p.id).collect::<Vec<_>>().join(", ")
            ))
        })
}

fn gib(bytes: u64) -> f64 {
    bytes as f64 / f64::from(1u32 << 30)
}

/// The preset an out-of-memory message's "total capacity" names: the one whose total, printed
/// as PyTorch prints it (GiB with two decimals), is the message's figure. The message rounds to
/// 0.01 GiB, so a figure within 0.005 GiB of the preset's printed total matches; none matches
/// when the figure is no preset's (then the GPU is unknown).
#[must_use]
pub fn from_total_capacity(capacity_bytes: u64) -> Option<&'static GpuPreset> {
    let shown = gib(capacity_bytes);
    PRESETS.iter().find(|p| {
        let printed = (gib(p.total_bytes) * 100.0).round() / 100.0;
        (printed - shown).abs() <= 0.005 + 1e-9
    })
}

/// A preset is written as its id (`"t4"`; a plan's `gpu`).
impl serde::Serialize for GpuPreset {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(self.id)
    }
}

/// The preset whose memory is exactly `capacity_bytes`: what a plan written before plans named
/// their preset was planned with (`--gpu` wrote only its bytes then).
#[must_use]
pub fn matching(capacity_bytes: u64) -> Option<&'static GpuPreset> {
    PRESETS.iter().find(|p| p.total_bytes == capacity_bytes)
}

/// How a capacity reads in titles: `14.56 GiB (Tesla T4, CPU measurement)`.
#[must_use]
pub fn capacity_label(capacity_bytes: u64, preset: Option<&GpuPreset>, on_cpu: bool) -> String {
    match preset {
        Some(p) => format!(
            "{:.2} GiB ({}{})",
            capacity_bytes as f64 / f64::from(1u32 << 30),
            p.name,
            if on_cpu { ", CPU measurement" } else { "" }
        ),
        None => crate::units::human_bytes(capacity_bytes),
    }
}

/// The window's "Teaching demo": a full grid sweep a lecturer can run live on a laptop CPU —
/// three sequence lengths that separate clearly (attention grows with the square of the
/// length), two precisions, and a capacity at which every curve ends in an out-of-memory cross.
/// bert-tiny (`google/bert_uncased_L-2_H-128_A-2`, 4.4M parameters).
pub struct TeachingDemo {
    pub model: &'static str,
    pub seqs: &'static str,
    pub f32: bool,
    pub f16: bool,
    pub bf16: bool,
    pub batch: &'static str,
    pub capacity: &'static str,
}

pub const TEACHING_DEMO: TeachingDemo = TeachingDemo {
    model: "bert-tiny",
    seqs: "128, 256, 512",
    f32: true,
    f16: true,
    bf16: false,
    batch: "1..512",
    capacity: "44MiB",
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_and_names_find_their_preset_and_unknown_ones_list_the_choices() {
        assert_eq!(find("T4").unwrap().id, "t4");
        assert_eq!(find("a100_80").unwrap().id, "a100-80");
        assert_eq!(find("GeForce RTX 4090").unwrap().id, "rtx4090");
        let e = find("a100").unwrap_err().to_string();
        assert!(e.contains("a100-40") && e.contains("a100-80"), "{e}");
        for p in PRESETS {
            assert_eq!(find(p.id).unwrap(), p);
            assert_eq!(matching(p.total_bytes), Some(p));
            assert!(
                p.total_bytes > 8 << 30 && p.total_bytes < 150 << 30,
                "{}",
                p.id
            );
        }
    }

    #[test]
    fn compute_capabilities_decide_bf16() {
        let cc = |id: &str| find(id).unwrap().compute_capability;
        assert_eq!(cc("k80"), (3, 7));
        assert_eq!(cc("gtx1080ti"), (6, 1));
        assert_eq!(cc("v100-16"), (7, 0));
        assert_eq!(cc("t4"), (7, 5));
        assert_eq!(cc("a100-40"), (8, 0));
        assert_eq!(cc("a10g"), (8, 6));
        assert_eq!(cc("rtx3090"), (8, 6));
        assert_eq!(cc("rtx4090"), (8, 9));
        assert_eq!(cc("l4"), (8, 9));
        assert_eq!(cc("h200"), (9, 0));
        for p in PRESETS {
            let ampere_or_newer = ["a100", "a10g", "rtx30", "rtx40", "l4", "h100", "h200"]
                .iter()
                .any(|s| p.id.starts_with(s));
            assert_eq!(p.supports_bf16(), ampere_or_newer, "{}", p.id);
        }
        assert_eq!(find("t4").unwrap().compute_capability_label(), "7.5");
    }

    #[test]
    fn a_messages_total_capacity_names_its_preset_within_the_rounding() {
        // As the message prints it, read back to bytes as `explain` does.
        let message = |gib: f64| (gib * f64::from(1u32 << 30)).round() as u64;
        for p in PRESETS {
            let printed: f64 = format!("{:.2}", gib(p.total_bytes)).parse().unwrap();
            assert_eq!(from_total_capacity(message(printed)), Some(p), "{}", p.id);
            assert_eq!(from_total_capacity(p.total_bytes), Some(p), "{}", p.id);
            // One hundredth off is another figure, never this preset.
            for off in [-0.01, 0.01] {
                assert_ne!(
                    from_total_capacity(message(printed + off)),
                    Some(p),
                    "{}",
                    p.id
                );
            }
        }
        assert_eq!(from_total_capacity(message(14.56)).unwrap().id, "t4");
        assert_eq!(from_total_capacity(message(11.17)).unwrap().id, "k80");
        assert_eq!(from_total_capacity(message(23.65)), None);
        assert_eq!(find("t4").unwrap().total_label(), "14.56 GiB");
    }

    #[test]
    fn the_two_decimal_figures_round_trip_to_what_pytorch_prints() {
        // PyTorch prints total_memory / 2^30 with two decimals.
        for p in PRESETS {
            let printed = format!("{:.2}", p.total_bytes as f64 / f64::from(1u32 << 30));
            assert!(
                p.source.contains(&printed) || p.source.contains("MiB"),
                "{}: {printed}",
                p.id
            );
        }
        assert_eq!(gib_2dp(1475), 15_104 * MIB);
        // The classic message's GPU.
        assert_eq!(
            format!(
                "{:.2}",
                find("k80").unwrap().total_bytes as f64 / f64::from(1u32 << 30)
            ),
            "11.17"
        );
    }
}
