//! The engine thread: runs [`Sweep::run`] and sends its events over a bounded channel, waking
//! the UI with `request_repaint`. When the window stops listening (the receiver is dropped) a
//! send fails and the engine cancels itself, so closing never waits on a full channel.

use super::frame_stats::FrameStats;
use super::{OomLabApp, Shown};
use crate::plan::SweepPlan;
use crate::report::{self, JournalContents, Purpose};
use crate::sweep::{self, Sweep, SweepEvent};
use crate::worker::WorkerConfig;
use eframe::egui;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

/// Messages from the engine thread.
#[derive(Debug)]
pub enum EngineMsg {
    Event(Box<SweepEvent>),
    /// How many trials and about how long, before the first (see [`crate::forecast`]).
    Forecast(String),
    /// The sweep could not start or its journal could not be written (in the window's words).
    Failed(String),
}

/// What the engine is asked to do.
#[derive(Debug, Clone)]
pub enum EngineJob {
    /// A new sweep of this (checked) plan, journaled under `journal_dir` (default folder if None).
    New {
        plan: Box<SweepPlan>,
        journal_dir: Option<PathBuf>,
    },
    /// Continue this journal.
    Resume(PathBuf),
    /// Confirm a curve's computed recommendation with a trial (continuing its journal).
    Confirm {
        journal: PathBuf,
        curve: crate::plan::Curve,
    },
}

/// The trial the worker is computing now.
#[derive(Debug, Clone)]
pub struct InFlight {
    pub what: String,
    pub since: Instant,
    pub batch: usize,
    pub worker_pid: u32,
}

/// A running (or just finished) sweep.
pub struct Run {
    rx: Option<Receiver<EngineMsg>>,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    pub started: Instant,
    pub current: Option<InFlight>,
    pub done: bool,
}

impl Run {
    /// Starts the engine thread.
    pub fn start(
        job: EngineJob,
        worker: WorkerConfig,
        ctx: egui::Context,
    ) -> std::io::Result<Self> {
        // Bounded: the engine waits rather than piling events up if the UI falls behind.
        let (tx, rx) = sync_channel::<EngineMsg>(256);
        let cancel = Arc::new(AtomicBool::new(false));
        let c2 = Arc::clone(&cancel);
        let thread = std::thread::Builder::new()
            .name("oomlab-sweep".into())
            .spawn(move || engine_thread(job, &worker, &c2, &tx, &ctx))?;
        Ok(Self {
            rx: Some(rx),
            cancel,
            thread: Some(thread),
            started: Instant::now(),
            current: None,
            done: false,
        })
    }

    pub fn cancel(&self) {
        self.cancel.store(true, Ordering::Relaxed);
    }

    /// The next message, if one is waiting; marks the run done when the engine has gone.
    pub fn try_recv(&mut self) -> Option<EngineMsg> {
        let rx = self.rx.as_ref()?;
        match rx.try_recv() {
            Ok(m) => Some(m),
            Err(TryRecvError::Empty) => None,
            Err(TryRecvError::Disconnected) => {
                self.done = true;
                None
            }
        }
    }

    /// Blocks for the next message (tests drive frames this way, without sleeping).
    pub fn recv_timeout(&mut self, timeout: Duration) -> Option<EngineMsg> {
        let rx = self.rx.as_ref()?;
        match rx.recv_timeout(timeout) {
            Ok(m) => Some(m),
            Err(RecvTimeoutError::Timeout) => None,
            Err(RecvTimeoutError::Disconnected) => {
                self.done = true;
                None
            }
        }
    }

    /// Joins the engine thread once it has finished.
    pub fn reap(&mut self) {
        if self.done
            && let Some(t) = self.thread.take()
        {
            let _ = t.join();
        }
    }

    /// Stops listening and waits for the engine: it cancels the trial in flight (recorded as
    /// cancelled) and ends at its next send, which fails now that nobody listens.
    pub fn shut_down(&mut self) {
        self.cancel();
        self.rx = None;
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        self.done = true;
    }
}

