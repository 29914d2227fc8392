//! The driver: plan + search + supervisor + journal, emitting `SweepEvent`s to a face (CLI or GUI).
//!
//! Every outcome is appended to the journal before the event that announces it is emitted.

use crate::catalog::ModelSpec;
use crate::measure::host::HostMemory;
use crate::plan::{Build, Confirm, Curve, PlanOverrides, Runtime, SweepPlan};
use crate::report::{
    self, CurvePhase, Failure, Header, Journal, JournalContents, JournalError, JournalLine,
    Outcome, Purpose, Results, TrialRecord, WorkerInfo,
};
use crate::worker::protocol::TorchLoad;
use crate::worker::{Death, Load, Supervisor, TrialResult, WorkerConfig};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use crate::plan::{PlanError, check, validate};
use crate::worker::python::{self, Probed};

mod python_probe;
pub use python_probe::{probe_python, torch_config};

/// Why a sweep could not start: its plan, or its journal.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error(transparent)]
    Plan(#[from] PlanError),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

impl StartError {
    /// One sentence, in `face`'s words for a plan's problem.
    #[must_use]
    pub fn describe(&self, face: &dyn crate::plan::Face) -> String {
        match self {
            Self::Plan(e) => e.describe(face),
            Self::Journal(e) => e.to_string(),
        }
    }
}

#[derive(Debug, Clone)]
pub enum SweepEvent {
    Started {
        journal: PathBuf,
        plan: SweepPlan,
        model_name: String,
        /// The model's family (what the plan's defaults resolve against).
        family: crate::families::Family,
        resumed_trials: usize,
        /// Everything recorded so far (the header and, on resume, earlier outcomes).
        contents: Box<JournalContents>,
    },
    WorkerReady(WorkerInfo),
    LoadFailed {
        build: Build,
        reason: String,
    },
    /// The worker has begun the measured forward of this trial.
    TrialStarted {
        curve: Curve,
        batch: usize,
        purpose: Purpose,
        worker_pid: u32,
    },
    TrialFinished(TrialRecord),
    CurveDone {
        curve: Curve,
        phase: CurvePhase,
    },
    Finished {
        results: Box<Results>,
        cancelled: bool,
    },
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Journal(#[from] JournalError),
}

#[must_use]
pub fn header_for(plan: &SweepPlan, spec: &ModelSpec) -> Header {
    Header {
        oomlab_version: env!("CARGO_PKG_VERSION").to_string(),
        plan: plan.clone(),
        model_name: spec.name.clone(),
        family: spec.family,
        config_hash: spec.config_hash(),
        forward: spec.forward_label().to_string(),
        started_unix: std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_secs()),
    }
}

/// Default journal location: `$XDG_DATA_HOME/oomlab/runs` (or `~/.local/share/...`).
#[must_use]
pub fn default_journal_path(model_name: &str) -> PathBuf {
    let base = std::env::var_os("XDG_DATA_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".local/share")))
        .unwrap_or_else(|| PathBuf::from("."));
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_millis());
    let safe: String = model_name
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '.' {
                c
            } else {
                '_'
            }
        })
        .collect();
    base.join("oomlab/runs")
        .join(format!("{safe}-{stamp}.jsonl"))
}

/// A sweep ready to run: a fresh journal or a resumed one.
pub struct Sweep {
    pub plan: SweepPlan,
    pub spec: ModelSpec,
    journal: Journal,
    contents: JournalContents,
    /// Which recommendations get a confirming trial (not part of the plan: a resumed sweep may
    /// confirm more or fewer).
    confirm: Confirm,
}

/// What [`Sweep::run`] carries between trials.
struct RunState {
    cancelled: bool,
    last_pid: Option<u32>,
    /// This machine's memory (the PyTorch worker is watched against it).
    host: Option<HostMemory>,
    /// The last end reported for each curve (a curve is reported again only when it changes).
    reported: HashMap<Curve, CurvePhase>,
}

impl Sweep {
    /// Validates the plan (resolving its model) and creates its journal.
    pub fn new(plan: SweepPlan, journal_path: &Path) -> Result<Self, StartError> {
        let spec = validate(&plan)?;
        Self::with_spec(plan, spec, journal_path)
    }

