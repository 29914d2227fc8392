//! The simulated ops the rooms share, each as candle 0.11 runs it on the CPU, written against
//! the simulator's shape-only tensors (see `sim`). The bindings follow candle's code: a shadowed
//! `let` stays alive to the end of its function, a temporary to the end of its statement, and an
//! operand taken by value (`a + b`, `t / 2.0`, a tensor moved into a function) is released inside
//! the operation. Comments quote the candle lines they stand for.

// The names follow candle-transformers (b, s, h for batch, seq, hidden; q, k, v), so the two read
// side by side.
#![allow(clippy::many_single_char_names)]

use super::Dims;
use super::sim::{Dt, Raw, Sim, T, cat};

/// What a simulated forward needs besides the model's dims.
pub struct Run<'a> {
    pub sim: &'a Sim,
    pub d: &'a Dims,
    pub b: usize,
    pub s: usize,
    pub dt: Dt,
    /// The worker's CPU threads (at least 1): kernels that keep a scratch row per thread.
    pub threads: usize,
}

impl Run<'_> {
    /// A weight: it exists already (counted with the weights), so it costs nothing here.
    #[must_use]
    pub fn w(&self, dims: &[usize]) -> T {
        self.sim.external(dims, self.dt)
    }

    /// `lhs.matmul(rhs)`. In bf16 candle's CPU matmul widens both whole operand storages to f32
    /// and computes an f32 result, all alive while the bf16 output is written.
    #[must_use]
    pub fn mm(&self, lhs: &T, rhs: &T) -> T {
        if lhs.dt() != Dt::Bf16 {
            return lhs.matmul(rhs);
        }
        let _lhs = self.sim.alloc(&[lhs.storage_elems()], Dt::F32);
        let _rhs = self.sim.alloc(&[rhs.storage_elems()], Dt::F32);
        let mut out = lhs.dims().to_vec();
        let last = out.len() - 1;
        out[last] = rhs.dims()[rhs.dims().len() - 1];
        let _wide = self.sim.alloc(&out, Dt::F32);
        lhs.matmul(rhs)
    }
}

/// `candle_nn::Linear::forward`:
/// `[bsize, m, k]` contiguous → `x.reshape((bsize*m, k))?.matmul(&w.t())?.reshape((bsize, m, ()))?`,
/// else `x.matmul(&w.broadcast_left(bsize)?.t()?)?`; 2-D → `x.matmul(&w.t())?`;
/// then `x.broadcast_add(bias)` while `x` is still bound.
#[must_use]
pub fn linear(r: &Run<'_>, x: &T, out: usize, bias: bool) -> T {
    let _op = r.sim.op("linear");
    let w = r.w(&[out, x.dims()[x.dims().len() - 1]]);
    let y = match *x.dims() {
        [bsz, m, k] if x.is_contiguous() => {
            let wt = w.t();
            r.mm(&x.reshape(&[bsz * m, k]), &wt).reshape(&[bsz, m, out])
        }
        [bsz, _, k] => {
            let wb = w.broadcast_as(&[bsz, out, k]).t();
            r.mm(x, &wb)
        }
        _ => r.mm(x, &w.t()),
    };
    if bias { y.binary(&r.w(&[out])) } else { y }
}

/// `candle_nn::LayerNorm::forward` with a bias on a contiguous input (`ops::layer_norm`), and
/// `RmsNorm::forward` on a contiguous input (`ops::rms_norm`): one fused op, one output.
#[must_use]
pub fn norm(x: &T) -> T {
    let _op = x.sim().op("norm");
    x.unary()
}

/// `candle_nn::ops::softmax` over the last dimension:
/// `let max = xs.max_keepdim(dim)?; let diff = xs.broadcast_sub(&max)?; let num = diff.exp()?;
///  let den = num.sum_keepdim(dim)?; num.broadcast_div(&den)`
#[must_use]
pub fn softmax(x: &T) -> T {
    let _op = x.sim().op("softmax");
    let max = x.reduce_last();
    let diff = x.binary(&max);
    let num = diff.unary();
    let den = num.reduce_last();
    num.binary(&den)
}

/// `masked_fill(on_false, mask, v)`: `let on_true = Tensor::new(v, dev)?.broadcast_as(shape)?;
/// mask.where_cond(&on_true, on_false)`.
#[must_use]
pub fn masked_fill(r: &Run<'_>, on_false: &T, mask: &T) -> T {
    let _op = r.sim.op("mask");
    let on_true = r.sim.alloc(&[], Dt::F32).broadcast_as(mask.dims());
    let out = on_false.new_like(mask.dims(), on_false.dt());
    drop(on_true);
    out
}

