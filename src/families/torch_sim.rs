//! A liveness simulator of PyTorch's CPU tensors, for the PyTorch estimator: a family's forward
//! is written again as Hugging Face's modeling code runs it, over shape-only tensors whose
//! storage is shared by views and freed when the last reference goes (Rust's `Rc` and drop order
//! stand for Python's reference counts and the end of a function's locals). Bytes are what c10's
//! CPU allocator hands out: the tensor's elements, nothing more (PyTorch's profiler counts
//! exactly these).

use std::cell::{Cell, RefCell};
use std::rc::Rc;

use super::torch_cuda::CudaAllocator;

/// The model's head (`AutoModel`, `…ForSequenceClassification`, `…ForCausalLM`, `…ForMaskedLM`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Head {
    Base,
    SequenceClassification,
    CausalLm,
    MaskedLm,
}

/// The labels a classification head gets when the config names none (the torch worker's
/// `NUM_LABELS`).
pub const NUM_LABELS: usize = 2;

/// One simulated PyTorch forward's setting.
pub struct TorchRun<'a> {
    pub sim: &'a TSim,
    pub d: &'a super::Dims,
    pub b: usize,
    pub s: usize,
    pub dt: TDt,
    pub threads: usize,
    /// Eager attention (else sdpa).
    pub eager: bool,
    pub head: Head,
    /// With autograd on (a forward without `no_grad`): the tensors autograd saves for the
    /// backward, alive until the output is dropped. None under `no_grad`.
    pub graph: Option<&'a RefCell<Vec<Pt>>>,
    /// A forward in eval mode with no labels, on the tape (inference or grad under autocast):
    /// the training forward returns its head's output instead of the loss.
    pub eval: bool,
}

impl TorchRun<'_> {
    /// Autograd saves `t` for the backward (nothing under `no_grad`).
    pub fn keep(&self, t: &Pt) {
        if let Some(g) = self.graph {
            g.borrow_mut().push(t.clone());
        }
    }
}

/// Element types.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TDt {
    Bool,
    I32,
    I64,
    F16,
    Bf16,
    F32,
}

impl TDt {
    #[must_use]
    pub fn size(self) -> u64 {
        match self {
            Self::Bool => 1,
            Self::F16 | Self::Bf16 => 2,
            Self::F32 | Self::I32 => 4,
            Self::I64 => 8,
        }
    }

    /// Whether a kernel accumulates this type in f32 with a reduced-precision copy (bf16, f16).
    #[must_use]
    pub fn reduced(self) -> bool {
        matches!(self, Self::F16 | Self::Bf16)
    }
}

/// A model's parameters and buffers as its constructor makes them under `torch.device(…)`:
/// each storage's bytes in order, and whether the model keeps it (a head tied to the
/// embeddings is made, then dropped when the weights are tied).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Weights {
    pub tensors: Vec<(u64, bool)>,
}

impl Weights {
    /// A kept tensor of `elems` elements of `dt`.
    pub fn push(&mut self, elems: usize, dt: TDt) {
        self.tensors.push((elems as u64 * dt.size(), true));
    }

    /// A weight and, with `bias`, its bias (`nn.Linear(inp, out)`).
    pub fn linear(&mut self, (inp, out): (usize, usize), bias: bool, dt: TDt) {
        self.push(inp * out, dt);
        if bias {
            self.push(out, dt);
        }
    }

    /// A tensor made and then dropped (a tied head's own weight).
    pub fn dropped(&mut self, elems: usize, dt: TDt) {
        self.tensors.push((elems as u64 * dt.size(), false));
    }

    /// The bytes the model keeps.
    #[must_use]
    pub fn bytes(&self) -> u64 {
        self.tensors.iter().filter(|t| t.1).map(|t| t.0).sum()
    }

