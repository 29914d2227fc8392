//! What an explained message means for the person holding it: its figures in words, and the
//! fixes in order of effect (fragmentation first only when it is large, bf16 only where the GPU
//! has it).

use super::{Backend, Explanation, Form, LargestBatch, Rounding, TorchBatches, shown};
use crate::presets::{self, GpuPreset};

/// Memory neither free nor this process's allocator's: other processes and CUDA contexts.
pub(super) fn held_elsewhere(e: &Explanation) -> (Option<u64>, Option<Rounding>) {
    let r = &e.rounding;
    let (Some(total), Some(free)) = (e.total_capacity_bytes, e.free_bytes) else {
        return (None, None);
    };
    let Some((mine, mine_rounding)) = e
        .process_in_use_bytes
        .map(|b| (b, r.in_use))
        .or_else(|| e.reserved_by_pytorch_bytes.map(|b| (b, r.reserved)))
    else {
        return (None, None);
    };
    (
        Some(total.saturating_sub(free).saturating_sub(mine)),
        Rounding::derived(&[r.total, r.free, mine_rounding]),
    )
}

/// Bytes with two decimals in the largest binary unit, as PyTorch prints them (`11.17 GiB`).
pub(super) fn h(b: u64) -> String {
    const UNITS: [(u64, &str); 4] = [
        (1 << 40, "TiB"),
        (1 << 30, "GiB"),
        (1 << 20, "MiB"),
        (1 << 10, "KiB"),
    ];
    UNITS.iter().find(|(size, _)| b >= *size).map_or_else(
        || format!("{b} B"),
        |(size, unit)| format!("{:.2} {unit}", b as f64 / *size as f64),
    )
}

/// "label N: meaning", N shown as the message printed it, for a figure the message gives.
fn figure(
    out: &mut Vec<String>,
    (bytes, rounding): (Option<u64>, Option<Rounding>),
    label: &str,
    meaning: &str,
) {
    if let Some(b) = bytes {
        out.push(format!("{label} {}: {meaning}", shown(b, rounding)));
    }
}

pub(super) fn figures(e: &Explanation) -> Vec<String> {
    let r = &e.rounding;
    let mut out = Vec::new();
    figure(
        &mut out,
        (e.tried_to_allocate_bytes, r.tried),
        "tried to allocate",
        "the one request that failed — often a single layer's activation, not the whole step",
    );
    if let (Some(need), Some(cap)) = (e.needed_bytes, e.space_capacity_bytes) {
        // As the message printed it ("Exceeded hbm capacity by 848.88M"), else computed.
        let (over, over_rounding) = r.exceeded.map_or_else(
            || {
                (
                    need.saturating_sub(cap),
                    Rounding::derived(&[r.needed, r.space]),
                )
            },
            |(b, rounding)| (b, Some(rounding)),
        );
        out.push(match e.memory_space.as_deref() {
            Some("hbm") => format!(
                "needs {} of {} HBM: what the compiled program needs, against what one TPU core's memory has for it — {} over",
                shown(need, r.needed),
                shown(cap, r.space),
                shown(over, over_rounding)
            ),
            space => format!(
                "needs {} of {} {}: what one kernel's blocks need of the core's on-chip vector memory, against what it has — {} over; arrays do not live there (they live in HBM)",
                shown(need, r.needed),
                shown(cap, r.space),
                space.unwrap_or("vmem").to_ascii_uppercase(),
                shown(over, over_rounding)
            ),
        });
    }
    figure(
        &mut out,
        (e.runtime_reserved_bytes, r.runtime_reserved),
        "reserved",
        "what the TPU runtime keeps of the core's memory, beside what the program may use",
    );
    if let Some(b) = e.largest_allocation_bytes {
        out.push(format!(
            "largest allocation {}{}: the program's biggest single buffer; the message lists the next ones below it, each with the operation that makes it",
            shown(b, r.largest),
            e.largest_allocation_shape
                .as_deref()
                .map_or_else(String::new, |s| format!(" ({s})"))
        ));
    }
    figure(
        &mut out,
        (e.pool_bytes, None),
        "allocated so far",
        "what CuPy's memory pool held before this request, after returning its cached free blocks and retrying",
    );
    if let Some(b) = e.total_capacity_bytes.filter(|_| e.needed_bytes.is_none()) {
        // The presets are NVIDIA's cards.
        let nvidia = e.backend.is_none_or(|b| b == Backend::Cuda);
        let gpu = presets::from_total_capacity(b)
            .filter(|_| nvidia)
            .map_or_else(String::new, |p| {
                format!(
                    "; a {}, compute capability {}, reports exactly this",
                    p.name,
                    p.compute_capability_label()
                )
            });
        out.push(format!(
            "total capacity {}: the GPU's memory as the driver reports it{}{gpu}",
            shown(b, r.total),
            e.gpu_index
                .map_or_else(String::new, |i| format!(" (GPU {i})"))
        ));
    }
    figure(
        &mut out,
        (e.free_bytes, r.free),
        "free",
        if e.tpu {
            "what this TPU core had free when the request failed"
        } else {
            "unused by any process when the request failed"
        },
    );
    figure(
        &mut out,
        (e.allocated_by_pytorch_bytes, r.allocated),
        "allocated by PyTorch",
        "tensors alive at that moment (weights, activations, gradients, optimizer state)",
    );
    figure(
        &mut out,
        (e.reserved_by_pytorch_bytes, r.reserved),
        "reserved by PyTorch",
        "what its caching allocator holds from the driver, tensors and cached free blocks together",
    );
    figure(
        &mut out,
        (e.reserved_unallocated_bytes, r.unallocated),
        "reserved but unallocated",
        "cached blocks no tensor uses; when large, free memory is there but split into pieces too small for the request (fragmentation)",
    );
    for (i, p) in e.processes.iter().enumerate() {
        out.push(format!(
            "process {} holds {} on the GPU, CUDA context and non-PyTorch memory included",
            p.pid,
            shown(p.bytes, r.processes.get(i).copied().flatten())
        ));
    }
    figure(
        &mut out,
        (e.held_elsewhere_bytes, r.held_elsewhere),
        "held elsewhere",
        "neither free nor this process's allocator's — other processes, and CUDA contexts",
    );
    if let Some(b) = e.private_pools_bytes {
        out.push(format!(
            "in private pools {} (of the allocated): memory CUDA graphs keep for their replays (`torch.compile(mode=\"reduce-overhead\")`, `torch.cuda.graphs`), freed only with the graphs",
            shown(b, r.private_pools)
        ));
    }
    figure(
        &mut out,
        (e.other_allocations_bytes, r.other_allocations),
        "other allocations",
        "what the process holds on the GPU outside PyTorch's MPS allocator",
    );
    let (label, meaning) = match e.form {
        Form::Cupy => (
            "limit set to",
            "the most CuPy's pool may hold (`set_limit`, or the `CUPY_GPU_MEMORY_LIMIT` setting)",
        ),
        Form::PytorchMps => (
            "max allowed",
            "PyTorch's own limit for MPS (its high watermark, a share of the Mac's unified memory set by PYTORCH_MPS_HIGH_WATERMARK_RATIO), not all the memory the Mac has",
        ),
        _ => (
            "allowed",
            "the most this process may hold, a cap set in it (`torch.cuda.set_per_process_memory_fraction`), below what the GPU has",
        ),
    };
    figure(&mut out, (e.allowed_bytes, r.allowed), label, meaning);
    for i in &e.ignored {
        out.push(format!(
            "left out: \"{i}\", more than the GPU has — a miscount in the message itself, so no figure here relies on it"
        ));
    }
    out
}

