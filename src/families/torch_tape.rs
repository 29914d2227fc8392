//! Autograd's backward over the liveness simulator, for the PyTorch estimator's training step:
//! a family's train-mode forward records a node per op as PyTorch's autograd does (what it
//! saves, and what its backward allocates for each input), and `Tape::backward` runs them the way
//! the CPU engine does:
//! - nodes in reverse creation order (the ready queue orders by sequence number, and every node
//!   is ready by the time its turn comes);
//! - a node allocates its outputs while its incoming gradient and saved tensors are live, then
//!   frees the incoming gradient and releases what it saved;
//! - a gradient reaching a tensor that already has one is added in place when either side is
//!   referenced once (autograd's `InputBuffer::accumulate`), else into a new tensor;
//! - a parameter's gradient is the tensor its node allocated (`AccumulateGrad` steals it) and
//!   stays until the optimizer's `zero_grad(set_to_none=True)`.

// The attention follows PyTorch's names (q, k, v; b, s, h, d for batch, seq, hidden, head dim).
#![allow(clippy::many_single_char_names)]

use super::torch_sim::{Pt, TDt, TSim, TorchRun};
use std::cell::RefCell;
use std::collections::HashMap;

/// What a node's backward produces for one of its inputs, in the order it allocates them.
#[derive(Debug, Clone)]
pub enum Edge {
    /// A new gradient for the tensor whose grad id is given, of `dims` and `dt`.
    New(usize, Vec<usize>, TDt),
    /// The incoming gradient itself, passed on (add, views, `contiguous`).
    Pass(usize),
    /// A copy of the incoming gradient (a reshape of a strided gradient).
    Copy(usize),
    /// A parameter's gradient, kept until the optimizer step.
    Param(Vec<usize>, TDt),
    /// The same, for a parameter the model registers after the next node's (autocast casts a
    /// linear's bias before its weight; the module registers the weight first, and the
    /// optimizer walks the registration).
    ParamAfterNext(Vec<usize>, TDt),
    /// A buffer the backward holds while it runs, of so many bytes.
    Temp(u64),
    /// A new gradient that is a view of the tensor its function made (a reshape back to the
    /// input's dims): the engine never adds into it in place.
    NewView(usize, Vec<usize>, TDt),
    /// A buffer held from its allocation to the node's end, of so many bytes.
    Work(u64),
    /// A gradient for a parameter that already has one (tied embeddings): made, then, once the
    /// node is done, added to the existing gradient. The flag says the existing one is a tensor
    /// of its own (the f32 gradient autocast's cast hands back), which takes the sum in place;
    /// else it is a view of its product, and the sum is a new tensor that replaces both.
    ParamAdd(Vec<usize>, TDt, bool),
    /// A gradient the engine reduces to a broadcast input's shape (`sum_to`, a bias) after the
    /// node's function returns: after a recomputed node has let go of its saved tensors.
    Reduced(Box<Edge>),
    /// A split's backward (`chunk`, `unbind`): the node runs once every part's gradient is in,
    /// this node's and its partners' (whose grad ids are the second field), and concatenates
    /// (stacks) them into a new gradient for the split tensor (the first), of `dims` and `dt`;
    /// the parts' go when the node ends.
    Join(usize, Vec<usize>, Vec<usize>, TDt),
}

struct Node {
    out: usize,
    edges: Vec<Edge>,
    saved: Vec<Pt>,
    /// Its saved tensors came from a checkpoint's recomputation: the node holds them only
    /// while its function runs.
    recomputed: bool,
    /// It saves tensors: in a checkpointed region, the first such node to run has the region
    /// recomputed (the checkpoint's unpack hook).
    saves: bool,
}

/// How nodes are recorded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
enum Mode {
    #[default]
    Record,
    /// Inside a checkpointed region's forward: nodes without their saved tensors (the
    /// checkpoint's saved-tensor hooks keep none).
    Discard,
    /// A checkpointed region recomputed in the backward: the nodes' saved tensors are collected
    /// for the region's recorded nodes, in order.
    Recompute,
}

/// A recomputation, given the tape to record on.
pub type Recompute<'a> = Box<dyn Fn(&Tape<'a>) -> Pt + 'a>;

/// A checkpointed region: its nodes, and what recomputes them (holding the region's input) with
/// the RNG state it restores, until the region's backward has run.
struct Region<'a> {
    start: usize,
    end: usize,
    /// Its nodes that save tensors: the recomputation stops once the last has saved.
    saving: usize,
    recompute: Option<(Recompute<'a>, Pt)>,
    recomputed: bool,
}

/// The recorded graph of one forward with autograd on.
#[derive(Default)]
pub struct Tape<'a> {
    nodes: RefCell<Vec<Node>>,
    mode: std::cell::Cell<Mode>,
    recomputed: RefCell<Vec<Vec<Pt>>>,
    regions: RefCell<Vec<Region<'a>>>,
    /// Tensors that live as long as the graph (a forward's extra outputs a node keeps, such as
    /// `nll_loss`'s total weight), freed when the backward ends.
    held: RefCell<Vec<Pt>>,
    /// Under `torch.autocast`: the low-precision type its lists cast to (the parameters stay
    /// f32), and its cache of parameter casts, kept until the context exits.
    autocast: Option<TDt>,
    cast_cache: RefCell<Vec<Pt>>,
    /// transformers' gradient checkpointing: each layer a checkpointed region.
    checkpointing: bool,
    /// Under `torch.no_grad()`: nothing is recorded (no node saves anything).
    no_grad: bool,
    /// While a region is recomputed: its nodes still to save.
    to_save: std::cell::Cell<usize>,
    /// While a region is recomputed: what its throwaway graph holds beside what the checkpoint
    /// keeps (the wrapped numbers its nodes save).
    recompute_graph: RefCell<Vec<Pt>>,
}

impl<'a> Tape<'a> {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A tape for a forward under `torch.autocast(dtype=low)`.
    #[must_use]
    pub fn autocast(low: TDt) -> Self {
        Self {
            autocast: Some(low),
            ..Self::default()
        }
    }

    /// The same tape under `torch.no_grad()` when `on`.
    #[must_use]
    pub fn with_no_grad(self, on: bool) -> Self {
        Self {
            no_grad: on,
            ..self
        }
    }

    /// The same tape with gradient checkpointing on or off.
    #[must_use]
    pub fn with_checkpointing(self, on: bool) -> Self {
        Self {
            checkpointing: on,
            ..self
        }
    }

    /// Whether the model's layers are checkpointed.
    #[must_use]
    pub fn checkpointing(&self) -> bool {
        self.checkpointing
    }

    /// The autocast context exits: its cache of parameter casts is dropped (a cast a node saved
    /// lives on until that node runs).
    pub fn end_autocast(&self) {
        self.cast_cache.borrow_mut().clear();
    }

    /// A cast of `x` to `dt` with autograd (`ToCopyBackward`: the gradient cast back, a new
    /// tensor in `x`'s type); `x` itself when it has the type.
    #[must_use]
    pub fn cast(&self, x: &Pt, dt: TDt) -> Pt {
        if x.dt == dt {
            return x.clone();
        }
        let y = x.new(&x.dims, dt);
        self.node(&y, vec![Tape::grad_of(x)], &[]);
        y
    }

