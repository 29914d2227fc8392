//! Boundary search: pure functions of what has been measured so far. No I/O, no threads.
//!
//! Each strategy answers "which batch next, or are we done?" from the curve's observations, so a
//! resumed sweep continues exactly where it stopped by replaying its journal.
//!
//! Memory is monotone in batch, and for f32/f16 affine: `total(b) = base + k·b`, with the
//! intercept known before any forward (the live bytes after build and warm-up). `auto` probes the
//! range minimum to fix the slope, predicts the largest batch under the capacity, and confirms it
//! (b* fits, b*+1 does not). After three predicted trials without closing, it bisects.

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
            Self::Incomplete => "incomplete",
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Found {
    pub status: BoundaryStatus,
    /// Largest measured fit (None when none fits).
    pub max_batch: Option<usize>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    Trial(usize),
    Done(Found),
}

/// Largest measured fit and smallest measured OOM.
fn bounds(obs: &[Obs]) -> (Option<usize>, Option<usize>) {
    let f = obs.iter().filter(|o| o.fits).map(|o| o.batch).max();
    let o = obs.iter().filter(|o| !o.fits).map(|o| o.batch).min();
    (f, o)
}

fn tested(obs: &[Obs], b: usize) -> bool {
    obs.iter().any(|o| o.batch == b)
}

/// Predicts the largest batch whose total stays at or under `limit`, from the two largest fits
/// (secant) or, with one fit, from the known intercept. Integer arithmetic: exact for affine data.
fn predict(obs: &[Obs], baseline: Option<u64>, limit: u64) -> Option<usize> {
    let mut fits: Vec<(usize, u64)> = obs
        .iter()
        .filter_map(|o| Some((o.batch, o.total_bytes?)).filter(|_| o.fits))
        .collect();
    fits.sort_unstable();
    fits.dedup_by_key(|p| p.0);
    let (b1, t1) = *fits.last()?;
    let (b0, t0) = if fits.len() >= 2 {
        fits[fits.len() - 2]
    } else {
        (0, baseline?)
    };
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
        return Some(b1.saturating_sub(down as usize));
    }
    let room = u128::from(limit - t1);
    let up = room * slope_den / slope_num;
    Some(b1.saturating_add(usize::try_from(up).unwrap_or(usize::MAX / 2)))
}

/// The next step of `strategy` for one curve.
#[must_use]
pub fn next_step(strategy: Strategy, ctx: &SearchCtx, obs: &[Obs]) -> Step {
    let (lo, hi) = (ctx.range.min, ctx.range.max);
    let (f, o) = bounds(obs);
    // Shared end conditions.
    if o == Some(lo) {
        return Step::Done(Found {
            status: BoundaryStatus::NoneFits,
            max_batch: None,
        });
    }
    if f == Some(hi) {
        return Step::Done(Found {
            status: BoundaryStatus::AboveRange,
            max_batch: Some(hi),
        });
    }
    if let (Some(f), Some(o)) = (f, o)
        && o == f + 1
    {
        return Step::Done(Found {
            status: BoundaryStatus::Exact,
            max_batch: Some(f),
        });
    }
    match strategy {
        Strategy::Grid => Step::Trial(f.map_or(lo, |f| f + 1)),
        Strategy::Binsearch => {
            // Lightning's scale_batch_size(mode="binsearch"): start at 2 (or the range minimum),
            // double until OOM (capped at the maximum), then bisect until high - low = 1.
            let start = lo.max(2).min(hi);
            if obs.is_empty() {
                return Step::Trial(start);
            }
            let low = f.unwrap_or(lo - 1);
            match o {
                None => Step::Trial((low.max(1) * 2).min(hi)),
                Some(high) => Step::Trial(usize::midpoint(low, high).max(lo)),
            }
        }
        Strategy::Auto => {
            let Some(f) = f else {
                return Step::Trial(lo);
            };
            let upper = o.map_or(hi, |o| o - 1);
            let predicted_trials = obs.len().saturating_sub(1);
            let guess = if predicted_trials < 3 {
                predict(obs, ctx.baseline_bytes, ctx.capacity_bytes)
            } else {
                None
            };
            let next = match guess {
                Some(g) => g.clamp(f + 1, upper),
                None => match o {
                    None => (f * 2).min(hi),
                    Some(o) => usize::midpoint(f, o),
                },
            };
            debug_assert!(next > f && next <= upper && !tested(obs, next));
            Step::Trial(next)
        }
    }
}