/// The share of the total capacity, in percent, that reserved-but-unallocated memory must
/// reach for fragmentation to be the first fix.
pub const FRAGMENTATION_FIRST_PERCENT: u64 = 5;

/// Where the fragmentation fix goes in the list.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fragmentation {
    /// Reserved-but-unallocated is at least [`FRAGMENTATION_FIRST_PERCENT`] % of the total
    /// capacity (total unknown: at least the failed request): reusing it is the first fix.
    First,
    /// Below that share but still at least the failed request: worth a try, after a smaller
    /// batch and mixed precision.
    Later,
    /// Less than the request: defragmenting cannot make room for it.
    No,
}

fn fragmentation(e: &Explanation) -> Fragmentation {
    let Some(unallocated) = e.reserved_unallocated_bytes else {
        return Fragmentation::No;
    };
    let need = e.tried_to_allocate_bytes.unwrap_or(0).max(1);
    let share = e.total_capacity_bytes.map(|total| {
        u128::from(unallocated) * 100 >= u128::from(total) * u128::from(FRAGMENTATION_FIRST_PERCENT)
    });
    match share {
        Some(true) => Fragmentation::First,
        None if unallocated >= need => Fragmentation::First,
        _ if unallocated >= need => Fragmentation::Later,
        _ => Fragmentation::No,
    }
}

/// The fixes, most effective first for this message's figures:
///
/// 1. reduce fragmentation, when reserved-but-unallocated is at least 5% of the total capacity
///    (total unknown: at least the failed request) — see [`Fragmentation`];
/// 2. free the GPU, when others hold more than the request;
/// 3. a smaller batch (with `--model`: for a PyTorch message the `no_grad` check first, then the
///    PyTorch estimator's largest batches for inference and training; with `--runtime candle`,
///    candle's estimated largest inference batch and how to measure the training one);
/// 4. mixed precision: bf16 on compute capability 8.0+, fp16 with a `GradScaler` below, the rule
///    itself when the GPU is unknown;
/// 5. reduce fragmentation, when below 5% but still at least the request;
/// 6. shorter sequences, gradient checkpointing, and a look at `nvidia-smi`.
pub(super) fn advice(e: &Explanation) -> Vec<String> {
    // Each framework's own fixes: PyTorch's allocator settings mean nothing to XLA or to
    // TensorFlow's allocator.
    if e.kernel_memory() {
        return vmem_advice(e);
    }
    match e.form {
        Form::Jax | Form::Tensorflow | Form::TorchXla if e.tpu => return tpu_advice(e),
        Form::Jax => return jax_advice(e),
        Form::Tensorflow => return tensorflow_advice(e),
        Form::TorchXla => return torch_xla_advice(e),
        Form::PytorchMps => return mps_advice(e),
        Form::CpuHost => return cpu_advice(e),
        Form::Cupy => return cupy_advice(e),
        Form::Numba => return numba_advice(e),
        Form::PytorchOld | Form::PytorchNew | Form::CudaBare => {}
    }
    let out = cuda_advice(e);
    // ROCm and Intel GPUs read the same; their tools and settings have their own names.
    match e.backend.unwrap_or(Backend::Cuda) {
        Backend::Cuda => out,
        Backend::Hip => out
            .into_iter()
            .map(|a| {
                a.replace("nvidia-smi", "rocm-smi")
                    .replace("PYTORCH_CUDA_ALLOC_CONF", "PYTORCH_HIP_ALLOC_CONF")
                    .replace(NVIDIA_BF16, "")
            })
            .collect(),
        Backend::Xpu => out
            .into_iter()
            // XPU's allocator takes no PYTORCH_CUDA_ALLOC_CONF.
            .filter(|a| !a.contains("PYTORCH_CUDA_ALLOC_CONF"))
            .map(|a| {
                a.replace("nvidia-smi", "xpu-smi")
                    .replace("torch.cuda.", "torch.xpu.")
                    .replace("\"cuda\"", "\"xpu\"")
                    .replace(NVIDIA_BF16, "")
            })
            .collect(),
    }
}