/// `utils::repeat_kv(xs, n_rep)`: `Tensor::cat(&vec![&xs; n_rep], 2)?.reshape(…)` (the reshape
/// copies when the cat's result is a transposed view).
#[must_use]
pub fn repeat_kv(x: T, n_rep: usize) -> T {
    if n_rep == 1 {
        return x;
    }
    let (b, kv, s, hd) = (x.dims()[0], x.dims()[1], x.dims()[2], x.dims()[3]);
    let refs: Vec<&T> = vec![&x; n_rep];
    cat(&refs, 2).reshape(&[b, kv * n_rep, s, hd])
}

/// `Embedding::forward`: `ids.flatten_all()` (a view), `index_select`, reshape (a view).
#[must_use]
pub fn embedding(r: &Run<'_>, rows: usize, ids: &T) -> T {
    let _op = r.sim.op("embedding");
    let table = r.w(&[rows, r.d.hidden]);
    let mut dims = ids.dims().to_vec();
    dims.push(r.d.hidden);
    table.embedding(&ids.reshape(&[ids.elems()])).reshape(&dims)
}

/// `xs.narrow(1, seq_len - 1, 1)?.apply(&self.norm)?.apply(&self.lm_head)` (mistral, phi3,
/// mixtral): the last position's norm, on a strided view, then the head; `xs` and what else the
/// forward `held` are released after it, in that order.
#[must_use]
pub fn norm_head_on_last<H>(r: &Run<'_>, xs: T, held: H) -> T {
    let _op = r.sim.op("head");
    let last = xs.narrow(1, 1);
    let normed = norm_strided(r, &last);
    let logits = linear(r, &normed, r.d.vocab, false);
    drop((last, normed, xs, held));
    logits
}

/// `ModelForCausalLM::forward`'s `.narrow(1, seq_len - 1, 1)?.apply(&self.lm_head)` on the normed
/// hidden states (qwen2, qwen3); the KV cache goes after it.
#[must_use]
pub fn head_on_last(r: &Run<'_>, normed: T, kvs: Vec<(T, T)>) -> T {
    let _op = r.sim.op("head");
    let last = normed.narrow(1, 1);
    let logits = linear(r, &last, r.d.vocab, false);
    drop((last, normed, kvs));
    logits
}

/// `RmsNorm::forward` on a strided view (the last position of a batch above one): the general
/// `LayerNorm` path. `let x = x.to_dtype(f32)?; let norm_x = (x.sqr()?.sum_keepdim(D::Minus1)? /
/// h)?; let x_normed = x.broadcast_div(&(norm_x + eps)?.sqrt()?)?;
/// x_normed.to_dtype(x_dtype)?.broadcast_mul(&self.weight)`.
#[must_use]
pub fn norm_strided(r: &Run<'_>, x: &T) -> T {
    let _op = r.sim.op("norm");
    if x.is_contiguous() {
        return norm(x);
    }
    let wide = x.to_dtype(Dt::F32);
    let norm_x = {
        let sq = wide.unary();
        sq.reduce_last().unary()
    };
    let x_normed = {
        let denom = norm_x.unary().unary();
        drop(norm_x);
        wide.binary(&denom)
    };
    let out = x_normed.to_dtype(r.dt).binary(&r.w(&[r.d.hidden]));
    drop((wide, x_normed));
    out
}

/// The decoders' `prepare_*_attention_mask`: the `Vec<f32>` of s×s, `Tensor::from_slice(&mask,
/// (s, s))`, `mask.expand((rows, 1, s, s))?.to_dtype(self.dtype)` (rows: the batch, or 1).
#[must_use]
pub fn causal_mask(r: &Run<'_>, rows: usize) -> T {
    let _op = r.sim.op("causal mask");
    let s = r.s;
    let _vec = r.sim.raw((s * s * 4) as u64);
    let m = r.sim.alloc(&[s, s], Dt::F32);
    m.broadcast_as(&[rows, 1, s, s]).to_dtype(r.dt)
}

/// The decoders' attention core: `(q.matmul(&k.transpose(2, 3)?)? * scale)?` (the product
/// consumed), the mask added while the scaled scores stay bound (a `match` arm borrows them),
/// `softmax_last_dim`, `.matmul(&v)`.
#[must_use]
pub fn attend(r: &Run<'_>, q: &T, k: &T, v: &T, mask: &T) -> T {
    let _op = r.sim.op("attention");
    let w = r.mm(q, &k.transpose(2, 3)).unary();
    let w2 = w.binary(mask);
    let w3 = w2.unary();
    let out = r.mm(&w3, v);
    drop((w, w2, w3));
    out
}

/// The gated MLP: `let lhs = xs.apply(&gate)?.apply(&act)?; let rhs = xs.apply(&up)?;
/// (lhs * rhs)?.apply(&down)`.
#[must_use]
pub fn gated_mlp(r: &Run<'_>, x: &T) -> T {
    gated_mlp_width(r, x, r.d.intermediate)
}