    /// Makes them in `sim` as the constructor does; returns the kept ones.
    #[must_use]
    pub fn make(&self, sim: &TSim) -> Vec<Pt> {
        let made: Vec<_> = self
            .tensors
            .iter()
            .map(|&(bytes, keep)| (sim.alloc(&[bytes as usize], TDt::Bool), keep))
            .collect();
        made.into_iter().filter(|t| t.1).map(|t| t.0).collect()
    }
}

#[derive(Debug, Default)]
struct Counter {
    live: Cell<u64>,
    peak: Cell<u64>,
    /// The last gradient id handed out.
    gids: Cell<usize>,
    /// A checkpoint's recomputation has stopped: what the rest of its function makes is
    /// never made (it costs nothing).
    halted: Cell<bool>,
    /// The last allocation's gradient id, and the high-water mark before it.
    last: Cell<(usize, u64)>,
    /// On CUDA: the caching allocator every tensor's storage goes through.
    cuda: Option<RefCell<CudaAllocator>>,
    /// On CUDA: the bytes cuBLAS's workspace takes at the first matmul (its block is then
    /// never freed, as PyTorch's handle pool holds it), and the blocks taken so far.
    workspace: Cell<u64>,
    workspaces: Cell<u64>,
}

impl Counter {
    /// Adds `bytes` (none while halted); returns what was added.
    fn add(&self, bytes: u64) -> u64 {
        if self.halted.get() {
            return 0;
        }
        let live = self.live.get() + bytes;
        self.live.set(live);
        if live > self.peak.get() {
            self.peak.set(live);
        }
        bytes
    }

    /// The block a storage of `bytes` takes on CUDA (a zero-byte storage takes none).
    fn malloc(&self, bytes: u64) -> Option<u64> {
        let pool = self.cuda.as_ref()?;
        (bytes > 0).then(|| pool.borrow_mut().malloc(bytes))
    }

    fn free(&self, block: Option<u64>) {
        if let (Some(pool), Some(addr)) = (self.cuda.as_ref(), block) {
            pool.borrow_mut().free(addr);
        }
    }
}

/// Storage: its bytes are live while any tensor that views it is.
#[derive(Debug)]
struct Storage {
    bytes: Cell<u64>,
    /// Its block in the CUDA allocator (None on the CPU).
    block: Cell<Option<u64>>,
    c: Rc<Counter>,
}

impl Storage {
    fn new(c: &Rc<Counter>, bytes: u64) -> Self {
        let bytes = c.add(bytes);
        Self {
            bytes: Cell::new(bytes),
            block: Cell::new(c.malloc(bytes)),
            c: Rc::clone(c),
        }
    }
}

impl Drop for Storage {
    fn drop(&mut self) {
        self.c.live.set(self.c.live.get() - self.bytes.get());
        self.c.free(self.block.take());
    }
}

/// The simulator: live bytes and their high-water mark.
#[derive(Debug, Default)]
pub struct TSim {
    c: Rc<Counter>,
}

/// A tensor: its shape, its type, and the storage it views. A clone is another Python
/// reference to the same tensor; a view is a new tensor over the same storage. `gid` names the
/// gradient autograd would route to it (views share their base's: their backward passes the
/// gradient on).
#[derive(Debug, Clone)]
pub struct Pt {
    pub dims: Vec<usize>,
    pub dt: TDt,
    storage: Rc<Storage>,
    imp: Rc<()>,
    gid: usize,
    /// A view kept by autograd of a base that lives on (the gradient a reshape hands back):
    /// never added into in place.
    pub(super) viewed: bool,
}

/// A buffer a kernel holds while it runs (scratch), freed when dropped.
#[derive(Debug)]
pub struct Scratch {
    _s: Storage,
}

impl TSim {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    /// A simulator of PyTorch's CUDA tensors: each storage is also a block of the caching
    /// allocator, whose segments may take `limit` bytes of the device (None: unlimited).
    #[must_use]
    pub fn cuda(limit: Option<u64>) -> Self {
        Self {
            c: Rc::new(Counter {
                cuda: Some(RefCell::new(CudaAllocator::new(limit))),
                ..Counter::default()
            }),
        }
    }

