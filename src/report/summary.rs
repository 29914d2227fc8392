//! Replays recorded trials through the (pure) search: where each curve stands, and the results
//! document. The driver and `oomlab open` use the same replay, so a resumed or reopened sweep
//! shows exactly what a finished one would.

use super::journal::JournalContents;
use super::records::{
    BoundaryRecord, CurvePick, CurveRecommendation, Failure, HostLimit, Outcome, PICK_RULE,
    Purpose, Recommendation, Results, Stop, TrialRecord, WorkerInfo,
};
use crate::catalog::ModelSpec;
use crate::plan::{Curve, SweepPlan};
use crate::search::{self, BoundaryStatus, Found, Obs, Rec, SearchCtx, Step};
use std::collections::{BTreeMap, HashMap};

/// Where one curve stands.
#[derive(Debug, Clone, PartialEq)]
pub enum CurvePhase {
    /// Run a search trial at this batch.
    Search(usize),
    /// Boundary found, and a confirmation fell over the limit: measure this batch.
    Recommend {
        found: Found,
        batch: usize,
    },
    /// Boundary found and a recommendation known: measured, or computed from the measured line
    /// (`predicted_bytes`, until a trial confirms it).
    Done {
        found: Found,
        recommended: Option<usize>,
        predicted_bytes: Option<u64>,
    },
    Incomplete {
        found: Option<Found>,
        stop: Stop,
    },
}

fn obs_of<'a>(trials: impl Iterator<Item = &'a TrialRecord>) -> Vec<Obs> {
    trials
        .filter(|t| t.outcome != Outcome::Failed)
        .map(|t| Obs {
            batch: t.batch,
            fits: t.outcome == Outcome::Fit,
            total_bytes: t.total_bytes,
        })
        .collect()
}

/// A failure that stops the curve: an error, or a second kill at the same batch.
fn blocking_failure<'a>(trials: impl Iterator<Item = &'a TrialRecord>) -> Option<Stop> {
    let mut kills: HashMap<usize, usize> = HashMap::new();
    for t in trials {
        match t.failure {
            Some(Failure::Error) => {
                return Some(Stop::TrialError {
                    batch: t.batch,
                    message: t.reason.clone().unwrap_or_else(|| "error".into()),
                });
            }
            Some(Failure::Killed) => {
                let n = kills.entry(t.batch).or_default();
                *n += 1;
                if *n >= 2 {
                    return Some(Stop::KilledTwice {
                        batch: t.batch,
                        reason: t.reason.clone().unwrap_or_else(|| "signal".into()),
                    });
                }
            }
            _ => {}
        }
    }
    None
}

fn baseline_for(curve: Curve, trials: &[TrialRecord], workers: &[WorkerInfo]) -> Option<u64> {
    trials
        .iter()
        .filter(|t| t.curve().build() == curve.build())
        .find_map(|t| t.baseline_bytes)
        .or_else(|| {
            workers
                .iter()
                .rev()
                .find(|w| w.build() == curve.build())
                .map(|w| w.built.baseline_bytes)
        })
}

/// How far past its largest fit a PyTorch curve on the CPU may try while no OOM is known.
pub const TORCH_CPU_JUMP: usize = 8;

/// Most trials a curve may record (measured or killed) before the driver stops it: twice what
/// the search and the recommendation can take (each batch may be killed once and retried).
#[must_use]
pub fn trial_cap(plan: &SweepPlan) -> usize {
    2 * (search::trial_bound(plan.strategy, plan.batch) + search::recommend_bound(plan.batch))
}

