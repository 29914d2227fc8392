//! The desktop lab (eframe). The only module that imports egui.
//!
//! A second face over the same engine. The rooms: [`engine`] (the sweep thread and its
//! messages), [`jobs`] (dialogs, opening, exporting, PNG, dropped files, the settings checker),
//! [`form`] (settings → plan, and the window's words for the plan's fields), [`frame_stats`],
//! [`panels`] (drawing, through a narrow view; they return commands) and [`plot`]. This file
//! keeps the app, `eframe::App` and the commands. The UI thread never runs a forward, never
//! blocks on the worker and never touches a file.

mod check;
mod engine;
mod form;
mod frame_stats;
mod jobs;
mod monitor;
mod msg;
mod panels;
pub(crate) mod plot;
mod settings;
pub mod teach;

use frame_stats::FRAME_BUDGET_MS;
pub use frame_stats::FrameStats;
pub use settings::{Settings, ThemeChoice};

use crate::measure::host::HostMemory;
use crate::measure::nvml::GpuReport;
use crate::report::{JournalContents, Results};
use crate::worker::WorkerConfig;
use check::SettingsCheck;
use eframe::egui;
use engine::{EngineJob, Run};
use jobs::{Dialog, Jobs};
use panels::{PanelState, PlanStatus, Progress, View};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

/// How the app is started.
#[derive(Debug, Clone)]
pub struct AppOptions {
    pub worker: WorkerConfig,
    /// A results or journal file to show at start (`oomlab open PATH`).
    pub open: Option<PathBuf>,
    /// Where new sweeps put their journals (None: the default folder).
    pub journal_dir: Option<PathBuf>,
    /// Read and write settings through eframe's storage.
    pub persist: bool,
    /// Start the settings checker thread (tests turn it off to see the window cope without it).
    pub checker: bool,
    /// This machine's memory as given (tests); `None`: sample it on a monitor thread.
    pub host: Option<HostMemory>,
    /// The GPUs as given (tests); `None`: ask the NVIDIA driver on the monitor thread.
    pub gpus: Option<Result<GpuReport, String>>,
    /// The estimator's runtime cache (tests); `None`: `~/.cache/oomlab/runtime.json`.
    pub runtime_cache: Option<PathBuf>,
    /// Build the estimator for shown sweeps (predicted curves, the teaching window). Snapshot
    /// tests turn it off: its runtime figure is this machine's, and pixels must not depend on it.
    pub estimator: bool,
    /// The Hugging Face cache the model picker lists (tests); `None`: the one the HF libraries
    /// use (`HF_HUB_CACHE`, `HF_HOME/hub`, `~/.cache/huggingface/hub`).
    pub hf_cache: Option<PathBuf>,
}

/// The estimator for the shown sweep (the teaching views), built in the background.
#[derive(Default)]
struct TeachState {
    /// What was last asked for.
    requested: Option<teach::TeachKey>,
    model: Option<Arc<teach::TeachModel>>,
    error: Option<String>,
}

/// What the centre, table and card show: a live sweep, or a reopened one.
pub struct Shown {
    /// The journal's contents when the results come from one (live, or a reopened .jsonl).
    pub contents: Option<JournalContents>,
    pub results: Arc<Results>,
    pub journal: Option<PathBuf>,
}

/// What the window knows of this machine's memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum HostState {
    /// The monitor has not reported yet.
    Unknown,
    /// It cannot be read here: capacities are not checked against it.
    Unreadable,
    Known(HostMemory),
}

/// What panels ask for; applied after drawing so no panel mutates state mid-frame.
#[derive(Debug, Clone)]
#[must_use]
pub enum Command {
    Run,
    Cancel,
    Resume(PathBuf),
    /// Confirm this curve's computed recommendation with a trial.
    Confirm(crate::plan::Curve),
    PickModelFolder,
    PickConfig,
    /// Choose the PyTorch runtime's interpreter.
    PickPython,
    /// Probe the PyTorch runtime's interpreter and say its versions.
    CheckPython,
    OpenResultsDialog,
    OpenResultsPath(PathBuf),
    ExportDialog,
    ExportTo(PathBuf, bool),
    SavePngDialog,
    SetTheme(ThemeChoice),
    Quit,
}