    /// The CUDA allocator's state, on CUDA.
    #[must_use]
    pub fn pool(&self) -> Option<std::cell::Ref<'_, CudaAllocator>> {
        self.c.cuda.as_ref().map(RefCell::borrow)
    }

    /// On CUDA: `torch.cuda.reset_peak_memory_stats()` (what the torch trial does after the
    /// model is built).
    pub fn reset_peaks(&self) {
        if let Some(pool) = self.c.cuda.as_ref() {
            pool.borrow_mut().reset_peaks();
        }
    }

    /// On CUDA: the first matmul from now takes cuBLAS's workspace of `bytes` from the pool.
    pub fn workspace_at_first_matmul(&self, bytes: u64) {
        self.c.workspace.set(bytes);
    }

    /// A matmul runs: on CUDA the first takes cuBLAS's workspace.
    fn matmul(&self) {
        let bytes = self.c.workspace.replace(0);
        if let Some(pool) = self.c.cuda.as_ref()
            && bytes > 0
        {
            // A block of the pool's, outside the simulated tensors (`live`), never freed.
            let before = pool.borrow().allocated();
            pool.borrow_mut().malloc(bytes);
            let taken = pool.borrow().allocated() - before;
            self.c.workspaces.set(self.c.workspaces.get() + taken);
        }
    }

    /// On CUDA: a cuBLAS workspace for another thread's handle (the autograd engine's), taken
    /// at once and kept.
    pub fn another_workspace(&self, bytes: u64) {
        self.c.workspace.set(bytes);
        self.matmul();
    }

    /// On CUDA: the bytes of the pool's blocks cuBLAS's workspaces took.
    #[must_use]
    pub fn workspace_bytes(&self) -> u64 {
        self.c.workspaces.get()
    }

    /// Whether this simulates CUDA (else the CPU).
    #[must_use]
    pub fn on_cuda(&self) -> bool {
        self.c.cuda.is_some()
    }

    /// A new tensor.
    #[must_use]
    pub fn alloc(&self, dims: &[usize], dt: TDt) -> Pt {
        let bytes = dims.iter().product::<usize>() as u64 * dt.size();
        self.alloc_bytes(dims, dt, bytes)
    }

    /// A new tensor of `dims` holding `bytes` of this simulator's memory.
    fn alloc_bytes(&self, dims: &[usize], dt: TDt, bytes: u64) -> Pt {
        let before = self.c.peak.get();
        let gid = self.c.gids.get() + 1;
        self.c.gids.set(gid);
        self.c.last.set((gid, before));
        Pt {
            dims: dims.to_vec(),
            dt,
            storage: Rc::new(Storage::new(&self.c, bytes)),
            imp: Rc::new(()),
            gid,
            viewed: false,
        }
    }

    /// A kernel's scratch of `bytes`.
    #[must_use]
    pub fn scratch(&self, bytes: u64) -> Scratch {
        Scratch {
            _s: Storage::new(&self.c, bytes),
        }
    }

    /// The high-water mark so far.
    #[must_use]
    pub fn peak(&self) -> u64 {
        self.c.peak.get()
    }

    /// What is live now.
    #[must_use]
    pub fn live(&self) -> u64 {
        self.c.live.get()
    }
}

impl Pt {
    /// Whether this tensor lives on CUDA (else the CPU).
    #[must_use]
    pub fn on_cuda(&self) -> bool {
        self.storage.c.cuda.is_some()
    }

    fn sim(&self) -> TSim {
        TSim {
            c: Rc::clone(&self.storage.c),
        }
    }

    /// A new tensor from the same simulator (an op's output).
    #[must_use]
    pub fn new(&self, dims: &[usize], dt: TDt) -> Pt {
        self.sim().alloc(dims, dt)
    }

