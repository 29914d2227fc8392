//! How many trials a sweep will take and about how long, said before the first one runs.
//!
//! Trials: the search itself ([`crate::search::next_step`]) run against the estimator as the
//! oracle (a batch fits when its estimated total is under the capacity), so the count is the
//! one the sweep takes when the estimate is right; PyTorch's curves against the PyTorch
//! estimator where it models them (CPU), else only their bound is known.
//!
//! Time: each trial's work in units of its forward's multiply-adds (weights × tokens plus
//! attention's tokens², [`work`]), times this machine's pace for that runtime, workload,
//! precision and thread count — the median seconds per unit of the trials of earlier sweeps,
//! kept in `~/.cache/oomlab/pace.json` ([`Pace`]). Without a recorded pace the time is said
//! after the first trial instead.

use crate::catalog::ModelSpec;
use crate::plan::{Confirm, Curve, Device, Precision, Runtime, Strategy, SweepPlan};
use crate::report::{Outcome, TrialRecord};
use crate::search::{self, Obs, SearchCtx, Step};
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// A forward's work in billions of multiply-adds: the matmuls over every token plus
/// attention's scores and weighted sum (which grow with the square of the length).
#[must_use]
pub fn work(spec: &ModelSpec, batch: usize, seq: usize) -> f64 {
    let d = &spec.dims;
    let (h, l) = (d.hidden as f64, d.layers as f64);
    let kv = (d.kv_heads.max(1) * (d.hidden / d.heads.max(1))) as f64;
    let mlp = if d.experts_per_token > 0 {
        let width = if d.moe_intermediate > 0 {
            d.moe_intermediate
        } else {
            d.intermediate
        };
        3.0 * (d.experts_per_token * width) as f64
    } else {
        // Gated MLPs (the decoders', ModernBERT's GeGLU) have three matrices; BERT's two.
        let gated = spec.family.room().gated_mlp();
        (if gated { 3.0 } else { 2.0 }) * d.intermediate as f64
    };
    let per_token = l * (2.0 * h * h + 2.0 * h * kv + mlp * h);
    let tokens = (batch * seq) as f64;
    let attention = l * 2.0 * (batch as f64) * (seq as f64).powi(2) * h;
    (tokens * per_token + attention) / 1e9
}

/// One trial the search is expected to take.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    pub batch: usize,
    /// Whether the estimator has it fit (an OOM stops at its first refused request).
    pub fits: bool,
}

/// The share of a forward's time an out-of-memory trial takes: it stops at the first request
/// the capacity refuses, before the layers that follow (bert-base on 2 cores: 3.9 s against the
/// 29.9 s of the fit one batch below at seq 128, 2.0 s against 17.4 s at seq 256).
pub const OOM_SHARE: f64 = 0.12;

impl Expected {
    /// Its [`work`], an out-of-memory trial's counted at [`OOM_SHARE`].
    #[must_use]
    pub fn work(self, spec: &ModelSpec, seq: usize) -> f64 {
        work(spec, self.batch, seq) * if self.fits { 1.0 } else { OOM_SHARE }
    }
}

