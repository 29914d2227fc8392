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
    /// Where the figure was seen with the GPU named.
    pub source: &'static str,
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
        source: "nvidia-smi 11441MiB, PyTorch \"11.17 GiB total capacity\" (the classic message): github.com/piegu/fastai-projects/issues/2, github.com/lllyasviel/Fooocus/issues/2436",
    },
    GpuPreset {
        id: "gtx1080ti",
        name: "GeForce GTX 1080 Ti",
        total_bytes: 11_178 * MIB,
        source: "Linux: nvidia-smi 11178MiB, \"totalMemory: 10.92GiB\" (Windows shows 11264MiB, 11.00 GiB): github.com/fyu/drn/issues/22",
    },
    GpuPreset {
        id: "t4",
        name: "Tesla T4",
        total_bytes: gib_2dp(1456),
        source: "recent drivers: PyTorch \"14.56 GiB\" with nvidia-smi 15360MiB (older drivers: 14.75 GiB): github.com/Zheng-Chong/CatVTON/issues/133",
    },
    GpuPreset {
        id: "v100-16",
        name: "Tesla V100 16 GB",
        total_bytes: gib_2dp(1578),
        source: "PyTorch \"15.78 GiB total capacity\": github.com/kchengiva/Shift-GCN/issues/34",
    },
    GpuPreset {
        id: "rtx3090",
        name: "GeForce RTX 3090",
        total_bytes: gib_2dp(2369),
        source: "PyTorch \"23.69 GiB total capacity\": github.com/JiaweiLian/AP-PA/issues/3",
    },
    GpuPreset {
        id: "rtx4090",
        name: "GeForce RTX 4090",
        total_bytes: gib_2dp(2364),
        source: "PyTorch \"23.64 GiB\" (23.61 to 23.68 by driver): github.com/ali-vilab/VGen/issues/104",
    },
    GpuPreset {
        id: "l4",
        name: "L4",
        total_bytes: gib_2dp(2205),
        source: "PyTorch \"22.05 GiB\" on L4 CI runners, nvidia-smi 23034MiB: github.com/vllm-project/vllm/issues/20214",
    },
    GpuPreset {
        id: "a10g",
        name: "A10G",
        total_bytes: gib_2dp(2249),
        source: "PyTorch \"22.49 GiB total capacity\": github.com/AUTOMATIC1111/stable-diffusion-webui/issues/1259",
    },
    GpuPreset {
        id: "a100-40",
        name: "A100 40 GB",
        total_bytes: 42_298_834_944,
        source: "deviceQuery A100-SXM4-40GB: 42298834944 bytes (39.39 GiB): github.com/bottlerocket-os/bottlerocket/issues/3873",
    },
    GpuPreset {
        id: "a100-80",
        name: "A100 80 GB",
        total_bytes: gib_2dp(7914),
        source: "recent drivers: PyTorch \"79.14 GiB\" (older: 79.35 GiB): github.com/lianqi1008/Control-GIC/issues/6",
    },
    GpuPreset {
        id: "h100",
        name: "H100 80 GB (SXM)",
        total_bytes: gib_2dp(7911),
        source: "PyTorch \"79.11 GiB\": github.com/vllm-project/vllm/issues/27508",
    },
    GpuPreset {
        id: "h200",
        name: "H200",
        total_bytes: gib_2dp(13980),
        source: "PyTorch \"139.80 GiB\", nvidia-smi about 143771MiB: github.com/vllm-project/recipes/issues/381",
    },
];

/// What a CPU sweep against a preset is, said wherever its results are shown.
pub const CPU_NOTE: &str = "a CPU measurement against this GPU's capacity: the CUDA context, kernels and cuBLAS workspace a real GPU holds are not in it";

/// The preset `text` names (its id, case and `-`/`_`/spaces ignored; `a100` alone is refused
/// as ambiguous).
pub fn find(text: &str) -> Result<&'static GpuPreset, String> {
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
            format!(
                "unknown GPU '{}'; choose one of {}",
                text.trim(),
                PRESETS.iter().map(|p| p.id).collect::<Vec<_>>().join(", ")
            )
        })
}

/// The preset whose memory is exactly `capacity_bytes` (a sweep planned with `--gpu`).
#[must_use]
pub fn matching(capacity_bytes: u64) -> Option<&'static GpuPreset> {
    PRESETS.iter().find(|p| p.total_bytes == capacity_bytes)
}

/// How a capacity reads in titles: `14.56 GiB (Tesla T4, CPU measurement)`.
#[must_use]
pub fn capacity_label(capacity_bytes: u64, on_cpu: bool) -> String {
    match matching(capacity_bytes) {
        Some(p) => format!(
            "{:.2} GiB ({}{})",
            capacity_bytes as f64 / f64::from(1u32 << 30),
            p.name,
            if on_cpu { ", CPU measurement" } else { "" }
        ),
        None => crate::plan::human_bytes(capacity_bytes),
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
        let e = find("a100").unwrap_err();
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