    /// Autocast's cast of an f32 parameter of `dims` to `low`: its backward allocates the
    /// parameter's f32 gradient; the cast stays in the cache until the context exits.
    /// `registered_after_next`: the model registers this parameter after the next cast's (a
    /// linear's bias, cast before its weight).
    fn cast_param(&self, dims: &[usize], low: TDt, sim: &Pt, registered_after_next: bool) -> Pt {
        let c = sim.new(dims, low);
        let param = if registered_after_next {
            Edge::ParamAfterNext(dims.to_vec(), TDt::F32)
        } else {
            Edge::Param(dims.to_vec(), TDt::F32)
        };
        self.node(&c, vec![param], &[]);
        self.cast_cache.borrow_mut().push(c.clone());
        c
    }

    /// Records the node that made `out`: its backward's edges, and the tensors it saves.
    pub fn node(&self, out: &Pt, edges: Vec<Edge>, saved: &[&Pt]) {
        if self.no_grad {
            return;
        }
        let unpacked = saved.iter().any(|t| !wrapped_number(t));
        let saved = saved.iter().map(|t| (*t).clone()).collect();
        match self.mode.get() {
            Mode::Record => self.nodes.borrow_mut().push(Node {
                out: out.gid(),
                edges,
                saved,
                recomputed: false,
                saves: unpacked,
            }),
            // A wrapped Python number (an 8-byte 0-dim scalar) is saved as it is: autograd
            // passes no wrapped number to the saved-tensor hooks a checkpoint discards through.
            // The recomputation's own lives with the recomputed graph, until the recomputation
            // returns (the checkpoint keeps detached tensors).
            Mode::Discard => self.nodes.borrow_mut().push(Node {
                out: out.gid(),
                edges,
                saved: saved.into_iter().filter(wrapped_number).collect(),
                recomputed: true,
                saves: unpacked,
            }),
            Mode::Recompute => {
                let (numbers, saved): (Vec<Pt>, Vec<Pt>) =
                    saved.into_iter().partition(wrapped_number);
                self.recompute_graph.borrow_mut().extend(numbers);
                self.recomputed.borrow_mut().push(saved);
                if unpacked {
                    self.stop_after_last_save(out);
                }
            }
        }
    }

    /// In a recomputation, a node that saves has just been recorded: when it is the region's
    /// last, the checkpoint's pack hook stops the recomputation there. A node saving only its
    /// inputs is recorded before its kernel runs, so its output is never made.
    fn stop_after_last_save(&self, out: &Pt) {
        let left = self.to_save.get().saturating_sub(1);
        self.to_save.set(left);
        if left > 0 {
            return;
        }
        let inputs_only = self
            .recomputed
            .borrow()
            .last()
            .is_some_and(|saved| saved.iter().all(|t| t.gid() < out.gid()));
        if inputs_only {
            out.unmake();
        }
        out.halt(true);
    }

    /// `torch.utils.checkpoint` (non-reentrant, as transformers enables it) around `f` on
    /// `input`: `f` runs keeping no saved tensors; the input and the CPU RNG state (5056 bytes)
    /// are kept, and the backward, on reaching the region's last node, runs `f` again to
    /// recreate what its nodes save. Returns `f`'s output.
    pub fn checkpoint(&self, input: &Pt, f: Recompute<'a>) -> Pt {
        let rng_state = input.host(&[5056], TDt::Bool);
        let start = self.nodes.borrow().len();
        self.mode.set(Mode::Discard);
        let out = f(self);
        self.mode.set(Mode::Record);
        let end = self.nodes.borrow().len();
        let saving = self.nodes.borrow()[start..]
            .iter()
            .filter(|n| n.saves)
            .count();
        self.regions.borrow_mut().push(Region {
            start,
            end,
            saving,
            recompute: Some((f, rng_state)),
            recomputed: false,
        });
        out
    }

    /// One of the model's layers on `input`: checkpointed when the tape checkpoints layers,
    /// else run as it is.
    pub fn layer(&self, input: &Pt, f: Recompute<'a>) -> Pt {
        if self.checkpointing {
            self.checkpoint(input, f)
        } else {
            f(self)
        }
    }

    /// Before node `at` runs: when it is the first node of its checkpointed region to unpack a
    /// saved tensor, the region is recomputed, and the saved tensors go to the region's nodes
    /// still on the tape (a node that saves nothing, such as a residual add, runs before).
    fn recompute_before(&self, at: usize) {
        if !self.nodes.borrow().get(at).is_some_and(|n| n.saves) {
            return;
        }
        let mut regions = self.regions.borrow_mut();
        let Some(region) = regions
            .iter_mut()
            .find(|r| r.start <= at && at < r.end && !r.recomputed)
        else {
            return;
        };
        region.recomputed = true;
        let start = region.start;
        self.to_save.set(region.saving);
        // Taken out while it runs (it records on this tape), then put back: it holds the
        // region's input until the region's backward is done.
        let Some(taken) = region.recompute.take() else {
            return;
        };
        drop(regions);
        // `fork_rng` keeps the RNG state while the region runs again.
        let forked = taken.1.host(&[5056], TDt::Bool);
        self.mode.set(Mode::Recompute);
        let out = (taken.0)(self);
        self.mode.set(Mode::Record);
        forked.halt(false);
        drop(forked);
        drop(out);
        self.recompute_graph.borrow_mut().clear();
        self.end_autocast();
        if let Some(region) = self
            .regions
            .borrow_mut()
            .iter_mut()
            .find(|r| r.start == start)
        {
            region.recompute = Some(taken);
        }
        let saved = std::mem::take(&mut *self.recomputed.borrow_mut());
        let mut nodes = self.nodes.borrow_mut();
        for (node, saved) in nodes[start..].iter_mut().zip(saved) {
            node.saved.extend(saved);
        }
    }

    /// The region starting at node `start` has run its backward: its input and RNG state go.
    fn release_region(&self, start: usize) {
        let done = {
            let mut regions = self.regions.borrow_mut();
            regions
                .iter_mut()
                .find(|r| r.start == start && r.recomputed)
                .and_then(|r| r.recompute.take())
        };
        drop(done);
    }

    /// An input of an op on autocast's lower-precision list (sdpa, the linears): cast to the
    /// low type under autocast (a node like any cast), else itself.
    #[must_use]
    pub fn lower(&self, x: &Pt) -> Pt {
        match self.autocast {
            Some(low) => self.cast(x, low),
            None => x.clone(),
        }
    }

    /// Whether the forward runs under autocast.
    #[must_use]
    pub fn autocast_on(&self) -> bool {
        self.autocast.is_some()
    }

    /// Whether this forward runs under `torch.no_grad()` (nothing recorded).
    #[must_use]
    pub fn no_grad(&self) -> bool {
        self.no_grad
    }

    /// The word embeddings' gradient edge: the parameter's own, or, when a head is tied to them,
    /// added to the head's, which comes first (a view of its product, or under autocast the f32
    /// tensor the weight's cast hands back, added in place).
    #[must_use]
    pub fn embedding_grad(&self, dims: Vec<usize>, dt: TDt, tied: bool) -> Edge {
        if tied {
            Edge::ParamAdd(dims, dt, self.autocast_on())
        } else {
            Edge::Param(dims, dt)
        }
    }

    /// Keeps `t` until the graph is freed (the end of the backward).
    pub fn hold(&self, t: &Pt) {
        self.held.borrow_mut().push(t.clone());
    }

