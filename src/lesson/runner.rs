//! Runs a lesson's steps: each run is a sweep (the engine's, with its journal in the lesson's
//! folder), a step's runs side by side (one per core), the PyTorch interpreter probed once per
//! lesson. A finished journal in the folder is read back instead of run again, so a teacher can
//! run a lesson before class and give it from the folder (`oomlab lesson NAME --dir DIR`).

use super::caption::{self, Measured, Parts};
use super::{Lesson, RunSpec, Step, journal_path};
use crate::catalog::ModelSpec;
use crate::plan::{Flags, PlanOverrides, Runtime};
use crate::report::{Outcome, Results, TrialRecord};
use crate::sweep::{Sweep, SweepEvent};
use crate::worker::{WorkerConfig, python};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

/// One run's results.
#[derive(Debug, Clone)]
pub struct RunResult {
    pub name: String,
    pub label: String,
    pub journal: PathBuf,
    pub results: Results,
    /// The model, for the estimator's names of a candle trial's peak.
    pub spec: Option<ModelSpec>,
}

impl RunResult {
    /// The run's fitting trials, one per batch, in batch order.
    #[must_use]
    pub fn fits(&self) -> Vec<&TrialRecord> {
        let mut fits: Vec<&TrialRecord> = self
            .results
            .trials
            .iter()
            .filter(|t| t.outcome == Outcome::Fit && t.total_bytes.is_some())
            .collect();
        fits.sort_by_key(|t| t.batch);
        fits.dedup_by_key(|t| t.batch);
        fits
    }

    /// The trials that ran out of memory.
    #[must_use]
    pub fn ooms(&self) -> Vec<&TrialRecord> {
        self.results
            .trials
            .iter()
            .filter(|t| t.outcome == Outcome::Oom)
            .collect()
    }

    /// The fitting trial at `batch`, or the largest that fitted.
    #[must_use]
    pub fn trial_at(&self, batch: Option<usize>) -> Option<&TrialRecord> {
        let fits = self.fits();
        match batch {
            Some(b) => fits.into_iter().find(|t| t.batch == b),
            None => fits.last().copied(),
        }
    }

    /// The largest batch that fitted, as the run's boundary says.
    #[must_use]
    pub fn b_star(&self) -> Option<usize> {
        self.results.boundaries.first().and_then(|b| b.max_batch)
    }

    /// What one more sample adds, from the two smallest measured batches.
    #[must_use]
    pub fn slope(&self) -> Option<u64> {
        let fits = self.fits();
        let (a, b) = (fits.first()?, fits.get(1)?);
        let (ta, tb) = (a.total_bytes?, b.total_bytes?);
        Some(tb.saturating_sub(ta) / (b.batch - a.batch) as u64)
    }

    #[must_use]
    pub fn weights(&self) -> Option<u64> {
        self.results.weights_bytes.values().next().copied()
    }

    /// The op and layer at the trial's peak: PyTorch's profiler names them; a candle trial is
    /// named from the estimator's simulated forward at the same point, and says so.
    #[must_use]
    pub fn peak_label(&self, batch: Option<usize>) -> Option<String> {
        let t = self.trial_at(batch)?;
        if t.runtime == Runtime::Torch {
            return t.timeline.as_ref()?.peak_label();
        }
        let spec = self.spec.as_ref()?;
        let threads = self.results.threads.unwrap_or(1);
        let shape = crate::estimate::forward_shape(spec, t.batch, t.seq, t.dtype, threads);
        Some(format!(
            "{} (named by the estimator's simulated forward)",
            shape.peak_at
        ))
    }

    /// The trial's memory in parts (see [`Parts`]); the optimizer state, saved activations and
    /// gradients only for a PyTorch training trial whose timeline has its phases' live bytes.
    #[must_use]
    pub fn parts(&self, batch: Option<usize>) -> Option<Parts> {
        let t = self.trial_at(batch)?;
        let weights = self.weights()?;
        let mut parts = Parts {
            weights,
            state: None,
            saved: None,
            grads: None,
            peak: t.total_bytes?,
        };
        let Some(tl) = &t.timeline else {
            return Some(parts);
        };
        let live = |label: &str, nth: usize| {
            tl.marks
                .iter()
                .filter(|m| m.label == label)
                .nth(nth)
                .and_then(|m| m.live_bytes)
        };
        if let (Some(f1), Some(f2)) = (live("forward", 0), live("step 2", 0)) {
            parts.state = Some(f2.saturating_sub(f1));
            parts.saved = live("backward", 1).map(|b| b.saturating_sub(f2));
            parts.grads = live("optimizer step", 1).map(|o| o.saturating_sub(f2));
        }
        Some(parts)
    }
}

