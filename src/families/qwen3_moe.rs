//! Qwen3-MoE (`qwen3_moe`): Qwen3's attention; every `decoder_sparse_step`-th layer's MLP is a
//! mixture of experts (all resident, `num_experts_per_tok` of them per token), the others dense;
//! candle's `qwen3_moe`.

// The simulated forward's names follow candle-transformers (b, s, h for batch, seq, hidden; q,
// k, v), so the two read side by side.
#![allow(clippy::many_single_char_names)]

use super::candle::{candle_config, prefill_decoder};
use super::config::{ConfigError, field, opt_field};
use super::llama::tensors_like_llama;
use super::ops::{Run, expert_lists, gated_mlp_width, linear, pushed_vec, rotary_tables};
use super::qwen3::dense_dims;
use super::sim::{Dt, T};
use super::{AnyModel, BuildError, Dims, Room, TensorShape};
use candle_core::{DType, Device};
use candle_nn::VarBuilder;
use candle_transformers::models::qwen3_moe;
use serde_json::Value;

pub struct Qwen3Moe;

impl Room for Qwen3Moe {
    fn name(&self) -> &'static str {
        "qwen3_moe"
    }
    fn is_decoder(&self) -> bool {
        true
    }
    /// candle-transformers 0.11 built with CUDA runs Qwen3-MoE through its fused expert block on
    /// every device (experts packed into new stacked tensors at load, a CUDA-only grouped GEMM),
    /// which oomlab has not checked.
    fn not_in_this_build(&self) -> Option<&'static str> {
        cfg!(feature = "cuda").then_some(
            "this build (the cuda feature) runs it through candle's fused expert kernel, which oomlab has not checked; use the default build, which measures it on the CPU",
        )
    }
    fn dims(&self, v: &Value) -> std::result::Result<Dims, ConfigError> {
        let dense = dense_dims(v)?;
        with_experts(v, &dense)
    }
    fn tensors(&self, d: &Dims) -> Vec<TensorShape> {
        tensors_like_llama(d, d.attention_bias, true)
    }
    fn check_candle(&self, config: &str, _d: &Dims) -> std::result::Result<(), ConfigError> {
        candle_config::<qwen3_moe::Config>(config).map(drop)
    }
    fn build(
        &self,
        config: &str,
        _d: &Dims,
        vb: VarBuilder<'_>,
        _dtype: DType,
        _device: &Device,
    ) -> std::result::Result<AnyModel, BuildError> {
        let cfg: qwen3_moe::Config = candle_config(config)?;
        Ok(qwen3_moe::ModelForCausalLM::new(&cfg, vb)?.into())
    }
    fn table_bytes(&self, d: &Dims, dt: Dt) -> u64 {
        rotary_tables(d, dt, 2, d.head_dim() / 2)
    }
    fn simulate(&self, r: &Run<'_>, inputs: &[T]) -> T {
        super::qwen3::simulated(r, &inputs[0], Some(&qwen3_sparse_moe))
    }
}

prefill_decoder!(qwen3_moe::ModelForCausalLM);

/// `dense` with Qwen3-MoE's expert fields, as candle 0.11 reads them.
fn with_experts(v: &Value, dense: &Dims) -> std::result::Result<Dims, ConfigError> {
    // transformers 5 saves it as `num_local_experts` (its attribute map); candle's config
    // reads `num_experts` only, and refuses a config without it.
    let experts = match opt_field(v, "num_experts")? {
        Some(n) => n,
        None => opt_field(v, "num_local_experts")?.unwrap_or(128),
    };
    let per_token = field(v, "num_experts_per_tok")?;
    if experts > 0 && (per_token == 0 || per_token > experts) {
        return Err(format!(
            "field \"num_experts_per_tok\" = {per_token} must be between 1 and \"num_experts\" = {experts}"
        )
        .into());
    }
    // Hugging Face keeps these layers dense; candle 0.11 does not read the field, so it would
    // build experts the checkpoint does not have.
    if v.get("mlp_only_layers")
        .and_then(Value::as_array)
        .is_some_and(|a| !a.is_empty())
    {
        return Err(
            "field \"mlp_only_layers\" lists dense layers, which candle 0.11's Qwen3-MoE does not read (it would build experts there); oomlab reads configs where it is empty".into(),
        );
    }
    let moe_intermediate = field(v, "moe_intermediate_size")?;
    if experts > 0 && moe_intermediate == 0 {
        return Err("field \"moe_intermediate_size\" must be at least 1, found 0".into());
    }
    Ok(Dims {
        experts,
        experts_per_token: per_token,
        moe_intermediate,
        sparse_step: field(v, "decoder_sparse_step")?,
        ..dense.clone()
    })
}

/// candle's `Qwen3SparseMoeBlock::forward` (the CPU's; the CUDA build runs a fused block). With
/// synthetic (zero) weights the router's scores tie and the stable `arg_sort` hands every token to
/// the first `num_experts_per_tok` experts — the case simulated, as for Mixtral. Every shadowed
/// binding (logits, softmax, the sorted ids, the gathered weights) stays alive to the end, with
/// the host-side tables: `to_vec2` of the weights and of the ids (a `Vec` per token), the
/// per-expert token and weight lists.
fn qwen3_sparse_moe(r: &Run<'_>, x: &T) -> T {
    let (b, s, h) = (r.b, r.s, r.d.hidden);
    let (n, experts, k) = (b * s, r.d.experts, r.d.experts_per_token);
    let xs = x.reshape(&[n, h]);
    let router_logits = linear(r, &xs, experts, false);
    let routing = router_logits.unary(); // softmax_last_dim
    // `.arg_sort_last_dim(false)?.narrow(D::Minus1, 0, k)?.contiguous()?`
    let experts_per_tok = routing
        .new_like(&[n, experts], Dt::U32)
        .narrow(1, k)
        .contiguous();
    let gathered = routing.new_like(&[n, k], routing.dt()); // gather
    // `routing_weights.to_dtype(F32)?.to_vec2::<f32>()?`, `experts_per_tok.to_vec2::<u32>()?`
    let weight_rows = {
        let wide = gathered.to_dtype(Dt::F32);
        let rows = (pushed_vec(r, n, 24), r.sim.raw((n * k * 4) as u64));
        drop(wide);
        rows
    };
    let id_rows = (pushed_vec(r, n, 24), r.sim.raw((n * k * 4) as u64));
    // `top_x` and `selected_experts`
    let lists = expert_lists(r, n, experts, k);
    let mut ys = xs.new_like(&[n, h], xs.dt()); // `xs.zeros_like()`
    for _ in 0..k {
        let top_x = r.sim.alloc(&[n], Dt::U32);
        // `Tensor::new(..)?.reshape(((), 1))?.to_dtype(xs.dtype())?`
        let selected = r.sim.alloc(&[n], Dt::F32).reshape(&[n, 1]).to_dtype(r.dt);
        // `xs.index_select(&top_x, 0)?.reshape(((), hidden_dim))?`
        let current_state = xs.new_like(&[n, h], xs.dt()).reshape(&[n, h]);
        let chs = gated_mlp_width(r, &current_state, r.d.moe_intermediate);
        let weighted = chs.binary(&selected);
        // `ys = ys.index_add(&top_x, &current_hidden_states, 0)?`
        let added = ys.new_like(&[n, h], ys.dt());
        ys = added;
        drop((top_x, selected, current_state, chs, weighted));
    }
    let out = ys.reshape(&[b, s, h]);
    drop((ys, lists, id_rows, weight_rows));
    drop((gathered, experts_per_tok, routing, router_logits, xs));
    out
}