/// Decides the next action for `curve` from everything recorded so far. Every measurement of
/// the curve (search and recommendation trials) is an observation: a confirmation trial that
/// runs out of memory below b* makes the curve `non_monotone`.
#[must_use]
///
/// With the model's `spec`, `auto` starts from the estimator's b* on top of the worker's
/// measured baseline (the replay for a results document needs no spec: where a curve stands
/// does not depend on which batch it would try next).
pub fn curve_phase(
    plan: &SweepPlan,
    curve: Curve,
    trials: &[TrialRecord],
    workers: &[WorkerInfo],
    load_failure: Option<&str>,
    spec: Option<&ModelSpec>,
) -> CurvePhase {
    if let Some(message) = load_failure {
        return CurvePhase::Incomplete {
            found: None,
            stop: Stop::LoadFailed {
                message: message.to_string(),
            },
        };
    }
    let mine: Vec<&TrialRecord> = trials
        .iter()
        .filter(|t| t.curve() == curve && t.strategy == plan.strategy)
        .collect();
    // Aim predictions at what the worker can really reach: the machine's ceiling when the
    // capacity overcommits it (CPU). On CUDA a trial's total holds the overhead outside the
    // pool already, so the capacity itself is the ceiling.
    let worker = workers.iter().rev().find(|w| w.build() == curve.build());
    let ceiling = worker.and_then(|w| w.built.host_ceiling_bytes);
    let capacity_bytes = ceiling.map_or(plan.capacity_bytes, |c| c.min(plan.capacity_bytes));
    let baseline_bytes = baseline_for(curve, trials, workers);
    // candle's curves start from the estimator's b*; PyTorch's from the PyTorch estimator's
    // where it models the point on the CPU, else from a probe, following their measured line.
    let hint = match (spec, baseline_bytes) {
        (Some(spec), Some(base))
            if plan.strategy == search::Strategy::Auto
                && curve.runtime == crate::plan::Runtime::Torch
                && matches!(plan.device, crate::plan::Device::Cpu { .. }) =>
        {
            crate::estimate::torch::max_batch_over_baseline(
                spec,
                curve.seq,
                curve.dtype,
                crate::estimate::torch::How::of_curve(plan, spec.family, curve.checkpointing),
                plan.device.threads(),
                base,
                capacity_bytes,
                plan.batch.max + 1,
            )
            .map(|b| b.unwrap_or(0))
        }
        (Some(spec), Some(base))
            if plan.strategy == search::Strategy::Auto
                && curve.runtime == crate::plan::Runtime::Candle =>
        {
            Some(
                crate::estimate::max_batch_over_baseline(
                    spec,
                    curve.seq,
                    curve.dtype,
                    plan.device.threads(),
                    base,
                    capacity_bytes,
                    plan.batch.max + 1,
                )
                .unwrap_or(0),
            )
        }
        _ => None,
    };
    // The estimator models the CPU forward to the byte. On a GPU the pool's rounding and
    // cuBLAS add their share, so its b* only sizes a first probe, kept safely below it.
    let on_gpu = matches!(plan.device, crate::plan::Device::Cuda { .. });
    let hint = if on_gpu {
        hint.map(|h| (h * 3 / 4).max(plan.batch.min))
    } else {
        hint
    };
    let ctx = SearchCtx {
        range: plan.batch,
        capacity_bytes,
        baseline_bytes,
        hint,
        hint_exact: !on_gpu,
        // PyTorch on the CPU runs every trial to its end: at most 8× the largest fit at a time.
        max_jump: (curve.runtime == crate::plan::Runtime::Torch && !on_gpu)
            .then_some(TORCH_CPU_JUMP),
    };
    let all = obs_of(mine.iter().copied());
    let step = search::next_step(plan.strategy, &ctx, &all);
    let found = match step {
        Step::Done(f) => Some(f),
        Step::Trial(_) => None,
    };
    if let Some(stop) = blocking_failure(mine.iter().copied()) {
        return CurvePhase::Incomplete { found, stop };
    }
    let recorded = mine
        .iter()
        .filter(|t| t.failure.is_none_or(|f| f != Failure::Cancelled))
        .count();
    let cap = trial_cap(plan);
    let phase = match step {
        Step::Trial(b) => CurvePhase::Search(b),
        Step::Done(found) => {
            let limit = plan.headroom_limit_bytes();
            let confirmations: Vec<&&TrialRecord> = mine
                .iter()
                .filter(|t| t.purpose == Purpose::Recommend && t.outcome != Outcome::Failed)
                .collect();
            let confirm_failed = confirmations
                .iter()
                .any(|t| !(t.outcome == Outcome::Fit && t.total_bytes.is_some_and(|b| b <= limit)));
            match search::recommend(
                &ctx,
                &found,
                limit,
                &all,
                confirm_failed,
                confirmations.len(),
            ) {
                Rec::Trial(batch) => CurvePhase::Recommend { found, batch },
                Rec::Done(recommended) => {
                    return CurvePhase::Done {
                        found,
                        recommended,
                        predicted_bytes: None,
                    };
                }
                Rec::Computed {
                    batch,
                    predicted_bytes,
                } => {
                    return CurvePhase::Done {
                        found,
                        recommended: Some(batch),
                        predicted_bytes: Some(predicted_bytes),
                    };
                }
            }
        }
    };
    if recorded >= cap {
        return CurvePhase::Incomplete {
            found,
            stop: Stop::TrialCap { trials: recorded },
        };
    }
    phase
}

