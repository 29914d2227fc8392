//! The PyTorch estimator: what the torch runtime's trial holds, predicted from the model's dims
//! by a liveness simulation of the family's Hugging Face forward as PyTorch runs it on the CPU
//! (`families::torch_sim`), never a formula fitted to measurements. Modelled so far: inference
//! under `no_grad` (`--workload infer`) in f32, bf16 and f16, sdpa and eager attention, for the
//! families whose room writes the forward (BERT; the others say "not modelled").

use crate::catalog::ModelSpec;
use crate::families::torch_sim::{Head, TDt, TSim, TorchRun};
use crate::families::torch_tape::{Optim, Tape, optimizer_step};
use crate::plan::{Attn, Precision, Task, Workload};
use crate::runtime::Optimizer;
use serde::Serialize;

/// What a PyTorch trial holds at its peak, by part, as PyTorch's profiler counts it on the CPU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct TorchBreakdown {
    /// Parameters and buffers (the worker's baseline).
    pub weights_bytes: u64,
    /// The inputs a tokenizer hands the model: ids and attention mask (int64).
    pub input_bytes: u64,
    /// What the forward holds at the trial's peak besides the weights and inputs.
    pub activation_bytes: u64,
    /// Comparable with a torch trial's `total_bytes`.
    pub total_bytes: u64,
    /// Training only, by the same differences the torch trial's timeline gives (its phases'
    /// live bytes): the optimizer state (step 2's forward less step 1's), the gradients (step
    /// 2's optimizer step less its forward), the saved activations with the loss (step 2's
    /// backward less its forward). Null for infer and grad.
    pub optimizer_bytes: Option<u64>,
    pub gradient_bytes: Option<u64>,
    pub saved_activation_bytes: Option<u64>,
    /// `cpu` or `cuda`: the arm that sized it.
    pub device: &'static str,
    /// CUDA only: cuBLAS's workspace, a block of the pool taken at the first matmul and kept
    /// (not in `activation_bytes`).
    pub workspace_bytes: Option<u64>,
    /// CUDA only: what the caching allocator holds above its blocks at the high-water marks
    /// (`max_memory_reserved` less `max_memory_allocated`: segments cut into blocks, cached
    /// free blocks).
    pub pool_cached_bytes: Option<u64>,
    /// CUDA only: the device memory outside the pool (context, kernel modules), and whether
    /// that figure was measured on this GPU (else assumed).
    pub context_bytes: Option<u64>,
    pub context_measured: Option<bool>,
    /// CUDA under a capacity: whether the allocator ran out of memory on the way (a new
    /// segment did not fit even after the cached ones were released).
    #[serde(skip)]
    pub out_of_memory: bool,
}

/// Which kernels and allocator the estimate follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TorchDevice {
    /// PyTorch's CPU kernels and c10's CPU allocator (as the profiler counts it).
    #[default]
    Cpu,
    /// CUDA's kernels and the caching allocator, with the device memory outside it.
    Cuda(CudaArm),
}

/// The CUDA arm's setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CudaArm {
    /// Device memory the process holds outside the caching allocator (CUDA context, kernel
    /// modules loaded by the forward).
    pub context_bytes: u64,
    /// Whether `context_bytes` was measured on this GPU.
    pub context_measured: bool,
    /// The cuBLAS workspace the first matmul takes from the pool.
    pub cublas_workspace_bytes: u64,
    /// The device memory the process may use in all (the capacity): the pool may grow to it
    /// less the context; None: unlimited.
    pub capacity_bytes: Option<u64>,
}

/// The CUDA context and kernel modules PyTorch holds outside its pool when no GPU run has
/// measured them: 512 MiB, assumed (a CUDA 12/13 context with lazy module loading is 0.3 to
/// 0.7 GiB; oomlab's own candle worker measured 0.67 GiB on an H200).
pub const ASSUMED_CONTEXT_BYTES: u64 = 512 << 20;

/// cuBLAS's workspace as PyTorch sizes it (`CUBLAS_WORKSPACE_CONFIG` unset): 4096 KiB × 8 on
/// Hopper and newer (compute capability 9.0+), else 4096 KiB × 2 + 16 KiB × 8.
#[must_use]
pub fn cublas_workspace_bytes(compute_capability: (u32, u32)) -> u64 {
    if compute_capability.0 >= 9 {
        4096 * 1024 * 8
    } else {
        4096 * 1024 * 2 + 16 * 1024 * 8
    }
}

impl CudaArm {
    /// The arm for a GPU of `compute_capability`, its context assumed.
    #[must_use]
    pub fn assumed(compute_capability: (u32, u32)) -> Self {
        Self {
            context_bytes: ASSUMED_CONTEXT_BYTES,
            context_measured: false,
            cublas_workspace_bytes: cublas_workspace_bytes(compute_capability),
            capacity_bytes: None,
        }
    }
}

/// The live bytes where a training step's phases begin, as the torch worker marks them.
#[derive(Debug, Clone, Copy, Default)]
struct Marks {
    forward1: u64,
    forward2: u64,
    backward2: u64,
    optimizer2: u64,
}