/// [`gated_mlp`] `width` wide (an expert's).
#[must_use]
pub fn gated_mlp_width(r: &Run<'_>, x: &T, width: usize) -> T {
    let _op = r.sim.op("MLP");
    let lhs = linear(r, x, width, false).unary();
    let rhs = linear(r, x, width, false);
    let p = lhs.binary(&rhs);
    drop((lhs, rhs));
    linear(r, &p, r.d.hidden, false)
}

/// A `Vec` grown by `n` pushes of `elem`-byte items: capacity 4, then doubling (the counting
/// allocator counts a reallocation's growth, so the final capacity is what stays).
#[must_use]
pub fn pushed_vec(r: &Run<'_>, n: usize, elem: usize) -> Option<Raw> {
    (n > 0).then(|| r.sim.raw((n.next_power_of_two().max(4) * elem) as u64))
}

/// Buffers that stand for `Vec`s (see [`expert_lists`]).
pub type ExpertLists = ((Raw, Raw), Vec<(Option<Raw>, Option<Raw>)>);

/// The mixture-of-experts blocks' per-expert token and weight lists (`vec![vec![]; E]` twice), then one push of
/// a 4-byte item per token into each of its `k` experts' lists — with synthetic weights the same
/// first `k` experts take every one of the `n` tokens. Alive while the result is.
#[must_use]
pub fn expert_lists(r: &Run<'_>, n: usize, experts: usize, k: usize) -> ExpertLists {
    let _op = r.sim.op("expert routing");
    let outer = (
        r.sim.raw((experts * 24) as u64),
        r.sim.raw((experts * 24) as u64),
    );
    let lists: Vec<_> = (0..k)
        .map(|_| (pushed_vec(r, n, 4), pushed_vec(r, n, 4)))
        .collect();
    (outer, lists)
}

/// `rotate_half`-style rotary on a transposed view: `(x.broadcast_mul(&cos)? +
/// rotate_half(x)?.broadcast_mul(&sin))?`, `rotate_half` = `cat(&[&x2.neg()?, &x1], -1)`.
#[must_use]
pub fn rope_unfused(x: &T) -> T {
    let _op = x.sim().op("rotary embedding");
    let mut half = x.dims().to_vec();
    let last = half.len() - 1;
    half[last] /= 2;
    let with_cos = x.new_like(x.dims(), x.dt());
    let rotated = {
        let neg = x.new_like(&half, x.dt());
        let cat = x.new_like(x.dims(), x.dt());
        drop(neg);
        cat
    };
    let with_sin = rotated.unary();
    let out = with_cos.binary(&with_sin);
    drop((with_cos, with_sin, rotated));
    out
}

/// Gemma's own `RmsNorm::forward` (Gemma 2 and 3; always the general path, in f32, with
/// `weight + 1` as wide as the last dimension):
/// `let x = x.to_dtype(f32)?; let norm_x = (x.sqr()?.sum_keepdim(D::Minus1)? / h)?;
/// let x_normed = x.broadcast_div(&(norm_x + eps)?.sqrt()?)?;
/// x_normed.to_dtype(x_dtype)?.broadcast_mul(&(&self.weight + 1.0)?)`
#[must_use]
pub fn gemma_norm(r: &Run<'_>, x: &T) -> T {
    let _op = r.sim.op("norm");
    let wide = x.to_dtype(Dt::F32);
    let norm_x = {
        let sq = wide.unary();
        let sum = sq.reduce_last();
        let out = sum.unary();
        drop((sum, sq));
        out
    };
    let x_normed = {
        let plus = norm_x.unary();
        drop(norm_x);
        let root = plus.unary();
        let out = wide.binary(&root);
        drop((plus, root));
        out
    };
    let out = {
        let back = x_normed.to_dtype(r.dt);
        let w1 = r.sim.alloc(&[x.dims()[x.dims().len() - 1]], r.dt);
        let out = back.binary(&w1);
        drop((back, w1));
        out
    };
    drop((x_normed, wide));
    out
}

/// `((xs / cap)?.tanh()? * cap)?`: the quotient is a temporary, the tanh consumed by the product.
#[must_use]
pub fn softcap(xs: T) -> T {
    let _op = xs.sim().op("soft-capping");
    let quotient = xs.unary();
    drop(xs);
    let tanh = quotient.unary();
    let out = tanh.unary();
    drop((tanh, quotient));
    out
}

/// Rotary tables a decoder's build keeps: `count` tables of `max_positions × width` in the run
/// precision, each with its tensor metadata.
#[must_use]
pub fn rotary_tables(d: &Dims, dt: Dt, count: u64, width: usize) -> u64 {
    count * (d.max_positions * width) as u64 * dt.size()
        + count * super::sim::tensor_metadata_bytes(2)
}