    /// Creates the journal of a plan whose model is already resolved (and checks the plan
    /// against it).
    pub fn with_spec(
        plan: SweepPlan,
        spec: ModelSpec,
        journal_path: &Path,
    ) -> Result<Self, StartError> {
        check(&plan, &spec)?;
        let header = header_for(&plan, &spec);
        let journal = Journal::create(journal_path, &header)?;
        Ok(Self {
            plan,
            spec,
            journal,
            contents: JournalContents {
                header,
                workers: Vec::new(),
                trials: Vec::new(),
                load_failures: Vec::new(),
                host: None,
                torn_tail: false,
            },
            confirm: Confirm::default(),
        })
    }

    /// Reopens a journal to continue it. Fields `given` now are laid over the journal's plan and
    /// must not change it.
    pub fn resume(journal_path: &Path, given: &PlanOverrides) -> Result<Self, StartError> {
        let (journal, mut contents) = Journal::reopen(journal_path)?;
        let mut plan = contents.header.plan.clone();
        let differences = plan.differences(&given.over(&plan));
        // Another interpreter may continue the sweep (the journal's may have moved).
        if let Some(python) = &given.python {
            plan.torch.python = Some(python.clone());
        }
        if !differences.is_empty() {
            return Err(PlanError::Contradicts {
                journal: journal_path.to_path_buf(),
                differences,
            }
            .into());
        }
        let spec = validate(&plan)?;
        if spec.config_hash() != contents.header.config_hash {
            return Err(PlanError::ConfigChanged {
                origin: spec.origin,
                journal: journal_path.to_path_buf(),
            }
            .into());
        }
        // Load failures are retried on resume; trials stay.
        contents.load_failures.clear();
        Ok(Self {
            plan,
            spec,
            journal,
            contents,
            confirm: Confirm::default(),
        })
    }

    fn record(&mut self, line: JournalLine) -> Result<(), SweepError> {
        self.journal.append(&line)?;
        match line {
            JournalLine::Worker(w) => self.contents.workers.push(w),
            JournalLine::Trial(t) => self.contents.trials.push(t),
            JournalLine::LoadFailed { build, reason } => {
                self.contents.load_failures.push((build, reason));
            }
            JournalLine::Host(h) => self.contents.host = Some(h),
            JournalLine::End { .. } | JournalLine::Plan(_) => {}
        }
        Ok(())
    }

    fn phase(&self, curve: Curve) -> CurvePhase {
        let lf = self
            .contents
            .load_failures
            .iter()
            .rev()
            .find(|(b, _)| *b == curve.build())
            .map(|(_, r)| r.as_str());
        report::curve_phase(
            &self.plan,
            curve,
            &self.contents.trials,
            &self.contents.workers,
            lf,
            Some(&self.spec),
        )
    }

    /// Which recommendations this run confirms with a trial (default: the overall pick).
    #[must_use]
    pub fn confirming(mut self, confirm: Confirm) -> Self {
        self.confirm = confirm;
        self
    }

    /// The next computed recommendation to confirm, by [`Self::confirm`].
    fn next_confirmation(&self) -> Option<(Curve, usize)> {
        let r = report::summarize(&self.contents);
        let computed = |c: &crate::report::CurveRecommendation| {
            c.batch.filter(|_| c.computed).map(|b| (c.curve(), b))
        };
        match &self.confirm {
            Confirm::None => None,
            Confirm::Pick => r
                .recommendation
                .pick
                .as_ref()
                .filter(|p| p.computed)
                .map(|p| (p.curve(), p.batch)),
            Confirm::All => r.recommendation.curves.iter().find_map(computed),
            Confirm::Curves(list) => r
                .recommendation
                .curves
                .iter()
                .filter(|c| list.contains(&c.curve()))
                .find_map(computed),
        }
    }

