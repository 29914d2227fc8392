//! The driver: plan + search + supervisor + journal, emitting `SweepEvent`s to a face (CLI or GUI).
//!
//! Every outcome is appended to the journal before the event that announces it is emitted.

use crate::catalog::{CatalogError, ModelSpec};
use crate::models;
use crate::plan::{Curve, Precision, SweepPlan, human_bytes};
use crate::report::{
    self, CurvePhase, Failure, Header, Journal, JournalContents, JournalError, JournalLine,
    Outcome, Purpose, Results, TrialRecord, WorkerInfo,
};
use crate::worker::{Death, Supervisor, TrialResult, WorkerConfig};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Clone)]
pub enum SweepEvent {
    Started {
        journal: PathBuf,
        plan: SweepPlan,
        model_name: String,
        resumed_trials: usize,
        /// Everything recorded so far (the header and, on resume, earlier outcomes).
        contents: Box<JournalContents>,
    },
    WorkerReady(WorkerInfo),
    LoadFailed {
        dtype: Precision,
        reason: String,
    },
    TrialStarted {
        curve: Curve,
        batch: usize,
        purpose: Purpose,
        worker_pid: Option<u32>,
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

/// Problems found before any trial runs: usage errors (exit code 2 on the command line).
#[derive(Debug, thiserror::Error)]
pub enum PlanError {
    #[error(transparent)]
    Model(#[from] CatalogError),
    #[error("{0}")]
    Invalid(String),
    #[error(transparent)]
    Journal(#[from] JournalError),
}

#[derive(Debug, thiserror::Error)]
pub enum SweepError {
    #[error(transparent)]
    Journal(#[from] JournalError),
}

/// Checks a plan against its model before anything runs. Returns the resolved model.
pub fn validate(plan: &SweepPlan) -> Result<ModelSpec, PlanError> {
    let spec = ModelSpec::resolve(&plan.model)?;
    if plan.seqs.is_empty() {
        return Err(PlanError::Invalid(
            "no sequence length given; pass --seq, e.g. --seq 128,512".into(),
        ));
    }
    if plan.dtypes.is_empty() {
        return Err(PlanError::Invalid(
            "no precision given; pass --dtype, e.g. --dtype f32,f16".into(),
        ));
    }
    for &s in &plan.seqs {
        if s == 0 {
            return Err(PlanError::Invalid(
                "sequence length 0 is not allowed; use at least 1".into(),
            ));
        }
        if s > spec.dims.max_positions {
            return Err(PlanError::Invalid(format!(
                "--seq {s} is above {}'s maximum of {} positions (max_position_embeddings in {}); choose --seq {} or less",
                spec.name, spec.dims.max_positions, spec.origin, spec.dims.max_positions
            )));
        }
    }
    if plan.capacity_bytes == 0 {
        return Err(PlanError::Invalid(
            "--capacity must be more than 0 bytes, e.g. --capacity 8GiB".into(),
        ));
    }
    for &d in &plan.dtypes {
        if !spec.family.supports(d) {
            return Err(PlanError::Invalid(format!(
                "{} is a {} model, which candle 0.11 runs only in f32 (its attention mixes f32 scores with {d} values); drop {d} from --dtype",
                spec.name, spec.family
            )));
        }
        let need = models::weights_bytes(&spec, d.candle());
        if need >= plan.capacity_bytes {
            return Err(PlanError::Invalid(format!(
                "the {d} weights of {} alone need {}, but --capacity is {}; raise --capacity above {} or drop {d}",
                spec.name,
                human_bytes(need),
                human_bytes(plan.capacity_bytes),
                human_bytes(need)
            )));
        }
    }
    if plan.threads == 0 {
        return Err(PlanError::Invalid("--threads must be at least 1".into()));
    }
    if plan.device != "cpu" {
        return Err(PlanError::Invalid(format!(
            "device '{}' is not available in this build; use --device cpu",
            plan.device
        )));
    }
    Ok(spec)
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

/// Compares a resumed journal's plan with the arguments given now; names the first difference.
pub fn check_resume_args(journal_plan: &SweepPlan, given: &SweepPlan) -> Result<(), PlanError> {
    let mut diffs = Vec::new();
    if journal_plan.model != given.model {
        diffs.push(format!("model ({} vs {})", journal_plan.model, given.model));
    }
    if journal_plan.seqs != given.seqs {
        diffs.push(format!("seq ({:?} vs {:?})", journal_plan.seqs, given.seqs));
    }
    if journal_plan.dtypes != given.dtypes {
        diffs.push("dtype".into());
    }
    if journal_plan.batch != given.batch {
        diffs.push(format!("batch ({} vs {})", journal_plan.batch, given.batch));
    }
    if journal_plan.capacity_bytes != given.capacity_bytes {
        diffs.push("capacity".into());
    }
    if (journal_plan.headroom - given.headroom).abs() > 1e-12 {
        diffs.push("headroom".into());
    }
    if journal_plan.strategy != given.strategy {
        diffs.push("strategy".into());
    }
    if journal_plan.threads != given.threads {
        diffs.push("threads".into());
    }
    if diffs.is_empty() {
        Ok(())
    } else {
        Err(PlanError::Invalid(format!(
            "the arguments contradict the journal being resumed ({}); pass --resume alone to continue it as planned, or start a new sweep",
            diffs.join(", ")
        )))
    }
}

/// A sweep ready to run: a fresh journal or a resumed one.
pub struct Sweep {
    pub plan: SweepPlan,
    pub spec: ModelSpec,
    journal: Journal,
    contents: JournalContents,
}

impl Sweep {
    /// Validates the plan and creates its journal.
    pub fn new(plan: SweepPlan, journal_path: &Path) -> Result<Self, PlanError> {
        Self::create(plan, |_| journal_path.to_path_buf())
    }

    /// Validates the plan (resolving its model once) and creates the journal at the path
    /// `choose_journal` picks for the resolved model (e.g. a default named after it).
    pub fn create(
        plan: SweepPlan,
        choose_journal: impl FnOnce(&ModelSpec) -> PathBuf,
    ) -> Result<Self, PlanError> {
        let spec = validate(&plan)?;
        let header = header_for(&plan, &spec);
        let journal = Journal::create(&choose_journal(&spec), &header)?;
        Ok(Self {
            plan,
            spec,
            journal,
            contents: JournalContents {
                header,
                workers: Vec::new(),
                trials: Vec::new(),
                load_failures: Vec::new(),
                ended: false,
                torn_tail: false,
            },
        })
    }

    /// Reopens a journal to continue it. `given` (arguments passed with `--resume`) must agree.
    pub fn resume(journal_path: &Path, given: Option<&SweepPlan>) -> Result<Self, PlanError> {
        let (journal, mut contents) = Journal::reopen(journal_path)?;
        let plan = contents.header.plan.clone();
        if let Some(g) = given {
            check_resume_args(&plan, g)?;
        }
        let spec = validate(&plan)?;
        if spec.config_hash() != contents.header.config_hash {
            return Err(PlanError::Invalid(format!(
                "the model config ({}) changed since {} was written; its results would not match — start a new sweep",
                spec.origin,
                journal_path.display()
            )));
        }
        // Load failures are retried on resume; trials stay.
        contents.load_failures.clear();
        Ok(Self {
            plan,
            spec,
            journal,
            contents,
        })
    }

    #[must_use]
    pub fn journal_path(&self) -> &Path {
        self.journal.path()
    }

    #[must_use]
    pub fn finished_trials(&self) -> usize {
        self.contents.trials.len()
    }

    fn record(&mut self, line: JournalLine) -> Result<(), SweepError> {
        self.journal.append(&line)?;
        match line {
            JournalLine::Worker(w) => self.contents.workers.push(w),
            JournalLine::Trial(t) => self.contents.trials.push(t),
            JournalLine::LoadFailed { dtype, reason } => {
                self.contents.load_failures.push((dtype, reason));
            }
            JournalLine::End { .. } => self.contents.ended = true,
            JournalLine::Plan(_) => {}
        }
        Ok(())
    }

    fn phase(&self, curve: Curve) -> CurvePhase {
        let lf = self
            .contents
            .load_failures
            .iter()
            .rev()
            .find(|(d, _)| *d == curve.dtype)
            .map(|(_, r)| r.as_str());
        report::curve_phase(
            &self.plan,
            curve,
            &self.contents.trials,
            &self.contents.workers,
            lf,
        )
    }

    /// Runs every curve to its end (or until `cancel`), emitting events. Returns the results.
    pub fn run(
        mut self,
        worker: &WorkerConfig,
        cancel: &Arc<AtomicBool>,
        sink: &mut dyn FnMut(SweepEvent),
    ) -> Result<Results, SweepError> {
        let mut worker = worker.clone();
        worker.threads = self.plan.threads;
        let mut sup = Supervisor::new(worker);
        sink(SweepEvent::Started {
            journal: self.journal.path().to_path_buf(),
            plan: self.plan.clone(),
            model_name: self.spec.name.clone(),
            resumed_trials: self.contents.trials.len(),
            contents: Box::new(self.contents.clone()),
        });
        let mut cancelled = false;
        let mut last_pid = None;
        'curves: for curve in self.plan.curves() {
            loop {
                if cancel.load(Ordering::Relaxed) {
                    cancelled = true;
                    break 'curves;
                }
                let (batch, purpose) = match self.phase(curve) {
                    CurvePhase::Search(b) => (b, Purpose::Search),
                    CurvePhase::Recommend { batch, .. } => (batch, Purpose::Recommend),
                    phase => {
                        sink(SweepEvent::CurveDone { curve, phase });
                        break;
                    }
                };
                let ready = match sup.ensure_loaded(
                    &self.plan.model,
                    curve.dtype,
                    self.plan.capacity_bytes,
                    cancel,
                ) {
                    Ok(r) => r,
                    Err(reason) => {
                        if cancel.load(Ordering::Relaxed) {
                            cancelled = true;
                            break 'curves;
                        }
                        self.record(JournalLine::LoadFailed {
                            dtype: curve.dtype,
                            reason: reason.clone(),
                        })?;
                        sink(SweepEvent::LoadFailed {
                            dtype: curve.dtype,
                            reason,
                        });
                        continue;
                    }
                };
                if last_pid != Some(ready.pid) {
                    last_pid = Some(ready.pid);
                    let info = WorkerInfo {
                        dtype: curve.dtype,
                        weights_bytes: ready.weights_bytes,
                        baseline_bytes: ready.baseline_bytes,
                        threads: ready.threads,
                        from_checkpoint: ready.from_checkpoint,
                        build_seconds: ready.build_seconds,
                    };
                    self.record(JournalLine::Worker(info.clone()))?;
                    sink(SweepEvent::WorkerReady(info));
                }
                sink(SweepEvent::TrialStarted {
                    curve,
                    batch,
                    purpose,
                    worker_pid: sup.pid(),
                });
                let pid = sup.pid();
                let (result, wall) = sup.trial(batch, curve.seq, cancel);
                let rec = self.trial_record(curve, batch, purpose, result, wall, pid);
                let was_cancel = rec.failure == Some(Failure::Cancelled);
                self.record(JournalLine::Trial(rec.clone()))?;
                sink(SweepEvent::TrialFinished(rec));
                if was_cancel {
                    cancelled = true;
                    break 'curves;
                }
            }
        }
        sup.shutdown();
        if !cancelled {
            self.record(JournalLine::End { cancelled: false })?;
        }
        let results = report::summarize(&self.contents);
        sink(SweepEvent::Finished {
            results: Box::new(results.clone()),
            cancelled,
        });
        Ok(results)
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
            batch,
            seq: curve.seq,
            dtype: curve.dtype,
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
        };
        match result {
            TrialResult::Measured(m) => {
                r.outcome = Outcome::Fit;
                r.peak_bytes = Some(m.peak_bytes);
                r.total_bytes = Some(m.total_bytes);
                r.live_before_bytes = Some(m.live_before_bytes);
                r.baseline_bytes = Some(m.baseline_bytes);
                r.seconds = m.seconds;
            }
            TrialResult::Died(Death::Oom { requested_bytes }) => {
                r.outcome = Outcome::Oom;
                r.requested_bytes = requested_bytes;
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