/// The fixes for a CUDA-style PyTorch message (and the bare CUDA error).
fn cuda_advice(e: &Explanation) -> Vec<String> {
    let need = e.tried_to_allocate_bytes.unwrap_or(0);
    let fragmentation = fragmentation(e);
    // Freeing what others hold would satisfy the request. The older form counts this process's
    // own CUDA context there too (a few hundred MiB), so leave that out.
    let context = if e.form == Form::PytorchOld {
        512 << 20
    } else {
        0
    };
    // When the GPU had room for the request, others' memory was not what it lacked.
    let others = e
        .held_elsewhere_bytes
        .is_some_and(|b| b.saturating_sub(context) >= need.max(1))
        && e.free_bytes.is_none_or(|f| f < need);
    let mut out = Vec::new();
    // A cap set in the process, below the GPU's memory, that the request met: what the
    // allocator holds and the request together pass it, or the GPU had room for the request.
    // (PyTorch prints the cap whenever one is set, met or not.)
    let cap_met = |allowed: u64| {
        e.reserved_by_pytorch_bytes
            .is_some_and(|r| r.saturating_add(need) > allowed)
            || e.free_bytes.is_some_and(|f| f >= need)
    };
    if let Some(allowed) = e.allowed_bytes
        && e.total_capacity_bytes.is_none_or(|t| allowed < t)
        && cap_met(allowed)
    {
        let room = e.free_bytes.map_or_else(String::new, |f| {
            format!(", while the GPU had {} free", shown(f, e.rounding.free))
        });
        out.push(format!(
            "raise this process's memory cap: it may hold {} (\"allowed\"){room}, so the request failed against a limit set in the process, not against the GPU — find the `torch.cuda.set_per_process_memory_fraction(…)` call (yours or a framework's) and raise the fraction or remove it",
            shown(allowed, e.rounding.allowed)
        ));
    }
    if fragmentation == Fragmentation::First {
        out.push(if e.form == Form::PytorchOld {
            "reduce fragmentation: run with PYTORCH_CUDA_ALLOC_CONF=max_split_size_mb:128 (or, on PyTorch 2.1 and later, `export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True`); reserved memory is then reused instead of split into unusable pieces".into()
        } else {
            "reduce fragmentation: run with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (e.g. `export PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True` before starting Python); the cached blocks then grow in place instead of splitting".into()
        });
    }
    if others {
        out.push(
            "free the GPU: other processes hold memory you need — see them with `nvidia-smi` and stop them; `torch.cuda.empty_cache()` in *another* PyTorch process returns its cached blocks to the GPU (in the failing process it does not help)".into(),
        );
    }
    if let Some((lb, t)) = e
        .largest_batch
        .as_ref()
        .and_then(|lb| Some((lb, lb.torch.as_ref()?)))
    {
        // The message cannot tell inference from training: the no_grad check comes first.
        out.insert(0, no_grad_check(lb, t));
        torch_batches(&mut out, lb, t);
    } else {
        candle_batches(&mut out, e);
    }
    out.push(mixed_precision(e.preset()));
    if fragmentation == Fragmentation::Later {
        let share = e
            .reserved_unallocated_bytes
            .map_or_else(String::new, |b| {
                format!(
                    " ({} reserved but unallocated, under {FRAGMENTATION_FIRST_PERCENT}% of the total capacity)",
                    shown(b, e.rounding.unallocated)
                )
            });
        out.push(format!(
            "reduce fragmentation too, though it frees little here{share}: run with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True (PyTorch 2.1 and later; before: max_split_size_mb:128)"
        ));
    }
    out.push(
        "use shorter sequences: attention's memory grows with the square of the length — `tokenizer(..., truncation=True, max_length=…)`".into(),
    );
    out.push(
        "trade compute for memory in training: `model.gradient_checkpointing_enable()` keeps fewer activations for the backward pass".into(),
    );
    if !others && (e.held_elsewhere_bytes.is_some() || e.total_capacity_bytes.is_none()) {
        out.push(
            "check other processes with `nvidia-smi`: memory they hold is never available to yours"
                .into(),
        );
    }
    out
}

/// The batch line for a framework other than PyTorch: the largest batch by candle's estimate
/// when a model was named (framework-neutral), else the rule.
fn smaller_batch(e: &Explanation, how: &str) -> String {
    match &e.largest_batch {
        Some(lb) => {
            let sized = format!(
                "{} at seq {} in {} under {}, by candle's estimate of one inference forward (estimated, not measured: no gradients, no optimizer state)",
                lb.model,
                lb.seq,
                lb.dtype,
                h(lb.capacity_bytes)
            );
            match lb.batch {
                Some(b) => format!(
                    "use a smaller batch ({how}): {b} is the largest inference batch that fits {sized}; training needs a smaller one"
                ),
                None => format!(
                    "use a smaller batch ({how}), though even that is not enough: not even an inference batch of 1 fits {sized}"
                ),
            }
        }
        None => format!("use a smaller batch ({how}): activations grow linearly with batch"),
    }
}