    /// A new gradient for `t`, like it.
    #[must_use]
    pub fn grad_of(t: &Pt) -> Edge {
        Edge::New(t.gid(), t.dims.clone(), t.dt)
    }

    /// `loss.backward()`: the seed (`ones_like(loss)`) and every node from the last; returns
    /// the parameters' gradients, in the order the forward first used the parameters.
    #[must_use]
    pub fn backward(&self, sim: &TSim, loss: &Pt) -> Vec<Pt> {
        let mut grads: HashMap<usize, Pt> = HashMap::new();
        grads.insert(loss.gid(), loss.like());
        let mut params: Vec<((usize, usize), Pt)> = Vec::new();
        loop {
            let index = self.nodes.borrow().len();
            if index == 0 {
                break;
            }
            self.recompute_before(index - 1);
            let Some(mut node) = self.nodes.borrow_mut().pop() else {
                break;
            };
            let Some(incoming) = grads.remove(&node.out) else {
                self.release_region(index - 1);
                continue;
            };
            let mut outs = Vec::new();
            let mut work = Vec::new();
            let mut added = Vec::new();
            let mut joined = Vec::new();
            let mut run = |edge: &Edge, outs: &mut Vec<(usize, Pt)>| match edge {
                Edge::New(of, dims, dt) => outs.push((*of, sim.alloc(dims, *dt))),
                Edge::NewView(of, dims, dt) => {
                    let mut grad = sim.alloc(dims, *dt);
                    grad.viewed = true;
                    outs.push((*of, grad));
                }
                Edge::Work(bytes) => work.push(sim.scratch(*bytes)),
                Edge::ParamAdd(dims, dt, in_place) => {
                    added.push((sim.alloc(dims, *dt), *in_place));
                    // The parameter is the one whose gradient came first (a tied head's); the
                    // model registers it here (the embedding), earlier in the forward.
                    if let Some(first) = params
                        .iter_mut()
                        .find(|(_, g)| g.dims == *dims && g.dt == *dt)
                    {
                        first.0 = (index, 0);
                    }
                }
                Edge::Pass(of) => outs.push((*of, incoming.clone())),
                Edge::Copy(of) => outs.push((*of, incoming.like())),
                Edge::Param(dims, dt) => params.push(((index, params.len()), sim.alloc(dims, *dt))),
                Edge::ParamAfterNext(dims, dt) => {
                    params.push(((index + 1, params.len()), sim.alloc(dims, *dt)));
                }
                Edge::Temp(bytes) => drop(sim.scratch(*bytes)),
                Edge::Reduced(_) => {}
                Edge::Join(of, partners, dims, dt) => {
                    joined.extend(partners.iter().filter_map(|p| grads.remove(p)));
                    outs.push((*of, sim.alloc(dims, *dt)));
                }
            };
            for edge in &node.edges {
                run(edge, &mut outs);
            }
            if node.recomputed {
                node.saved.clear();
            }
            for edge in &node.edges {
                if let Edge::Reduced(edge) = edge {
                    run(edge, &mut outs);
                }
            }
            drop(work);
            drop(joined);
            drop(incoming);
            drop(node);
            self.release_region(index - 1);
            // A second gradient for a parameter meets the first once the node is done: a view
            // of its product cannot take it in place, so `old + new` is a new tensor, which
            // replaces both.
            for (new, in_place) in added {
                if !in_place {
                    let sum = new.like();
                    drop(sum);
                }
                drop(new);
            }
            for (of, grad) in outs {
                let merged = match grads.remove(&of) {
                    None => grad,
                    Some(old) if old.unique() => old,
                    Some(_) if grad.unique() => grad,
                    Some(old) => {
                        let sum = old.like();
                        drop((old, grad));
                        sum
                    }
                };
                grads.insert(of, merged);
            }
        }
        self.held.borrow_mut().clear();
        self.regions.borrow_mut().clear();
        // The optimizer walks `model.parameters()`: their order in the forward (each node's,
        // then within it).
        params.sort_by_key(|(at, _)| *at);
        params.into_iter().map(|(_, grad)| grad).collect()
    }
}

/// Whether `t` stands for a wrapped Python number (a float an op takes, as `* scaling`): an
/// 8-byte 0-dim scalar.
fn wrapped_number(t: &Pt) -> bool {
    t.dims.is_empty() && t.dt == TDt::I64
}

/// The optimizer the training step runs (the torch runtime's `--optimizer`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Optim {
    /// `torch.optim.AdamW` with its defaults.
    AdamW,
    /// `torch.optim.SGD` with momentum 0.9.
    Sgd,
}

/// `optimizer.step()` on the CPU, where PyTorch's default is the single-tensor loop (foreach
/// is the default only when every parameter is on CUDA). The state is created on the first
/// step and kept: `AdamW`'s `step` (a float32 scalar), `exp_avg` and `exp_avg_sq` (like each parameter), SGD's momentum
/// buffer (a clone of the gradient). `AdamW`'s denominator `(exp_avg_sq.sqrt() / c).add_(eps)`
/// holds two tensors like the parameter while one parameter is updated, beside the previous
/// parameter's; SGD updates in place. `params` are the parameters' dims and type, in
/// `model.parameters()`'s order (the forward's, as [`Tape::backward`] returns them, put in the
/// registration's by `Room::torch_parameter_order`); returns the state.
#[must_use]
pub fn optimizer_step(
    sim: &TSim,
    optim: Optim,
    params: &[(Vec<usize>, TDt)],
    state: Vec<Pt>,
) -> Vec<Pt> {
    if sim.on_cuda() {
        return optimizer_step_foreach(sim, optim, params, state);
    }
    let mut state = state;
    if state.is_empty() {
        for (dims, dt) in params {
            if optim == Optim::AdamW {
                // `state["step"]`: a float32 scalar tensor per parameter.
                state.push(sim.alloc(&[], TDt::F32));
                state.push(sim.alloc(dims, *dt));
            }
            state.push(sim.alloc(dims, *dt));
        }
    }
    if optim == Optim::AdamW {
        // `denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)`: the square root,
        // the division (its divisor wrapped in an 8-byte scalar and cast to the parameter's
        // type while it runs), then the root goes; the previous parameter's `denom` goes only
        // when the name is bound again.
        let mut denom = None;
        for (dims, dt) in params {
            let sqrt = sim.alloc(dims, *dt);
            let wrapped = sim.alloc(&[], TDt::I64);
            let divisor = sim.alloc(&[], *dt);
            let quotient = sim.alloc(dims, *dt);
            drop((divisor, wrapped, sqrt));
            denom = Some(quotient);
        }
        drop(denom);
    }
    state
}

/// `optimizer.step()` when every parameter is on CUDA, where PyTorch's default is foreach
/// (`_multi_tensor_adamw`, `_multi_tensor_sgd`). The state is made on the first step: `AdamW`'s
/// `exp_avg` and `exp_avg_sq` per parameter (its `step` is a CPU scalar), SGD's momentum buffer
/// (a clone of the gradient). `AdamW` updates in place but for `_foreach_sqrt(exp_avg_sqs)`: a
/// tensor like every parameter, all held until the step returns; SGD updates in place.
fn optimizer_step_foreach(
    sim: &TSim,
    optim: Optim,
    params: &[(Vec<usize>, TDt)],
    mut state: Vec<Pt>,
) -> Vec<Pt> {
    if state.is_empty() {
        for (dims, dt) in params {
            state.push(sim.alloc(dims, *dt));
            if optim == Optim::AdamW {
                state.push(sim.alloc(dims, *dt));
            }
        }
    }
    if optim == Optim::AdamW {
        let roots: Vec<_> = params
            .iter()
            .map(|(dims, dt)| sim.alloc(dims, *dt))
            .collect();
        drop(roots);
    }
    state
}