fn engine_thread(
    job: EngineJob,
    worker: &WorkerConfig,
    cancel: &Arc<AtomicBool>,
    tx: &SyncSender<EngineMsg>,
    ctx: &egui::Context,
) {
    let send = |m: EngineMsg| {
        if tx.send(m).is_err() {
            // The window is gone: stop the sweep (the trial in flight is recorded as cancelled).
            cancel.store(true, Ordering::Relaxed);
        }
        ctx.request_repaint();
    };
    // The PyTorch runtime's interpreter is probed here, off the UI thread, before any trial.
    let probe = |mut s: Sweep| -> Result<Sweep, sweep::StartError> {
        sweep::probe_python(&mut s.plan, &worker.exe)?;
        Ok(s)
    };
    // Only a new sweep is forecast: a resumed one has done part of its work.
    let fresh = matches!(job, EngineJob::New { .. });
    let sweep = match job {
        EngineJob::Resume(path) => {
            Sweep::resume(&path, &crate::plan::PlanOverrides::default()).and_then(probe)
        }
        EngineJob::Confirm { journal, curve } => {
            Sweep::resume(&journal, &crate::plan::PlanOverrides::default())
                .and_then(probe)
                .map(|s| s.confirming(crate::plan::Confirm::Curves(vec![curve])))
        }
        EngineJob::New {
            mut plan,
            journal_dir,
        } => crate::plan::validate(&plan)
            .map_err(sweep::StartError::from)
            .and_then(|spec| {
                sweep::probe_python(&mut plan, &worker.exe)?;
                let plan = *plan;
                let path = sweep::default_journal_path(&spec.name);
                let path = match journal_dir {
                    Some(d) => d.join(path.file_name().unwrap_or_default()),
                    None => path,
                };
                Sweep::with_spec(plan, spec, &path)
            }),
    };
    match sweep {
        Err(e) => send(EngineMsg::Failed(e.describe(&super::form::Labels))),
        Ok(s) => {
            if fresh
                && let Some(f) = crate::forecast::of_sweep(
                    &s.plan,
                    &s.spec,
                    &crate::plan::Confirm::Pick,
                    worker,
                    cancel,
                )
            {
                send(EngineMsg::Forecast(f.text()));
            }
            let (plan, spec) = (s.plan.clone(), s.spec.clone());
            match s.run(worker, cancel, &mut |ev| {
                send(EngineMsg::Event(Box::new(ev)));
            }) {
                Ok(results) => crate::forecast::record_pace(&plan, &spec, &results.trials),
                Err(e) => send(EngineMsg::Failed(e.to_string())),
            }
        }
    }
}

/// The app's side of the engine: starting and cancelling sweeps, and taking in their events.
impl OomLabApp {
    pub(super) fn start(&mut self, job: EngineJob) {
        if self.sweeps.is_running() {
            return;
        }
        match Run::start(job, self.options.worker.clone(), self.window.ctx.clone()) {
            Ok(run) => {
                self.messages.log.push("sweep started".into());
                self.messages.notice = None;
                self.sweeps.run = Some(run);
                self.window.frame = FrameStats::default();
            }
            Err(e) => self.messages.notice = Some(format!("cannot start the sweep thread: {e}")),
        }
    }

    pub(super) fn cancel(&mut self) {
        if let Some(r) = &self.sweeps.run {
            r.cancel();
            self.messages
                .log
                .push("cancelling: the trial in flight is stopped and recorded".into());
        }
    }

    /// Handles every message the engine has sent, then joins it once it has finished.
    pub(super) fn drain_engine(&mut self) {
        while let Some(msg) = self.sweeps.run.as_mut().and_then(Run::try_recv) {
            self.on_engine(msg);
        }
        if let Some(run) = self.sweeps.run.as_mut() {
            run.reap();
        }
    }

    /// Blocks until the engine sends its next message (or `timeout`), then handles it as a
    /// frame would. Returns false when no sweep is running or nothing arrived (tests).
    pub(super) fn wait_for_engine(&mut self, timeout: Duration) -> bool {
        let Some(run) = self.sweeps.run.as_mut() else {
            return false;
        };
        if run.done {
            return false;
        }
        match run.recv_timeout(timeout) {
            Some(msg) => {
                self.on_engine(msg);
                true
            }
            None => false,
        }
    }

