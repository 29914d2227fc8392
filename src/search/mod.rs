//! Boundary search: pure functions of what has been measured so far. No I/O, no threads.
//!
//! Each strategy answers "which batch next, or are we done?" from the curve's observations, so a
//! resumed sweep continues exactly where it stopped by replaying its journal.
//!
//! On the CPU, memory is monotone in batch, and for f32/f16 affine: `total(b) = base + k·b`, with
//! the intercept known before any forward (the live bytes after build and warm-up). `auto` starts
//! at the estimator's b* when there is one (then b*+1 proves the boundary: two trials), else
//! probes the range minimum to fix the slope and predicts b*; it confirms b* fits and b*+1 does
//! not. A missed hint costs one correction (b*−1 after an OOM, the line after a fit); after a
//! few predicted trials without closing, it bisects.
//!
//! On a GPU memory need not be monotone (cuBLAS picks kernels and workspaces by shape), and any
//! journal may hold contradicting observations. Whatever the observations, every function here
//! returns a batch not yet measured or a final answer, never panics, and stays within
//! [`trial_bound`] / [`recommend_bound`] trials: each step tests a batch strictly between the
//! largest fit below the lowest OOM and that OOM, and that open interval only shrinks. A fit at
//! or above an OOM ends the search with [`BoundaryStatus::NonMonotone`], naming both batches; its
//! answer is the largest measured fit below the lowest OOM (measured first when there is none).

use crate::plan::BatchRange;
use serde::{Deserialize, Serialize};

pub use crate::plan::Strategy;

/// One measured trial of a curve, reduced to what the search needs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Obs {
    pub batch: usize,
    pub fits: bool,
    /// Absolute high-water mark of a fit (None for an OOM).
    pub total_bytes: Option<u64>,
}

/// What the search knows besides the observations.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SearchCtx {
    pub range: BatchRange,
    pub capacity_bytes: u64,
    /// Live bytes after build and warm-up (the intercept), when known.
    pub baseline_bytes: Option<u64>,
    /// The estimator's b* (`auto` starts there instead of probing the range minimum); `Some(0)`
    /// when it predicts that nothing fits.
    pub hint: Option<usize>,
    /// Whether the hint is expected to be right to the batch (the estimator models the CPU
    /// forward exactly). On a GPU it only sizes the first probe: no b*−1 / b*+1 steps around
    /// it, the measured line takes over from there.
    pub hint_exact: bool,
    /// While no out-of-memory is known, no trial beyond this many times the largest fit (`None`:
    /// no limit). A CPU PyTorch trial cannot be stopped at the capacity — it runs to its end, or
    /// to this machine's memory — so a line that extrapolates far (a training step's flat
    /// stretch, where the optimizer's temporaries make the peak) must not send it to the top of
    /// the range.
    pub max_jump: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BoundaryStatus {
    /// b* fits and b*+1 does not, both measured.
    Exact,
    /// Even the range maximum fits.
    AboveRange,
    /// The range minimum does not fit.
    NoneFits,
    /// A batch fitted at or above a batch that ran out of memory: memory is not monotone in batch
    /// here. The answer is the largest measured fit below the lowest OOM.
    NonMonotone,
    /// This machine's memory, not the simulated capacity, stopped the search: b* is the
    /// machine's boundary, a lower bound of the simulated device's.
    HostLimited,
    /// Cancelled, or a trial failed for a reason other than OOM.
    Incomplete,
}

impl BoundaryStatus {
    #[must_use]
    pub fn name(self) -> &'static str {
        match self {
            Self::Exact => "exact",
            Self::AboveRange => "above_range",
            Self::NoneFits => "none_fits",
            Self::NonMonotone => "non_monotone",
            Self::HostLimited => "host_limited",
            Self::Incomplete => "incomplete",
        }
    }
}

/// Two observations that contradict monotone memory: `fit_batch` fitted although
/// `oom_batch <= fit_batch` ran out of memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Contradiction {
    pub fit_batch: usize,
    pub oom_batch: usize,
}