    /// A view of the same storage with other dims (view, transpose, expand, slicing).
    #[must_use]
    pub fn view(&self, dims: &[usize]) -> Pt {
        Pt {
            dims: dims.to_vec(),
            dt: self.dt,
            storage: Rc::clone(&self.storage),
            imp: Rc::new(()),
            gid: self.gid,
            viewed: self.viewed,
        }
    }

    /// A view that is its own autograd node (its backward copies or reduces the gradient):
    /// the same storage under a new gradient id.
    #[must_use]
    pub fn view_node(&self, dims: &[usize]) -> Pt {
        let gid = self.storage.c.gids.get() + 1;
        self.storage.c.gids.set(gid);
        Pt {
            gid,
            ..self.view(dims)
        }
    }

    /// The kernel that made this tensor never ran (a checkpoint's recomputation stopped before
    /// it): its bytes go, and when it was the last allocation, the high-water mark it raised.
    pub(super) fn unmake(&self) {
        let c = &self.storage.c;
        let bytes = self.storage.bytes.replace(0);
        c.live.set(c.live.get() - bytes);
        c.free(self.storage.block.take());
        let (gid, before) = c.last.get();
        if gid == self.gid {
            c.peak.set(before.max(c.live.get()));
        }
    }

    /// From now on, until resumed, nothing this simulator makes costs anything (a
    /// checkpoint's recomputation has what it needs and stops).
    pub(super) fn halt(&self, on: bool) {
        self.storage.c.halted.set(on);
    }

    /// The id of the gradient autograd routes to this tensor.
    #[must_use]
    pub fn gid(&self) -> usize {
        self.gid
    }

    /// Whether this is the only reference to the tensor (autograd may add into it in place).
    #[must_use]
    pub fn unique(&self) -> bool {
        !self.viewed && Rc::strong_count(&self.imp) == 1
    }

    /// An elementwise op's output: the same dims and type.
    #[must_use]
    pub fn like(&self) -> Pt {
        self.new(&self.dims, self.dt)
    }

    /// The same dims in another type (`.to(dtype)`: the same tensor when the type is its own).
    #[must_use]
    pub fn to(&self, dt: TDt) -> Pt {
        if dt == self.dt {
            self.clone()
        } else {
            self.new(&self.dims, dt)
        }
    }

    /// The output, in `dt`, of an elementwise op the CPU computes in that wider type (a
    /// low-precision tensor meeting an f32 one): `TensorIterator` widens this input in a copy,
    /// freed once the output is made. Without a change of type, just the output.
    #[must_use]
    pub fn widened(&self, dt: TDt) -> Pt {
        // CUDA's kernels cast as they load: no copy.
        let copy = (dt != self.dt && !self.on_cuda()).then(|| self.new(&self.dims, dt));
        let out = self.new(&self.dims, dt);
        drop(copy);
        out
    }

    /// A Python number wrapped in a 0-dim tensor (`scores * 0.125`), or its cast: on the CPU
    /// an allocation like any; beside CUDA tensors a CPU scalar the kernel reads as an
    /// argument (none of the device's memory).
    #[must_use]
    pub fn wrapped_number(&self, dt: TDt) -> Pt {
        self.host(&[], dt)
    }

    /// A tensor PyTorch keeps on the CPU whatever the model's device (a wrapped number, the
    /// RNG states a checkpoint saves): on the CPU an allocation like any, beside CUDA tensors
    /// none of the device's memory.
    #[must_use]
    pub fn host(&self, dims: &[usize], dt: TDt) -> Pt {
        if self.on_cuda() {
            return self.sim().alloc_bytes(dims, dt, 0);
        }
        self.new(dims, dt)
    }

    /// A copy (`contiguous()` on a strided view, `clone()`).
    #[must_use]
    pub fn copy(&self) -> Pt {
        self.like()
    }

    /// `nn.Linear` on `(…, in)`: a new `(…, out)` tensor (addmm or mm writes it directly).
    #[must_use]
    pub fn linear(&self, out: usize) -> Pt {
        self.sim().matmul();
        let mut dims = self.dims.clone();
        let last = dims.len() - 1;
        dims[last] = out;
        self.new(&dims, self.dt)
    }