/// Next step of the recommendation for one curve: the largest batch whose measured total stays
/// at or under `limit_bytes`, confirmed by a measured trial at that batch.
/// `extra_trials` is how many recommendation trials this curve has run already.
#[must_use]
pub fn next_recommend(
    ctx: &SearchCtx,
    found: &Found,
    limit_bytes: u64,
    obs: &[Obs],
    extra_trials: usize,
) -> RecStep {
    let Some(max_fit) = found.max_batch else {
        return RecStep::Done(None);
    };
    let lo = ctx.range.min;
    let under = |o: &Obs| o.fits && o.total_bytes.is_some_and(|t| t <= limit_bytes);
    let u = obs.iter().filter(|o| under(o)).map(|o| o.batch).max();
    let a = obs
        .iter()
        .filter(|o| !under(o))
        .map(|o| o.batch)
        .min()
        .map_or(max_fit + 1, |a| a.min(max_fit + 1));
    if a <= lo {
        return RecStep::Done(None);
    }
    if let Some(u) = u
        && (a == u + 1 || u >= max_fit)
    {
        return RecStep::Done(Some(u));
    }
    let lower = u.unwrap_or(lo - 1);
    let guess = if extra_trials < 3 {
        predict(obs, ctx.baseline_bytes, limit_bytes)
    } else {
        None
    };
    if let (Some(u), Some(g)) = (u, guess)
        && g <= u
    {
        // The line says u+1 is over the limit; u itself is measured under it.
        return RecStep::Done(Some(u));
    }
    let next = guess.map_or_else(
        || usize::midpoint(lower, a).max(lo),
        |g| g.clamp(lower + 1, a - 1),
    );
    if tested(obs, next) {
        // Cannot happen with consistent data; stop rather than loop.
        return RecStep::Done(u);
    }
    RecStep::Trial(next)
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecStep {
    Trial(usize),
    Done(Option<usize>),
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Runs a strategy against a memory model `total(b)`, returning (found, trials).
    fn simulate(
        strategy: Strategy,
        range: BatchRange,
        cap: u64,
        base: u64,
        total: &dyn Fn(usize) -> u64,
    ) -> (Found, Vec<Obs>) {
        let ctx = SearchCtx {
            range,
            capacity_bytes: cap,
            baseline_bytes: Some(base),
        };
        let mut obs = Vec::new();
        for _ in 0..1000 {
            match next_step(strategy, &ctx, &obs) {
                Step::Done(f) => return (f, obs),
                Step::Trial(b) => {
                    assert!(b >= range.min && b <= range.max, "{strategy} tried {b}");
                    assert!(!tested(&obs, b), "{strategy} repeated batch {b}");
                    let t = total(b);
                    obs.push(Obs {
                        batch: b,
                        fits: t <= cap,
                        total_bytes: (t <= cap).then_some(t),
                    });
                }
            }
        }
        panic!("{strategy} did not finish");
    }

    fn truth(range: BatchRange, cap: u64, total: &dyn Fn(usize) -> u64) -> Found {
        let mut best = None;
        for b in range.min..=range.max {
            if total(b) <= cap {
                best = Some(b);
            } else {
                break;
            }
        }
        match best {
            None => Found {
                status: BoundaryStatus::NoneFits,
                max_batch: None,
            },
            Some(b) if b == range.max => Found {
                status: BoundaryStatus::AboveRange,
                max_batch: Some(b),
            },
            Some(b) => Found {
                status: BoundaryStatus::Exact,
                max_batch: Some(b),
            },
        }
    }

    const BASE: u64 = 435_566_592;
    const K: u64 = 7_090_688;

    #[test]
    fn auto_needs_three_trials_where_binsearch_needs_nine() {
        let range = BatchRange::new(1, 256).unwrap();
        let cap = 600 * 1024 * 1024;
        let total = |b: usize| BASE + 1234 + K * b as u64;
        let want = truth(range, cap, &total);
        let (fa, ta) = simulate(Strategy::Auto, range, cap, BASE, &total);
        let (fb, tb) = simulate(Strategy::Binsearch, range, cap, BASE, &total);
        let (fg, tg) = simulate(Strategy::Grid, range, cap, BASE, &total);
        assert_eq!(fa, want);
        assert_eq!(fb, want);
        assert_eq!(fg, want);
        let b = want.max_batch.unwrap();
        assert!((16..=31).contains(&b));
        assert_eq!(ta.len(), 3, "{ta:?}");
        assert_eq!(tb.len(), 9, "{tb:?}");
        assert_eq!(tg.len(), b + 1);
        assert!(ta.len() * 3 <= tb.len());
    }

    #[test]
    fn every_strategy_finds_the_true_boundary_on_many_curves() {
        // Affine, convex (quadratic) and stepped memory models, many capacities and ranges.
        let models: Vec<Box<dyn Fn(usize) -> u64>> = vec![
            Box::new(|b| 1000 + 37 * b as u64),
            Box::new(|b| 1000 + 20 * b as u64 + (b * b) as u64 / 3),
            Box::new(|b| 1000 + 64 * (b as u64).div_ceil(8) * 8),
            Box::new(|b| 1000 + 5 * b as u64 + if b > 40 { 300 } else { 0 }),
        ];
        for (mi, m) in models.iter().enumerate() {
            for cap in (900..4000).step_by(97) {
                for (lo, hi) in [(1, 256), (1, 1), (3, 50), (8, 8), (2, 100)] {
                    let range = BatchRange::new(lo, hi).unwrap();
                    let want = truth(range, cap, m.as_ref());
                    for s in Strategy::ALL {
                        let (got, trials) = simulate(s, range, cap, 1000, m.as_ref());
                        assert_eq!(got, want, "model {mi} cap {cap} range {range} {s}");
                        if want.status == BoundaryStatus::Exact {
                            let b = want.max_batch.unwrap();
                            assert!(trials.iter().any(|o| o.batch == b && o.fits));
                            assert!(trials.iter().any(|o| o.batch == b + 1 && !o.fits));
                        }
                        if s == Strategy::Auto {
                            assert!(trials.len() <= 4 + 2 * 9, "{s} used {}", trials.len());
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn recommendation_keeps_headroom_and_is_measured() {
        let range = BatchRange::new(1, 256).unwrap();
        let cap = 600 * 1024 * 1024;
        let limit = (cap as f64 * 0.9) as u64;
        let total = |b: usize| BASE + 1234 + K * b as u64;
        for s in Strategy::ALL {
            let (found, mut obs) = simulate(s, range, cap, BASE, &total);
            let ctx = SearchCtx {
                range,
                capacity_bytes: cap,
                baseline_bytes: Some(BASE),
            };
            let mut extra = 0;
            let rec = loop {
                match next_recommend(&ctx, &found, limit, &obs, extra) {
                    RecStep::Done(r) => break r,
                    RecStep::Trial(b) => {
                        extra += 1;
                        let t = total(b);
                        obs.push(Obs {
                            batch: b,
                            fits: t <= cap,
                            total_bytes: Some(t),
                        });
                    }
                }
            };
            let want = (1..=256).take_while(|&b| total(b) <= limit).last();
            assert_eq!(rec, want, "{s}");
            let r = rec.unwrap();
            assert!(
                obs.iter().any(|o| o.batch == r),
                "{s}: recommendation not measured"
            );
            assert!(extra <= 1, "{s} needed {extra} confirmation trials");
        }
    }

    #[test]
    fn recommendation_none_when_nothing_fits_under_headroom() {
        let range = BatchRange::new(1, 8).unwrap();
        let ctx = SearchCtx {
            range,
            capacity_bytes: 1000,
            baseline_bytes: Some(900),
        };
        let obs = [
            Obs {
                batch: 1,
                fits: true,
                total_bytes: Some(980),
            },
            Obs {
                batch: 2,
                fits: false,
                total_bytes: None,
            },
        ];
        let found = Found {
            status: BoundaryStatus::Exact,
            max_batch: Some(1),
        };
        assert_eq!(
            next_recommend(&ctx, &found, 950, &obs, 0),
            RecStep::Done(None)
        );
    }
}