/// The trials one curve's search would take if the estimator is right (`None`: the estimator
/// does not model this curve's runtime).
#[must_use]
pub fn curve_trials(
    plan: &SweepPlan,
    spec: &ModelSpec,
    curve: Curve,
    runtime_bytes: u64,
) -> Option<Vec<Expected>> {
    let threads = plan.device.threads();
    let rt = crate::estimate::Runtime {
        threads,
        bytes: runtime_bytes,
    };
    // PyTorch's curves on the CPU where the PyTorch estimator models the point; the search then
    // jumps as it does for them (a CPU trial runs to its end).
    let torch = match curve.runtime {
        Runtime::Candle => None,
        Runtime::Torch if !matches!(plan.device, Device::Cpu { .. }) => return None,
        Runtime::Torch => Some(crate::estimate::torch::How::of_curve(
            plan,
            spec.family,
            curve.checkpointing,
        )),
    };
    let torch_total = |b: usize, how| {
        crate::estimate::torch::estimate(spec, b, curve.seq, curve.dtype, how, threads)
            .map(|e| e.total_bytes)
    };
    if let Some(how) = torch {
        torch_total(1, how).ok()?;
    }
    let total = |b: usize| match torch {
        Some(how) => torch_total(b, how).unwrap_or(u64::MAX),
        None => crate::estimate::estimate(spec, b, curve.seq, curve.dtype, &rt).total_bytes,
    };
    let hint = (plan.strategy == Strategy::Auto).then(|| {
        match torch {
            Some(how) => crate::estimate::torch::max_batch(
                spec,
                curve.seq,
                curve.dtype,
                how,
                threads,
                plan.capacity_bytes,
                plan.batch.max + 1,
            )
            .flatten(),
            None => crate::estimate::max_batch(
                spec,
                curve.seq,
                curve.dtype,
                &rt,
                plan.capacity_bytes,
                plan.batch.max + 1,
            ),
        }
        .unwrap_or(0)
    });
    let ctx = SearchCtx {
        range: plan.batch,
        capacity_bytes: plan.capacity_bytes,
        baseline_bytes: None,
        hint,
        hint_exact: true,
        max_jump: torch.map(|_| crate::report::TORCH_CPU_JUMP),
    };
    let mut obs: Vec<Obs> = Vec::new();
    let bound = search::trial_bound(plan.strategy, plan.batch);
    while obs.len() < bound {
        match search::next_step(plan.strategy, &ctx, &obs) {
            Step::Trial(b) => {
                let t = total(b);
                let fits = t <= plan.capacity_bytes;
                obs.push(Obs {
                    batch: b,
                    fits,
                    total_bytes: fits.then_some(t),
                });
            }
            Step::Done(_) => break,
        }
    }
    Some(
        obs.iter()
            .map(|o| Expected {
                batch: o.batch,
                fits: o.fits,
            })
            .collect(),
    )
}

/// What a sweep is expected to take.
#[derive(Debug, Clone, PartialEq)]
pub struct Forecast {
    pub curves: usize,
    /// Trials of the curves the estimator models, as it expects them.
    pub trials: usize,
    /// Curves whose count is only bounded (PyTorch's), and that bound per curve.
    pub unmodelled: usize,
    pub bound_per_curve: usize,
    /// Seconds, when this machine's pace is known for every modelled curve.
    pub seconds: Option<f64>,
    /// The forecast trials' [`work`] in all: with a trial's measured pace, the sweep's time.
    pub work: f64,
}

impl Forecast {
    /// One line for the start of a sweep.
    #[must_use]
    pub fn text(&self) -> String {
        use std::fmt::Write as _;
        let mut s = format!(
            "forecast: {} curve{}",
            self.curves,
            if self.curves == 1 { "" } else { "s" }
        );
        if self.curves > self.unmodelled {
            let _ = write!(
                s,
                ", {} trial{} if the estimator is right",
                self.trials,
                if self.trials == 1 { "" } else { "s" }
            );
        }
        if self.unmodelled > 0 {
            let _ = write!(
                s,
                "; {} PyTorch curve{} of up to {} trials each (the PyTorch estimator does not model it)",
                self.unmodelled,
                if self.unmodelled == 1 { "" } else { "s" },
                self.bound_per_curve
            );
        }
        match self.seconds {
            Some(t) if self.unmodelled == 0 => {
                let _ = write!(
                    s,
                    ", about {} at this machine's pace in earlier sweeps",
                    duration(t)
                );
            }
            Some(t) => {
                let _ = write!(s, ", candle's about {}", duration(t));
            }
            None => s.push_str("; the time follows the first trial"),
        }
        s
    }
}

/// Seconds as a person reads them: `40 s`, `3 min`, `1 h 20 min`.
#[must_use]
pub fn duration(seconds: f64) -> String {
    let s = seconds.max(0.0).round() as u64;
    if s < 90 {
        format!("{} s", s.max(1))
    } else if s < 3600 {
        format!("{} min", (s + 30) / 60)
    } else {
        format!("{} h {} min", s / 3600, (s % 3600 + 30) / 60)
    }
}