/// `nn.Linear` with autograd: `addmm` over the input viewed as rows, saving the input; its
/// backward allocates the input's gradient, then the weight's and the bias's.
#[must_use]
pub fn linear(tape: &Tape, x: &Pt, out: usize, bias: bool) -> Pt {
    let inp = x.dims[x.dims.len() - 1];
    if let Some(low) = tape.autocast {
        return linear_autocast(tape, x, (inp, out), bias, low);
    }
    let y = x.linear(out);
    let mut edges = vec![Tape::grad_of(x), Edge::Param(vec![out, inp], x.dt)];
    if bias {
        edges.push(Edge::Reduced(Box::new(Edge::Param(vec![out], x.dt))));
    }
    tape.node(&y, edges, &[x]);
    y
}

/// `nn.Linear` under autocast: the bias, the weight and the input cast to `low` (in that
/// order; the parameters' casts cached, the input's made again at each call), then `addmm` in
/// `low`, saving the input's and the weight's casts.
fn linear_autocast(tape: &Tape, x: &Pt, (inp, out): (usize, usize), bias: bool, low: TDt) -> Pt {
    let b = bias.then(|| tape.cast_param(&[out], low, x, true));
    let w = tape.cast_param(&[out, inp], low, x, false);
    let xl = tape.cast(x, low);
    let y = xl.linear(out);
    let mut edges = vec![Tape::grad_of(&xl), Tape::grad_of(&w)];
    if let Some(b) = &b {
        edges.push(Edge::Reduced(Box::new(Tape::grad_of(b))));
    }
    tape.node(&y, edges, &[&xl, &w]);
    y
}

/// `F.dropout` in train mode on the CPU (`p > 0`; `on` false returns the input): the mask is
/// `empty_like(x).bernoulli_()` in the input's type, the output `x * mask`, which saves the
/// mask. On CUDA the fused kernel (`native_dropout`): the output, then a bool mask.
#[must_use]
pub fn dropout(tape: &Tape, x: &Pt, on: bool) -> Pt {
    if !on {
        return x.clone();
    }
    if x.on_cuda() {
        let y = x.like();
        let mask = x.new(&x.dims, TDt::Bool);
        tape.node(&y, vec![Tape::grad_of(x)], &[&mask]);
        return y;
    }
    let mask = x.like();
    let y = x.like();
    tape.node(&y, vec![Tape::grad_of(x)], &[&mask]);
    y
}

/// `nn.LayerNorm` with autograd on the CPU: the output, the mean and reciprocal deviation per
/// row (saved with the input); the backward allocates the input's gradient, the weight's and
/// the bias's, and a per-thread buffer (in the input's type) for the latter two. Under
/// autocast the weights are f32: on the CPU a low-precision input is normalised as it is
/// (PyTorch's mixed-type kernel: output in the input's type, statistics in f32); CUDA's
/// autocast runs `layer_norm` in f32, the input cast first (the cast is what it saves).
#[must_use]
pub fn layer_norm(tape: &Tape, x: &Pt, threads: usize) -> Pt {
    layer_norm_with(tape, x, threads, true)
}

/// [`layer_norm`] with or without its bias (`ModernBERT`'s `norm_bias`): without it, the
/// backward makes no bias gradient.
#[must_use]
pub fn layer_norm_with(tape: &Tape, x: &Pt, threads: usize, bias: bool) -> Pt {
    let wide;
    let x = if tape.autocast_on() && x.dt != TDt::F32 && x.on_cuda() {
        wide = tape.cast(x, TDt::F32);
        &wide
    } else {
        x
    };
    let rows: Vec<usize> = x.dims[..x.dims.len() - 1].to_vec();
    let h = x.dims[x.dims.len() - 1];
    let weight_dt = if tape.autocast_on() { TDt::F32 } else { x.dt };
    let out = x.like();
    let stats = if weight_dt == x.dt {
        super::torch_sim::layer_norm_stats(x)
    } else {
        TDt::F32
    };
    let mean = x.new(&rows, stats);
    let rstd = x.new(&rows, stats);
    let mut edges = vec![Tape::grad_of(x), Edge::Param(vec![h], weight_dt)];
    if bias {
        edges.push(Edge::Param(vec![h], weight_dt));
    }
    // The CPU's per-thread partial sums for the weight's and bias's gradients.
    if !x.on_cuda() {
        edges.push(Edge::Temp((2 * threads * h) as u64 * x.dt.size()));
    }
    tape.node(&out, edges, &[x, &mean, &rstd]);
    out
}

/// An elementwise op whose backward needs one saved tensor (gelu its input, tanh its output):
/// a new tensor like `x`, the backward a new gradient like `x`.
#[must_use]
pub fn unary(tape: &Tape, x: &Pt, saves_output: bool) -> Pt {
    let y = x.like();
    let saved = if saves_output { &y } else { x };
    tape.node(&y, vec![Tape::grad_of(x)], &[saved]);
    y
}

/// `a + b` (b may broadcast): the gradient passes on to `a`, and to `b` as is or reduced to its
/// shape (`sum_to`, a new tensor).
#[must_use]
pub fn add(tape: &Tape, a: &Pt, b: &Pt) -> Pt {
    if a.dt != b.dt {
        return add_promoted(tape, a, b);
    }
    let y = a.like();
    let to_b = if b.dims == a.dims {
        Edge::Pass(b.gid())
    } else {
        Edge::Reduced(Box::new(Tape::grad_of(b)))
    };
    tape.node(&y, vec![Edge::Pass(a.gid()), to_b], &[]);
    y
}

/// `a + b` of the same dims in two types (autocast's low-precision output and an f32
/// residual): the lower one is cast to f32 while the sum is made; the backward casts the
/// gradient back for it (a new tensor) and passes it on to the other.
fn add_promoted(tape: &Tape, a: &Pt, b: &Pt) -> Pt {
    let (low, high) = if a.dt.reduced() { (a, b) } else { (b, a) };
    let y = low.widened(high.dt);
    tape.node(&y, vec![Tape::grad_of(low), Edge::Pass(high.gid())], &[]);
    y
}

