//! A liveness simulator of candle's CPU tensors: each family's forward is written again against
//! these shape-only tensors, line by line as candle-transformers writes it, so Rust's own
//! ownership and drop order reproduce what is alive when. Storage is counted the way candle
//! allocates it (a view shares it; `contiguous` on a strided tensor, binary and unary ops, matmul,
//! cat and reductions allocate), and every tensor handle carries candle's small metadata
//! allocations. The simulator keeps the high-water mark and what was alive at it.

use std::cell::{Cell, RefCell};
use std::rc::Rc;

/// Element types the models run in (and the internal ones: u8 masks, u32 ids, f32 upcasts).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dt {
    U8,
    U32,
    F16,
    Bf16,
    F32,
}

impl Dt {
    #[must_use]
    pub fn size(self) -> u64 {
        match self {
            Self::U8 => 1,
            Self::F16 | Self::Bf16 => 2,
            Self::U32 | Self::F32 => 4,
        }
    }
}

impl From<crate::precision::Precision> for Dt {
    fn from(p: crate::precision::Precision) -> Self {
        match p {
            // candle refuses mixed precision at plan time; its weights would be f32.
            crate::precision::Precision::F32
            | crate::precision::Precision::AmpBf16
            | crate::precision::Precision::AmpF16 => Self::F32,
            crate::precision::Precision::F16 => Self::F16,
            crate::precision::Precision::Bf16 => Self::Bf16,
        }
    }
}

/// Heap bytes candle allocates for a tensor handle besides its data: the `Arc<Tensor_>` (152),
/// the shape vector (8 bytes a dimension) and the stride vector (8 bytes a dimension, at least 4
/// dimensions' worth for a new tensor).
const HANDLE_BYTES: u64 = 152;
/// Heap bytes of a new storage's `Arc<RwLock<Storage>>`.
const STORAGE_BYTES: u64 = 56;

/// What a live byte is, for the breakdown.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Activation,
    KvCache,
}

/// Where in the forward the simulator is: before the layers, in one, or after them.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Place {
    /// The embeddings and masks.
    #[default]
    Before,
    Layer(usize),
    /// The final norm and the head.
    After,
}

/// How deep named ops nest (`attention › softmax`); deeper names are not kept.
const OP_DEPTH: usize = 3;

/// The ops and the place an allocation is made in, outermost op first (`MLP › linear`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Scope {
    pub place: Place,
    ops: [&'static str; OP_DEPTH],
    depth: usize,
}

impl Scope {
    /// The ops, outermost first.
    #[must_use]
    pub fn ops(&self) -> &[&'static str] {
        &self.ops[..self.depth.min(OP_DEPTH)]
    }
}

impl std::fmt::Display for Scope {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let joined = self.ops().join(" › ");
        let op = if joined.is_empty() { "an op" } else { &joined };
        match self.place {
            Place::Before => write!(f, "{op} before the first layer"),
            Place::Layer(l) => write!(f, "{op} in layer {l}"),
            Place::After => write!(f, "{op} after the last layer"),
        }
    }
}

#[derive(Default)]
struct Counters {
    live: Cell<u64>,
    kv: Cell<u64>,
    peak: Cell<u64>,
    kv_at_peak: Cell<u64>,
    /// Allocations and frees so far.
    events: Cell<usize>,
    scope: Cell<Scope>,
    scope_at_peak: Cell<Scope>,
    /// The event count where each layer began.
    layer_starts: RefCell<Vec<usize>>,
}

impl Counters {
    fn add(&self, bytes: u64, kind: Kind) {
        self.events.set(self.events.get() + 1);
        self.live.set(self.live.get() + bytes);
        if kind == Kind::KvCache {
            self.kv.set(self.kv.get() + bytes);
        }
        if self.live.get() > self.peak.get() {
            self.peak.set(self.live.get());
            self.kv_at_peak.set(self.kv.get());
            self.scope_at_peak.set(self.scope.get());
        }
    }

    fn sub(&self, bytes: u64, kind: Kind) {
        self.events.set(self.events.get() + 1);
        self.live.set(self.live.get() - bytes);
        if kind == Kind::KvCache {
            self.kv.set(self.kv.get() - bytes);
        }
    }
}

/// The simulated allocator.
#[derive(Clone, Default)]
pub struct Sim {
    c: Rc<Counters>,
}

/// What a simulated forward held at its high-water mark.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Peak {
    /// Everything the forward held at its peak, above what was live before it.
    pub bytes: u64,
    /// Of which the KV cache.
    pub kv_cache_bytes: u64,
    /// The op and place of the allocation that made the peak.
    pub scope: Scope,
}