/// Why a point cannot be estimated for PyTorch.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NotModelled {
    #[error(
        "the PyTorch estimator does not model {family} yet (modelled: {modelled}); measure it with `oomlab sweep --runtime torch`"
    )]
    Family { family: String, modelled: String },
    #[error(
        "the PyTorch estimator does not model gradient checkpointing yet; measure it with `oomlab sweep --runtime torch --workload train --gradient-checkpointing on`"
    )]
    Checkpointing,
    #[error(
        "the PyTorch estimator does not model the {task} head of {family} yet; measure it with `oomlab sweep --runtime torch`"
    )]
    Head { family: String, task: Task },
    #[error("{family}: {why}; measure it with `oomlab sweep --runtime torch`")]
    Point { family: String, why: String },
    #[error(
        "a training step needs a head with a loss, and the base model has none; choose sequence-classification, causal-lm or masked-lm in --task"
    )]
    NoLoss,
    #[error(
        "transformers has no masked-LM head for {family} (a decoder: the torch runtime cannot load one either); choose causal-lm, sequence-classification or base in --task"
    )]
    NoMaskedLm { family: String },
    #[error(
        "transformers runs {family} with eager attention only (its attention soft-caps the scores, which sdpa cannot), and refuses sdpa; choose --attn eager"
    )]
    NoSdpa { family: String },
}

/// The families whose PyTorch forward is modelled.
#[must_use]
pub fn modelled_families() -> Vec<&'static str> {
    // Any small dims do: a room either models its PyTorch weights or does not.
    let probe = crate::families::Dims {
        layers: 1,
        hidden: 8,
        heads: 2,
        kv_heads: 2,
        intermediate: 8,
        vocab: 8,
        max_positions: 8,
        type_vocab: 2,
        ..crate::families::Dims::default()
    };
    crate::families::Family::all()
        .filter(|f| {
            [Head::Base, Head::CausalLm]
                .iter()
                .any(|h| f.room().torch_weights(&probe, *h, TDt::F32).is_some())
        })
        .map(|f| f.room().name())
        .collect()
}

fn head(task: Task) -> Head {
    match task {
        Task::Base => Head::Base,
        Task::SequenceClassification => Head::SequenceClassification,
        Task::CausalLm => Head::CausalLm,
        Task::MaskedLm => Head::MaskedLm,
    }
}

/// What a torch trial runs, beside its point: the torch runtime's `--workload`, `--task`,
/// `--attn`, `--optimizer` and `--gradient-checkpointing`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct How {
    pub workload: Workload,
    pub task: Task,
    pub attn: Attn,
    pub optimizer: Optimizer,
    pub checkpointing: bool,
    /// The CPU's kernels (the torch runtime's CPU trials) or CUDA's.
    pub device: TorchDevice,
}

impl How {
    /// What a sweep plan's torch curve runs (its checkpointing is the curve's).
    #[must_use]
    pub fn of_curve(
        plan: &crate::plan::SweepPlan,
        family: crate::families::Family,
        checkpointing: bool,
    ) -> Self {
        Self {
            optimizer: plan.torch.optimizer,
            checkpointing,
            ..Self::new(
                plan.workload,
                plan.torch_task(family.is_decoder()),
                plan.torch_attn(family),
            )
        }
    }

    /// `workload` with `task` and `attn`, the default optimizer, no checkpointing.
    #[must_use]
    pub fn new(workload: Workload, task: Task, attn: Attn) -> Self {
        Self {
            workload,
            task,
            attn,
            optimizer: Optimizer::default(),
            checkpointing: false,
            device: TorchDevice::Cpu,
        }
    }
}