/// The forecast of `plan`: `runtime_bytes(dtype)` is the estimator's runtime overhead for a
/// precision (see [`crate::calibrate::runtime`]), `pace` this machine's record.
#[must_use]
pub fn forecast(
    plan: &SweepPlan,
    spec: &ModelSpec,
    runtime_bytes: &dyn Fn(Precision) -> Option<u64>,
    pace: &Pace,
    confirm: &Confirm,
) -> Forecast {
    let curves = plan.curves();
    let mut trials = 0;
    let mut unmodelled = 0;
    let mut seconds = Some(0.0);
    let mut total_work = 0.0;
    // Confirmations: `pick` (the default) measures one trial under the headroom on the curve
    // with the most tokens per step, `all` one on every curve.
    let mut pick: Option<(usize, f64, Option<f64>)> = None;
    let mut confirmations: Vec<(f64, Option<f64>)> = Vec::new();
    for &c in &curves {
        let expected = runtime_bytes(c.dtype).and_then(|rt| curve_trials(plan, spec, c, rt));
        match expected {
            Some(expected) => {
                trials += expected.len();
                let units: f64 = expected.iter().map(|e| e.work(spec, c.seq)).sum();
                total_work += units;
                let rate = pace.rate(&PaceKey::of(plan, c));
                seconds = seconds.zip(rate).map(|(s, r)| s + r * units);
                if let Some(fit) = expected.iter().filter(|e| e.fits).map(|e| e.batch).max() {
                    let safe = ((fit as f64 * (1.0 - plan.headroom)) as usize).max(1);
                    let units = work(spec, safe, c.seq);
                    if plan.headroom > 0.0 && pick.is_none_or(|p| safe * c.seq > p.0) {
                        pick = Some((safe * c.seq, units, rate));
                    }
                    if plan.headroom > 0.0 {
                        confirmations.push((units, rate));
                    }
                }
            }
            None => unmodelled += 1,
        }
    }
    let confirmed = match confirm {
        Confirm::Pick => pick
            .map(|(_, units, rate)| vec![(units, rate)])
            .unwrap_or_default(),
        Confirm::All => confirmations,
        Confirm::None | Confirm::Curves(_) => Vec::new(),
    };
    for (units, rate) in confirmed {
        trials += 1;
        total_work += units;
        seconds = seconds.zip(rate).map(|(s, r)| s + r * units);
    }
    Forecast {
        curves: curves.len(),
        trials,
        unmodelled,
        bound_per_curve: search::trial_bound(plan.strategy, plan.batch),
        seconds: seconds.filter(|_| unmodelled < curves.len()),
        work: total_work,
    }
}

/// The forecast of a sweep about to run on the CPU, with this machine's recorded pace (`None`
/// on a GPU, where the estimator only sizes a first probe). The estimator's runtime overhead
/// comes from [`crate::calibrate::runtime`] (measured once per machine, a second).
#[must_use]
pub fn of_sweep(
    plan: &SweepPlan,
    spec: &ModelSpec,
    confirm: &Confirm,
    worker: &crate::worker::WorkerConfig,
    cancel: &std::sync::atomic::AtomicBool,
) -> Option<Forecast> {
    if !matches!(plan.device, Device::Cpu { .. }) {
        return None;
    }
    let threads = plan.device.threads();
    let runtime_bytes = |dtype: Precision| {
        crate::calibrate::runtime(threads, dtype, worker, None, cancel)
            .ok()
            .map(|(rt, _)| rt.bytes)
    };
    let pace = Pace::path().map(|p| Pace::load(&p)).unwrap_or_default();
    Some(forecast(plan, spec, &runtime_bytes, &pace, confirm))
}

/// Adds a finished sweep's trials to this machine's pace record.
pub fn record_pace(plan: &SweepPlan, spec: &ModelSpec, trials: &[TrialRecord]) {
    if let Some(path) = Pace::path() {
        let mut pace = Pace::load(&path);
        pace.record(plan, spec, trials);
        pace.save(&path);
    }
}

/// What a pace is kept for: the same work runs at different speeds per runtime, workload,
/// precision, thread count and device.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct PaceKey(String);