    /// The elements.
    #[must_use]
    pub fn elems(&self) -> usize {
        self.dims.iter().product()
    }
}

/// The CPU flash kernel's blocks (forward and backward): 32 query rows (64 from 192 rows, 256
/// from 768), 512 keys, each at most the length.
#[must_use]
pub fn flash_blocks(q_len: usize, kv_len: usize) -> (usize, usize) {
    let q_split = if q_len >= 768 {
        256
    } else if q_len >= 192 {
        64
    } else {
        32
    };
    (q_split.min(q_len), 512.min(kv_len))
}

/// The per-thread scratch the CPU flash kernel's forward holds while it runs, for `query`'s
/// type: in f32 the q×kv block, its row max and sum, and the output block; for bf16/f16 also the
/// q×kv block in the input type. Dropped, it is freed.
#[must_use]
pub fn flash_forward_scratch(
    query: &Pt,
    threads: usize,
    (q_len, kv_len): (usize, usize),
    head_v: usize,
) -> (Scratch, Option<Scratch>) {
    let (q_split, kv_split) = flash_blocks(q_len, kv_len);
    let per_thread = q_split * kv_split + 2 * q_split + q_split * head_v;
    let sim = query.sim();
    let buf = sim.scratch((threads * per_thread) as u64 * TDt::F32.size());
    let reduced = query
        .dt
        .reduced()
        .then(|| sim.scratch((threads * q_split * kv_split) as u64 * query.dt.size()));
    (buf, reduced)
}

/// PyTorch's CPU flash attention (`_scaled_dot_product_flash_attention_for_cpu`): the output
/// (like the query), the log-sum-exp (f32, one per query row and head), and while it runs a
/// scratch row per thread: the q×kv block, its row max and sum, and the output block, in the
/// accumulation type (f32), plus for bf16/f16 the q×kv block in the input type. The block sizes
/// are the kernel's: 32 query rows (64 from 192 rows, 256 from 768), 512 keys.
/// With autograd on it saves the query, key, value, output and log-sum-exp.
///
/// On CUDA, CUDA's kernel instead ([`cuda_sdpa`]); `masked`: the kernel gets a mask.
#[must_use]
#[allow(clippy::too_many_arguments)]
pub fn flash_attention(
    r: &TorchRun<'_>,
    (query, key, value): (&Pt, &Pt, &Pt),
    heads: usize,
    q_len: usize,
    kv_len: usize,
    head_v: usize,
    masked: bool,
) -> Pt {
    let batch = query.dims[0];
    if query.on_cuda() {
        let (out, extra) = cuda_sdpa(
            query,
            (batch, heads, q_len, head_v),
            masked,
            r.graph.is_some(),
        );
        for t in [query, key, value, &out].into_iter().chain(&extra) {
            r.keep(t);
        }
        return out;
    }
    let threads = r.threads;
    let out = query.new(&[batch, q_len, heads, head_v], query.dt);
    let lse = query.new(&[batch, heads, q_len], TDt::F32);
    drop(flash_forward_scratch(
        query,
        threads,
        (q_len, kv_len),
        head_v,
    ));
    for t in [query, key, value, &out, &lse] {
        r.keep(t);
    }
    drop(lse);
    out
}