/// JAX (XLA) fixes on a GPU, in order of effect.
fn jax_advice(e: &Explanation) -> Vec<String> {
    let bf16 = e.preset().is_none_or(GpuPreset::supports_bf16);
    let mut out = vec![
        "stop JAX taking 75% of the GPU up front: set `XLA_PYTHON_CLIENT_PREALLOCATE=false` before starting Python (memory is then taken as needed), or give it a share with `XLA_PYTHON_CLIENT_MEM_FRACTION=.90`; another process on the same GPU (a second JAX program, PyTorch) needs this to fit at all".into(),
        smaller_batch(e, "the leading axis of the arrays your jitted step takes"),
        "trade compute for memory in training: wrap the layer or the loss in `jax.checkpoint` (`jax.remat`) so the backward pass recomputes activations instead of keeping them".into(),
    ];
    out.push(if bf16 {
        "keep parameters and activations in bf16: `params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)` and bf16 inputs (keep an f32 copy of the parameters in the optimizer if training needs it)".into()
    } else {
        "compute in float16 where the model tolerates it (this GPU has no fast bf16: compute capability below 8.0), keeping an f32 copy of the parameters for the optimizer".into()
    });
    out.push(
        "use shorter sequences: attention's memory grows with the square of the length".into(),
    );
    out.push(
        "check other processes with `nvidia-smi`: memory they hold is never available to yours (JAX's preallocation counts as held)".into(),
    );
    out
}

/// XLA on a TPU: each core's HBM is the limit, the runtime holds all of it (nothing to stop
/// preallocating), and bf16 is native. Each framework names its own sharding, batch,
/// recomputation and bf16.
fn tpu_advice(e: &Explanation) -> Vec<String> {
    let (shard, batch, remat, bf16) = match e.form {
        Form::TorchXla => (
            "shard the parameters and activations with PyTorch/XLA's SPMD (`torch_xla.distributed.spmd`, `xs.mark_sharding`) or FSDP (`torch_xla.distributed.fsdp`)",
            "the batch each core gets: `per_device_train_batch_size=…` or the `DataLoader`'s `batch_size`",
            "`model.gradient_checkpointing_enable()` (Hugging Face) or `torch_xla.utils.checkpoint.checkpoint` around each layer recomputes activations in the backward pass instead of keeping them",
            "`with torch.autocast(\"xla\", dtype=torch.bfloat16):` around the forward, or `model.to(torch.bfloat16)` for inference",
        ),
        Form::Tensorflow => (
            "run under `tf.distribute.TPUStrategy`, which splits the global batch over the cores and places the variables",
            "`model.fit(..., batch_size=…)` or `dataset.batch(…)`; under `TPUStrategy` each core gets the global batch divided by the cores",
            "`tf.recompute_grad` around a block recomputes its activations in the backward pass instead of keeping them",
            "`tf.keras.mixed_precision.set_global_policy('mixed_bfloat16')` before building the model",
        ),
        _ => (
            "shard parameters and activations (`jax.sharding` with a mesh, or FSDP-style sharding)",
            "the leading axis of the arrays your jitted step takes, per core",
            "wrap the layer or the loss in `jax.checkpoint` (`jax.remat`) so the backward pass recomputes activations instead of keeping them",
            "`params = jax.tree_util.tree_map(lambda x: x.astype(jnp.bfloat16), params)` (keep an f32 copy of the parameters in the optimizer if training needs it)",
        ),
    };
    let r = &e.rounding;
    let over = match (e.needed_bytes, e.space_capacity_bytes) {
        (Some(need), Some(cap)) if cap > 0 => format!(
            " — the program needs {}, {:.2}× the {} one core has for it",
            shown(need, r.needed),
            need as f64 / cap as f64,
            shown(cap, r.space)
        ),
        _ => " — the limit is one core's memory".to_string(),
    };
    let mut out = vec![format!(
        "spread the model and the batch over more TPU cores: {shard}, or use a TPU with more HBM per core{over}"
    )];
    if let (Some(tried), Some(free)) = (e.tried_to_allocate_bytes, e.free_bytes)
        && free < tried
    {
        let delete = match e.form {
            Form::TorchXla => {
                "`del` the tensors, then `torch_xla.sync()` (`xm.mark_step()` before 2.4)"
            }
            Form::Tensorflow => {
                "`del` the tensors, or `tf.keras.backend.clear_session()` between models"
            }
            _ => "`del` the arrays, or `x.delete()` to free a device buffer at once",
        };
        out.push(format!(
            "free what this core already holds: it had {} free for a request of {} — arrays made earlier (weights loaded in full precision, an earlier model, the last step's outputs) hold the rest; {delete}",
            shown(free, r.free),
            shown(tried, r.tried)
        ));
    }
    out.push(smaller_batch(e, batch));
    out.push(format!("trade compute for memory in training: {remat}"));
    out.push(format!(
        "keep parameters and activations in bf16, which TPUs compute natively: {bf16}"
    ));
    out.push(
        "use shorter sequences: attention's memory grows with the square of the length".into(),
    );
    out
}

/// XLA's compiler ran out of a TPU core's on-chip vector memory (VMEM): one kernel's blocks,
/// which neither the batch nor more cores change much.
fn vmem_advice(e: &Explanation) -> Vec<String> {
    let space = e
        .memory_space
        .as_deref()
        .unwrap_or("vmem")
        .to_ascii_uppercase();
    let update = match e.form {
        Form::TorchXla => "torch_xla (and its libtpu)",
        Form::Tensorflow => "TensorFlow",
        _ => "jax and jaxlib (and libtpu)",
    };
    vec![
        format!(
            "look at the kernel, not the batch: {space} is the core's on-chip scratch memory that one kernel's blocks must fit (megabytes, not the core's HBM), so a smaller batch or more cores rarely helps"
        ),
        "with a Pallas kernel (your own, or a library's flash or splash attention): use smaller block sizes (the `block_q` / `block_k` / `block_sizes` it takes), or raise its scoped limit with `vmem_limit_bytes` in its compiler parameters, up to what the chip has".into(),
        format!(
            "otherwise XLA chose that tiling itself: update {update}, and report it to XLA with the compiled program (`XLA_FLAGS=--xla_dump_to=DIR`)"
        ),
    ]
}