/// The estimate for one (batch, seq, precision) of a torch trial running `how`, on `threads`
/// CPU threads.
pub fn estimate(
    spec: &ModelSpec,
    batch: usize,
    seq: usize,
    dtype: Precision,
    how: How,
    threads: usize,
) -> Result<TorchBreakdown, NotModelled> {
    let How {
        workload,
        task,
        attn,
        ..
    } = how;
    if how.checkpointing && workload != Workload::Train {
        return Err(NotModelled::Checkpointing);
    }
    if workload == Workload::Train && !task.has_loss() {
        return Err(NotModelled::NoLoss);
    }
    if let (Workload::Train, Task::SequenceClassification, Some(why)) =
        (workload, task, &spec.dims.loss_refuses)
    {
        return Err(NotModelled::Point {
            family: spec.family.name().to_string(),
            why: why.clone(),
        });
    }
    // The weights' type, and autocast's (amp-bf16: f32 weights, bf16 where autocast casts).
    let (dt, autocast) = match dtype {
        Precision::F32 => (TDt::F32, None),
        Precision::F16 => (TDt::F16, None),
        Precision::Bf16 => (TDt::Bf16, None),
        Precision::AmpBf16 => (TDt::F32, Some(TDt::Bf16)),
        Precision::AmpF16 => (TDt::F32, Some(TDt::F16)),
    };
    let room = spec.family.room();
    if room.is_decoder() && task == Task::MaskedLm {
        return Err(NotModelled::NoMaskedLm {
            family: room.name().to_string(),
        });
    }
    if let Some(why) = &spec.dims.torch_refuses {
        return Err(NotModelled::Point {
            family: room.name().to_string(),
            why: why.clone(),
        });
    }
    if attn == Attn::Sdpa && !room.torch_sdpa() {
        return Err(NotModelled::NoSdpa {
            family: room.name().to_string(),
        });
    }
    let not_family = || NotModelled::Family {
        family: room.name().to_string(),
        modelled: modelled_families().join(", "),
    };
    let h = head(task);
    let tensors = room.torch_weights(&spec.dims, h, dt).ok_or_else(|| {
        if room.torch_weights(&spec.dims, Head::Base, dt).is_some()
            || room.torch_weights(&spec.dims, Head::CausalLm, dt).is_some()
        {
            NotModelled::Head {
                family: room.name().to_string(),
                task,
            }
        } else {
            not_family()
        }
    })?;
    let weights = tensors.bytes();
    let point = |why: &str| NotModelled::Point {
        family: room.name().to_string(),
        why: why.to_string(),
    };
    let grouped = spec.dims.kv_heads < spec.dims.heads && room.is_decoder();
    if matches!(how.device, TorchDevice::Cuda(_))
        && attn == Attn::Sdpa
        && grouped
        && dt == TDt::F32
        && autocast.is_none()
    {
        return Err(point(
            "on CUDA, sdpa runs float32 grouped-query attention in its math kernel, which the CUDA arm does not model yet (bf16, f16, amp and eager attention are)",
        ));
    }
    let (sim, cuda) = match how.device {
        TorchDevice::Cpu => (TSim::new(), None),
        TorchDevice::Cuda(arm) => (
            TSim::cuda(
                arm.capacity_bytes
                    .map(|c| c.saturating_sub(arm.context_bytes)),
            ),
            Some(arm),
        ),
    };
    // On CUDA the weights are the pool's first blocks, made as the constructor makes them
    // under `torch.device("cuda")`; the first matmul then takes cuBLAS's workspace. (On the
    // CPU they are the worker's baseline, outside the simulation.)
    let kept = if let Some(arm) = cuda {
        let kept = tensors.make(&sim);
        // The trial's high-water marks start after the build (a tied head made and dropped
        // stays reserved, but is no longer allocated).
        sim.reset_peaks();
        sim.workspace_at_first_matmul(arm.cublas_workspace_bytes);
        kept
    } else {
        Vec::new()
    };
    let pool_weights = sim.pool().map_or(0, |p| p.allocated());
    let input_bytes = 2 * (batch * seq) as u64 * TDt::I64.size();
    // The breakdown once the run is over (a training step's phases with it). On the CPU the
    // simulator's high-water mark is above the weights (the worker's baseline); on CUDA the
    // parts are the pool's: the weights' blocks, the inputs' (two int64 tensors, rounded), the
    // rest of the allocated high-water mark, what the segments hold above it, and the context
    // outside the pool.
    let breakdown = |m: Option<Marks>| {
        let phases = TorchBreakdown {
            optimizer_bytes: m.map(|m| m.forward2 - m.forward1),
            gradient_bytes: m.map(|m| m.optimizer2 - m.forward2),
            saved_activation_bytes: m.map(|m| m.backward2 - m.forward2),
            ..TorchBreakdown::default()
        };
        let (Some(arm), Some(pool)) = (cuda, sim.pool()) else {
            let peak = sim.peak();
            return TorchBreakdown {
                weights_bytes: weights,
                input_bytes,
                activation_bytes: peak - input_bytes,
                total_bytes: weights + peak,
                device: "cpu",
                ..phases
            };
        };
        let inputs = 2 * crate::families::torch_cuda::round_size(input_bytes / 2);
        let workspace = sim.workspace_bytes();
        TorchBreakdown {
            weights_bytes: pool_weights,
            input_bytes: inputs,
            activation_bytes: pool
                .peak_allocated()
                .saturating_sub(pool_weights + inputs + workspace),
            total_bytes: pool.peak_reserved() + arm.context_bytes,
            device: "cuda",
            workspace_bytes: Some(workspace),
            pool_cached_bytes: Some(pool.peak_reserved() - pool.peak_allocated()),
            context_bytes: Some(arm.context_bytes),
            context_measured: Some(arm.context_measured),
            out_of_memory: pool.out_of_memory().is_some(),
            ..phases
        }
    };
    if workload == Workload::Train {
        let m = train_marks(
            room,
            &sim,
            &spec.dims,
            (batch, seq, dt, autocast),
            how,
            h,
            threads,
        )?;
        drop(kept);
        return Ok(breakdown(Some(m)));
    }
    let graph = std::cell::RefCell::new(Vec::new());
    let r = TorchRun {
        sim: &sim,
        d: &spec.dims,
        b: batch,
        s: seq,
        dt,
        threads: threads.max(1),
        eager: attn == Attn::Eager,
        head: h,
        graph: (workload == Workload::Grad).then_some(&graph),
        eval: false,
    };
    let ids = sim.alloc(&[batch, seq], TDt::I64);
    let mask = sim.alloc(&[batch, seq], TDt::I64);
    if let Some(low) = autocast {
        // Under autocast the forward runs on the tape (its casts, cached for the parameters
        // until the context exits), in eval mode (no dropout), returning the head's output;
        // under `no_grad` nothing is saved.
        let dims = crate::families::Dims {
            dropout: crate::families::Dropout::default(),
            ..spec.dims.clone()
        };
        let r = TorchRun {
            d: &dims,
            graph: None,
            eval: true,
            ..r
        };
        let tape = Tape::autocast(low).with_no_grad(workload == Workload::Infer);
        let output = room
            .torch_train_forward(&r, &ids, &ids, &tape)
            .map_err(point)?;
        tape.end_autocast();
        drop((output, tape, ids, mask, kept));
        return Ok(breakdown(None));
    }
    let outputs = room.torch_forward(&r, &ids).map_err(point)?;
    // The trial drops the output, and with it the graph.
    drop(outputs);
    graph.borrow_mut().clear();
    drop((ids, mask, kept));
    Ok(breakdown(None))
}