/// An op named while it is alive (see [`Sim::op`]); the enclosing one comes back on drop.
pub struct OpScope {
    c: Rc<Counters>,
}

impl Drop for OpScope {
    fn drop(&mut self) {
        let mut s = self.c.scope.get();
        s.depth = s.depth.saturating_sub(1);
        self.c.scope.set(s);
    }
}

struct Storage {
    /// Data bytes and the storage's own allocation; 0 for an uncounted (external) tensor.
    bytes: u64,
    /// Elements in the storage (a view may show more, through zero strides, or fewer).
    elems: usize,
    kind: Cell<Kind>,
    c: Rc<Counters>,
}

impl Drop for Storage {
    fn drop(&mut self) {
        self.c.sub(self.bytes, self.kind.get());
    }
}

struct Handle {
    bytes: u64,
    c: Rc<Counters>,
}

impl Drop for Handle {
    fn drop(&mut self) {
        self.c.sub(self.bytes, Kind::Activation);
    }
}

/// A plain buffer (see [`Sim::raw`]).
pub struct Raw {
    bytes: u64,
    c: Rc<Counters>,
}

impl Drop for Raw {
    fn drop(&mut self) {
        self.c.sub(self.bytes, Kind::Activation);
    }
}

/// A shape-only tensor. Cloning it is candle's `Tensor::clone` (an `Arc` clone: nothing new).
#[derive(Clone)]
pub struct T {
    dims: Vec<usize>,
    strides: Vec<usize>,
    dt: Dt,
    storage: Rc<Storage>,
    _handle: Rc<Handle>,
}

fn contiguous_strides(dims: &[usize]) -> Vec<usize> {
    let mut s = vec![1; dims.len()];
    for i in (0..dims.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * dims[i + 1];
    }
    s
}

impl Sim {
    #[must_use]
    pub fn new() -> Self {
        Self::default()
    }

    fn handle(&self, ndim: usize, fresh: bool) -> Rc<Handle> {
        if ndim == 0 {
            return self.counted_handle(HANDLE_BYTES);
        }
        let strides = if fresh { ndim.max(4) } else { ndim };
        self.counted_handle(HANDLE_BYTES + 8 * (ndim + strides) as u64)
    }

    fn counted_handle(&self, bytes: u64) -> Rc<Handle> {
        self.c.add(bytes, Kind::Activation);
        Rc::new(Handle {
            bytes,
            c: Rc::clone(&self.c),
        })
    }

    /// A contiguous tensor whose storage counts `bytes` (0: uncounted) and whose handle is
    /// `handle`.
    fn contiguous_tensor(&self, dims: &[usize], dt: Dt, bytes: u64, handle: Rc<Handle>) -> T {
        T {
            dims: dims.to_vec(),
            strides: contiguous_strides(dims),
            dt,
            storage: Rc::new(Storage {
                bytes,
                elems: dims.iter().product(),
                kind: Cell::new(Kind::Activation),
                c: Rc::clone(&self.c),
            }),
            _handle: handle,
        }
    }

    /// A new contiguous tensor.
    #[must_use]
    pub fn alloc(&self, dims: &[usize], dt: Dt) -> T {
        let bytes = dims.iter().product::<usize>() as u64 * dt.size() + STORAGE_BYTES;
        self.c.add(bytes, Kind::Activation);
        self.contiguous_tensor(dims, dt, bytes, self.handle(dims.len(), true))
    }

    /// A plain heap buffer (a `Vec` an op builds), alive while the returned guard is.
    #[must_use]
    pub fn raw(&self, bytes: u64) -> Raw {
        self.c.add(bytes, Kind::Activation);
        Raw {
            bytes,
            c: Rc::clone(&self.c),
        }
    }

    /// A tensor that exists already and is not counted (a weight, a table built at load).
    #[must_use]
    pub fn external(&self, dims: &[usize], dt: Dt) -> T {
        let handle = Rc::new(Handle {
            bytes: 0,
            c: Rc::clone(&self.c),
        });
        self.contiguous_tensor(dims, dt, 0, handle)
    }

    /// The high-water mark so far.
    #[must_use]
    pub fn peak(&self) -> Peak {
        Peak {
            bytes: self.c.peak.get(),
            kv_cache_bytes: self.c.kv_at_peak.get(),
            scope: self.c.scope_at_peak.get(),
        }
    }