    /// Runs every curve to its end, then confirms recommendations (until `cancel`), emitting
    /// events. Returns the results.
    pub fn run(
        mut self,
        worker: &WorkerConfig,
        cancel: &Arc<AtomicBool>,
        sink: &mut dyn FnMut(SweepEvent),
    ) -> Result<Results, SweepError> {
        let mut sup = Supervisor::new(worker.clone());
        let host = worker.faults.host_memory();
        if let Some(host) = host {
            self.record(JournalLine::Host(host))?;
        }
        sink(SweepEvent::Started {
            journal: self.journal.path().to_path_buf(),
            plan: self.plan.clone(),
            model_name: self.spec.name.clone(),
            family: self.spec.family,
            resumed_trials: self.contents.trials.len(),
            contents: Box::new(self.contents.clone()),
        });
        let mut run = RunState {
            cancelled: false,
            last_pid: None,
            host,
            reported: HashMap::new(),
        };
        'sweep: loop {
            for curve in self.plan.curves() {
                loop {
                    if cancel.load(Ordering::Relaxed) {
                        run.cancelled = true;
                        break 'sweep;
                    }
                    if let phase @ (CurvePhase::Done { .. } | CurvePhase::Incomplete { .. }) =
                        self.phase(curve)
                    {
                        if run.reported.get(&curve) != Some(&phase) {
                            run.reported.insert(curve, phase.clone());
                            sink(SweepEvent::CurveDone { curve, phase });
                        }
                        break;
                    }
                    if !self.step(&mut sup, curve, None, &mut run, cancel, sink)? {
                        break 'sweep;
                    }
                }
            }
            // Every curve has its recommendation; confirm the computed ones asked for. A
            // confirmation over the limit sends its curve back to the loop above.
            let Some((curve, batch)) = self.next_confirmation() else {
                break;
            };
            if !self.step(&mut sup, curve, Some(batch), &mut run, cancel, sink)? {
                break;
            }
        }
        sup.shutdown();
        if !run.cancelled {
            self.record(JournalLine::End { cancelled: false })?;
        }
        let results = report::summarize(&self.contents);
        sink(SweepEvent::Finished {
            results: Box::new(results.clone()),
            cancelled: run.cancelled,
        });
        Ok(results)
    }

    /// Builds the worker for `curve` if needed and runs one trial: the curve's next one, or a
    /// confirmation at `confirm`. False when the sweep is cancelled.
    fn step(
        &mut self,
        sup: &mut Supervisor,
        curve: Curve,
        confirm: Option<usize>,
        run: &mut RunState,
        cancel: &Arc<AtomicBool>,
        sink: &mut dyn FnMut(SweepEvent),
    ) -> Result<bool, SweepError> {
        let load = self.load_for(curve);
        let ready = match sup.ensure_loaded(&load, run.host.as_ref(), cancel) {
            Ok(r) => r,
            Err(e) => {
                if cancel.load(Ordering::Relaxed) {
                    run.cancelled = true;
                    return Ok(false);
                }
                let reason = e.to_string();
                self.record(JournalLine::LoadFailed {
                    build: curve.build(),
                    reason: reason.clone(),
                })?;
                sink(SweepEvent::LoadFailed {
                    build: curve.build(),
                    reason,
                });
                return Ok(true);
            }
        };
        if run.last_pid != Some(ready.pid) {
            run.last_pid = Some(ready.pid);
            let info = WorkerInfo {
                runtime: curve.runtime,
                dtype: curve.dtype,
                checkpointing: curve.checkpointing,
                built: ready.built,
            };
            self.record(JournalLine::Worker(info.clone()))?;
            sink(SweepEvent::WorkerReady(info));
        }
        // Decided once the worker is built: `auto` starts from the estimator's b* on top of
        // the baseline it measured.
        let (batch, purpose) = match (confirm, self.phase(curve)) {
            (Some(b), _) => (b, Purpose::Recommend),
            (None, CurvePhase::Search(b)) => (b, Purpose::Search),
            (None, CurvePhase::Recommend { batch, .. }) => (batch, Purpose::Recommend),
            (None, _) => return Ok(true),
        };
        let pid = sup.pid();
        let (result, wall) = sup.trial(batch, curve.seq, cancel, &mut |worker_pid| {
            sink(SweepEvent::TrialStarted {
                curve,
                batch,
                purpose,
                worker_pid,
            });
        });
        let rec = self.trial_record(curve, batch, purpose, result, wall, pid);
        let was_cancel = rec.failure == Some(Failure::Cancelled);
        self.record(JournalLine::Trial(rec.clone()))?;
        sink(SweepEvent::TrialFinished(rec));
        if was_cancel {
            run.cancelled = true;
            return Ok(false);
        }
        Ok(true)
    }

    /// What the worker for `curve` is asked to build.
    fn load_for(&self, curve: Curve) -> Load {
        let torch = (curve.runtime == Runtime::Torch).then(|| {
            let python = self
                .plan
                .torch
                .python
                .clone()
                .unwrap_or_else(|| "python3".into());
            let load = TorchLoad {
                config: torch_config(&self.spec),
                weights_dir: self.spec.checkpoint.as_ref().map(|c| c.dir.clone()),
                workload: self.plan.workload,
                task: self.plan.torch_task(self.spec.family.is_decoder()),
                attn: self.plan.torch_attn(self.spec.family),
                optimizer: self.plan.torch.optimizer,
                checkpointing: curve.checkpointing,
            };
            (python, load)
        });
        Load {
            model: self.plan.model.clone(),
            dtype: curve.dtype,
            capacity_bytes: self.plan.capacity_bytes,
            device: self.plan.device,
            torch,
        }
    }

    fn trial_record(
        &self,
        curve: Curve,
        batch: usize,
        purpose: Purpose,
        result: TrialResult,
        wall_seconds: f64,
        pid: Option<u32>,
    ) -> TrialRecord {
        let mut r = TrialRecord {
            runtime: curve.runtime,
            batch,
            seq: curve.seq,
            dtype: curve.dtype,
            checkpointing: curve.checkpointing,
            strategy: self.plan.strategy,
            purpose,
            outcome: Outcome::Failed,
            peak_bytes: None,
            total_bytes: None,
            requested_bytes: None,
            live_before_bytes: None,
            baseline_bytes: None,
            failure: None,
            reason: None,
            seconds: wall_seconds,
            worker_pid: pid,
            pool_peak_bytes: None,
            pool_reserved_bytes: None,
            device_used_bytes: None,
            process_bytes: None,
            timeline: None,
            steps_bytes: None,
        };
        match result {
            TrialResult::Measured(m) => {
                r.outcome = Outcome::Fit;
                r.peak_bytes = Some(m.peak_bytes);
                r.total_bytes = Some(m.total_bytes);
                r.live_before_bytes = Some(m.live_before_bytes);
                r.baseline_bytes = Some(m.baseline_bytes);
                r.seconds = m.seconds;
                r.pool_peak_bytes = m.pool_peak_bytes;
                r.pool_reserved_bytes = m.pool_reserved_bytes;
                r.device_used_bytes = m.device_used_bytes;
                r.process_bytes = m.process_bytes;
                r.timeline = m.timeline;
                r.steps_bytes = m.steps_bytes;
            }
            TrialResult::Died(Death::Oom { requested_bytes }) => {
                r.outcome = Outcome::Oom;
                r.requested_bytes = requested_bytes;
            }
            TrialResult::Died(d @ Death::HostMemory { requested_bytes }) => {
                r.outcome = Outcome::HostMemory;
                r.requested_bytes = requested_bytes;
                r.reason = Some(d.describe());
            }
            TrialResult::Died(Death::Cancelled) => {
                r.failure = Some(Failure::Cancelled);
                r.reason = Some("cancelled".into());
            }
            TrialResult::Died(d @ Death::Signal { .. }) => {
                r.failure = Some(Failure::Killed);
                r.reason = Some(d.describe());
            }
            TrialResult::Died(d) => {
                r.failure = Some(Failure::Error);
                r.reason = Some(d.describe());
            }
            TrialResult::Error(message) => {
                r.failure = Some(Failure::Error);
                r.reason = Some(message);
            }
        }
        r
    }
}