/// PyTorch/XLA off a TPU (its GPU backend): XLA's compiled program and PyTorch's habits.
fn torch_xla_advice(e: &Explanation) -> Vec<String> {
    vec![
        smaller_batch(e, "`per_device_train_batch_size=…` or the `DataLoader`'s `batch_size`"),
        "trade compute for memory in training: `model.gradient_checkpointing_enable()` (Hugging Face) or `torch_xla.utils.checkpoint.checkpoint` around each layer".into(),
        "compute in bf16 (compute capability 8.0+) or fp16: `with torch.autocast(\"xla\", dtype=torch.bfloat16):` around the forward".into(),
        "use shorter sequences: attention's memory grows with the square of the length".into(),
        "check other processes with `nvidia-smi`: memory they hold is never available to yours".into(),
    ]
}

/// `CuPy`: its pool had already returned its cached blocks and retried, so what is left is a
/// limit set on the pool, what else holds the GPU, or the arrays themselves.
fn cupy_advice(e: &Explanation) -> Vec<String> {
    let need = e.tried_to_allocate_bytes.unwrap_or(0);
    let mut out = Vec::new();
    if let Some(limit) = e.allowed_bytes
        && e.pool_bytes.is_none_or(|p| p.saturating_add(need) > limit)
    {
        out.push(format!(
            "raise the limit set on CuPy's pool: it may hold {} (\"limit set to\"), and what it held with this request passes that — `cupy.get_default_memory_pool().set_limit(size=…)` (or `fraction=…`, or the `CUPY_GPU_MEMORY_LIMIT` setting), or `set_limit(size=0)` to remove it",
            h(limit)
        ));
    }
    let smaller = format!(
        "work in smaller pieces: split the arrays along their leading axis and process one chunk at a time{}",
        e.tried_to_allocate_bytes
            .map_or_else(String::new, |t| format!(
                " (the request that failed was {})",
                h(t)
            ))
    );
    // A pool holding less than the request: the request itself is what does not fit.
    let request_first = e.pool_bytes.is_some_and(|p| p < need);
    if request_first {
        out.push(smaller.clone());
    }
    let held = e.pool_bytes.map_or_else(String::new, |p| {
        if p < need {
            format!("; its pool held only {}", h(p))
        } else {
            format!(
                "; its pool still held {} in arrays alive at that moment — `del` those you no longer need (a list, a closure or a notebook's `Out[…]` keeps one alive)",
                h(p)
            )
        }
    });
    out.push(format!(
        "find what holds the GPU: CuPy had already returned its cached free blocks and retried before raising this{held}; `nvidia-smi` shows other processes, and another library in this process keeps a cache of its own — PyTorch's (`torch.cuda.empty_cache()`), JAX's preallocation (`XLA_PYTHON_CLIENT_PREALLOCATE=false`), RAPIDS' RMM pool"
    ));
    if !request_first {
        out.push(smaller);
    }
    out.push(
        "use float32 instead of float64 where the precision allows: CuPy, like NumPy, makes float64 unless told (`cupy.asarray(x, dtype=cupy.float32)`, `dtype=cupy.float32` on `zeros` / `empty`); half the bytes".into(),
    );
    out.push(
        "make fewer temporaries: write results into existing arrays (`out=` on ufuncs, in-place `+=`) instead of new ones".into(),
    );
    out
}

/// Numba: it had already freed the arrays waiting for deallocation and retried; what is left is
/// what its arrays (or others) hold.
fn numba_advice(e: &Explanation) -> Vec<String> {
    let mut out = vec![
        "find what holds the GPU: Numba had already freed the device arrays waiting for deallocation and retried before raising this; `numba.cuda.current_context().get_memory_info()` gives the free and total bytes, `nvidia-smi` the processes, and another library in this process keeps a cache of its own — PyTorch's (`torch.cuda.empty_cache()`), CuPy's (`cupy.get_default_memory_pool().free_all_blocks()`), RAPIDS' RMM pool".into(),
        "move less to the device at once: copy and process the data in chunks (`cuda.to_device(x[i:i + n])`), and `del` device arrays you are done with — Numba frees one only when nothing refers to it".into(),
        "reuse device arrays: allocate outputs once (`cuda.device_array(shape, dtype)`) and pass them to each kernel launch, instead of passing NumPy arrays that each launch copies to the device".into(),
        "use float32 instead of float64 where the precision allows: half the bytes (NumPy's default is float64)".into(),
    ];
    if e.rapids {
        out.push(
            "under RAPIDS (cuDF, Dask-CUDA): let it spill to host memory — `dask_cuda.LocalCUDACluster(device_memory_limit=…)`, or cuDF's spilling (`CUDF_SPILL=on`)".into(),
        );
    }
    out
}

/// The batch lines of a PyTorch message: with `--model` the `no_grad` check and the PyTorch
/// estimate's batches, else the rule.
fn pytorch_batches(out: &mut Vec<String>, e: &Explanation) {
    if let Some((lb, t)) = e
        .largest_batch
        .as_ref()
        .and_then(|lb| Some((lb, lb.torch.as_ref()?)))
    {
        out.push(no_grad_check(lb, t));
        torch_batches(out, lb, t);
    } else {
        candle_batches(out, e);
    }
}