/// `F.scaled_dot_product_attention` with dropout on the CPU: PyTorch's math fallback
/// (`_scaled_dot_product_attention_math`), since the CPU flash kernel takes no dropout. On
/// `(b, heads, s, d)` views of the projections (`q`, `k`, `v` are the projections' outputs,
/// `(b, s, heads·d)`, whose gradients come back as copies of the heads-major gradients):
/// - `q·√scale` and `kᵀ·√scale` (new tensors; the latter dropped after the product);
/// - `matmul` copies both for `bmm`, which saves the copies, then the scores;
/// - `_safe_softmax` (saving its output; a bool mask of the scores and one per row while it
///   runs), dropout (mask and output), `matmul` with a copy of v, saving both;
/// - returns the `(b·heads, s, d)` output; `q·√scale` dies at the function's end.
///
/// In bf16 and f16 the kernel works in f32: q, k and v are cast first, and the output and the
/// weights it also returns are cast back; the f32 copies die at the end, then the weights.
#[must_use]
pub fn math_attention(tape: &Tape, (q, k, v): (&Pt, &Pt, &Pt), heads: usize) -> Pt {
    let (b, s, h) = (q.dims[0], q.dims[1], q.dims[2]);
    let d = h / heads;
    let (q4, k4, v4) = (
        heads_major(tape, q, heads, d),
        heads_major(tape, k, heads, d),
        heads_major(tape, v, heads, d),
    );
    let reduced = q.dt.reduced();
    let acc = |t: &Pt| {
        if reduced {
            let c = t.new(&t.dims, TDt::F32);
            tape.node(&c, vec![Tape::grad_of(t)], &[]);
            c
        } else {
            t.clone()
        }
    };
    let (qa, ka, va) = (acc(&q4), acc(&k4), acc(&v4));
    let scaled = |t: &Pt| {
        let y = t.like();
        tape.node(&y, vec![Tape::grad_of(t)], &[]);
        y
    };
    let qs = scaled(&qa);
    // Each is heads-major over its projection's rows (casts and scalings keep the layout).
    let rows = Layout::Rows { row: heads * d };
    let scores = {
        let kts = scaled(&ka);
        let qc = bmm_fold(tape, &qs, &[b * heads, s, d], rows, (b, heads, s, d));
        let kc = bmm_fold(tape, &kts, &[b * heads, d, s], rows, (b, heads, s, d));
        bmm(tape, &qc, &kc, &[b * heads, s, s])
    };
    let probs = {
        let probs = scores.like();
        {
            let sim_bytes = (b * heads * s * s + b * heads * s) as u64 * TDt::Bool.size();
            let _masks = q.new(&[sim_bytes as usize], TDt::Bool);
        }
        tape.node(&probs, vec![Tape::grad_of(&scores)], &[&probs]);
        drop(scores);
        probs
    };
    let dropped = dropout(tape, &probs, true);
    drop(probs);
    // The kernel also returns the attention weights, cast back (the caller drops them).
    let returned = reduced.then(|| dropped.new(&dropped.dims, q.dt));
    let out = {
        let vc = bmm_fold(tape, &va, &[b * heads, s, d], rows, (b, heads, s, d));
        bmm(tape, &dropped, &vc, &[b * heads, s, d])
    };
    let cast = if reduced {
        let o = out.new(&out.dims, q.dt);
        tape.node(&o, vec![Tape::grad_of(&out)], &[]);
        o
    } else {
        out.clone()
    };
    drop((qs, qa, ka, va, out));
    drop(returned);
    cast
}

/// `CrossEntropyLoss` on `(rows, classes)` logits: `log_softmax` (saving its output), then
/// `nll_loss` (a scalar, and its total weight, which lives as long as the graph).
pub fn cross_entropy(tape: &Tape<'_>, logits: &Pt, labels: &Pt) -> Pt {
    // Under autocast the loss runs in f32: the logits are cast first.
    let logits = &tape.cast(
        logits,
        if tape.autocast_on() {
            TDt::F32
        } else {
            logits.dt
        },
    );
    let log_probs = logits.like();
    tape.node(&log_probs, vec![Tape::grad_of(logits)], &[&log_probs]);
    let loss = logits.new(&[], logits.dt);
    let total_weight = logits.new(&[], logits.dt);
    tape.node(&loss, vec![Tape::grad_of(&log_probs)], &[labels]);
    tape.hold(&total_weight);
    loss
}

/// The encoders' masked-LM head with autograd on the last hidden state, as in inference
/// ([`super::torch_sim::masked_lm_head`], `act_saves_output` as there): dense, the activation,
/// `LayerNorm`, the decoder; then `CrossEntropyLoss` over every position in the logits' type
/// (returned), or with `r.eval` the logits. The last hidden state lives until the head's model
/// returns.
pub fn masked_lm(
    r: &TorchRun<'_>,
    tape: &Tape<'_>,
    hidden: Pt,
    labels: &Pt,
    act_saves_output: bool,
) -> Pt {
    let logits = {
        let dense = linear(tape, &hidden, r.d.hidden, true);
        let act = unary(tape, &dense, act_saves_output);
        drop(dense);
        let normed = layer_norm(tape, &act, r.threads);
        drop(act);
        linear(tape, &normed, r.d.vocab, true)
    };
    if r.eval {
        return logits;
    }
    let rows = r.b * r.s;
    let loss = cross_entropy(
        tape,
        &logits.view(&[rows, r.d.vocab]),
        &labels.view(&[rows]),
    );
    drop((logits, hidden));
    loss
}

/// Attention over the projections `q`, `k`, `v` (`(b, s, heads·d)`) in train mode with
/// dropout: the math kernel, its `(b·heads, s, d)` output viewed as `(b, heads, s, d)` (a
/// gradient arriving strided is copied, except at batch 1 where the reshape is a view), then
/// `transpose(1, 2).contiguous()`: the `(b, s, heads·d)` context.
#[must_use]
pub fn attention_context(tape: &Tape<'_>, (q, k, v): (&Pt, &Pt, &Pt), heads: usize) -> Pt {
    let (b, s) = (q.dims[0], q.dims[1]);
    let out = math_attention(tape, (q, k, v), heads);
    heads_merged(tape, &out, (b, heads, s))
}

/// sdpa without dropout (or a mask) on the CPU: the flash kernel on `(b, heads, s, d)` views
/// of the projections `q`, `k`, `v` (`(b, s, heads·d)`); its gradients are made in the
/// projections' own layout, so the views hand them back as they are. The output
/// `(b, s, heads, d)`, viewed back (`transpose(1, 2).reshape`), is the `(b, s, heads·d)` context.
#[must_use]
pub fn flash_context(
    tape: &Tape<'_>,
    (q, k, v): (&Pt, &Pt, &Pt),
    heads: usize,
    threads: usize,
) -> Pt {
    let (b, s, h) = (q.dims[0], q.dims[1], q.dims[2]);
    let d = h / heads;
    let four = |t: &Pt| t.view(&[b, heads, t.dims[1], d]);
    let out = flash_attention(tape, (&four(q), &four(k), &four(v)), None, threads);
    out.view(&[b, s, h])
}

/// `view(b, s, heads, d).transpose(1, 2)` of a projection `t` (`(b, s, heads·d)`): a view
/// whose gradient, arriving heads-major, is copied back to `t`'s layout (with one head the
/// layouts are the same).
#[must_use]
pub fn heads_major(tape: &Tape<'_>, t: &Pt, heads: usize, d: usize) -> Pt {
    let view = t.view_node(&[t.dims[0], heads, t.dims[1], d]);
    // With one head, heads-major is the projection's own layout: the view hands it back.
    let back = if heads == 1 {
        Edge::Pass(t.gid())
    } else {
        Edge::Copy(t.gid())
    };
    tape.node(&view, vec![back], &[]);
    view
}