pub struct OomLabApp {
    pub settings: Settings,
    options: AppOptions,
    jobs: Jobs,
    check: SettingsCheck,
    host: HostState,
    /// The GPUs the driver reports (`None` until the monitor has looked).
    gpus: Option<Result<GpuReport, String>>,
    /// Why this machine cannot hold the capacity of the checked plan (Run is then disabled).
    host_problem: Option<String>,
    run: Option<Run>,
    shown: Option<Shown>,
    log: Vec<String>,
    notice: Option<String>,
    frame: FrameStats,
    frame_log: bool,
    panel: PanelState,
    /// The model picker's list: the bundled models, then those found in the HF cache.
    models: Vec<crate::catalog::CatalogEntry>,
    plot_rect: Option<egui::Rect>,
    teach: TeachState,
    terminate: Arc<AtomicBool>,
    ctx: egui::Context,
}

impl OomLabApp {
    #[must_use]
    pub fn new(cc: &eframe::CreationContext<'_>, options: AppOptions) -> Self {
        let settings = if options.persist {
            cc.storage
                .and_then(|s| eframe::get_value::<Settings>(s, eframe::APP_KEY))
                .unwrap_or_default()
        } else {
            Settings::default()
        };
        let jobs = Jobs::new(cc.egui_ctx.clone());
        let checker = if options.checker {
            jobs.start.checker().map_err(|e| {
                format!("cannot check the model: the checker thread did not start ({e})")
            })
        } else {
            Err("cannot check the model: the checker thread is not running".into())
        };
        let mut app = Self {
            settings,
            jobs,
            check: SettingsCheck::new(checker),
            host: options.host.map_or(HostState::Unknown, HostState::Known),
            gpus: options.gpus.clone(),
            host_problem: None,
            run: None,
            shown: None,
            log: Vec::new(),
            notice: None,
            frame: FrameStats::default(),
            frame_log: frame_stats::frame_log_enabled(),
            panel: PanelState::default(),
            models: crate::catalog::CatalogEntry::bundled(),
            plot_rect: None,
            teach: TeachState::default(),
            terminate: Arc::new(AtomicBool::new(false)),
            ctx: cc.egui_ctx.clone(),
            options,
        };
        app.settings.theme.apply(&cc.egui_ctx);
        let sample_gpus = app.gpus.is_none();
        if (app.host == HostState::Unknown || sample_gpus)
            && let Err(e) = app.jobs.start.monitor(sample_gpus)
        {
            // Without the monitor nothing is refused on the machine's account; say so.
            if app.host == HostState::Unknown {
                app.host = HostState::Unreadable;
            }
            app.gpus = Some(Err(format!("cannot watch the GPUs: {e}")));
            app.notice = Some(format!("cannot watch this machine's memory: {e}"));
        }
        if let Some(p) = app.options.open.clone() {
            app.open_results(p);
        }
        let cache = app
            .options
            .hf_cache
            .clone()
            .unwrap_or_else(crate::catalog::hub::cache_dir);
        if let Err(e) = app.jobs.start.scan_models(cache) {
            app.log.push(e);
        }
        app.check.refresh(&app.settings);
        app
    }

    /// SIGTERM and Ctrl-C close the window cleanly (the trial in flight is recorded).
    pub fn watch_signals(&self) -> std::io::Result<()> {
        let flag = Arc::clone(&self.terminate);
        let ctx = self.ctx.clone();
        crate::signals::on_terminate(move || {
            flag.store(true, Ordering::Relaxed);
            ctx.request_repaint();
        })
    }

    // ---- read access for tests ----

    #[must_use]
    pub fn results(&self) -> Option<&Results> {
        self.shown.as_ref().map(|v| &*v.results)
    }

    #[must_use]
    pub fn journal_path(&self) -> Option<&Path> {
        self.shown.as_ref().and_then(|v| v.journal.as_deref())
    }

    #[must_use]
    pub fn notice(&self) -> Option<&str> {
        self.notice.as_deref()
    }

    #[must_use]
    pub fn frame_stats(&self) -> FrameStats {
        self.frame
    }

    #[must_use]
    pub fn log(&self) -> &[String] {
        &self.log
    }

    /// Whether the settings are being checked off the UI thread.
    #[must_use]
    pub fn estimator_ready(&self) -> bool {
        self.teach.model.is_some()
            && self.teach.model.as_ref().map(|m| &m.key) == self.teach.requested.as_ref()
    }

    /// The plan Run would start now, when the settings check found one.
    #[must_use]
    pub fn checked_plan(&self) -> Option<crate::plan::SweepPlan> {
        self.check
            .current(&self.settings)
            .and_then(|c| c.plan.as_ref().ok().cloned())
    }

    #[must_use]
    pub fn checking(&self) -> bool {
        matches!(self.plan_status(), PlanStatus::Checking)
    }