/// PyTorch on Apple's MPS: the limit is PyTorch's own share of the unified memory, which the
/// system and every other application share.
fn mps_advice(e: &Explanation) -> Vec<String> {
    let mut out = Vec::new();
    pytorch_batches(&mut out, e);
    out.push(
        "use half precision: `model.to(torch.float16)` (bf16 on MPS needs macOS 14 or later) or `with torch.autocast(\"mps\", dtype=torch.float16):` around the forward; it halves weights and activations".into(),
    );
    out.push(
        "free unified memory: the GPU shares it with the system and every open application — quit the large ones, and call `torch.mps.empty_cache()` after deleting tensors you no longer need".into(),
    );
    out.push(
        "raise PyTorch's limit only knowing the cost: `PYTORCH_MPS_HIGH_WATERMARK_RATIO` (default 1.7, of the memory macOS recommends for the GPU) moves it; 0.0, as the message suggests, removes it, and then the Mac swaps or freezes instead of raising this error".into(),
    );
    out.push(
        "use shorter sequences: attention's memory grows with the square of the length — `tokenizer(..., truncation=True, max_length=…)`".into(),
    );
    out.push(
        "trade compute for memory in training: `model.gradient_checkpointing_enable()` keeps fewer activations for the backward pass".into(),
    );
    out
}

/// PyTorch on the CPU: the computer's own memory.
fn cpu_advice(e: &Explanation) -> Vec<String> {
    let mut out = Vec::new();
    // A request larger than any computer's memory is a shape gone wrong, not a batch too big.
    if e.tried_to_allocate_bytes.is_some_and(|b| b >= 1 << 40) {
        out.push(format!(
            "check the shapes first: one tensor of {} is more than any computer has — usually a sequence length or image size far larger than meant, or two dimensions multiplied by broadcasting",
            shown(e.tried_to_allocate_bytes.unwrap_or(0), None)
        ));
    }
    out.push(
        "if this was meant to run on the GPU, move the model and its inputs there (`model.to(\"cuda\")`, `inputs = inputs.to(\"cuda\")`): as it is, the CPU ran it in the computer's memory".into(),
    );
    out.push(
        "if this is inference, wrap it in `torch.no_grad()` (or `torch.inference_mode()`): a forward without it keeps every activation for a backward that never comes".into(),
    );
    out.push(
        "use a smaller batch: activations grow linearly with batch — `per_device_train_batch_size=…` / `DataLoader(dataset, batch_size=…)`".into(),
    );
    out.push(
        "load the weights once and in half precision: `from_pretrained(..., torch_dtype=torch.bfloat16, low_cpu_mem_usage=True)` avoids a second full copy while loading".into(),
    );
    out.push(
        "free memory: close other programs (see them with `free -h` and `top`, or Activity Monitor / Task Manager), or add swap — at the cost of speed".into(),
    );
    out
}

/// TensorFlow (Keras) fixes, in order of effect.
fn tensorflow_advice(e: &Explanation) -> Vec<String> {
    let policy = if e.preset().is_some_and(GpuPreset::supports_bf16) {
        "mixed_bfloat16"
    } else {
        "mixed_float16"
    };
    vec![
        smaller_batch(e, "`model.fit(..., batch_size=…)` or `dataset.batch(…)`"),
        format!(
            "use mixed precision: `tf.keras.mixed_precision.set_global_policy('{policy}')` before building the model (activations in 16 bits, variables in f32){}",
            if policy == "mixed_float16" {
                "; Keras scales the loss for you in `model.fit`"
            } else {
                ""
            }
        ),
        "let TensorFlow grow its memory instead of taking the whole GPU: `tf.config.experimental.set_memory_growth(gpu, True)` for each GPU before the first op (or `TF_FORCE_GPU_ALLOW_GROWTH=true`); without it other programs on the GPU find none free".into(),
        "trade compute for memory in training: `tf.recompute_grad` around a block recomputes its activations in the backward pass instead of keeping them".into(),
        "use shorter sequences: attention's memory grows with the square of the length".into(),
        "check other processes with `nvidia-smi`: memory they hold is never available to yours".into(),
    ]
}

/// Which NVIDIA cards have bf16, as the mixed-precision fix names them (left out for others').
const NVIDIA_BF16: &str = " (compute capability 8.0+: A100, A10G, L4, RTX 30xx/40xx, H100)";

/// The mixed-precision fix for this GPU: bf16 needs compute capability 8.0 or newer (Ampere,
/// Ada, Hopper); older GPUs use fp16 with a `GradScaler`; an unknown GPU gets the rule.
fn mixed_precision(gpu: Option<&GpuPreset>) -> String {
    const FP16: &str = "`fp16=True` (Trainer), or `with torch.autocast(\"cuda\", dtype=torch.float16):` around the forward with `scaler = torch.amp.GradScaler(\"cuda\")` scaling the loss (`scaler.scale(loss).backward()`)";
    match gpu {
        Some(p) if p.supports_bf16() => format!(
            "use mixed precision in bf16, which the {} supports (compute capability {}): it halves activations and weights — `bf16=True` (Trainer) or `with torch.autocast(\"cuda\", dtype=torch.bfloat16):` around the forward; `model.to(torch.bfloat16)` for inference",
            p.name,
            p.compute_capability_label()
        ),
        Some(p) => format!(
            "use mixed precision in fp16 with a GradScaler, since the {}, compute capability {}, has no bf16: it halves activations — {FP16}; `model.half()` for inference",
            p.name,
            p.compute_capability_label()
        ),
        None => format!(
            "use mixed precision: it halves activations and weights — bf16 where `torch.cuda.is_bf16_supported()` is true{NVIDIA_BF16}, with `bf16=True` (Trainer) or `torch.autocast(\"cuda\", dtype=torch.bfloat16)`; otherwise fp16 with a GradScaler: {FP16}"
        ),
    }
}