/// CUDA's sdpa kernel (the forward) for a `(b, heads, q_len, head_v)` output: flash for
/// f16/bf16 without a mask, the memory-efficient kernel for f32 or under a mask. Returns the
/// output (`(b, q_len, heads, head_v)`, like the query's layout) and what the kernel makes
/// beside it, which autograd saves:
/// - flash (`mha_fwd`): the log-sum-exp `(b, heads, q_len)` f32, and the RNG state (two
///   uint64) and an empty uint64 scalar, made on the device even without dropout;
/// - memory-efficient: the log-sum-exp `(b, heads, ⌈q_len/32⌉·32)` f32, none (`(b, heads, 0)`)
///   when nothing needs a gradient; its seed and offset are CPU scalars.
///
/// Not modelled: flash's split-KV accumulators (temporaries when batch × heads is small for the
/// GPU's SMs), and the memory-efficient kernel's f32 accumulator for large heads.
#[must_use]
pub fn cuda_sdpa(
    query: &Pt,
    (batch, heads, q_len, head_v): (usize, usize, usize, usize),
    masked: bool,
    grad: bool,
) -> (Pt, Vec<Pt>) {
    let out = query.new(&[batch, q_len, heads, head_v], query.dt);
    if cuda_flash(query.dt, masked) {
        let lse = query.new(&[batch, heads, q_len], TDt::F32);
        let rng = query.new(&[2], TDt::I64);
        // A uint64 scalar; one element, but not the 0-dim int64 the tape takes for a wrapped
        // Python number (which a checkpoint keeps).
        let unused = query.new(&[1], TDt::I64);
        (out, vec![lse, rng, unused])
    } else {
        let rows = if grad { q_len.div_ceil(32) * 32 } else { 0 };
        let lse = query.new(&[batch, heads, rows], TDt::F32);
        (out, vec![lse])
    }
}

/// Whether CUDA's sdpa takes the flash kernel (f16/bf16, no mask) rather than the
/// memory-efficient one.
#[must_use]
pub fn cuda_flash(dt: TDt, masked: bool) -> bool {
    dt.reduced() && !masked
}

/// `scores * scaling` (a Python float): the float wrapped in an 8-byte scalar, which the product
/// saves, and cast to the scores' type while the product is made.
#[must_use]
pub fn scale(r: &TorchRun<'_>, scores: &Pt) -> Pt {
    let wrapped = scores.wrapped_number(TDt::I64);
    let cast = scores.wrapped_number(scores.dt);
    let scaled = scores.like();
    drop(cast);
    r.keep(&wrapped);
    scaled
}

/// transformers' eager attention for the encoders (BERT, `DistilBERT`) on the projections `q`,
/// `k`, `v` (`(b, s, heads·d)`), with no mask (the all-ones mask is skipped): `matmul` copies the
/// strided q and kᵀ for `bmm` (which saves the copies), times the scale ([`scale`]), softmax (saving its
/// output), `matmul` with a copy of v (saving both), then `transpose(1, 2).contiguous()`.
/// Returns the `(b, s, heads, d)` context and the weights, which the layer holds (`_`) to its
/// end.
#[must_use]
pub fn eager_attention(r: &TorchRun<'_>, (q, k, v): (&Pt, &Pt, &Pt), heads: usize) -> (Pt, Pt) {
    let (batch, seq, width) = (q.dims[0], q.dims[1], q.dims[2]);
    let hd = width / heads;
    let scores = {
        let q_copy = q.copy();
        let k_copy = k.copy();
        r.keep(&q_copy);
        r.keep(&k_copy);
        q.new(&[batch, heads, seq, seq], q.dt)
    };
    let scaled = scale(r, &scores);
    drop(scores);
    let probs = scaled.like();
    r.keep(&probs);
    drop(scaled);
    let out = {
        let v_copy = v.copy();
        r.keep(&v_copy);
        r.keep(&probs);
        q.new(&[batch, heads, seq, hd], q.dt)
    };
    let context = out.copy();
    drop(out);
    (context, probs)
}

/// The encoders' attention (BERT, `DistilBERT`) on the projections `q`, `k`, `v`
/// (`(b, s, heads·d)`): eager's, with the weights the layer holds, or sdpa's flash kernel.
#[must_use]
pub fn encoder_attention(
    r: &TorchRun<'_>,
    (q, k, v): (&Pt, &Pt, &Pt),
    heads: usize,
) -> (Pt, Option<Pt>) {
    if r.eager {
        let (context, weights) = eager_attention(r, (q, k, v), heads);
        return (context, Some(weights));
    }
    let seq = q.dims[1];
    let context = flash_attention(r, (q, k, v), heads, seq, seq, q.dims[2] / heads, false);
    (context, None)
}