    /// Whether Run can start: the settings' check, then whether this machine holds the capacity.
    fn plan_status(&self) -> PlanStatus<'_> {
        match self.check.status(&self.settings) {
            PlanStatus::Ready if self.host == HostState::Unknown => PlanStatus::Checking,
            PlanStatus::Ready => self
                .host_problem
                .as_deref()
                .map_or(PlanStatus::Ready, PlanStatus::Invalid),
            other => other,
        }
    }

    /// Recomputes whether the checked plan's capacity fits this machine (pure arithmetic).
    fn refresh_host_problem(&mut self) {
        self.host_problem = match (self.check.current(&self.settings), self.host) {
            (Some(c), HostState::Known(host)) => c
                .plan
                .as_ref()
                .ok()
                .and_then(|plan| {
                    let weights = c.weights.as_ref().and_then(|(name, w)| {
                        crate::sweep::check_weights_host(plan, name, w, Some(&host)).err()
                    });
                    weights.or_else(|| {
                        (!self.settings.allow_overcommit)
                            .then(|| crate::sweep::check_host(plan, Some(&host)).err())
                            .flatten()
                    })
                })
                .map(|e| e.describe(&form::Labels)),
            _ => None,
        };
    }

    /// Test hook: blocks until a background job reports, then handles it.
    pub fn wait_for_background(&mut self, timeout: Duration) -> bool {
        match self.jobs.recv_timeout(timeout) {
            Some(m) => {
                self.handle_bg(m);
                true
            }
            None => false,
        }
    }

    /// What the panels may read this frame.
    fn view(&self) -> View<'_> {
        let resumable = self.shown.as_ref().and_then(|v| {
            (v.results.incomplete && v.contents.is_some())
                .then_some(v.journal.as_deref())
                .flatten()
        });
        View {
            results: self.shown.as_ref().map(|v| Arc::clone(&v.results)),
            journal: self.journal_path(),
            resumable,
            running: self.run.as_ref().filter(|r| !r.done).map(|r| Progress {
                current: r.current.as_ref(),
                started: r.started,
            }),
            plan: self.plan_status(),
            host: match self.host {
                HostState::Known(h) => Some(h),
                HostState::Unknown | HostState::Unreadable => None,
            },
            gpus: self.gpus.as_ref(),
            worker_pid: self.trial_in_flight().map(|(pid, _)| pid),
            model_summary: self.check.model_summary(&self.settings),
            models: &self.models,
            notice: self.notice.as_deref(),
            log: &self.log,
            frame: self.frame,
            theme: self.settings.theme,
            teach: self.teach.model.as_deref(),
            teach_error: self.teach.error.as_deref(),
        }
    }

    /// Asks for the estimator of the shown sweep when its model or plan changed.
    fn refresh_teach(&mut self) {
        if !self.options.estimator {
            return;
        }
        let Some(key) = self.shown.as_ref().map(|s| teach::TeachKey::of(&s.results)) else {
            return;
        };
        if self.teach.requested.as_ref() == Some(&key) {
            return;
        }
        self.teach.requested = Some(key.clone());
        if let Err(e) = self.jobs.start.teach(
            key,
            self.options.worker.clone(),
            self.options.runtime_cache.clone(),
        ) {
            self.teach.error = Some(e);
        }
    }

    fn apply(&mut self, c: Command, ctx: &egui::Context) {
        match c {
            Command::Run => {
                if matches!(self.plan_status(), PlanStatus::Ready)
                    && let Some(Ok(plan)) =
                        self.check.current(&self.settings).map(|c| c.plan.clone())
                {
                    let journal_dir = self.options.journal_dir.clone();
                    self.start(EngineJob::New {
                        plan: Box::new(plan),
                        journal_dir,
                    });
                    self.settings.remember_model();
                }
            }
            Command::Cancel => self.cancel(),
            Command::Resume(p) => self.start(EngineJob::Resume(p)),
            Command::Confirm(curve) => {
                if let Some(journal) = self.journal_path().map(Path::to_path_buf) {
                    self.start(EngineJob::Confirm { journal, curve });
                }
            }
            Command::PickModelFolder => self.dialog(Dialog::ModelFolder),
            Command::PickConfig => self.dialog(Dialog::Config),
            Command::PickPython => self.dialog(Dialog::Python),
            Command::CheckPython => {
                let given = self.settings.python.trim();
                let given = (!given.is_empty()).then(|| PathBuf::from(given));
                let exe = self.options.worker.exe.clone();
                if let Err(e) = self.jobs.start.probe_python(given, exe) {
                    self.error(e);
                }
            }
            Command::OpenResultsDialog => self.dialog(Dialog::Results),
            Command::OpenResultsPath(p) => self.open_results(p),
            Command::ExportDialog => self.dialog(Dialog::Export),
            Command::ExportTo(p, force) => {
                if p.extension().is_some_and(|e| e.eq_ignore_ascii_case("png")) {
                    self.save_plot_png(p, force);
                } else {
                    self.export_to(p, force);
                }
            }
            Command::SavePngDialog => self.dialog(Dialog::Png),
            Command::SetTheme(t) => {
                self.settings.theme = t;
                t.apply(ctx);
            }
            Command::Quit => ctx.send_viewport_cmd(egui::ViewportCommand::Close),
        }
    }

    fn drain(&mut self) {
        self.drain_engine();
        while let Some(m) = self.jobs.try_recv() {
            self.handle_bg(m);
        }
    }
}

