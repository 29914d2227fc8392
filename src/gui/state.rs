//! The window's state, in groups, each with the handler for what it hears: [`Machine`] (this
//! machine's memory and GPUs, the model list), [`Sweeps`] (the running sweep, the shown results
//! and the estimator for them), [`Messages`] (the log and the notice) and [`WindowState`] (frame
//! times, the panels' own state, the plot's rectangle, the terminate flag).

use super::engine::Run;
use super::frame_stats::{self, FrameStats};
use super::panels::PanelState;
use super::teach;
use crate::catalog::{CatalogEntry, EntrySource};
use crate::measure::host::HostMemory;
use crate::measure::nvml::{GpuQueryError, GpuReport};
use crate::report::{JournalContents, Results};
use eframe::egui;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::AtomicBool;

/// What the window knows of this machine's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HostState {
    /// The monitor has not reported yet.
    Unknown,
    /// It cannot be read here: capacities are not checked against it.
    Unreadable,
    Known(HostMemory),
}

/// This machine: its memory, its GPUs, and the models it has.
pub struct Machine {
    pub host: HostState,
    /// Whether the memory was given (tests): then the monitor's samples are ignored.
    host_given: bool,
    /// The GPUs the driver reports (`None` until the monitor has looked).
    pub gpus: Option<Result<GpuReport, GpuQueryError>>,
    /// Why this machine cannot hold the capacity of the checked plan (Run is then disabled).
    pub host_problem: Option<String>,
    /// The model picker's list: the bundled models, then those found in the HF cache.
    pub models: Vec<CatalogEntry>,
}

impl Machine {
    pub fn new(host: Option<HostMemory>, gpus: Option<Result<GpuReport, GpuQueryError>>) -> Self {
        Self {
            host: host.map_or(HostState::Unknown, HostState::Known),
            host_given: host.is_some(),
            gpus,
            host_problem: None,
            models: CatalogEntry::bundled(),
        }
    }

    /// The monitor's sample of this machine's memory (`None`: it cannot be read).
    pub fn on_host(&mut self, host: Option<HostMemory>) {
        if !self.host_given {
            self.host = host.map_or(HostState::Unreadable, HostState::Known);
        }
    }

    pub fn on_gpus(&mut self, gpus: Result<GpuReport, GpuQueryError>) {
        self.gpus = Some(gpus);
    }

    /// The models found in the Hugging Face cache replace those found before.
    pub fn on_cached_models(&mut self, found: Vec<CatalogEntry>) {
        self.models.retain(|m| m.source == EntrySource::Bundled);
        self.models.extend(found);
    }

    /// The monitor could not start: nothing is refused on the machine's account.
    pub fn unwatched(&mut self, e: &std::io::Error) {
        if self.host == HostState::Unknown {
            self.host = HostState::Unreadable;
        }
        self.gpus = Some(Err(GpuQueryError(format!("cannot watch the GPUs: {e}"))));
    }
}

/// What the centre, table and card show: a live sweep, or a reopened one.
pub struct Shown {
    /// The journal's contents when the results come from one (live, or a reopened .jsonl).
    pub contents: Option<JournalContents>,
    pub results: Arc<Results>,
    pub journal: Option<PathBuf>,
}

/// The estimator for the shown sweep (the teaching views), built in the background.
#[derive(Default)]
pub struct TeachState {
    /// What was last asked for.
    pub requested: Option<teach::TeachKey>,
    pub model: Option<Arc<teach::TeachModel>>,
    pub error: Option<String>,
}

/// The sweep running now, the results shown, and the estimator for them.
#[derive(Default)]
pub struct Sweeps {
    pub run: Option<Run>,
    pub shown: Option<Shown>,
    pub teach: TeachState,
}

impl Sweeps {
    pub fn results(&self) -> Option<&Results> {
        self.shown.as_ref().map(|v| &*v.results)
    }

    pub fn journal_path(&self) -> Option<&Path> {
        self.shown.as_ref().and_then(|v| v.journal.as_deref())
    }

    pub fn is_running(&self) -> bool {
        self.run.as_ref().is_some_and(|r| !r.done)
    }

    /// The worker's pid and the batch of the trial whose forward is running now.
    pub fn trial_in_flight(&self) -> Option<(u32, usize)> {
        let t = self.run.as_ref()?.current.as_ref()?;
        Some((t.worker_pid, t.batch))
    }

    /// Whether the estimator for what is shown now is built.
    pub fn estimator_ready(&self) -> bool {
        self.teach.model.is_some()
            && self.teach.model.as_ref().map(|m| &m.key) == self.teach.requested.as_ref()
    }

    /// The estimator a background job built; only the answer for what is shown now counts.
    pub fn on_teach(
        &mut self,
        key: &teach::TeachKey,
        result: Result<Box<teach::TeachModel>, teach::TeachError>,
    ) {
        if self.teach.requested.as_ref() != Some(key) {
            return;
        }
        match result {
            Ok(m) => {
                self.teach.model = Some(Arc::from(m));
                self.teach.error = None;
            }
            Err(e) => self.teach.error = Some(e.to_string()),
        }
    }
}

/// The event log and the one-line notice under the controls.
#[derive(Default)]
pub struct Messages {
    pub log: Vec<String>,
    pub notice: Option<String>,
}

impl Messages {
    pub fn error(&mut self, e: String) {
        self.log.push(format!("error: {e}"));
        self.notice = Some(e);
    }

    pub fn inform(&mut self, m: String) {
        self.log.push(m.clone());
        self.notice = Some(m);
    }
}

/// The window's own bookkeeping.
pub struct WindowState {
    pub frame: FrameStats,
    /// Slow frames are printed (see [`frame_stats::FRAME_LOG_ENV`]).
    pub frame_log: bool,
    pub panel: PanelState,
    /// Where the plot was drawn last frame (the PNG export cuts it out of a screenshot).
    pub plot_rect: Option<egui::Rect>,
    /// Set by SIGTERM or Ctrl-C: the window closes at its next frame.
    pub terminate: Arc<AtomicBool>,
    pub ctx: egui::Context,
}

impl WindowState {
    pub fn new(ctx: egui::Context) -> Self {
        Self {
            frame: FrameStats::default(),
            frame_log: frame_stats::frame_log_enabled(),
            panel: PanelState::default(),
            plot_rect: None,
            terminate: Arc::new(AtomicBool::new(false)),
            ctx,
        }
    }
}