impl Explanation {
    /// The explanation's first line: the form's title, and the GPU's maker where the message
    /// is PyTorch's for another than NVIDIA.
    #[must_use]
    pub fn heading(&self) -> String {
        let backend = match self.backend {
            Some(Backend::Hip) => {
                " It comes from AMD's ROCm (HIP), whose PyTorch prints CUDA's figures under HIP's name."
            }
            Some(Backend::Xpu) => {
                " It comes from Intel's GPU (XPU), whose PyTorch prints CUDA's figures under XPU's name."
            }
            _ if self.tpu && self.kernel_memory() => {
                " It comes from a TPU: one kernel's on-chip vector memory ran out, not the core's HBM."
            }
            _ if self.tpu => " It comes from a TPU: the limit is one core's memory (HBM).",
            _ => "",
        };
        // TensorFlow on a TPU prints XLA's message, not its GPU allocator's forms.
        let title = match self.form {
            Form::Tensorflow if self.tpu => {
                "A TensorFlow out-of-memory message from XLA (\"ResourceExhaustedError: … RESOURCE_EXHAUSTED …\")."
            }
            form => form.title(),
        };
        format!("{title}{backend}")
    }

    /// Whether XLA ran out of a kernel's on-chip memory (VMEM), not a core's HBM.
    fn kernel_memory(&self) -> bool {
        self.memory_space.as_deref().is_some_and(|s| s != "hbm")
    }

    /// What to say when the message has no figures: where this framework's own figures are.
    #[must_use]
    pub fn no_figures(&self) -> String {
        let where_ = match self.form {
            Form::Jax if self.tpu => {
                "`jax.devices()[0].memory_stats()` shows each TPU core's bytes in use and its limit"
            }
            Form::Jax => {
                "`nvidia-smi` shows which processes hold the GPU's memory, and `jax.devices()[0].memory_stats()` what JAX holds"
            }
            Form::TorchXla => {
                "`torch_xla.core.xla_model.get_memory_info()` shows the device's memory in use and its limit"
            }
            Form::Tensorflow if self.tpu => {
                "TensorFlow's profiler (`tf.profiler.experimental.start(logdir)`, then TensorBoard's memory profile) shows each core's use"
            }
            Form::Tensorflow => {
                "`nvidia-smi` shows which processes hold the GPU's memory, and `tf.config.experimental.get_memory_info('GPU:0')` what TensorFlow holds"
            }
            Form::Cupy => {
                "`nvidia-smi` shows which processes hold the GPU's memory, and `cupy.get_default_memory_pool().used_bytes()` / `.total_bytes()` what CuPy holds"
            }
            Form::Numba => {
                "`nvidia-smi` shows which processes hold the GPU's memory, and `numba.cuda.current_context().get_memory_info()` the free and total bytes"
            }
            Form::PytorchMps => {
                "`torch.mps.current_allocated_memory()` and `torch.mps.driver_allocated_memory()` show what PyTorch holds"
            }
            Form::CpuHost => {
                "`free -h` (or Activity Monitor / Task Manager) shows the memory in use"
            }
            Form::PytorchOld | Form::PytorchNew | Form::CudaBare => match self.backend {
                Some(Backend::Hip) => {
                    "`rocm-smi` shows which processes hold the GPU's memory, and `torch.cuda.memory_summary()` what PyTorch holds"
                }
                Some(Backend::Xpu) => {
                    "`xpu-smi` shows which processes hold the GPU's memory, and `torch.xpu.memory_reserved()` what PyTorch holds"
                }
                _ => {
                    "`nvidia-smi` shows which processes hold the GPU's memory, and `torch.cuda.memory_summary()` what PyTorch holds"
                }
            },
        };
        format!("no figures: the message says only that the device ran out of memory; {where_}")
    }

    /// The explanation for a person: the form, the figures and the fixes.
    #[must_use]
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = format!("{}\n\nWhat it says:\n", self.heading());
        if self.figures.is_empty() {
            let _ = writeln!(s, "- {}", self.no_figures());
        }
        for f in &self.figures {
            let _ = writeln!(s, "- {f}");
        }
        s.push_str("\nWhat to do, most effective first:\n");
        for (i, a) in self.advice.iter().enumerate() {
            let _ = writeln!(s, "{}. {a}", i + 1);
        }
        s
    }
}

/// The batch lines by candle's estimate (or the rule, without `--model`).
fn candle_batches(out: &mut Vec<String>, e: &Explanation) {
    match &e.largest_batch {
        None => out.push(
            "use a smaller batch: activations grow linearly with batch — e.g. `per_device_train_batch_size=…` (Hugging Face Trainer) or `DataLoader(dataset, batch_size=…)`; gradient accumulation (`gradient_accumulation_steps=…`) keeps the effective batch".into(),
        ),
        Some(lb) => {
            let sized = format!(
                "{} at seq {} in {} under {}, by candle's estimate of one inference forward (estimated, not measured: no gradients, no optimizer state, no CUDA context)",
                lb.model,
                lb.seq,
                lb.dtype,
                h(lb.capacity_bytes)
            );
            out.push(match lb.batch {
                Some(b) => format!(
                    "use a smaller batch: activations grow linearly with batch — for inference, `per_device_eval_batch_size={b}` (or your inference batch size) is the largest that fits {sized}; for training, lower `per_device_train_batch_size=…` and keep the effective batch with `gradient_accumulation_steps=…`"
                ),
                None => format!(
                    "use a smaller batch, though even that is not enough: not even an inference batch of 1 fits {sized}; use mixed precision or shorter sequences (below), or a GPU with more memory"
                ),
            });
            out.push(format!(
                "measure the training batch before choosing it: training holds more than that inference forward — gradients and AdamW state (the weights ×4 in f32) plus the activations autograd keeps, typically many times a no_grad forward — so run `{}`",
                lb.measure_training_command()
            ));
        }
    }
}