impl Measured for RunResult {
    fn b_star(&self) -> Option<usize> {
        RunResult::b_star(self)
    }
    fn totals_at(&self, batch: Option<usize>) -> Option<(Option<u64>, Option<u64>)> {
        self.trial_at(batch).map(|t| (t.total_bytes, t.peak_bytes))
    }
    fn slope(&self) -> Option<u64> {
        RunResult::slope(self)
    }
    fn weights(&self) -> Option<u64> {
        RunResult::weights(self)
    }
    fn capacity(&self) -> u64 {
        self.results.capacity_bytes
    }
    fn peak_label(&self, batch: Option<usize>) -> Option<String> {
        RunResult::peak_label(self, batch)
    }
    fn parts(&self, batch: Option<usize>) -> Option<Parts> {
        RunResult::parts(self, batch)
    }
}

/// A step that has run: its runs' results, or why it could not run.
#[derive(Debug, Clone)]
pub struct StepResult {
    pub index: usize,
    pub runs: Vec<RunResult>,
    /// Why the step did not run (it needs PyTorch, and there is none).
    pub skipped: Option<String>,
    /// Runs that failed: the run's name and what went wrong.
    pub failures: Vec<(String, String)>,
    /// The caption with the measured numbers.
    pub caption: String,
    pub seconds: f64,
}

/// Runs a lesson's steps in order and keeps every run's results (a caption may name an earlier
/// step's run).
pub struct LessonRunner {
    pub lesson: Lesson,
    pub dir: PathBuf,
    worker: WorkerConfig,
    python: Option<PathBuf>,
    /// The PyTorch interpreter, probed at the first step that needs it (or why there is none).
    torch: Option<Result<PathBuf, String>>,
    done: Vec<RunResult>,
}

impl LessonRunner {
    /// `dir`: where the runs' journals go (made if missing); `python`: the PyTorch runtime's
    /// interpreter (None: found as `oomlab sweep` finds it).
    pub fn new(
        lesson: Lesson,
        worker: WorkerConfig,
        python: Option<PathBuf>,
        dir: PathBuf,
    ) -> Result<Self, String> {
        std::fs::create_dir_all(&dir).map_err(|e| {
            format!(
                "cannot make the lesson's folder {}: {e}; choose a writable folder with --dir",
                dir.display()
            )
        })?;
        Ok(Self {
            lesson,
            dir,
            worker,
            python,
            torch: None,
            done: Vec::new(),
        })
    }

    /// The default folder for a lesson's journals: a new one under the runs folder.
    #[must_use]
    pub fn default_dir(name: &str) -> PathBuf {
        let journal = crate::sweep::default_journal_path(&format!("lesson-{name}"));
        journal.with_extension("")
    }

    /// A run finished in an earlier step, by name.
    #[must_use]
    pub fn find(&self, name: &str) -> Option<&RunResult> {
        self.done.iter().find(|r| r.name == name)
    }

    /// Why PyTorch steps cannot run here (None: they can, or no step has asked yet).
    #[must_use]
    pub fn torch_problem(&self) -> Option<&str> {
        self.torch
            .as_ref()
            .and_then(|t| t.as_ref().err())
            .map(String::as_str)
    }

    /// The PyTorch interpreter, probed once.
    fn torch(&mut self) -> Result<PathBuf, String> {
        if self.torch.is_none() {
            let probed = python::find(self.python.as_deref(), &self.worker.exe)
                .and_then(|f| python::probe(&f))
                .map(|p| std::path::absolute(&p.python).unwrap_or(p.python))
                .map_err(|e| e.to_string());
            self.torch = Some(probed);
        }
        self.torch.clone().unwrap_or_else(|| Err(String::new()))
    }