/// A training step as the torch worker takes it: two steps of forward with labels (the loss
/// kept), backward, `optimizer.step()`, `zero_grad(set_to_none=True)`; the optimizer's state
/// is made in the first and kept. Returns the live bytes where the phases begin (the peak is
/// the simulator's).
fn train_marks(
    room: &dyn crate::families::Room,
    sim: &TSim,
    dims: &crate::families::Dims,
    (batch, seq, dt, autocast): (usize, usize, TDt, Option<TDt>),
    how: How,
    head: Head,
    threads: usize,
) -> Result<Marks, NotModelled> {
    let r = TorchRun {
        sim,
        d: dims,
        b: batch,
        s: seq,
        dt,
        threads: threads.max(1),
        eager: how.attn == Attn::Eager,
        head,
        graph: None,
        eval: false,
    };
    let ids = sim.alloc(&[batch, seq], TDt::I64);
    let mask = sim.alloc(&[batch, seq], TDt::I64);
    // The labels: one class per row, or the ids again for a language model.
    let labels = match head {
        Head::SequenceClassification => sim.alloc(&[batch], TDt::I64),
        _ => sim.alloc(&[batch, seq], TDt::I64),
    };
    let optim = match how.optimizer {
        Optimizer::Adamw => Optim::AdamW,
        Optimizer::Sgd => Optim::Sgd,
    };
    let mut state = Vec::new();
    // amp-f16's `GradScaler`: its scale (f32) and growth tracker (i32), made at the first
    // `scale()` and kept.
    let mut grad_scaler = Vec::new();
    let mut m = Marks::default();
    for step in 1..=2 {
        if step == 1 {
            m.forward1 = sim.live();
        } else {
            m.forward2 = sim.live();
        }
        let tape = autocast
            .map_or_else(Tape::new, Tape::autocast)
            .with_checkpointing(how.checkpointing);
        let loss = room
            .torch_train_forward(&r, &ids, &labels, &tape)
            .map_err(|why| NotModelled::Point {
                family: room.name().to_string(),
                why: why.to_string(),
            })?;
        tape.end_autocast();
        m.backward2 = sim.live();
        let scaled = (autocast == Some(TDt::F16)).then(|| {
            if grad_scaler.is_empty() {
                grad_scaler = vec![sim.alloc(&[], TDt::F32), sim.alloc(&[], TDt::I32)];
            }
            // `scaler.scale(loss)`: `loss * scale`, whose backward makes the loss's gradient.
            let scaled = loss.like();
            tape.node(&scaled, vec![Tape::grad_of(&loss)], &[]);
            scaled
        });
        // On CUDA the backward runs on the autograd engine's device thread, whose cuBLAS
        // handle takes a workspace of its own at its first matmul (taken here, as the
        // backward starts, and kept).
        if let (1, TorchDevice::Cuda(arm)) = (step, how.device) {
            sim.another_workspace(arm.cublas_workspace_bytes);
        }
        let mut grads = tape.backward(sim, scaled.as_ref().unwrap_or(&loss));
        room.torch_parameter_order(dims, head, &mut grads);
        drop((loss, scaled));
        m.optimizer2 = sim.live();
        let params: Vec<_> = grads.iter().map(|g| (g.dims.clone(), g.dt)).collect();
        // `scaler.step(optimizer)`: the gradients unscaled in place; the step runs while the
        // found-inf flag (an f32 scalar) is held.
        let found_inf = (!grad_scaler.is_empty()).then(|| sim.alloc(&[], TDt::F32));
        state = optimizer_step(sim, optim, &params, state);
        drop(found_inf);
        drop(grads);
    }
    drop((ids, mask, labels, state, grad_scaler));
    Ok(m)
}

/// The largest batch in `1..=limit` whose estimated total fits `capacity_bytes` (`oomlab
/// estimate`'s `max_batch`, explain's batches, the forecast); None when the point is not
/// modelled.
#[must_use]
pub fn max_batch(
    spec: &ModelSpec,
    seq: usize,
    dtype: Precision,
    how: How,
    threads: usize,
    capacity_bytes: u64,
    limit: usize,
) -> Option<Option<usize>> {
    // On CUDA a batch fits when the allocator, limited to the capacity less the context,
    // never runs out (it releases its cached segments first, as PyTorch's does).
    let how = match how.device {
        TorchDevice::Cuda(arm) => How {
            device: TorchDevice::Cuda(CudaArm {
                capacity_bytes: Some(capacity_bytes),
                ..arm
            }),
            ..how
        },
        TorchDevice::Cpu => how,
    };
    let at = |b: usize| estimate(spec, b, seq, dtype, how, threads);
    at(1).ok()?;
    Some(super::last_fitting(limit, |b| {
        at(b).is_ok_and(|e| e.total_bytes <= capacity_bytes && !e.out_of_memory)
    }))
}