impl PaceKey {
    #[must_use]
    pub fn of(plan: &SweepPlan, curve: Curve) -> Self {
        let device = match plan.device {
            Device::Cpu { threads } => format!("cpu{threads}"),
            Device::Cuda { .. } => "cuda".into(),
        };
        let workload = match curve.runtime {
            Runtime::Candle => crate::plan::Workload::Infer,
            Runtime::Torch => plan.workload,
        };
        Self(format!(
            "{}{}|{}|{}|{}|{}|{device}",
            env!("CARGO_PKG_VERSION"),
            // An unoptimised build runs several times slower.
            if cfg!(debug_assertions) { "-debug" } else { "" },
            curve.runtime,
            workload.name(),
            curve.dtype,
            if curve.checkpointing { "ckpt" } else { "-" }
        ))
    }
}

/// Seconds per unit of [`work`] seen on this machine, per [`PaceKey`].
#[derive(Debug, Default, Clone, PartialEq, Serialize, Deserialize)]
pub struct Pace {
    /// The most recent observations (at most [`KEEP`] per key).
    entries: BTreeMap<String, Vec<f64>>,
}

/// Observations kept per key.
const KEEP: usize = 32;

impl Pace {
    /// The median seconds per unit of work for `key`.
    #[must_use]
    pub fn rate(&self, key: &PaceKey) -> Option<f64> {
        let mut v = self.entries.get(&key.0)?.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_by(f64::total_cmp);
        Some(v[v.len() / 2])
    }

    /// Adds the fitting trials of a sweep (an OOM stops early; tiny trials time only overhead).
    pub fn record(&mut self, plan: &SweepPlan, spec: &ModelSpec, trials: &[TrialRecord]) {
        for t in trials {
            let units = work(spec, t.batch, t.seq);
            if t.outcome != Outcome::Fit || t.seconds < 0.05 || units <= 0.0 {
                continue;
            }
            let key = PaceKey::of(plan, t.curve());
            let v = self.entries.entry(key.0).or_default();
            v.push(t.seconds / units);
            if v.len() > KEEP {
                v.remove(0);
            }
        }
    }

    /// `$XDG_CACHE_HOME/oomlab/pace.json` (beside the runtime cache).
    #[must_use]
    pub fn path() -> Option<PathBuf> {
        crate::calibrate::cache_path().map(|p| p.with_file_name("pace.json"))
    }

    /// The record at `path`; an unreadable or malformed one is empty (it only costs a forecast).
    #[must_use]
    pub fn load(path: &Path) -> Self {
        std::fs::read_to_string(path)
            .ok()
            .and_then(|t| serde_json::from_str(&t).ok())
            .unwrap_or_default()
    }