/// How an operand of the attention's `matmul` lies in memory, which decides whether
/// folding its (b, heads) into `bmm`'s one batch dim (`reshape`) is a view or a copy.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Layout {
    /// Whole and heads-major: the cache's or `repeat_kv`'s copies, Phi-3's concatenations.
    #[default]
    Whole,
    /// One key/value head's expansion to every head (stride 0 over the heads).
    Expanded,
    /// The projection's `(b, s, heads, d)` rows viewed heads-major, each position's row `row`
    /// elements long (longer than its heads where it is a slice of Phi-3's fused projection).
    Rows { row: usize },
}

impl Layout {
    /// Whether `reshape` copies a `(b, heads, s, d)` operand so laid out to fold it: merging the
    /// batch and head dims is a view only where one of them is 1, or for rows where a batch step
    /// is the heads' steps (one position whose heads fill its row).
    #[must_use]
    pub fn fold_copies(self, (b, heads, s, d): (usize, usize, usize, usize)) -> bool {
        if b == 1 || heads == 1 {
            return false;
        }
        match self {
            Layout::Whole => false,
            Layout::Expanded => true,
            Layout::Rows { row } => !(s == 1 && row == heads * d),
        }
    }

    /// The layout of autocast's cast of an operand of `heads` heads of `d`: `to` keeps the
    /// strides of a dense tensor (rows its heads fill) and makes any other whole.
    #[must_use]
    pub fn cast(self, heads: usize, d: usize) -> Layout {
        match self {
            Layout::Rows { row } if row == heads * d => self,
            _ => Layout::Whole,
        }
    }
}

/// `matmul` folding a `(b, heads, s, d)` operand (or its key's transpose) laid out as `layout`
/// into `dims` (`(b·heads, …)`) for `bmm`: a view, or where the layout asks for one
/// ([`Layout::fold_copies`]) a copy ([`bmm_copy`]).
pub fn bmm_fold(
    tape: &Tape<'_>,
    t: &Pt,
    dims: &[usize],
    layout: Layout,
    shape: (usize, usize, usize, usize),
) -> Pt {
    if layout.fold_copies(shape) {
        bmm_copy(tape, t, dims)
    } else {
        t.view(dims)
    }
}

/// `matmul` on a strided operand: `reshape` copies it for `bmm`; the copy's gradient passes
/// back.
pub fn bmm_copy(tape: &Tape<'_>, t: &Pt, dims: &[usize]) -> Pt {
    let c = t.new(dims, t.dt);
    tape.node(&c, vec![Edge::Pass(t.gid())], &[]);
    c
}

/// `bmm(a, b)` into `dims`: saves both; the backward makes b's gradient, then a's.
pub fn bmm(tape: &Tape<'_>, a: &Pt, b: &Pt, dims: &[usize]) -> Pt {
    let y = a.new(dims, a.dt);
    tape.node(&y, vec![Tape::grad_of(b), Tape::grad_of(a)], &[a, b]);
    y
}

/// The attention's `(b·heads, s, d)` output viewed as `(b, heads, s, d)` (a gradient arriving
/// strided is copied, except at batch 1 where the reshape is a view), then
/// `transpose(1, 2).contiguous()`: the `(b, s, heads·d)` context.
pub fn heads_merged(tape: &Tape<'_>, out: &Pt, (b, heads, s): (usize, usize, usize)) -> Pt {
    let d = out.dims[out.dims.len() - 1];
    let out4 = out.view_node(&[b, heads, s, d]);
    let back = if b > 1 {
        Edge::Copy(out.gid())
    } else {
        Edge::Pass(out.gid())
    };
    tape.node(&out4, vec![back], &[]);
    let context = out4.new(&[b, s, heads * d], out.dt);
    tape.node(&context, vec![Edge::Pass(out4.gid())], &[]);
    context
}

/// `nn.Linear` without a bias on a `(…, in)` input: `matmul` folds the rows for `mm`, saving
/// the input; the backward makes the weight's gradient, then the input's, a view of the rows'
/// gradient.
#[must_use]
pub fn linear_mm(tape: &Tape<'_>, x: &Pt, out: usize) -> Pt {
    let inp = x.dims[x.dims.len() - 1];
    if let Some(low) = tape.autocast {
        // Under autocast: the weight cast (cached), then the input (unless already `low`);
        // `mm` saves both casts, and the gradients go back through them.
        let w = tape.cast_param(&[out, inp], low, x, false);
        let xl = tape.cast(x, low);
        let y = xl.linear(out);
        tape.node(
            &y,
            vec![
                Tape::grad_of(&w),
                Edge::NewView(xl.gid(), xl.dims.clone(), low),
            ],
            &[&xl, &w],
        );
        return y;
    }
    let y = x.linear(out);
    tape.node(
        &y,
        vec![
            Edge::Param(vec![out, inp], x.dt),
            Edge::NewView(x.gid(), x.dims.clone(), x.dt),
        ],
        &[x],
    );
    y
}

/// `a * b` of the same dims, both needing gradients (the gated MLP's product): saves both; the
/// backward makes a gradient for each.
#[must_use]
pub fn mul(tape: &Tape<'_>, a: &Pt, b: &Pt) -> Pt {
    let y = a.like();
    tape.node(&y, vec![Tape::grad_of(a), Tape::grad_of(b)], &[a, b]);
    y
}

/// How a decoder's RMS norm holds its pieces: Llama's keeps the variance in a local to the
/// norm's end; Gemma's `_norm` is one expression (the mean and its shift go at once), and its
/// Python numbers (the mean's count, eps) are wrapped scalars cast to f32 while their ops run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RmsStyle {
    Llama,
    Gemma,
}

/// An RMS norm up to the scaled f32 input, with autograd: `x.float()` (a cast unless f32),
/// `pow(2)` (saving its input), `mean`, `+ eps`, `rsqrt` (saving its output), the scaling
/// multiply (saving both). Returns the scaled input and, in Llama's style, the variance, which
/// the caller holds to the norm's end.
pub fn rms_scaled(tape: &Tape<'_>, x: &Pt, style: RmsStyle) -> (Pt, Option<Pt>) {
    let gemma = style == RmsStyle::Gemma;
    let mut rows = x.dims.clone();
    *rows.last_mut().unwrap_or(&mut 0) = 1;
    let full = |t: &Pt| t.elems() as u64 * t.dt.size();
    let number = |t: &Pt| (t.wrapped_number(TDt::I64), t.wrapped_number(TDt::F32));
    let x32 = tape.cast(x, TDt::F32);
    let variance = {
        let squared = x32.like();
        tape.node(
            &squared,
            vec![
                Edge::Work(full(&x32)),
                Edge::Work(full(&x32)),
                Tape::grad_of(&x32),
            ],
            &[&x32],
        );
        let mean = x32.new(&rows, TDt::F32);
        tape.node(&mean, vec![Tape::grad_of(&squared)], &[]);
        if gemma {
            drop(number(&mean));
        }
        mean
    };
    let (inv, variance) = {
        let shifted = {
            let _eps = gemma.then(|| number(&variance));
            let shifted = variance.like();
            tape.node(&shifted, vec![Edge::Pass(variance.gid())], &[]);
            shifted
        };
        let variance = (!gemma).then_some(variance);
        let inv = shifted.like();
        let row_bytes = full(&shifted);
        tape.node(
            &inv,
            vec![
                Edge::Work(row_bytes),
                Edge::Work(row_bytes),
                Tape::grad_of(&shifted),
            ],
            &[&inv],
        );
        (inv, variance)
    };
    let scaled = x32.like();
    tape.node(
        &scaled,
        vec![
            Tape::grad_of(&x32),
            Edge::Work(full(&x32)),
            Edge::Reduced(Box::new(Tape::grad_of(&inv))),
        ],
        &[&x32, &inv],
    );
    drop((x32, inv));
    (scaled, variance)
}