impl Contradiction {
    /// One sentence for tables and logs.
    #[must_use]
    pub fn text(&self) -> String {
        if self.fit_batch == self.oom_batch {
            format!(
                "batch {} both fitted and ran out of memory: memory is not repeatable here",
                self.fit_batch
            )
        } else {
            format!(
                "batch {} fitted but batch {} ran out of memory: memory is not monotone in batch here",
                self.fit_batch, self.oom_batch
            )
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub status: BoundaryStatus,
    /// Largest measured fit below the lowest measured OOM (None when none fits).
    pub max_batch: Option<usize>,
    /// Present with [`BoundaryStatus::NonMonotone`].
    pub contradiction: Option<Contradiction>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Trial(usize),
    Done(Found),
}

/// `⌈log2(n)⌉` for n ≥ 1.
fn ceil_log2(n: usize) -> usize {
    n.max(1).next_power_of_two().trailing_zeros() as usize
}

/// Most search trials a strategy can take on one curve, whatever it measures: every batch of
/// the range once for `grid`; `2·⌈log2(range)⌉ + 6` for `auto` and `binsearch`.
#[must_use]
pub fn trial_bound(strategy: Strategy, range: BatchRange) -> usize {
    let n = range.max - range.min + 1;
    match strategy {
        Strategy::Grid => n,
        Strategy::Auto | Strategy::Binsearch => 2 * ceil_log2(n) + 6,
    }
}

/// Most trials the recommendation can take on one curve: three predictions, then bisection.
#[must_use]
pub fn recommend_bound(range: BatchRange) -> usize {
    ceil_log2(range.max - range.min + 1) + 4
}

/// Where the observations stand: the lowest OOM, the largest fit below it, and a fit at or above
/// it when there is one.
struct Bounds {
    fit: Option<usize>,
    oom: Option<usize>,
    contradiction: Option<Contradiction>,
}

fn bounds(obs: &[Obs]) -> Bounds {
    let oom = obs.iter().filter(|o| !o.fits).map(|o| o.batch).min();
    let below = |b: usize| oom.is_none_or(|o| b < o);
    let fit = obs
        .iter()
        .filter(|o| o.fits && below(o.batch))
        .map(|o| o.batch)
        .max();
    let contradiction = oom.and_then(|oom_batch| {
        obs.iter()
            .filter(|o| o.fits && o.batch >= oom_batch)
            .map(|o| o.batch)
            .max()
            .map(|fit_batch| Contradiction {
                fit_batch,
                oom_batch,
            })
    });
    Bounds {
        fit,
        oom,
        contradiction,
    }
}

/// The two points of the measured line: the largest fit, and the smallest fit (the widest
/// secant) or, with one fit, the known intercept. On a GPU totals move in the pool's steps
/// (tens of MiB): two neighbouring batches can take the same bytes, and only a wide secant
/// keeps the slope. Exact for affine data either way.
fn secant(fits: &[(usize, u64)], baseline: Option<u64>) -> Option<((usize, u64), (usize, u64))> {
    let last = *fits.last()?;
    let first = if fits.len() >= 2 {
        fits[0]
    } else {
        (0, baseline?)
    };
    Some((first, last))
}

/// Predicts the largest batch whose total stays at or under `limit`, from the measured line
/// ([`secant`]). Integer arithmetic: exact for affine data.
fn predict(fits: &[(usize, u64)], baseline: Option<u64>, limit: u64) -> Option<usize> {
    let ((b0, t0), (b1, t1)) = secant(fits, baseline)?;
    if t1 <= t0 || b1 <= b0 {
        return None;
    }
    // total(b) = t1 + (b - b1)·(t1 - t0)/(b1 - b0) ≤ limit
    let slope_num = u128::from(t1 - t0);
    let slope_den = (b1 - b0) as u128;
    if limit < t1 {
        // Below the last point: solve from it downwards.
        let over = u128::from(t1 - limit);
        let down = (over * slope_den).div_ceil(slope_num);
        return Some(b1.saturating_sub(usize::try_from(down).unwrap_or(usize::MAX)));
    }
    let room = u128::from(limit - t1);
    let up = room * slope_den / slope_num;
    Some(b1.saturating_add(usize::try_from(up).unwrap_or(usize::MAX / 2)))
}

/// Measured fits with a total, below `upper` (exclusive), sorted by batch, one per batch.
fn fits_below(obs: &[Obs], upper: Option<usize>) -> Vec<(usize, u64)> {
    let mut fits: Vec<(usize, u64)> = obs
        .iter()
        .filter(|o| o.fits && upper.is_none_or(|u| o.batch < u))
        .filter_map(|o| Some((o.batch, o.total_bytes?)))
        .collect();
    fits.sort_unstable();
    fits.dedup_by_key(|p| p.0);
    fits
}

/// The next step of `strategy` for one curve.
#[must_use]
pub fn next_step(strategy: Strategy, ctx: &SearchCtx, obs: &[Obs]) -> Step {
    let (lo, hi) = (ctx.range.min, ctx.range.max);
    let Bounds {
        fit,
        oom,
        contradiction,
    } = bounds(obs);
    let done = |status, max_batch| {
        Step::Done(Found {
            status,
            max_batch,
            contradiction,
        })
    };
    if contradiction.is_some() {
        match oom {
            // Nothing measured fits below the lowest OOM yet: find what does (bisection; every
            // batch below that OOM is unmeasured).
            Some(o) if fit.is_none() && o > lo => {
                return Step::Trial(usize::midpoint(lo - 1, o).max(lo));
            }
            _ => return done(BoundaryStatus::NonMonotone, fit),
        }
    }
    if oom.is_some_and(|o| o <= lo) {
        return done(BoundaryStatus::NoneFits, None);
    }
    if fit.is_some_and(|f| f >= hi) {
        return done(BoundaryStatus::AboveRange, fit);
    }
    if let (Some(f), Some(o)) = (fit, oom)
        && o == f + 1
    {
        return done(BoundaryStatus::Exact, fit);
    }
    // Untested and open: every batch strictly between `low` and `high`.
    let low = fit.map_or(lo - 1, |f| f.max(lo - 1));
    let high = oom.map_or(hi + 1, |o| o.min(hi + 1));
    let next = match strategy {
        Strategy::Grid => low + 1,
        Strategy::Binsearch => {
            // Lightning's scale_batch_size(mode="binsearch"): start at 2 (or the range minimum),
            // double until OOM (capped at the maximum), then bisect until high - low = 1.
            if fit.is_none() && oom.is_none() {
                lo.max(2).min(hi)
            } else if oom.is_none() {
                low.saturating_mul(2).clamp(low + 1, hi)
            } else {
                usize::midpoint(low, high)
            }
        }
        Strategy::Auto => {
            if fit.is_none() {
                match (oom, ctx.hint) {
                    // Start at the estimator's b*.
                    (None, Some(h)) => h.clamp(lo, hi),
                    (None, None) => lo,
                    // The hint ran out of memory: one step down (the estimate was a batch over),
                    // then the probe at the range minimum.
                    (Some(o), Some(_)) if obs.len() == 1 && ctx.hint_exact => o - 1,
                    (Some(_), Some(_)) if !obs.iter().any(|x| x.batch == lo) => lo,
                    (Some(_), _) => usize::midpoint(low, high),
                }
            } else if obs.len() == 1
                && ctx.hint_exact
                && ctx.hint.is_some_and(|h| fit == Some(h.clamp(lo, hi)))
            {
                // The estimator's b* fitted: b*+1 proves it.
                low + 1
            } else {
                let predictions = if ctx.hint.is_some() { 4 } else { 3 };
                let guess = if obs.len() <= predictions {
                    predict(
                        &fits_below(obs, oom),
                        ctx.baseline_bytes,
                        ctx.capacity_bytes,
                    )
                } else {
                    None
                };
                let next = match (guess, oom) {
                    (Some(g), _) => g.clamp(low + 1, high - 1),
                    (None, None) => low.saturating_mul(2).clamp(low + 1, hi),
                    (None, Some(_)) => usize::midpoint(low, high),
                };
                match (fit, oom, ctx.max_jump) {
                    (Some(f), None, Some(k)) => next.min(f.saturating_mul(k)).max(low + 1),
                    _ => next,
                }
            }
        }
    };
    debug_assert!(next > low && next < high && !obs.iter().any(|o| o.batch == next));
    Step::Trial(next)
}

/// Where the observations stand against the headroom limit: the lowest batch known not to do
/// (an OOM, or a fit over the limit; past the range when none), and the largest measured batch
/// under the limit below it.
fn under_limit(ctx: &SearchCtx, limit_bytes: u64, obs: &[Obs]) -> (usize, Option<usize>) {
    let past = ctx.range.max + 1;
    let under = |o: &Obs| o.fits && o.total_bytes.is_some_and(|t| t <= limit_bytes);
    let a = obs
        .iter()
        .filter(|o| !under(o))
        .map(|o| o.batch)
        .min()
        .unwrap_or(past)
        .min(past);
    let u = obs
        .iter()
        .filter(|o| under(o) && o.batch < a)
        .map(|o| o.batch)
        .max();
    (a, u)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecStep {
    Trial(usize),
    Done(Option<usize>),
}

/// Next step of the recommendation for one curve: the largest batch whose measured total stays
/// at or under `limit_bytes`, below every measured OOM and every fit over the limit, confirmed
/// by a measured trial at that batch. `obs` are all of the curve's measurements;
/// `extra_trials` is how many recommendation trials this curve has run already.
#[must_use]
pub fn next_recommend(
    ctx: &SearchCtx,
    found: &Found,
    limit_bytes: u64,
    obs: &[Obs],
    extra_trials: usize,
) -> RecStep {
    if found.max_batch.is_none() {
        return RecStep::Done(None);
    }
    let lo = ctx.range.min;
    let (a, u) = under_limit(ctx, limit_bytes, obs);
    if a <= lo {
        return RecStep::Done(None);
    }
    let lower = u.unwrap_or(lo - 1);
    if a == lower + 1 {
        return RecStep::Done(u);
    }
    // The line runs through every fit below the lowest OOM: a fit over the headroom limit is as
    // much a point of it as one under (a confirmation that fell over the limit is the point
    // nearest the answer; without it the line would fall back to the intercept, which bf16's
    // constant widened copies put off the line).
    let lowest_oom = obs.iter().filter(|o| !o.fits).map(|o| o.batch).min();
    let fits = fits_below(obs, lowest_oom);
    let guess = if extra_trials < 3 {
        predict(&fits, ctx.baseline_bytes, limit_bytes)
    } else {
        None
    };
    if let (Some(u), Some(g)) = (u, guess)
        && g <= u
        && fits.len() >= 2
    {
        // The line through two measured fits says u+1 is over the limit; u itself is measured
        // under it. (A line through the intercept alone is not trusted for this: a constant
        // per-forward overhead can put it one batch off.)
        return RecStep::Done(Some(u));
    }
    let next = guess.map_or_else(|| usize::midpoint(lower, a), |g| g.clamp(lower + 1, a - 1));
    debug_assert!(next > lower && next < a && !obs.iter().any(|o| o.batch == next));
    RecStep::Trial(next)
}

/// The recommendation for one curve, before or after its confirming trial.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Rec {
    /// From the measured line, not measured itself: `batch` is predicted to take
    /// `predicted_bytes`, at or under the limit. A trial at `batch` confirms it.
    Computed { batch: usize, predicted_bytes: u64 },
    /// A confirmation fell over the limit: measure this batch (the bounded search of
    /// [`next_recommend`]).
    Trial(usize),
    /// Measured at or under the limit (or nothing fits under it).
    Done(Option<usize>),
}

/// The line through the two largest fits (or through one fit and the intercept) at batch `b`.
fn line_at(fits: &[(usize, u64)], baseline: Option<u64>, b: usize) -> Option<u64> {
    let ((b0, t0), (b1, t1)) = secant(fits, baseline)?;
    if t1 < t0 || b1 <= b0 {
        return None;
    }
    let slope_num = i128::from(t1 - t0);
    let slope_den = (b1 - b0) as i128;
    let at = i128::from(t1) + (b as i128 - b1 as i128) * slope_num / slope_den;
    u64::try_from(at).ok()
}

/// The recommendation for a curve whose boundary is found: the largest batch below every
/// measured OOM and every fit over `limit_bytes` whose total the measured line puts at or under
/// the limit, computed without a trial (a batch measured under the limit stands unless the line
/// puts a larger one under it). Once a confirming trial has fallen over the limit (`confirm_failed`), the curve
/// is measured instead ([`next_recommend`], bounded by [`recommend_bound`]).
#[must_use]
pub fn recommend(
    ctx: &SearchCtx,
    found: &Found,
    limit_bytes: u64,
    obs: &[Obs],
    confirm_failed: bool,
    extra_trials: usize,
) -> Rec {
    let measured = |step| match step {
        RecStep::Trial(b) => Rec::Trial(b),
        RecStep::Done(r) => Rec::Done(r),
    };
    if found.max_batch.is_none() {
        return Rec::Done(None);
    }
    if confirm_failed {
        return measured(next_recommend(ctx, found, limit_bytes, obs, extra_trials));
    }
    let lo = ctx.range.min;
    let (a, u) = under_limit(ctx, limit_bytes, obs);
    let lowest_oom = obs.iter().filter(|o| !o.fits).map(|o| o.batch).min();
    let fits = fits_below(obs, lowest_oom);
    let computed = predict(&fits, ctx.baseline_bytes, limit_bytes)
        .map(|g| g.min(a.saturating_sub(1)))
        .filter(|&g| g >= lo && u.is_none_or(|u| g > u))
        .and_then(|g| {
            line_at(&fits, ctx.baseline_bytes, g)
                .filter(|&p| p <= limit_bytes)
                .map(|p| (g, p))
        });
    match (computed, u) {
        (Some((batch, predicted_bytes)), _) => Rec::Computed {
            batch,
            predicted_bytes,
        },
        (None, Some(u)) => Rec::Done(Some(u)),
        // The line says nothing: measure.
        (None, None) => measured(next_recommend(ctx, found, limit_bytes, obs, extra_trials)),
    }
}

#[cfg(test)]
mod tests;