    /// Layer `l` begins (the families' layer loops call it).
    pub fn layer(&self, l: usize) {
        self.c.layer_starts.borrow_mut().push(self.c.events.get());
        self.set_place(Place::Layer(l));
    }

    /// The layers are done: the final norm and the head follow.
    pub fn after_layers(&self) {
        self.set_place(Place::After);
    }

    fn set_place(&self, place: Place) {
        let mut s = self.c.scope.get();
        s.place = place;
        self.c.scope.set(s);
    }

    /// Names the op allocations are made in until the guard drops (inside any op named
    /// before it).
    #[must_use]
    pub fn op(&self, name: &'static str) -> OpScope {
        let mut s = self.c.scope.get();
        if s.depth < OP_DEPTH {
            s.ops[s.depth] = name;
        }
        s.depth += 1;
        self.c.scope.set(s);
        OpScope {
            c: Rc::clone(&self.c),
        }
    }

    /// Allocations and frees so far, and the count at which each layer began: where the layers
    /// fall along a timeline of the forward.
    #[must_use]
    pub fn layer_starts(&self) -> (usize, Vec<usize>) {
        (self.c.events.get(), self.c.layer_starts.borrow().clone())
    }
}

impl T {
    pub(super) fn sim(&self) -> Sim {
        Sim {
            c: Rc::clone(&self.storage.c),
        }
    }

    #[must_use]
    pub fn dims(&self) -> &[usize] {
        &self.dims
    }

    #[must_use]
    pub fn dt(&self) -> Dt {
        self.dt
    }

    #[must_use]
    pub fn elems(&self) -> usize {
        self.dims.iter().product()
    }

    /// Elements of the whole storage this tensor views (a broadcast weight: the weight's).
    #[must_use]
    pub fn storage_elems(&self) -> usize {
        self.storage.elems
    }

    #[must_use]
    pub fn is_contiguous(&self) -> bool {
        // Dimensions of size 1 do not matter, as in candle.
        let mut expected = 1;
        for (d, s) in self.dims.iter().zip(&self.strides).rev() {
            if *d != 1 && *s != expected {
                return false;
            }
            expected *= d;
        }
        true
    }

    /// A view sharing this storage, with other dims and strides.
    fn view(&self, dims: Vec<usize>, strides: Vec<usize>) -> T {
        T {
            _handle: self.sim().handle(dims.len(), false),
            dims,
            strides,
            dt: self.dt,
            storage: Rc::clone(&self.storage),
        }
    }

    /// Counts this storage as KV cache from now on.
    pub fn mark_kv(&self) {
        if self.storage.kind.get() != Kind::KvCache {
            let c = &self.storage.c;
            let bytes = self.storage.bytes;
            c.sub(bytes, Kind::Activation);
            self.storage.kind.set(Kind::KvCache);
            c.add(bytes, Kind::KvCache);
        }
    }

    /// A new contiguous tensor of these dims in this dtype (an op's output).
    #[must_use]
    pub fn new_like(&self, dims: &[usize], dt: Dt) -> T {
        self.sim().alloc(dims, dt)
    }

    /// `reshape`: a view when contiguous, else a copy.
    #[must_use]
    pub fn reshape(&self, dims: &[usize]) -> T {
        let _op = self.sim().op("copy");
        if self.is_contiguous() {
            self.view(dims.to_vec(), contiguous_strides(dims))
        } else {
            let copy = self.new_like(&self.dims, self.dt);
            copy.view(dims.to_vec(), contiguous_strides(dims))
        }
    }

    #[must_use]
    pub fn transpose(&self, a: usize, b: usize) -> T {
        let (mut d, mut s) = (self.dims.clone(), self.strides.clone());
        d.swap(a, b);
        s.swap(a, b);
        self.view(d, s)
    }

    /// Transpose of the last two dimensions.
    #[must_use]
    pub fn t(&self) -> T {
        let n = self.dims.len();
        self.transpose(n - 2, n - 1)
    }

    /// `contiguous`: the same tensor when it already is, else a copy.
    #[must_use]
    pub fn contiguous(&self) -> T {
        let _op = self.sim().op("copy");
        if self.is_contiguous() {
            self.clone()
        } else {
            self.new_like(&self.dims, self.dt)
        }
    }

    /// `narrow`: a view.
    #[must_use]
    pub fn narrow(&self, dim: usize, len: usize) -> T {
        let mut d = self.dims.clone();
        d[dim] = len;
        self.view(d, self.strides.clone())
    }