/// `LlamaRMSNorm` with autograd: upcast to f32 (a cast unless f32), `pow(2)` (saving its input),
/// `mean`, `+ eps`, `rsqrt` (saving its output), the scaling multiply (saving both), the cast
/// back, the weight's multiply (saving the scaled input). Each backward as PyTorch's formulas
/// run: `pow` and `rsqrt` hold two temporaries; a broadcast operand's gradient is made full,
/// then reduced (`sum_to`).
#[must_use]
pub fn rms_norm(tape: &Tape<'_>, x: &Pt) -> Pt {
    let h = x.dims[x.dims.len() - 1];
    let full = |t: &Pt| t.elems() as u64 * t.dt.size();
    let (scaled, variance) = rms_scaled(tape, x, RmsStyle::Llama);
    // `weight * hidden.to(input_dtype)`: the f32 `hidden` lives until the norm returns.
    let back = tape.cast(&scaled, x.dt);
    // The weight is f32 under autocast: a low-precision input meets it in f32 (a widened copy
    // while the product is made, the product f32). The backward then makes the input's f32
    // gradient (grad · weight), the weight's full one over a widened copy of the input, reduces
    // the latter, and the engine casts the former back to the input's type.
    let weight_dt = if tape.autocast_on() { TDt::F32 } else { x.dt };
    let out = if back.dt == weight_dt {
        let out = back.like();
        tape.node(
            &out,
            vec![
                Edge::Work(full(&back)),
                Tape::grad_of(&back),
                Edge::Reduced(Box::new(Edge::Param(vec![h], weight_dt))),
            ],
            &[&back],
        );
        out
    } else {
        let out = back.widened(weight_dt);
        let wide = full(&out);
        let mut edges = vec![Edge::Work(wide), Edge::Work(wide)];
        // The CPU's widened copy of the input (CUDA casts as it loads).
        if !out.on_cuda() {
            edges.push(Edge::Temp(wide));
        }
        edges.push(Edge::Reduced(Box::new(Edge::Param(vec![h], weight_dt))));
        edges.push(Edge::Reduced(Box::new(Tape::grad_of(&back))));
        tape.node(&out, edges, &[&back]);
        out
    };
    drop((back, scaled, variance));
    out
}

/// `q * cos + rotate_half(q) * sin` with autograd on `(b, heads, s, d)`: each product saves
/// its table; `rotate_half` slices the halves (their backward: zeros like q, the slice copied
/// in), negates the second, concatenates (its backward: slices of the gradient).
#[must_use]
pub fn rotate(tape: &Tape<'_>, x: &Pt, cos: &Pt, sin: &Pt) -> Pt {
    let with_cos = times_table(tape, x, cos);
    let with_sin = {
        let rotated = rotate_half(tape, x);
        times_table(tape, &rotated, sin)
    };
    add(tape, &with_cos, &with_sin)
}

/// `t * table` with autograd, saving the table (the rotation's tables need no gradient). Where
/// the types differ the product is in the wider one:
/// - under autocast a low-precision `t` meets the f32 tables: the CPU's `TensorIterator` casts
///   `t` to f32 for the product (a copy while it runs), and the backward's f32 gradient is cast
///   back to `t`'s type (the engine makes the cast, and the f32 one goes when the node ends);
/// - an f32 `t` meets a reduced table (`ModernBERT`'s rotation in f32 in a bf16 model): the CPU
///   widens the table in a copy, in the forward and again in the backward (CUDA's kernels cast
///   as they load).
#[must_use]
pub fn times_table(tape: &Tape<'_>, t: &Pt, table: &Pt) -> Pt {
    if t.dt == table.dt {
        let y = t.like();
        tape.node(&y, vec![Tape::grad_of(t)], &[table]);
        return y;
    }
    if t.dt.reduced() {
        let y = t.widened(table.dt);
        let wide_grad = t.elems() as u64 * table.dt.size();
        tape.node(&y, vec![Edge::Work(wide_grad), Tape::grad_of(t)], &[table]);
        return y;
    }
    let widens = !t.on_cuda();
    let y = {
        let _wide = widens.then(|| table.new(&table.dims, t.dt));
        t.like()
    };
    let mut edges = Vec::new();
    if widens {
        edges.push(Edge::Work(table.elems() as u64 * t.dt.size()));
    }
    edges.push(Tape::grad_of(t));
    tape.node(&y, edges, &[table]);
    y
}

/// `rotate_half(x)` with autograd: the halves sliced (each slice's backward: zeros like `x`,
/// the gradient copied in), the second negated, the two concatenated (its backward hands each
/// part a slice of the gradient).
#[must_use]
pub fn rotate_half(tape: &Tape<'_>, x: &Pt) -> Pt {
    let mut half = x.dims.clone();
    *half.last_mut().unwrap_or(&mut 0) /= 2;
    let first = x.view_node(&half);
    tape.node(&first, vec![Tape::grad_of(x)], &[]);
    let second = x.view_node(&half);
    tape.node(&second, vec![Tape::grad_of(x)], &[]);
    let neg = second.like();
    tape.node(&neg, vec![Tape::grad_of(&second)], &[]);
    let cat = x.like();
    tape.node(
        &cat,
        vec![Edge::Pass(neg.gid()), Edge::Pass(first.gid())],
        &[],
    );
    cat
}

/// `t.chunk(2, dim=-1)` with autograd (a fused projection's halves): two views and one split
/// node, whose backward concatenates both halves' gradients into one like `t`.
#[must_use]
pub fn halves(tape: &Tape<'_>, t: &Pt) -> (Pt, Pt) {
    let mut dims = t.dims.clone();
    *dims.last_mut().unwrap_or(&mut 0) /= 2;
    let first = t.view_node(&dims);
    let second = t.view_node(&dims);
    tape.node(
        &first,
        vec![Edge::Join(
            t.gid(),
            vec![second.gid()],
            t.dims.clone(),
            t.dt,
        )],
        &[],
    );
    (first, second)
}

/// `nn.Linear` with autograd, with its bias (`addmm`, [`linear`]) or without (`matmul`,
/// [`linear_mm`]).
#[must_use]
pub fn linear_with(tape: &Tape<'_>, x: &Pt, out: usize, bias: bool) -> Pt {
    if bias {
        linear(tape, x, out, true)
    } else {
        linear_mm(tape, x, out)
    }
}