/// The encoders' masked-LM head on the last hidden state (BERT's `BertOnlyMLMHead`, `RoBERTa`'s
/// `RobertaLMHead`, `DistilBERT`'s `vocab_*` layers: the same ops): dense (saving its input),
/// the activation (gelu saving its input; with `act_saves_output`, `ReLU` saving its output,
/// which the norm saves too), `LayerNorm`, the decoder (saving its input) into the logits over
/// the vocabulary. BERT's and `DistilBERT`'s heads run the config's activation, `RoBERTa`'s gelu.
#[must_use]
pub fn masked_lm_head(r: &TorchRun<'_>, hidden: &Pt, act_saves_output: bool) -> Pt {
    r.keep(hidden);
    let dense = hidden.linear(hidden.dims[hidden.dims.len() - 1]);
    if !act_saves_output {
        r.keep(&dense);
    }
    let act = dense.like();
    drop(dense);
    let normed = layer_norm(r, &act);
    drop(act);
    r.keep(&normed);
    normed.linear(r.d.vocab)
}

/// What the decoders' classification head pools, beside the pooled logits.
pub struct LastToken {
    /// `logits[arange(b), last]`: `(b, labels)`, in the logits' type.
    pub pooled: Pt,
    /// The two index tensors (int64, `(b,)`): indexing's backward saves them.
    pub indices: [Pt; 2],
    /// The int32 non-pad mask and the int32 positions, the forward's locals until it returns.
    pub locals: [Pt; 2],
}

/// `GenericForSequenceClassification`'s pooling of the `(b, s, labels)` logits at each row's
/// rightmost token that is not the pad token: `input_ids != pad` (a wrapped number, then a bool
/// mask), `.to(int32)`, `arange(s)` in int32, their product, `argmax(-1)` (int64); then
/// `arange(b)` (int64) and the indexing, after which that `arange` is the indexing's alone.
/// (On CUDA, indexing's backward, `index_put_` with accumulation, also sorts the indices in a
/// few batch-long int64 buffers, which are not modelled: small-pool blocks.)
#[must_use]
pub fn last_token(ids: &Pt, logits: &Pt) -> LastToken {
    let (b, s) = (ids.dims[0], ids.dims[1]);
    let mask = {
        let not_pad = {
            let _pad = ids.wrapped_number(TDt::I64);
            ids.new(&[b, s], TDt::Bool)
        };
        not_pad.to(TDt::I32)
    };
    let positions = ids.new(&[s], TDt::I32);
    let last = {
        let product = mask.like();
        product.new(&[b], TDt::I64)
    };
    let rows = ids.new(&[b], TDt::I64);
    let pooled = logits.new(&[b, logits.dims[logits.dims.len() - 1]], logits.dt);
    LastToken {
        pooled,
        indices: [rows, last],
        locals: [mask, positions],
    }
}

/// The type of `LayerNorm`'s saved mean and reciprocal deviation: the input's on the CPU,
/// the accumulation type (f32) on CUDA.
#[must_use]
pub fn layer_norm_stats(x: &Pt) -> TDt {
    if x.on_cuda() { TDt::F32 } else { x.dt }
}

/// `nn.LayerNorm` on the CPU: the output, and the mean and reciprocal deviation per row (in the
/// input's type), which `no_grad` frees at once; autograd saves them with the input.
#[must_use]
pub fn layer_norm(r: &TorchRun<'_>, x: &Pt) -> Pt {
    let rows: Vec<usize> = x.dims[..x.dims.len() - 1].to_vec();
    let out = x.like();
    let stats = layer_norm_stats(x);
    let mean = x.new(&rows, stats);
    let rstd = x.new(&rows, stats);
    r.keep(x);
    r.keep(&mean);
    r.keep(&rstd);
    out
}