    /// Drops a dimension of size 1 (a view).
    #[must_use]
    pub fn squeeze(&self, dim: usize) -> T {
        let (mut d, mut s) = (self.dims.clone(), self.strides.clone());
        d.remove(dim);
        s.remove(dim);
        self.view(d, s)
    }

    /// Adds a dimension of size 1 (a view).
    #[must_use]
    pub fn unsqueeze(&self, dim: usize) -> T {
        let (mut d, mut s) = (self.dims.clone(), self.strides.clone());
        d.insert(dim, 1);
        s.insert(dim, 0);
        self.view(d, s)
    }

    /// `broadcast_as` / `expand`: a view with zero strides on the new dimensions.
    #[must_use]
    pub fn broadcast_as(&self, dims: &[usize]) -> T {
        let extra = dims.len() - self.dims.len();
        let strides = dims
            .iter()
            .enumerate()
            .map(|(i, &d)| {
                if i < extra || self.dims[i - extra] != d {
                    0
                } else {
                    self.strides[i - extra]
                }
            })
            .collect();
        self.view(dims.to_vec(), strides)
    }

    /// `to_dtype`: the same tensor for the same dtype, else a new contiguous one.
    #[must_use]
    pub fn to_dtype(&self, dt: Dt) -> T {
        let _op = self.sim().op("cast");
        if dt == self.dt {
            self.clone()
        } else {
            self.new_like(&self.dims, dt)
        }
    }

    /// A unary op (exp, gelu, silu, sqr, affine, …): a new tensor of the same dims.
    #[must_use]
    pub fn unary(&self) -> T {
        let _op = self.sim().op("elementwise");
        self.new_like(&self.dims, self.dt)
    }

    /// A binary op, broadcasting: a new tensor of the broadcast dims.
    #[must_use]
    pub fn binary(&self, rhs: &T) -> T {
        let _op = self.sim().op("elementwise");
        let n = self.dims.len().max(rhs.dims.len());
        let pad = |d: &[usize]| {
            let mut v = vec![1; n - d.len()];
            v.extend_from_slice(d);
            v
        };
        let (a, b) = (pad(&self.dims), pad(&rhs.dims));
        let dims: Vec<usize> = a.iter().zip(&b).map(|(x, y)| *x.max(y)).collect();
        self.new_like(&dims, self.dt)
    }

    /// `matmul` (batch dims from `self`): a new tensor `(…, m, n)`.
    #[must_use]
    pub fn matmul(&self, rhs: &T) -> T {
        let _op = self.sim().op("matmul");
        let mut dims = self.dims.clone();
        let n = rhs.dims[rhs.dims.len() - 1];
        let last = dims.len() - 1;
        dims[last] = n;
        self.new_like(&dims, self.dt)
    }

    /// `max_keepdim` / `sum_keepdim` over the last dimension.
    #[must_use]
    pub fn reduce_last(&self) -> T {
        let _op = self.sim().op("reduction");
        let mut dims = self.dims.clone();
        let last = dims.len() - 1;
        dims[last] = 1;
        self.new_like(&dims, self.dt)
    }

    /// Indexes the rows of an embedding table: a new `(ids…, hidden)` tensor.
    #[must_use]
    pub fn embedding(&self, ids: &T) -> T {
        let _op = self.sim().op("gather");
        let mut dims = ids.dims.clone();
        dims.push(self.dims[1]);
        self.new_like(&dims, self.dt)
    }
}

/// `Tensor::cat` along `dim`: one new buffer. Contiguous inputs (or `dim` 0) give a contiguous
/// result; otherwise candle cats the inputs transposed along dim 0 and returns the transposed
/// view of that buffer.
#[must_use]
pub fn cat(ts: &[&T], dim: usize) -> T {
    let _op = ts[0].sim().op("cat");
    let mut dims = ts[0].dims.clone();
    dims[dim] = ts.iter().map(|t| t.dims[dim]).sum();
    if dim == 0 || ts.iter().all(|t| t.is_contiguous()) {
        ts[0].new_like(&dims, ts[0].dt)
    } else {
        let mut swapped = dims.clone();
        swapped.swap(0, dim);
        ts[0].new_like(&swapped, ts[0].dt).transpose(0, dim)
    }
}

/// Heap bytes a weight tensor's handle takes: `Arc<Tensor_>`, shape and stride vectors, and the
/// storage's `Arc<RwLock<Storage>>`.
#[must_use]
pub fn tensor_metadata_bytes(rank: usize) -> u64 {
    152 + 8 * rank as u64 + 8 * rank.max(4) as u64 + 56
}