impl eframe::App for OomLabApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let timer = frame_stats::FrameTimer::start();
        let ctx = ui.ctx().clone();
        if self.terminate.load(Ordering::Relaxed) {
            self.cancel();
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
        let log_before = self.log.len();
        self.drain();
        let (drained_ms, _) = timer.elapsed_ms();
        let new_log_lines = self.log.len() - log_before;
        self.take_dropped_files(&ctx);
        if ctx.input_mut(|i| i.consume_key(egui::Modifiers::COMMAND, egui::Key::Q)) {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
        self.check.refresh(&self.settings);
        self.refresh_host_problem();
        self.refresh_teach();
        // The panels edit copies of the settings and their own state, reading a narrow view.
        let mut settings = self.settings.clone();
        let mut panel = std::mem::take(&mut self.panel);
        let drawn = panels::draw(&self.view(), &mut settings, &mut panel, ui);
        self.settings = settings;
        self.panel = panel;
        self.plot_rect = drawn.plot_rect;
        for c in drawn.commands {
            self.apply(c, &ctx);
        }
        // Settings edited this frame are checked before the next one.
        if self.check.current(&self.settings).is_none() {
            self.check.refresh(&self.settings);
            ctx.request_repaint();
        }
        let running = self.is_running();
        if running {
            // Keep the elapsed-time display moving, once a second: every frame costs a core on
            // a software-rendered display, and engine events repaint at once anyway.
            ctx.request_repaint_after(Duration::from_secs(1));
        }
        let (wall, cpu) = timer.elapsed_ms();
        if self.frame_log && (wall > FRAME_BUDGET_MS || cpu > FRAME_BUDGET_MS) {
            eprintln!(
                "slow frame {}: wall {wall:.2} ms cpu {cpu:.2} ms (drain {drained_ms:.2} ms, {new_log_lines} new log lines), trials {}, log {}",
                self.frame.frames_during_sweep,
                self.results().map_or(0, |r| r.trials.len()),
                self.log.len()
            );
        }
        self.frame.record(wall, cpu, running);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        if self.options.persist {
            eframe::set_value(storage, eframe::APP_KEY, &self.settings);
        }
    }

    fn on_exit(&mut self) {
        // Stop listening, then wait: the engine cancels the trial in flight (recorded in the
        // journal) and ends at its next send, which fails now — exit cannot hang on a full channel.
        if let Some(r) = &mut self.run {
            r.shut_down();
        }
    }
}

/// Opens the window. `open` is a results/journal file to show at start.
pub fn run(open: Option<PathBuf>) -> Result<(), String> {
    let worker = WorkerConfig::current().map_err(|e| e.to_string())?;
    let options = eframe::NativeOptions {
        viewport: egui::ViewportBuilder::default()
            .with_title("oomlab — GPU out-of-memory lab")
            .with_inner_size([1280.0, 800.0])
            .with_min_inner_size([900.0, 560.0])
            .with_drag_and_drop(true),
        ..Default::default()
    };
    let app_options = AppOptions {
        worker,
        open,
        journal_dir: None,
        persist: true,
        checker: true,
        host: None,
        gpus: None,
        runtime_cache: None,
        estimator: true,
        hf_cache: None,
    };
    eframe::run_native(
        "oomlab",
        options,
        Box::new(move |cc| {
            let app = OomLabApp::new(cc, app_options);
            app.watch_signals()?;
            Ok(Box::new(app))
        }),
    )
    .map_err(|e| {
        format!(
            "cannot open a window: {e}; on a machine without a display use the headless commands (`oomlab sweep --help`)"
        )
    })
}