    /// Runs step `index` (its runs side by side, a core each), keeps its results, and renders
    /// its caption. `say`: progress lines.
    pub fn run_step(
        &mut self,
        index: usize,
        cancel: &Arc<AtomicBool>,
        say: &(dyn Fn(String) + Sync),
    ) -> StepResult {
        let started = Instant::now();
        let step: Step = self.lesson.steps[index].clone();
        let mut out = StepResult {
            index,
            runs: Vec::new(),
            skipped: None,
            failures: Vec::new(),
            caption: String::new(),
            seconds: 0.0,
        };
        // A step whose journals are all in the folder is read back: no interpreter is needed.
        let replay = step
            .runs
            .iter()
            .all(|r| journal_path(&self.dir, index, &r.name).exists());
        let python = if step.needs_torch() && !replay {
            match self.torch() {
                Ok(p) => Some(p),
                Err(e) => {
                    out.skipped = Some(format!(
                        "this step needs the PyTorch runtime, and there is none here: {e}"
                    ));
                    out.caption = self.caption(&step);
                    return out;
                }
            }
        } else {
            None
        };
        let lanes = std::thread::available_parallelism().map_or(1, std::num::NonZero::get);
        let dir = self.dir.clone();
        let worker = self.worker.clone();
        for chunk in step.runs.chunks(lanes.max(1)) {
            // Runs side by side share the cores: each gets its share of threads, unless its
            // line names them.
            let share = (lanes / chunk.len()).max(1);
            let finished: Vec<(String, Result<RunResult, String>)> = std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|run| {
                        let python = python.clone();
                        let (dir, worker) = (&dir, &worker);
                        s.spawn(move || {
                            let journal = journal_path(dir, index, &run.name);
                            (
                                run.name.clone(),
                                one_run(run, python, share, &journal, worker, cancel, say),
                            )
                        })
                    })
                    .collect();
                handles
                    .into_iter()
                    .map(|h| {
                        h.join().unwrap_or_else(|_| {
                            (String::new(), Err("the run's thread panicked".into()))
                        })
                    })
                    .collect()
            });
            for (name, r) in finished {
                match r {
                    Ok(r) => out.runs.push(r),
                    Err(e) => out.failures.push((name, e)),
                }
            }
        }
        self.done
            .retain(|d| !out.runs.iter().any(|r| r.name == d.name));
        self.done.extend(out.runs.iter().cloned());
        out.caption = self.caption(&step);
        out.seconds = started.elapsed().as_secs_f64();
        out
    }

    /// A step's caption from the runs measured so far.
    #[must_use]
    pub fn caption(&self, step: &Step) -> String {
        caption::render(&step.caption, &|name| {
            self.find(name).map(|r| r as &dyn Measured)
        })
    }
}

/// One run: its sweep, or the finished journal read back.
fn one_run(
    run: &RunSpec,
    python: Option<PathBuf>,
    threads: usize,
    journal: &Path,
    worker: &WorkerConfig,
    cancel: &Arc<AtomicBool>,
    say: &(dyn Fn(String) + Sync),
) -> Result<RunResult, String> {
    let given = PlanOverrides {
        python,
        threads: run.overrides.threads.or(Some(threads)),
        ..run.overrides.clone()
    };
    let (plan, spec) = crate::plan::plan_from(&given).map_err(|e| e.describe(&Flags))?;
    crate::plan::check_host(&plan, worker.faults.host_memory().as_ref())
        .map_err(|e| e.describe(&Flags))?;
    let sweep = if journal.exists() {
        Sweep::resume(journal, &given).map_err(|e| {
            format!(
                "{} (its journal {} was written by another version of this lesson: run it in a new folder)",
                e.describe(&Flags),
                journal.display()
            )
        })?
    } else {
        Sweep::with_spec(plan, spec.clone(), journal).map_err(|e| e.describe(&Flags))?
    };
    let name = run.name.clone();
    let results = sweep
        .run(worker, cancel, &mut |e| {
            if let SweepEvent::TrialFinished(t) = e {
                say(format!("  {name}: batch {} {}", t.batch, t.outcome_text()));
            }
        })
        .map_err(|e| format!("{e:?}"))?;
    if let Some(why) = results.unbuilt() {
        return Err(why);
    }
    Ok(RunResult {
        name: run.name.clone(),
        label: run.label.clone(),
        journal: journal.to_path_buf(),
        results,
        spec: Some(spec),
    })
}