fn host_limit(
    curve: Curve,
    plan: &SweepPlan,
    trials: &[TrialRecord],
    workers: &[WorkerInfo],
) -> Option<HostLimit> {
    let lowest = trials
        .iter()
        .filter(|t| t.curve() == curve && t.strategy == plan.strategy)
        .filter(|t| matches!(t.outcome, Outcome::Oom | Outcome::HostMemory))
        .min_by_key(|t| t.batch)?;
    (lowest.outcome == Outcome::HostMemory).then(|| HostLimit {
        batch: lowest.batch,
        ceiling_bytes: workers
            .iter()
            .rev()
            .find(|w| w.build() == curve.build())
            .and_then(|w| w.built.host_ceiling_bytes),
    })
}

/// Builds the results document from a journal's contents (finished or not).
#[must_use]
pub fn summarize(c: &JournalContents) -> Results {
    let plan = &c.header.plan;
    let mut boundaries = Vec::new();
    let mut curves = Vec::new();
    let mut notes = Vec::new();
    let mut incomplete = false;
    let mut floor_seconds = 0.0;
    for curve in plan.curves() {
        let load_failure = c
            .load_failures
            .iter()
            .rev()
            .find(|(b, _)| *b == curve.build())
            .map(|(_, r)| r.as_str());
        let phase = curve_phase(plan, curve, &c.trials, &c.workers, load_failure, None);
        let trials_used = c
            .trials
            .iter()
            .filter(|t| {
                t.curve() == curve && t.strategy == plan.strategy && t.purpose == Purpose::Search
            })
            .count();
        let (found, rec, predicted_bytes, stop) = match phase {
            CurvePhase::Done {
                found,
                recommended,
                predicted_bytes,
            } => (Some(found), recommended, predicted_bytes, None),
            CurvePhase::Search(_) => (None, None, None, Some(Stop::NotFinished)),
            CurvePhase::Recommend { found, .. } => {
                (Some(found), None, None, Some(Stop::NotFinished))
            }
            CurvePhase::Incomplete { found, stop } => (found, None, None, Some(stop)),
        };
        incomplete |= stop.is_some();
        // A known boundary keeps its status even if the recommendation could not finish.
        let mut status = found.map_or(BoundaryStatus::Incomplete, |f| f.status);
        let contradiction = found.and_then(|f| f.contradiction);
        let host_limit = host_limit(curve, plan, &c.trials, &c.workers);
        if let Some(limit) = &host_limit
            && matches!(status, BoundaryStatus::Exact | BoundaryStatus::NoneFits)
        {
            status = BoundaryStatus::HostLimited;
            notes.push(format!("{curve}: {}", limit.text()));
        }
        let host_limit = host_limit.filter(|_| status == BoundaryStatus::HostLimited);
        let record = BoundaryRecord {
            runtime: curve.runtime,
            seq: curve.seq,
            dtype: curve.dtype,
            checkpointing: curve.checkpointing,
            strategy: plan.strategy,
            max_batch: found.and_then(|f| f.max_batch),
            status,
            trials_used,
            contradiction,
            stop,
            host_limit,
        };
        if let Some(r) = record
            .reason()
            .filter(|_| status != BoundaryStatus::HostLimited)
        {
            notes.push(format!("{curve}: {r}"));
        }
        if let Some(b) = found.and_then(|f| f.max_batch) {
            for (batch, outcome) in [(b, Outcome::Fit), (b + 1, Outcome::Oom)] {
                if let Some(t) = c
                    .trials
                    .iter()
                    .find(|t| t.curve() == curve && t.batch == batch && t.outcome == outcome)
                {
                    floor_seconds += t.seconds;
                }
            }
        }
        boundaries.push(record);
        let total = rec.and_then(|b| {
            c.trials
                .iter()
                .find(|t| t.curve() == curve && t.batch == b && t.outcome == Outcome::Fit)
                .and_then(|t| t.total_bytes)
        });
        curves.push(CurveRecommendation {
            runtime: curve.runtime,
            seq: curve.seq,
            dtype: curve.dtype,
            checkpointing: curve.checkpointing,
            batch: rec,
            total_bytes: total,
            computed: predicted_bytes.is_some(),
            predicted_bytes,
        });
    }
    let pick = curves
        .iter()
        .filter_map(|c| {
            c.batch.map(|b| CurvePick {
                runtime: c.runtime,
                seq: c.seq,
                dtype: c.dtype,
                checkpointing: c.checkpointing,
                batch: b,
                total_bytes: c.total_bytes,
                tokens_per_step: b * c.seq,
                computed: c.computed,
                predicted_bytes: c.predicted_bytes,
            })
        })
        .max_by_key(|p| {
            (
                p.tokens_per_step,
                p.dtype.width_rank(),
                !p.checkpointing,
                p.seq,
            )
        });
    let mut weights_bytes = BTreeMap::new();
    let mut baseline_bytes = BTreeMap::new();
    let mut overhead_bytes = BTreeMap::new();
    let mut ballast_bytes = BTreeMap::new();
    let mut torch_versions = BTreeMap::new();
    for w in &c.workers {
        let key = w.build().label();
        weights_bytes.insert(key.clone(), w.built.weights_bytes);
        baseline_bytes.insert(key.clone(), w.built.baseline_bytes);
        if let Some(o) = w.built.overhead_bytes {
            overhead_bytes.insert(key.clone(), o);
        }
        if let Some(b) = w.built.ballast_bytes {
            ballast_bytes.insert(key.clone(), b);
        }
        if let Some(v) = &w.built.versions {
            torch_versions.insert(key, v.clone());
        }
    }
    if c.torn_tail {
        notes.push("the journal's last line was torn (interrupted write) and was ignored".into());
    }
    Results {
        oomlab_version: c.header.oomlab_version.clone(),
        plan: plan.clone(),
        model: c.header.model_name.clone(),
        model_ref: plan.model.clone(),
        family: c.header.family,
        forward: c.header.forward.clone(),
        config_hash: c.header.config_hash.clone(),
        device: plan.device,
        threads: c.workers.last().map(|w| w.built.threads),
        host_memory_bytes: c.host.map(|h| h.physical_bytes),
        host_available_bytes: c.host.map(|h| h.available_bytes),
        host_cgroup_limit_bytes: c.host.and_then(|h| h.cgroup_limit_bytes),
        capacity_bytes: plan.capacity_bytes,
        headroom: plan.headroom,
        strategy: plan.strategy,
        batch_range: [plan.batch.min, plan.batch.max],
        weights_bytes,
        baseline_bytes,
        overhead_bytes,
        ballast_bytes,
        torch_versions,
        trials: c.trials.clone(),
        boundaries,
        recommendation: Recommendation {
            headroom: plan.headroom,
            limit_bytes: plan.headroom_limit_bytes(),
            rule: PICK_RULE.to_string(),
            curves,
            pick,
        },
        incomplete,
        notes,
        trial_seconds: c.trials.iter().map(|t| t.seconds).sum(),
        floor_seconds,
    }
}

#[cfg(test)]
mod tests;