/// The CPU flash kernel with autograd on `(b, heads, s, d)` query and `(b, kv_heads, s, d)`
/// keys and values (causal, or under `mask`): the output `(b, s, heads, d)` and log-sum-exp (both saved with q, k
/// and v) and the forward's per-thread scratch; the backward makes q's, k's and v's gradients,
/// then holds its per-thread blocks (attention and its gradient, in f32, and in the input type
/// for bf16/f16) and a row sum.
#[must_use]
pub fn flash_attention(
    tape: &Tape<'_>,
    (q, k, v): (&Pt, &Pt, &Pt),
    mask: Option<&Pt>,
    threads: usize,
) -> Pt {
    let (b, heads, s, d) = (q.dims[0], q.dims[1], q.dims[2], q.dims[3]);
    let kv_len = k.dims[2];
    // A bool mask becomes an additive one in q's type (`where`), saved with the rest.
    let additive = mask.map(|m| q.new(&m.dims, q.dt));
    if q.on_cuda() {
        return cuda_attention(tape, (q, k, v), additive.as_ref());
    }
    let out = q.new(&[b, s, heads, d], q.dt);
    let lse = q.new(&[b, heads, s], TDt::F32);
    drop(super::torch_sim::flash_forward_scratch(
        q,
        threads,
        (s, kv_len),
        d,
    ));
    let (q_split, kv_split) = super::torch_sim::flash_blocks(s, kv_len);
    let block = (threads * 2 * q_split * kv_split) as u64;
    let mut edges = vec![
        Tape::grad_of(q),
        Tape::grad_of(k),
        Tape::grad_of(v),
        Edge::Work(block * TDt::F32.size()),
    ];
    if q.dt.reduced() {
        edges.push(Edge::Work(block * q.dt.size()));
    }
    edges.push(Edge::Work(q_split as u64 * TDt::F32.size()));
    let mut saved = vec![q, k, v, &out, &lse];
    saved.extend(additive.as_ref());
    tape.node(&out, edges, &saved);
    out
}

/// CUDA's sdpa kernel with autograd on `(b, heads, s, d)` q and `(b, kv_heads, s, d)` k, v
/// ([`super::torch_sim::cuda_sdpa`]'s forward; it saves q, k, v, the output, what the kernel
/// made beside it, and the additive mask). The backward makes q's, k's and v's gradients, then
/// holds while it runs:
/// - flash (`mha_bwd`): `softmax_d` `(b, heads, s₁₂₈)` and `dq_accum` `(b, s₁₂₈, heads, d₃₂)`
///   in f32 (s rounded up to 128, d to 32, to 64 above 128); with fewer key/value heads, k's and
///   v's gradients expanded to every head, then summed;
/// - memory-efficient: `delta` `(b, heads, s)` in f32, for f32 made from `grad · out` (an f32
///   product and its row sums while it is made).
///
/// Not modelled: the memory-efficient backward's split-key workspace.
fn cuda_attention(tape: &Tape<'_>, (q, k, v): (&Pt, &Pt, &Pt), additive: Option<&Pt>) -> Pt {
    let (b, heads, s, d) = (q.dims[0], q.dims[1], q.dims[2], q.dims[3]);
    let (out, extra) =
        super::torch_sim::cuda_sdpa(q, (b, heads, s, d), additive.is_some(), !tape.no_grad());
    let f32 = TDt::F32.size();
    let mut edges = vec![Tape::grad_of(q), Tape::grad_of(k), Tape::grad_of(v)];
    if super::torch_sim::cuda_flash(q.dt, additive.is_some()) {
        let s128 = s.div_ceil(128) * 128;
        let d_rounded = if d <= 128 {
            d.div_ceil(32) * 32
        } else {
            d.div_ceil(64) * 64
        };
        edges.push(Edge::Work((b * heads * s128) as u64 * f32));
        edges.push(Edge::Work((b * s128 * heads * d_rounded) as u64 * f32));
        if k.dims[1] < heads {
            let expanded = (b * s * heads * d) as u64 * q.dt.size();
            edges.push(Edge::Work(expanded));
            edges.push(Edge::Work(expanded));
        }
    } else {
        let rows = (b * heads * s) as u64 * f32;
        if q.dt == TDt::F32 {
            edges.push(Edge::Work((b * s * heads * d) as u64 * f32));
            edges.push(Edge::Work(rows));
        }
        edges.push(Edge::Work(rows));
    }
    let mut saved = vec![q, k, v, &out];
    saved.extend(&extra);
    saved.extend(additive);
    tape.node(&out, edges, &saved);
    out
}

/// transformers' eager attention in train mode on the projections `q`, `k`, `v`
/// (`(b, s, heads·d)`): `matmul(q, kᵀ)` (copies of both for `bmm`, which saves them), times the
/// scale (a new tensor), softmax (saving its output), dropout, `matmul` with a copy of v, then
/// `transpose(1, 2).contiguous()`. The weights it returns (dropout's output) are held by the
/// layer to its end: the second value.
#[must_use]
pub fn eager_attention(
    tape: &Tape<'_>,
    (q, k, v): (&Pt, &Pt, &Pt),
    heads: usize,
    dropout_on: bool,
) -> (Pt, Pt) {
    let (b, s, h) = (q.dims[0], q.dims[1], q.dims[2]);
    let d = h / heads;
    let (q4, k4, v4) = (
        heads_major(tape, q, heads, d),
        heads_major(tape, k, heads, d),
        heads_major(tape, v, heads, d),
    );
    let scores = {
        let qc = bmm_copy(tape, &q4, &[b * heads, s, d]);
        let kc = bmm_copy(tape, &k4, &[b * heads, d, s]);
        bmm(tape, &qc, &kc, &[b * heads, s, s])
    };
    // `* scaling`: a Python float, wrapped in an 8-byte scalar tensor the node saves.
    let scaled = scores.like();
    let scaling = q.wrapped_number(TDt::I64);
    tape.node(&scaled, vec![Tape::grad_of(&scores)], &[&scaling]);
    drop((scores, scaling));
    let probs = scaled.like();
    tape.node(&probs, vec![Tape::grad_of(&scaled)], &[&probs]);
    drop(scaled);
    let dropped = dropout(tape, &probs, dropout_on);
    drop(probs);
    let out = {
        let vc = bmm_copy(tape, &v4, &[b * heads, s, d]);
        bmm(tape, &dropped, &vc, &[b * heads, s, d])
    };
    (heads_merged(tape, &out, (b, heads, s)), dropped)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::families::torch_cuda::round_size;

    /// On CUDA under `no_grad` the memory-efficient kernel (taken under a mask) makes no
    /// log-sum-exp: the pool's high-water mark is the inputs, the additive mask and the output;
    /// with autograd on, the kernel's 32-row log-sum-exp comes beside them.
    #[test]
    fn cuda_no_grad_attention_makes_no_log_sum_exp() {
        let (b, heads, s, d) = (2, 4, 16, 8);
        let peak = |no_grad: bool| {
            let sim = TSim::cuda(None);
            let q = sim.alloc(&[b, heads, s, d], TDt::Bf16);
            let k = sim.alloc(&[b, heads, s, d], TDt::Bf16);
            let v = sim.alloc(&[b, heads, s, d], TDt::Bf16);
            let mask = sim.alloc(&[b, 1, s, s], TDt::Bool);
            let tape = Tape::new().with_no_grad(no_grad);
            let out = flash_attention(&tape, (&q, &k, &v), Some(&mask), 1);
            drop(out);
            let pool = sim.pool().unwrap();
            pool.peak_allocated()
        };
        let qkv = 3 * round_size((b * heads * s * d * 2) as u64);
        let masks = round_size((b * s * s) as u64) + round_size((b * s * s * 2) as u64);
        let out = round_size((b * s * heads * d * 2) as u64);
        assert_eq!(peak(true), qkv + masks + out);
        let lse = round_size((b * heads * s.div_ceil(32) * 32 * 4) as u64);
        assert_eq!(peak(false), qkv + masks + out + lse);
    }
}