    /// Applies one engine message to what the window shows: the live results (re-summarized from
    /// the journal's contents as they grow), the trial in flight, and the event log.
    fn on_engine(&mut self, msg: EngineMsg) {
        let Some(run) = self.sweeps.run.as_mut() else {
            return;
        };
        let (shown, log) = (&mut self.sweeps.shown, &mut self.messages.log);
        match msg {
            EngineMsg::Failed(e) => {
                run.done = true;
                log.push(format!("error: {e}"));
                self.messages.notice = Some(e);
            }
            EngineMsg::Forecast(text) => log.push(text),
            EngineMsg::Event(ev) => match *ev {
                SweepEvent::Started {
                    journal,
                    contents,
                    resumed_trials,
                    model_name,
                    ..
                } => {
                    log.push(format!(
                        "{model_name}: journal {}{}",
                        journal.display(),
                        if resumed_trials > 0 {
                            format!(" (resuming, {resumed_trials} trials kept)")
                        } else {
                            String::new()
                        }
                    ));
                    *shown = Some(Shown {
                        results: Arc::new(report::summarize(&contents)),
                        contents: Some(*contents),
                        journal: Some(journal),
                    });
                }
                SweepEvent::WorkerReady(w) => {
                    log.push(format!(
                        "worker ready ({}): weights {}, baseline {}, {} threads, built in {:.1}s{}",
                        w.build().label(),
                        crate::plan::human_bytes(w.built.weights_bytes),
                        crate::plan::human_bytes(w.built.baseline_bytes),
                        w.built.threads,
                        w.built.build_seconds,
                        w.built
                            .versions
                            .as_ref()
                            .map_or_else(String::new, |v| format!("; {}", v.text()))
                    ));
                    update(shown, |c| c.workers.push(w));
                }
                SweepEvent::LoadFailed { build, reason } => {
                    log.push(format!(
                        "cannot build the {} model: {reason}",
                        build.label()
                    ));
                    update(shown, |c| c.load_failures.push((build, reason)));
                }
                SweepEvent::TrialStarted {
                    curve,
                    batch,
                    purpose,
                    worker_pid,
                } => {
                    let what = match purpose {
                        Purpose::Search => "",
                        Purpose::Recommend => " (confirming the recommendation)",
                    };
                    run.current = Some(InFlight {
                        what: format!("{curve} batch {batch}{what}"),
                        since: Instant::now(),
                        batch,
                        worker_pid,
                    });
                }
                SweepEvent::TrialFinished(t) => {
                    run.current = None;
                    log.push(format!(
                        "seq {} {} batch {}: {}",
                        t.seq,
                        t.dtype,
                        t.batch,
                        t.outcome_text()
                    ));
                    update(shown, |c| c.trials.push(t));
                }
                SweepEvent::CurveDone { curve, phase } => {
                    log.push(format!("{curve}: {}", phase_text(&phase)));
                }
                SweepEvent::Finished { results, cancelled } => {
                    run.done = true;
                    let line = format!(
                        "sweep {} in {:.1}s; {}",
                        if cancelled { "cancelled" } else { "finished" },
                        run.started.elapsed().as_secs_f64(),
                        self.window.frame.summary()
                    );
                    // Also on stderr, so a run under Xvfb or a terminal leaves the figure behind.
                    eprintln!("oomlab: {line}");
                    log.push(line);
                    if let Some(v) = shown.as_mut() {
                        v.results = Arc::new(*results);
                    }
                }
            },
        }
    }
}

/// Changes the live journal contents and re-summarizes what is shown.
fn update(shown: &mut Option<Shown>, f: impl FnOnce(&mut JournalContents)) {
    if let Some(v) = shown.as_mut()
        && let Some(c) = &mut v.contents
    {
        f(c);
        v.results = Arc::new(report::summarize(c));
    }
}

/// Where a curve ended, for the log.
fn phase_text(p: &report::CurvePhase) -> String {
    let batch = |b: Option<usize>| b.map_or_else(|| "none".into(), |b| b.to_string());
    match p {
        report::CurvePhase::Done {
            found,
            recommended,
            predicted_bytes,
        } => format!(
            "b* = {} ({}), recommended {}{}",
            batch(found.max_batch),
            found.status.name(),
            batch(*recommended),
            predicted_bytes.map_or_else(String::new, |p| format!(
                " (computed from the line: {})",
                crate::plan::human_bytes(p)
            ))
        ),
        report::CurvePhase::Incomplete { stop, .. } => format!("incomplete: {}", stop.text()),
        report::CurvePhase::Search(b) => format!("next trial at batch {b}"),
        report::CurvePhase::Recommend { batch, .. } => format!("confirming batch {batch}"),
    }
}