    /// Writes the record atomically; a failure only costs the next forecast.
    pub fn save(&self, path: &Path) {
        if let Some(dir) = path.parent() {
            let _ = std::fs::create_dir_all(dir);
        }
        if let Ok(text) = serde_json::to_string_pretty(self) {
            let _ = crate::report::write_atomic(path, text.as_bytes(), true);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::catalog::ModelRef;
    use crate::plan::BatchRange;

    fn spec(id: &str) -> ModelSpec {
        ModelSpec::resolve(&ModelRef::Catalog(id.into())).unwrap()
    }

    #[test]
    fn work_grows_with_tokens_and_with_the_square_of_the_length() {
        let s = spec("bert-base-uncased");
        let w = |b, q| work(&s, b, q);
        assert!((w(2, 128) / w(1, 128) - 2.0).abs() < 1e-9);
        // Doubling the length more than doubles the work (attention's square).
        assert!(w(1, 512) > 2.0 * w(1, 256));
        // bert-base's encoder: about 85M weights in the layers, so ~0.085 G multiply-adds per token.
        let per_token = w(1, 1);
        assert!(per_token > 0.07 && per_token < 0.1, "{per_token}");
    }

    #[test]
    fn auto_is_forecast_at_two_trials_per_curve_and_grid_at_every_batch_to_the_first_oom() {
        let s = spec("bert-tiny");
        let mut plan = SweepPlan::defaults(ModelRef::Catalog("bert-tiny".into()), 512);
        plan.seqs = vec![128];
        plan.batch = BatchRange::new(1, 512).unwrap();
        plan.capacity_bytes = 44 << 20;
        let curve = plan.curves()[0];
        let rt = 1 << 20;
        let batches = |plan: &SweepPlan| -> Vec<(usize, bool)> {
            curve_trials(plan, &s, curve, rt)
                .unwrap()
                .iter()
                .map(|e| (e.batch, e.fits))
                .collect()
        };
        let auto = batches(&plan);
        assert_eq!(auto.len(), 2, "{auto:?}");
        assert_eq!(auto[1], (auto[0].0 + 1, false));
        assert!(auto[0].1);
        plan.strategy = Strategy::Grid;
        let grid = batches(&plan);
        let want: Vec<(usize, bool)> = (1..=auto[1].0).map(|b| (b, b < auto[1].0)).collect();
        assert_eq!(grid, want);
        // PyTorch's curves: modelled for inference and training, with and without
        // checkpointing (two trials each, auto); checkpointing fits a larger batch.
        let torch = Curve {
            runtime: Runtime::Torch,
            ..curve
        };
        plan.strategy = Strategy::Auto;
        let torch_auto = curve_trials(&plan, &s, torch, rt).unwrap();
        assert_eq!(torch_auto.len(), 2, "{torch_auto:?}");
        assert!(torch_auto[0].fits && !torch_auto[1].fits);
        plan.workload = crate::plan::Workload::Train;
        plan.capacity_bytes = 400 << 20;
        let mut b_star = Vec::new();
        for checkpointing in [false, true] {
            let curve = Curve {
                checkpointing,
                ..torch
            };
            let train = curve_trials(&plan, &s, curve, rt).unwrap();
            assert_eq!(train.len(), 2, "{train:?}");
            assert!(train[0].fits && !train[1].fits);
            b_star.push(train[0].batch);
        }
        assert!(b_star[1] > b_star[0], "{b_star:?}");
    }

    #[test]
    fn the_time_comes_from_the_recorded_pace_and_is_absent_without_one() {
        let s = spec("bert-tiny");
        let mut plan = SweepPlan::defaults(ModelRef::Catalog("bert-tiny".into()), 512);
        plan.seqs = vec![128, 256];
        plan.capacity_bytes = 44 << 20;
        let rt = |_: Precision| Some(1 << 20);
        let none = forecast(&plan, &s, &rt, &Pace::default(), &Confirm::Pick);
        // b* and b*+1 of each curve, and the pick's confirmation.
        assert_eq!((none.curves, none.trials), (2, 5));
        assert_eq!(none.seconds, None);
        assert!(
            none.text().contains("the time follows the first trial"),
            "{}",
            none.text()
        );
        let mut pace = Pace::default();
        for c in plan.curves() {
            pace.entries
                .insert(PaceKey::of(&plan, c).0, vec![2.0, 1.0, 3.0]);
        }
        let f = forecast(&plan, &s, &rt, &pace, &Confirm::Pick);
        // Without confirmations, one trial fewer; with every curve's, one more.
        assert_eq!(forecast(&plan, &s, &rt, &pace, &Confirm::None).trials, 4);
        assert_eq!(forecast(&plan, &s, &rt, &pace, &Confirm::All).trials, 6);
        // The median pace (2.0) times the work: each fit's, a tenth-odd of each OOM's, and the
        // confirmation's under the headroom of the curve with the most tokens.
        let mut units = 0.0;
        let mut pick = (0, 0.0);
        for c in plan.curves() {
            for e in curve_trials(&plan, &s, c, 1 << 20).unwrap() {
                units += work(&s, e.batch, c.seq) * if e.fits { 1.0 } else { OOM_SHARE };
                let safe = (e.batch as f64 * 0.9) as usize;
                if e.fits && safe * c.seq > pick.0 {
                    pick = (safe * c.seq, work(&s, safe, c.seq));
                }
            }
        }
        assert!((f.seconds.unwrap() - 2.0 * (units + pick.1)).abs() < 1e-9);
        assert!((f.work - (units + pick.1)).abs() < 1e-9);
        assert!(f.text().contains("about"), "{}", f.text());
    }

    #[test]
    fn durations_read_as_a_person_says_them() {
        assert_eq!(duration(0.2), "1 s");
        assert_eq!(duration(40.0), "40 s");
        assert_eq!(duration(170.0), "3 min");
        assert_eq!(duration(4800.0), "1 h 20 min");
    }
}
