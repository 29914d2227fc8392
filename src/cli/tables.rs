//! The tables a finished sweep prints on stdout: what was sized, each curve's boundary and
//! recommendation, the pick, and time against the floor.

use crate::plan::Runtime;
use crate::plan::human_bytes;
use crate::report::{self, Results};

fn opt_bytes(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |b| b.to_string())
}

/// The tables on stdout.
pub fn print_results(r: &Results) {
    out!(
        "model {} ({}), device {}, capacity {} ({} bytes), headroom {:.0}%",
        r.model,
        r.family,
        r.device,
        crate::presets::capacity_label(r.capacity_bytes, r.plan.gpu, !r.on_gpu()),
        r.capacity_bytes,
        r.headroom * 100.0
    );
    if !r.on_gpu() && r.plan.gpu.is_some() {
        out!("({})", crate::presets::CPU_NOTE);
        for (d, base) in &r.baseline_bytes {
            if let Some(w) = r.weights_bytes.get(d) {
                out!(
                    "overhead beside the weights on this CPU ({d}): {} measured; on the GPU, add its CUDA context and workspace",
                    human_bytes(base.saturating_sub(*w))
                );
            }
        }
    }
    for runtime in &r.plan.runtimes {
        out!("what was sized: {}", r.sized(*runtime));
    }
    let torch = r.plan.uses_torch();
    if torch {
        out!(
            "PyTorch figures are PyTorch's own count (its profiler on the CPU, torch.cuda's statistics on a GPU)"
        );
        for (build, v) in &r.torch_versions {
            out!("{build}: {}", v.text());
        }
    }
    if r.plan.runtimes.contains(&Runtime::Candle) {
        out!("forward: {}", r.forward);
    }
    for (d, w) in &r.weights_bytes {
        out!("weights {d}: {w} bytes ({})", human_bytes(*w));
    }
    for (d, o) in &r.overhead_bytes {
        out!(
            "outside the pool {d}: overhead {} (context, kernels, cuBLAS workspace), ballast {}",
            human_bytes(*o),
            r.ballast_bytes
                .get(d)
                .copied()
                .map_or_else(|| "?".into(), human_bytes)
        );
    }
    if r.on_gpu() {
        out!("{}", report::CUDA_FIGURES);
    }
    out!();
    // With PyTorch in the plan each row names its runtime (and checkpointing).
    let rt = |runtime: Runtime, checkpointing: bool| -> String {
        if !torch {
            return String::new();
        }
        let ck = if checkpointing { "+ckpt" } else { "" };
        format!("{:<12} ", format!("{}{ck}", runtime.name()))
    };
    let rt_head = if torch {
        format!("{:<12} ", "runtime")
    } else {
        String::new()
    };
    let w = if torch { 8 } else { 5 };
    out!(
        "{:>4} {rt_head}{:>6} {:<w$} {:>6} {:<9} {:<9} {:<7} {:>13} {:>13} {:>13} {:>8}",
        "#",
        "seq",
        "dtype",
        "batch",
        "strategy",
        "purpose",
        "outcome",
        "peak_bytes",
        "total_bytes",
        "requested",
        "seconds"
    );
    let gpu = r.on_gpu();
    if gpu {
        out!(
            "{:>4} {:>6} {:<5} {:>6} {:>15} {:>15} {:>15} {:>15}",
            "#",
            "seq",
            "dtype",
            "batch",
            "pool_peak",
            "pool_reserved",
            "device_used",
            "nvml_process"
        );
        for (i, t) in r.trials.iter().enumerate() {
            out!(
                "{:>4} {:>6} {:<5} {:>6} {:>15} {:>15} {:>15} {:>15}",
                i + 1,
                t.seq,
                t.dtype.name(),
                t.batch,
                opt_bytes(t.pool_peak_bytes),
                opt_bytes(t.pool_reserved_bytes),
                opt_bytes(t.device_used_bytes),
                opt_bytes(t.process_bytes)
            );
        }
        out!();
    }
    for (i, t) in r.trials.iter().enumerate() {
        out!(
            "{:>4} {}{:>6} {:<w$} {:>6} {:<9} {:<9} {:<7} {:>13} {:>13} {:>13} {:>8.3}",
            i + 1,
            rt(t.runtime, t.checkpointing),
            t.seq,
            t.dtype.name(),
            t.batch,
            t.strategy.name(),
            t.purpose.name(),
            t.outcome.name(),
            opt_bytes(t.peak_bytes),
            opt_bytes(t.total_bytes),
            opt_bytes(t.requested_bytes),
            t.seconds
        );
    }
    out!();
    out!(
        "{rt_head}{:>6} {:<w$} {:<9} {:>9} {:<12} {:>11} {:>11}",
        "seq",
        "dtype",
        "strategy",
        "max_batch",
        "status",
        "trials_used",
        "recommended"
    );
    for (b, c) in r.boundaries.iter().zip(&r.recommendation.curves) {
        out!(
            "{}{:>6} {:<w$} {:<9} {:>9} {:<12} {:>11} {:>11}{}",
            rt(b.runtime, b.checkpointing),
            b.seq,
            b.dtype.name(),
            b.strategy.name(),
            b.max_batch.map_or_else(|| "-".into(), |m| m.to_string()),
            b.status.name(),
            b.trials_used,
            c.batch.map_or_else(
                || "-".into(),
                |m| if c.computed {
                    format!("{m}*")
                } else {
                    m.to_string()
                }
            ),
            b.reason().map_or_else(String::new, |r| format!("  ({r})"))
        );
    }
    if r.recommendation.curves.iter().any(|c| c.computed) {
        out!(
            "* computed from the measured line, not confirmed by a trial (--confirm all measures each)"
        );
    }
    out!();
    match &r.recommendation.pick {
        Some(p) => out!(
            "recommended: batch {} × seq {} in {}{} = {} tokens/step, {} ≤ limit {} (capacity − {:.0}% headroom)",
            p.batch,
            p.seq,
            p.dtype,
            match (torch, p.runtime, p.checkpointing) {
                (false, _, _) => String::new(),
                (true, Runtime::Torch, true) => " on PyTorch with gradient checkpointing".into(),
                (true, runtime, _) => format!(" on {}", runtime.label()),
            },
            p.tokens_per_step,
            match (p.total_bytes, p.predicted_bytes) {
                (Some(t), _) => format!("total {} measured", human_bytes(t)),
                (None, Some(pr)) => format!("total {} computed (not confirmed)", human_bytes(pr)),
                (None, None) => "total ?".into(),
            },
            human_bytes(r.recommendation.limit_bytes),
            r.headroom * 100.0
        ),
        // Nothing measured (every model build failed): saying that nothing fits would mislead.
        None if r.unbuilt().is_some() => {
            out!("no recommendation: no trial ran (the reason is above)");
        }
        // Every curve stopped on an error: nothing was found not to fit either.
        None if !r.boundaries.is_empty()
            && r.boundaries
                .iter()
                .all(|b| b.status == crate::search::BoundaryStatus::Incomplete) =>
        {
            out!("no recommendation: no curve finished (the reasons are above)");
        }
        None => out!(
            "no configuration fits under the headroom limit of {}",
            human_bytes(r.recommendation.limit_bytes)
        ),
    }
    if r.pick_is_host_limited() {
        out!("({})", report::HOST_LIMITED_PICK);
    }
    if r.recommendation.pick.is_some() && r.inference_only() {
        out!("({})", report::TRAINING_NEEDS_MORE);
    }
    let unfinished = r.unfinished_curves();
    if !unfinished.is_empty() {
        out!(
            "incomplete: {} not finished ({}); the pick is among the finished curves only",
            unfinished.len(),
            unfinished.join(", ")
        );
    }
    if r.floor_seconds > 0.0 {
        out!(
            "time in trials {:.1} s; the floor (b* and b*+1 of each curve) {:.1} s: {:.2}× the floor",
            r.trial_seconds,
            r.floor_seconds,
            r.trial_seconds / r.floor_seconds
        );
    }
}
