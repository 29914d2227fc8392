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
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
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
        "the PyTorch estimator does not model {0} yet (f32, f16 and bf16 are, and amp-bf16 and amp-f16 for training); measure it with `oomlab sweep --runtime torch`"
    )]
    Precision(Precision),
    #[error(
        "the PyTorch estimator does not model the {task} head of {family} yet; measure it with `oomlab sweep --runtime torch`"
    )]
    Head { family: String, task: Task },
    #[error("{family}: {why}; measure it with `oomlab sweep --runtime torch`")]
    Point { family: String, why: &'static str },
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
}

impl How {
    /// What a sweep plan's torch curve runs (its checkpointing is the curve's).
    #[must_use]
    pub fn of_curve(plan: &crate::plan::SweepPlan, decoder: bool, checkpointing: bool) -> Self {
        Self {
            optimizer: plan.torch.optimizer,
            checkpointing,
            ..Self::new(plan.workload, plan.torch_task(decoder), plan.torch.attn)
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
    // The weights' type, and autocast's (amp-bf16: f32 weights, bf16 where autocast casts;
    // modelled for training, where the torch runtime's users run it).
    let (dt, autocast) = match dtype {
        Precision::F32 => (TDt::F32, None),
        Precision::F16 => (TDt::F16, None),
        Precision::Bf16 => (TDt::Bf16, None),
        Precision::AmpBf16 if workload == Workload::Train => (TDt::F32, Some(TDt::Bf16)),
        Precision::AmpF16 if workload == Workload::Train => (TDt::F32, Some(TDt::F16)),
        other => return Err(NotModelled::Precision(other)),
    };
    let room = spec.family.room();
    let not_family = || NotModelled::Family {
        family: room.name().to_string(),
        modelled: modelled_families().join(", "),
    };
    let h = head(task);
    let weights = room.torch_weights(&spec.dims, h, dt).ok_or_else(|| {
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
    let sim = TSim::new();
    if workload == Workload::Train {
        let (peak, m) = train_peak(
            room,
            &sim,
            &spec.dims,
            (batch, seq, dt, autocast),
            how,
            h,
            threads,
        )?;
        let input_bytes = 2 * (batch * seq) as u64 * TDt::I64.size();
        return Ok(TorchBreakdown {
            weights_bytes: weights,
            input_bytes,
            activation_bytes: peak - input_bytes,
            total_bytes: weights + peak,
            optimizer_bytes: Some(m.forward2 - m.forward1),
            gradient_bytes: Some(m.optimizer2 - m.forward2),
            saved_activation_bytes: Some(m.backward2 - m.forward2),
        });
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
    };
    let ids = sim.alloc(&[batch, seq], TDt::I64);
    let mask = sim.alloc(&[batch, seq], TDt::I64);
    let input_bytes = sim.live();
    let outputs = room
        .torch_forward(&r, &ids)
        .map_err(|why| NotModelled::Point {
            family: room.name().to_string(),
            why,
        })?;
    // The trial drops the output, and with it the graph.
    drop(outputs);
    graph.borrow_mut().clear();
    drop((ids, mask));
    let peak = sim.peak();
    Ok(TorchBreakdown {
        weights_bytes: weights,
        input_bytes,
        activation_bytes: peak - input_bytes,
        total_bytes: weights + peak,
        optimizer_bytes: None,
        gradient_bytes: None,
        saved_activation_bytes: None,
    })
}

/// A training step as the torch worker takes it: two steps of forward with labels (the loss
/// kept), backward, `optimizer.step()`, `zero_grad(set_to_none=True)`; the optimizer's state
/// is made in the first and kept. Returns the peak above the weights, inputs and labels
/// included, and the live bytes where the phases begin.
fn train_peak(
    room: &dyn crate::families::Room,
    sim: &TSim,
    dims: &crate::families::Dims,
    (batch, seq, dt, autocast): (usize, usize, TDt, Option<TDt>),
    how: How,
    head: Head,
    threads: usize,
) -> Result<(u64, Marks), NotModelled> {
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
                why,
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
        let grads = tape.backward(sim, scaled.as_ref().unwrap_or(&loss));
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
    Ok((sim.peak(), m))
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
    let at = |b: usize| estimate(spec, b, seq, dtype, how, threads);
    at(1).ok()?;
    Some(super::last_fitting(limit, |b| {
        at(b).is_ok_and(|e| e.total_bytes <= capacity_bytes)
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
                "tiny-gemma2",
                1,
                Precision::F32,
                Workload::Train,
                Task::CausalLm,
                Attn::Sdpa,
            ),
            at(
                "tiny-llama",
                1,
                Precision::AmpF16,
                Workload::Infer,
                Task::CausalLm,
                Attn::Sdpa,
            ),
            at(
                "tiny-llama",
                1,
                Precision::F32,
                Workload::Train,
                Task::Base,
                Attn::Sdpa,
            ),
            at(
                "bert-tiny",
                1,
                Precision::AmpBf16,
                Workload::Infer,
                Task::Base,
                Attn::Sdpa,
            ),
            at(
                "tiny-gemma2",
                1,
                Precision::F32,
                Workload::Infer,
                Task::CausalLm,
                Attn::Sdpa,
            ),
            at(
                "bert-tiny",
                1,
                Precision::F32,
                Workload::Infer,
                Task::MaskedLm,
                Attn::Sdpa,
            ),
            at(
                "tiny-roberta",
                1,
                Precision::F32,
                Workload::Infer,
                Task::SequenceClassification,
                Attn::Sdpa,
            ),
        ];
        for c in cases {
            let e = c.unwrap_err().to_string();
            assert!(e.contains("oomlab sweep --runtime torch"), "{e}");
        }
        let e = at(
            "tiny-gemma2",
            1,
            Precision::F32,
            Workload::Infer,
            Task::CausalLm,
            Attn::Sdpa,
        )
        .unwrap_err()
        .to_string();
        assert!(e.contains("bert, llama"), "{e}");
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