/// What the PyTorch estimate assumes, said on each of its lines.
fn torch_sized(lb: &LargestBatch, t: &TorchBatches) -> String {
    format!(
        "{} ({} head, {} attention) at seq {} in {} under {}, by oomlab's PyTorch estimate (estimated, not measured: PyTorch's CPU allocations, without the CUDA context and the caching allocator's rounding)",
        lb.model,
        t.task,
        t.attn,
        lb.seq,
        lb.dtype,
        h(lb.capacity_bytes)
    )
}

fn batch_words(b: Option<usize>) -> String {
    b.map_or_else(|| "none (not even 1)".to_string(), |b| b.to_string())
}

/// The first line for a PyTorch message with `--model`: the message cannot tell inference from
/// training, and a forward without `no_grad` keeps every activation for a backward that never
/// comes.
fn no_grad_check(lb: &LargestBatch, t: &TorchBatches) -> String {
    let ratio = t
        .grad_activation_bytes
        .map(|g| g as f64 / t.infer_activation_bytes.max(1) as f64);
    let figures = match (t.grad, ratio) {
        (Some(grad), Some(ratio)) => format!(
            ": a forward without it keeps {ratio:.1}× the activations, and the largest batch goes from {} without it to {} with it — {}",
            batch_words(grad),
            batch_words(t.infer),
            torch_sized(lb, t)
        ),
        _ => format!(
            " (how much it saves for {} is not modelled yet: {})",
            lb.model,
            t.grad_not_modelled.as_deref().unwrap_or("not modelled")
        ),
    };
    format!(
        "if this is inference, wrap it in `torch.no_grad()` (or `torch.inference_mode()`){figures}"
    )
}

/// The batch lines by the PyTorch estimate: inference, then training (measured, not modelled).
fn torch_batches(out: &mut Vec<String>, lb: &LargestBatch, t: &TorchBatches) {
    out.push(match t.infer {
        Some(b) => format!(
            "use a smaller batch: activations grow linearly with batch — for inference under no_grad, `per_device_eval_batch_size={b}` (or your inference batch size) is the largest that fits {}",
            torch_sized(lb, t)
        ),
        None => format!(
            "use a smaller batch, though even that is not enough: not even an inference batch of 1 fits {}; use mixed precision or shorter sequences (below), or a GPU with more memory",
            torch_sized(lb, t)
        ),
    });
    let train_sized = format!(
        "{} ({} head, {} attention, dropout as its config has it) at seq {} under {}, two steps as the torch runtime takes them, by oomlab's PyTorch estimate (estimated, not measured: PyTorch's CPU allocations and its CPU default, the single-tensor AdamW; on CUDA the default is foreach, whose step makes temporaries the size of all the parameters at once)",
        lb.model,
        t.train_task,
        t.attn,
        lb.seq,
        h(lb.capacity_bytes)
    );
    out.push(if t.train.is_empty() {
        format!(
            "measure the training batch before choosing it: a training step with AdamW (f32 or amp-bf16, with or without gradient checkpointing) holds gradients, AdamW's state and the saved activations ({}) — run `{}` (add `--dtype amp-bf16` or `--gradient-checkpointing off,on` to compare)",
            t.train_not_modelled.as_deref().unwrap_or("not modelled"),
            lb.measure_training_command()
        )
    } else {
        let settings: Vec<String> = t
            .train
            .iter()
            .map(|tb| {
                format!(
                    "{}{} {}",
                    if tb.dtype == crate::precision::Precision::AmpBf16 {
                        "amp-bf16 (`bf16=True`)"
                    } else {
                        "f32"
                    },
                    if tb.checkpointing {
                        " with gradient checkpointing"
                    } else {
                        ""
                    },
                    if tb.not_modelled.is_some() {
                        "not modelled yet".to_string()
                    } else {
                        batch_words(tb.batch)
                    }
                )
            })
            .collect();
        format!(
            "for training with AdamW, the largest `per_device_train_batch_size` that fits (gradients, AdamW's two state tensors per parameter and the activations autograd saves): {} — {train_sized}; measure the one you pick with `{} --dtype f32,amp-bf16 --gradient-checkpointing off,on`",
            settings.join(", "),
            lb.measure_training_command()
        )
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::explain::TrainBatch;
    use crate::precision::Precision;
    use crate::runtime::{Attn, Task};

    /// A training setting the estimate does not model is named as such beside the others'
    /// batches, never left blank or guessed.
    #[test]
    fn a_training_setting_not_modelled_is_named_beside_the_batches() {
        let setting = |dtype, checkpointing, batch, why: Option<&str>| TrainBatch {
            dtype,
            checkpointing,
            batch,
            not_modelled: why.map(str::to_string),
        };
        let t = TorchBatches {
            task: Task::CausalLm,
            attn: Attn::Sdpa,
            infer: Some(40),
            grad: Some(Some(7)),
            infer_activation_bytes: 1,
            grad_activation_bytes: Some(6),
            grad_not_modelled: None,
            train_task: Task::CausalLm,
            train: vec![
                setting(Precision::F32, false, Some(5), None),
                setting(Precision::F32, true, Some(9), None),
                setting(Precision::AmpBf16, false, None, Some("amp-f16 is not")),
                setting(Precision::AmpBf16, true, Some(12), None),
            ],
            train_not_modelled: None,
        };
        let lb = LargestBatch::inference(
            "m".into(),
            "m".into(),
            512,
            Precision::F32,
            1 << 30,
            Some(40),
        )
        .with_torch(t.clone());
        let mut out = Vec::new();
        torch_batches(&mut out, &lb, &t);
        let line = &out[1];
        assert!(
            line.contains(": f32 5, f32 with gradient checkpointing 9, amp-bf16 (`bf16=True`) not modelled yet, amp-bf16 (`bf16=True`) with gradient checkpointing 12 — "),
            "{line}"
        );
    }
}