/// The largest batch in `1..=limit` whose estimate fits `capacity_bytes` on top of a worker's
/// measured baseline (what `auto` starts from on the CPU); None when the point is not modelled.
#[allow(clippy::too_many_arguments)]
#[must_use]
pub fn max_batch_over_baseline(
    spec: &ModelSpec,
    seq: usize,
    dtype: Precision,
    how: How,
    threads: usize,
    baseline_bytes: u64,
    capacity_bytes: u64,
    limit: usize,
) -> Option<Option<usize>> {
    let at = |b: usize| estimate(spec, b, seq, dtype, how, threads);
    let weights = at(1).ok()?.weights_bytes;
    Some(super::last_fitting(limit, |b| {
        at(b).is_ok_and(|e| baseline_bytes + (e.total_bytes - weights) <= capacity_bytes)
    }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::{ModelRef, ModelSpec};

    fn spec(name: &str) -> ModelSpec {
        ModelSpec::resolve(&ModelRef::Catalog(name.into())).unwrap()
    }

    fn at(
        name: &str,
        b: usize,
        dtype: Precision,
        workload: Workload,
        task: Task,
        attn: Attn,
    ) -> Result<TorchBreakdown, NotModelled> {
        estimate(&spec(name), b, 64, dtype, How::new(workload, task, attn), 2)
    }

    #[test]
    fn what_is_not_modelled_says_so_and_how_to_measure_it() {
        let cases = [
            at(
                "tiny-mixtral",
                1,
                Precision::F32,
                Workload::Train,
                Task::CausalLm,
                Attn::Sdpa,
            ),
            at(
                "tiny-qwen3-moe",
                1,
                Precision::F32,
                Workload::Infer,
                Task::CausalLm,
                Attn::Sdpa,
            ),
            at(
                "tiny-modernbert",
                1,
                Precision::Bf16,
                Workload::Grad,
                Task::CausalLm,
                Attn::Eager,
            ),
        ];
        for c in cases {
            let e = c.unwrap_err().to_string();
            assert!(e.contains("oomlab sweep --runtime torch"), "{e}");
        }
        // A base head has no loss to train: the runtime refuses it too, so no sweep is named.
        let e = at(
            "tiny-llama",
            1,
            Precision::F32,
            Workload::Train,
            Task::Base,
            Attn::Sdpa,
        )
        .unwrap_err();
        assert_eq!(e, NotModelled::NoLoss);
        assert!(
            e.to_string()
                .contains("choose sequence-classification, causal-lm or masked-lm in --task")
        );
        let e = at(
            "tiny-mixtral",
            1,
            Precision::F32,
            Workload::Infer,
            Task::CausalLm,
            Attn::Sdpa,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bert, llama"), "{e}");
        // transformers refuses sdpa for Gemma 2 (its soft-capping): so does the estimator,
        // naming eager.
        for workload in [Workload::Infer, Workload::Train] {
            let e = at(
                "tiny-gemma2",
                1,
                Precision::F32,
                workload,
                Task::CausalLm,
                Attn::Sdpa,
            )
            .unwrap_err()
            .to_string();
            assert!(e.contains("choose --attn eager"), "{e}");
            assert!(
                at(
                    "tiny-gemma2",
                    1,
                    Precision::F32,
                    workload,
                    Task::CausalLm,
                    Attn::Eager
                )
                .is_ok()
            );
        }
        // A decoder has no masked-LM head in transformers (the runtime cannot load one): the
        // refusal says so and names the heads it has, not a sweep that would fail.
        for (model, workload, dtype) in [
            ("tiny-qwen2", Workload::Grad, Precision::F32),
            ("tiny-mistral", Workload::Infer, Precision::AmpBf16),
        ] {
            let e = at(model, 1, dtype, workload, Task::MaskedLm, Attn::Sdpa).unwrap_err();
            assert!(matches!(e, NotModelled::NoMaskedLm { .. }), "{e}");
            let e = e.to_string();
            assert!(
                e.contains("no masked-LM head") && e.contains("choose causal-lm"),
                "{e}"
            );
        }
    }

    /// Phi-3 is modelled as its config allows: a `rope_scaling` (longrope) is refused at every
    /// workload (as is Qwen2's `use_sliding_window`), dropouts above 0 only in training (eval mode has none), each naming the field
    /// and the sweep; the decoders' classification head is modelled for every decoder family.
    /// An activation transformers writes in several ops (`gelu_new`) is refused naming the
    /// field and its value, for every family that reads one; the one-op ones are modelled
    /// (`ReLU` saving its output, the others their input).
    #[test]
    fn activations_computed_in_several_ops_are_refused_naming_the_field() {
        let how = |task| How::new(Workload::Train, task, Attn::Sdpa);
        for (name, field, task) in [
            ("tiny-bert", "hidden_act", Task::MaskedLm),
            ("tiny-roberta", "hidden_act", Task::SequenceClassification),
            ("tiny-distilbert", "activation", Task::MaskedLm),
            ("tiny-llama", "hidden_act", Task::CausalLm),
            ("tiny-qwen3", "hidden_act", Task::CausalLm),
            ("tiny-gemma3", "hidden_activation", Task::CausalLm),
        ] {
            let mut spec = spec(name);
            let mut v: serde_json::Value = serde_json::from_str(&spec.config_json).unwrap();
            for (act, saves_output) in [
                ("relu", Some(true)),
                ("gelu", Some(false)),
                ("silu", Some(false)),
                ("gelu_new", None),
                ("quick_gelu", None),
            ] {
                v[field] = act.into();
                spec.dims = crate::families::Dims::from_config(spec.family, &v).unwrap();
                let e = estimate(&spec, 1, 8, Precision::F32, how(task), 2);
                if let Some(saves) = saves_output {
                    assert!(e.is_ok(), "{name} {act}: {e:?}");
                    assert_eq!(spec.dims.act_saves_output(), saves, "{name} {act}");
                } else {
                    let e = e.unwrap_err().to_string();
                    assert!(
                        e.contains(&format!("\"{field}\" = \"{act}\"")),
                        "{name}: {e}"
                    );
                }
            }
            v[field] = 3.into();
            assert!(crate::families::Dims::from_config(spec.family, &v).is_err());
        }
    }

    #[test]
    fn phi3_refuses_what_it_does_not_model_and_decoders_classify() {
        let with = |field: &str, value: serde_json::Value| {
            let mut spec = spec("tiny-phi3");
            let mut v: serde_json::Value = serde_json::from_str(&spec.config_json).unwrap();
            v[field] = value;
            spec.dims = crate::families::Dims::from_config(spec.family, &v).unwrap();
            spec
        };
        let how = |workload| How::new(workload, Task::CausalLm, Attn::Sdpa);
        let longrope = with(
            "rope_scaling",
            serde_json::json!({"rope_type": "longrope", "short_factor": [1.0], "long_factor": [1.0]}),
        );
        for workload in [Workload::Infer, Workload::Grad, Workload::Train] {
            let e = estimate(&longrope, 1, 16, Precision::F32, how(workload), 2)
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("rope_scaling") && e.contains("oomlab sweep --runtime torch"),
                "{e}"
            );
        }
        // Qwen2's sliding window (transformers windows the layers from max_window_layers on):
        // refused the same way; off, the config is modelled.
        let mut qwen2 = spec("tiny-qwen2");
        let mut v: serde_json::Value = serde_json::from_str(&qwen2.config_json).unwrap();
        v["use_sliding_window"] = true.into();
        v["max_window_layers"] = 1.into();
        qwen2.dims = crate::families::Dims::from_config(qwen2.family, &v).unwrap();
        let e = estimate(&qwen2, 1, 16, Precision::F32, how(Workload::Infer), 2)
            .unwrap_err()
            .to_string();
        assert!(
            e.contains("use_sliding_window") && e.contains("oomlab sweep --runtime torch"),
            "{e}"
        );
        // Windowed from a layer past the last: no layer is.
        v["max_window_layers"] = 28.into();
        qwen2.dims = crate::families::Dims::from_config(qwen2.family, &v).unwrap();
        assert!(estimate(&qwen2, 1, 16, Precision::F32, how(Workload::Infer), 2).is_ok());
        v["use_sliding_window"] = false.into();
        v["max_window_layers"] = 1.into();
        qwen2.dims = crate::families::Dims::from_config(qwen2.family, &v).unwrap();
        assert!(estimate(&qwen2, 1, 16, Precision::F32, how(Workload::Infer), 2).is_ok());
        let dropout = with("resid_pdrop", 0.1.into());
        let e = estimate(&dropout, 1, 16, Precision::F32, how(Workload::Train), 2)
            .unwrap_err()
            .to_string();
        assert!(e.contains("resid_pdrop"), "{e}");
        assert!(estimate(&dropout, 1, 16, Precision::F32, how(Workload::Infer), 2).is_ok());
        assert!(estimate(&dropout, 1, 16, Precision::AmpBf16, how(Workload::Grad), 2).is_ok());
        for name in [
            "tiny-llama",
            "tiny-qwen2",
            "tiny-qwen3",
            "tiny-mistral",
            "tiny-phi3",
        ] {
            for workload in [Workload::Infer, Workload::Grad, Workload::Train] {
                let e = at(
                    name,
                    2,
                    Precision::Bf16,
                    workload,
                    Task::SequenceClassification,
                    Attn::Sdpa,
                );
                assert!(e.is_ok(), "{name} {workload:?}: {e:?}");
            }
        }
    }

    /// Gradient checkpointing belongs to training: with any other workload it is refused, and
    /// the refusal names the training sweep that measures it.
    #[test]
    fn checkpointing_outside_training_is_refused_with_the_sweep_to_run() {
        for workload in [Workload::Infer, Workload::Grad] {
            let how = How {
                checkpointing: true,
                ..How::new(workload, Task::Base, Attn::Sdpa)
            };
            let e = estimate(&spec("bert-mini"), 1, 64, Precision::F32, how, 2).unwrap_err();
            assert_eq!(e, NotModelled::Checkpointing);
            assert!(
                e.to_string()
                    .contains("--workload train --gradient-checkpointing on"),
                "{e}"
            );
        }
    }

    /// A training step's parts: the gradients are the parameters (weights less the two int64
    /// buffers), `AdamW` keeps two tensors like them and a float32 step per parameter where SGD
    /// keeps one, and the saved activations grow with the batch while the others do not.
    #[test]
    fn a_training_step_is_split_into_state_gradients_and_saved_activations() {
        let step = |b: usize, optimizer: Optimizer| {
            estimate(
                &spec("bert-mini"),
                b,
                64,
                Precision::F32,
                How {
                    optimizer,
                    ..How::new(Workload::Train, Task::SequenceClassification, Attn::Sdpa)
                },
                2,
            )
            .unwrap()
        };
        let (adamw, sgd, adamw4) = (
            step(2, Optimizer::Adamw),
            step(2, Optimizer::Sgd),
            step(4, Optimizer::Adamw),
        );
        let d = spec("bert-mini").dims;
        let params = adamw.weights_bytes - 2 * d.max_positions as u64 * 8;
        assert_eq!(adamw.gradient_bytes, Some(params));
        assert_eq!(sgd.optimizer_bytes, Some(params));
        let tensors = 5 + 16 * d.layers as u64 + 2 + 2;
        assert_eq!(adamw.optimizer_bytes, Some(2 * params + 4 * tensors));
        let (s2, s4) = (
            adamw.saved_activation_bytes.unwrap(),
            adamw4.saved_activation_bytes.unwrap(),
        );
        assert!(s4 > s2 && s4 - s2 > s2 / 2, "{s2} {s4}");
        assert_eq!(adamw4.optimizer_bytes, adamw.optimizer_bytes);
    }

    /// Korthikanti et al.'s activation memory per transformer layer, `s·b·h·(34 + 5·a·s/h)`
    /// bytes for f16 training with dropout, against this model's saved activations per layer
    /// for BERT-base trained in f16 on the CPU (one layer more, less one layer fewer). They
    /// differ by design, and the test prints by how much rather than asserting equality:
    /// - the formula assumes Megatron's kernels: one-byte dropout masks, the softmax output
    ///   and the dropout output in f16 (5 bytes per attention score);
    /// - PyTorch's CPU math attention (sdpa with dropout) works in f32 in reduced precision:
    ///   the softmax output, the dropout mask and the dropped scores are saved in f32 (12 bytes
    ///   per score), with f32 copies of q, k and v for its products;
    /// - dropout masks elsewhere are in the input's type (2 bytes, not 1), and `LayerNorm` keeps
    ///   its input with its statistics.
    ///
    /// What it asserts: both grow linearly in the batch, and the quadratic term (per score)
    /// is the f32 kernel's 12 bytes against the formula's 5.
    #[test]
    fn per_layer_saved_activations_against_korthikanti() {
        let saved = |layers: usize, b: usize, s: usize| {
            let mut spec = spec("bert-base-uncased");
            spec.dims.layers = layers;
            let how = How::new(Workload::Train, Task::SequenceClassification, Attn::Sdpa);
            estimate(&spec, b, s, Precision::F16, how, 2)
                .unwrap()
                .saved_activation_bytes
                .unwrap()
        };
        let per_layer = |b: usize, s: usize| saved(2, b, s) - saved(1, b, s);
        let dims = spec("bert-base-uncased").dims;
        let (hidden, heads) = (dims.hidden as f64, dims.heads as f64);
        let formula = |b: usize, s: usize| {
            let (b, s) = (b as f64, s as f64);
            s * b * hidden * (34.0 + 5.0 * heads * s / hidden)
        };
        for (b, s) in [(1, 128), (4, 512)] {
            let ours = per_layer(b, s) as f64;
            let theirs = formula(b, s);
            println!(
                "BERT-base f16 training, b{b} s{s}: {ours:.0} bytes per layer saved, Korthikanti {theirs:.0} ({:+.1}%)",
                (ours - theirs) / theirs * 100.0
            );
        }
        // Linear in the batch.
        assert_eq!(per_layer(4, 128), 4 * per_layer(1, 128));
        // The score term: per layer, per score (b·a·s²), from two seqs at the same tokens the
        // linear term cancels: bytes(s) − 2·bytes(s/2) at batch b and 2b.
        let quad = per_layer(1, 256) - 2 * per_layer(1, 128);
        let scores = dims.heads as u64 * (256 * 256 - 2 * 128 * 128);
        assert_eq!(quad, 12 * scores, "12 bytes per attention score");
        // On CUDA the flash kernel takes the dropout itself and keeps no scores: nothing per
        // score; the dropout masks are bool (1 byte) and `LayerNorm`'s statistics f32.
        let on_cuda = |layers: usize, b: usize, s: usize| {
            let mut spec = spec("bert-base-uncased");
            spec.dims.layers = layers;
            let how = How {
                device: TorchDevice::Cuda(CudaArm::assumed((8, 0))),
                ..How::new(Workload::Train, Task::SequenceClassification, Attn::Sdpa)
            };
            estimate(&spec, b, s, Precision::F16, how, 2)
                .unwrap()
                .saved_activation_bytes
                .unwrap()
        };
        let cuda_layer = |b: usize, s: usize| on_cuda(2, b, s) - on_cuda(1, b, s);
        for (b, s) in [(1, 128), (4, 512)] {
            let ours = cuda_layer(b, s) as f64;
            let theirs = formula(b, s);
            let linear = s as f64 * b as f64 * hidden * 34.0;
            println!(
                "BERT-base f16 training on CUDA, b{b} s{s}: {ours:.0} bytes per layer saved, Korthikanti {theirs:.0} ({:+.1}%), its linear term alone {linear:.0} ({:+.1}%)",
                (ours - theirs) / theirs * 100.0,
                (ours - linear) / linear * 100.0
            );
        }
        // Linear in the tokens but for the flash kernel's RNG state (16 bytes) and empty
        // scalar (8), per layer.
        assert_eq!(2 * cuda_layer(1, 128) - cuda_layer(1, 256), 16 + 8);
    }

    fn cuda(context: u64) -> TorchDevice {
        TorchDevice::Cuda(CudaArm {
            context_bytes: context,
            ..CudaArm::assumed((8, 0))
        })
    }

    /// The CUDA arm's total is the caching allocator's reserved high-water mark (whole
    /// segments, multiples of 2 MiB) plus the context; its parts add up to it; the weights are
    /// the pool's blocks, each tensor rounded up to 512 bytes.
    #[test]
    fn the_cuda_arm_is_the_pools_reserved_mark_and_the_context() {
        use crate::families::torch_cuda::round_size;
        let mini = spec("bert-mini");
        for (workload, dtype) in [
            (Workload::Infer, Precision::F32),
            (Workload::Grad, Precision::Bf16),
            (Workload::Train, Precision::AmpBf16),
        ] {
            let task = Task::default_for(workload, false);
            let at = |context: u64| {
                let how = How {
                    device: cuda(context),
                    ..How::new(workload, task, Attn::Sdpa)
                };
                estimate(&mini, 4, 64, dtype, how, 2).unwrap()
            };
            let e = at(300 << 20);
            assert_eq!(e.device, "cuda");
            let (workspace, cached) = (e.workspace_bytes.unwrap(), e.pool_cached_bytes.unwrap());
            assert_eq!(
                e.weights_bytes
                    + e.input_bytes
                    + e.activation_bytes
                    + workspace
                    + cached
                    + (300 << 20),
                e.total_bytes,
                "{workload:?}"
            );
            assert_eq!((e.total_bytes - (300 << 20)) % (2 << 20), 0, "{workload:?}");
            assert_eq!(at(301 << 20).total_bytes, e.total_bytes + (1 << 20));
            let dt = match dtype {
                Precision::Bf16 => TDt::Bf16,
                _ => TDt::F32,
            };
            let head = if workload == Workload::Train {
                Head::SequenceClassification
            } else {
                Head::Base
            };
            let kept = mini
                .family
                .room()
                .torch_weights(&mini.dims, head, dt)
                .unwrap();
            // Each kept tensor rounded; a large one whose segment leaves 1 MiB or less over
            // takes the whole segment.
            let kept: Vec<u64> = kept.tensors.iter().filter(|t| t.1).map(|t| t.0).collect();
            let rounded: u64 = kept.iter().map(|&t| round_size(t)).sum();
            let large = kept.iter().filter(|&&t| t > 1 << 20).count() as u64;
            assert!(
                e.weights_bytes >= rounded && e.weights_bytes - rounded <= large << 20,
                "{workload:?}: {} {rounded}",
                e.weights_bytes
            );
            assert_eq!(e.input_bytes, 2 * round_size(4 * 64 * 8));
        }
    }

    /// On CUDA `AdamW` is foreach: its state is `exp_avg` and `exp_avg_sq` per parameter (the
    /// `step` counters are CPU scalars), where the CPU's loop keeps a float32 step each too.
    #[test]
    fn adamw_on_cuda_keeps_its_steps_on_the_cpu() {
        let step = |device: TorchDevice| {
            let how = How {
                device,
                ..How::new(Workload::Train, Task::SequenceClassification, Attn::Sdpa)
            };
            estimate(&spec("bert-mini"), 2, 64, Precision::F32, how, 2).unwrap()
        };
        let (gpu, cpu) = (step(cuda(0)), step(TorchDevice::Cpu));
        let params = cpu.gradient_bytes.unwrap();
        assert_eq!(gpu.gradient_bytes, Some(params));
        assert_eq!(gpu.optimizer_bytes, Some(2 * params));
        assert!(cpu.optimizer_bytes.unwrap() > 2 * params);
    }

    /// `max_batch` on CUDA is where the allocator, limited to the capacity less the context,
    /// first runs out: the batch above it does, after releasing its cached segments; run
    /// without a limit, that batch's total is over the capacity.
    #[test]
    fn max_batch_on_cuda_is_where_the_allocator_runs_out() {
        let mini = spec("bert-mini");
        let how = How {
            device: cuda(200 << 20),
            ..How::new(Workload::Train, Task::SequenceClassification, Attn::Sdpa)
        };
        let capacity = 600 << 20;
        let m = max_batch(&mini, 128, Precision::F32, how, 2, capacity, 1 << 12)
            .unwrap()
            .unwrap();
        assert!(m > 1, "{m}");
        let limited = |b: usize| {
            let TorchDevice::Cuda(arm) = how.device else {
                unreachable!()
            };
            let how = How {
                device: TorchDevice::Cuda(CudaArm {
                    capacity_bytes: Some(capacity),
                    ..arm
                }),
                ..how
            };
            estimate(&mini, b, 128, Precision::F32, how, 2).unwrap()
        };
        assert!(!limited(m).out_of_memory);
        assert!(limited(m + 1).out_of_memory);
        let free = estimate(&mini, m + 1, 128, Precision::F32, how, 2).unwrap();
        assert!(free.total_bytes > capacity, "{}", free.total_bytes);
    }

    /// CUDA's sdpa runs f32 grouped-query attention in its math kernel, not modelled: refused,
    /// naming what is; bf16 on the same model is estimated.
    #[test]
    fn the_cuda_arm_refuses_f32_grouped_query_sdpa() {
        let how = How {
            device: cuda(0),
            ..How::new(Workload::Infer, Task::CausalLm, Attn::Sdpa)
        };
        let e = estimate(&spec("TinyLlama-1.1B"), 1, 64, Precision::F32, how, 2).unwrap_err();
        assert!(e.to_string().contains("math kernel"), "{e}");
        assert!(estimate(&spec("TinyLlama-1.1B"), 1, 64, Precision::Bf16, how, 2).is_ok());
    }

    /// The parts add up, the inputs are the two int64 tensors, and the activations grow with
    /// the batch while the weights do not.
    #[test]
    fn a_breakdown_adds_up_and_grows_with_the_batch() {
        for (name, task) in [("bert-mini", Task::Base), ("SmolLM2-135M", Task::CausalLm)] {
            let one = at(name, 1, Precision::F32, Workload::Infer, task, Attn::Sdpa).unwrap();
            let four = at(name, 4, Precision::F32, Workload::Infer, task, Attn::Sdpa).unwrap();
            for e in [one, four] {
                assert_eq!(
                    e.weights_bytes + e.input_bytes + e.activation_bytes,
                    e.total_bytes
                );
            }
            assert_eq!(one.input_bytes, 2 * 64 * 8);
            assert_eq!(four.weights_bytes, one.weights_bytes);
            assert!(four.activation_bytes > 3 * one.activation_bytes, "{name}");
        }
    }
}
