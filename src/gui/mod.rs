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
pub mod labels;
pub mod lesson;
mod monitor;
mod msg;
mod panels;
pub(crate) mod plot;
mod settings;
mod state;
pub mod teach;
mod testing;

use frame_stats::FRAME_BUDGET_MS;
pub use frame_stats::FrameStats;
pub use settings::{Settings, ThemeChoice};
pub use state::Shown;
pub use testing::{Seen, TestHooks};

use crate::measure::host::HostMemory;
use crate::measure::nvml::{GpuQueryError, GpuReport};
use crate::worker::WorkerConfig;
use check::SettingsCheck;
use eframe::egui;
use engine::EngineJob;
use jobs::{Dialog, Jobs};
use panels::{PlanStatus, Progress, View};
use state::{HostState, Machine, Messages, Sweeps, WindowState};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::Ordering;
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
    pub gpus: Option<Result<GpuReport, GpuQueryError>>,
    /// The estimator's runtime cache (tests); `None`: `~/.cache/oomlab/runtime.json`.
    pub runtime_cache: Option<PathBuf>,
    /// Build the estimator for shown sweeps (predicted curves, the teaching window). Snapshot
    /// tests turn it off: its runtime figure is this machine's, and pixels must not depend on it.
    pub estimator: bool,
    /// The Hugging Face cache the model picker lists (tests); `None`: the one the HF libraries
    /// use (`HF_HUB_CACHE`, `HF_HOME/hub`, `~/.cache/huggingface/hub`).
    pub hf_cache: Option<PathBuf>,
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
    /// Scale text and lines (1.0 = normal).
    SetZoom(f32),
    /// Presentation zoom with the plot alone (true), or back to normal size with the panels.
    Present(bool),
    /// Start a lesson: a bundled name or a lesson file's path.
    OpenLesson(String),
    OpenLessonDialog,
    /// Show this step of the open lesson.
    LessonStep(usize),
    CloseLesson,
    Quit,
}

/// The window's state, in groups: what it knows of this machine, the sweeps (running and
/// shown), the messages it shows, and the window's own bookkeeping. Tests reach it only through
/// [`TestHooks`].
pub struct OomLabApp {
    settings: Settings,
    options: AppOptions,
    jobs: Jobs,
    check: SettingsCheck,
    machine: Machine,
    sweeps: Sweeps,
    messages: Messages,
    window: WindowState,
    /// The lesson being given, when one is open (it takes the centre).
    lesson: Option<lesson::LessonView>,
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
                form::Refusal(format!(
                    "cannot check the model: the checker thread did not start ({e})"
                ))
            })
        } else {
            Err(form::Refusal(
                "cannot check the model: the checker thread is not running".into(),
            ))
        };
        let mut app = Self {
            settings,
            jobs,
            check: SettingsCheck::new(checker),
            machine: Machine::new(options.host, options.gpus.clone()),
            sweeps: Sweeps::default(),
            messages: Messages::default(),
            window: WindowState::new(cc.egui_ctx.clone()),
            options,
            lesson: None,
        };
        app.settings.theme.apply(&cc.egui_ctx);
        cc.egui_ctx
            .set_zoom_factor(settings::clamp_zoom(app.settings.zoom));
        let sample_gpus = app.machine.gpus.is_none();
        if (app.machine.host == HostState::Unknown || sample_gpus)
            && let Err(e) = app.jobs.start.monitor(sample_gpus)
        {
            // Without the monitor nothing is refused on the machine's account; say so.
            app.machine.unwatched(&e);
            app.messages.notice = Some(format!("cannot watch this machine's memory: {e}"));
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
            app.messages.log.push(e.to_string());
        }
        app.check.refresh(&app.settings);
        app
    }

    /// SIGTERM and Ctrl-C close the window cleanly (the trial in flight is recorded).
    pub fn watch_signals(&self) -> std::io::Result<()> {
        let flag = Arc::clone(&self.window.terminate);
        let ctx = self.window.ctx.clone();
        crate::signals::on_terminate(move || {
            flag.store(true, Ordering::Relaxed);
            ctx.request_repaint();
        })
    }

    /// Whether Run can start: the settings' check, then whether this machine holds the capacity.
    fn plan_status(&self) -> PlanStatus<'_> {
        match self.check.status(&self.settings) {
            PlanStatus::Ready if self.machine.host == HostState::Unknown => PlanStatus::Checking,
            PlanStatus::Ready => self
                .machine
                .host_problem
                .as_deref()
                .map_or(PlanStatus::Ready, PlanStatus::Invalid),
            other => other,
        }
    }

    /// Recomputes whether the checked plan's capacity fits this machine (pure arithmetic).
    fn refresh_host_problem(&mut self) {
        self.machine.host_problem = match (self.check.current(&self.settings), self.machine.host) {
            (Some(c), HostState::Known(host)) => c
                .plan
                .as_ref()
                .ok()
                .and_then(|plan| {
                    let weights = c.weights.as_ref().and_then(|(name, w)| {
                        crate::plan::check_weights_host(plan, name, w, Some(&host)).err()
                    });
                    weights.or_else(|| {
                        (!self.settings.allow_overcommit)
                            .then(|| crate::plan::check_host(plan, Some(&host)).err())
                            .flatten()
                    })
                })
                .map(|e| e.describe(&form::Labels)),
            _ => None,
        };
    }

    /// What the panels may read this frame.
    fn view(&self) -> View<'_> {
        let resumable = self.sweeps.shown.as_ref().and_then(|v| {
            (v.results.incomplete && v.contents.is_some())
                .then_some(v.journal.as_deref())
                .flatten()
        });
        View {
            results: self.sweeps.shown.as_ref().map(|v| Arc::clone(&v.results)),
            journal: self.sweeps.journal_path(),
            resumable,
            running: self
                .sweeps
                .run
                .as_ref()
                .filter(|r| !r.done)
                .map(|r| Progress {
                    current: r.current.as_ref(),
                    started: r.started,
                }),
            plan: self.plan_status(),
            host: match self.machine.host {
                HostState::Known(h) => Some(h),
                HostState::Unknown | HostState::Unreadable => None,
            },
            gpus: self.machine.gpus.as_ref(),
            worker_pid: self.sweeps.trial_in_flight().map(|(pid, _)| pid),
            model_summary: self.check.model_summary(&self.settings),
            models: &self.machine.models,
            notice: self.messages.notice.as_deref(),
            log: &self.messages.log,
            frame: self.window.frame,
            theme: self.settings.theme,
            zoom: self.settings.zoom,
            teach: self.sweeps.teach.model.as_deref(),
            teach_error: self.sweeps.teach.error.as_deref(),
            lesson: self.lesson.as_ref(),
        }
    }

    /// Asks for the estimator of the shown sweep when its model or plan changed.
    fn refresh_teach(&mut self) {
        if !self.options.estimator {
            return;
        }
        let Some(key) = self
            .sweeps
            .shown
            .as_ref()
            .map(|s| teach::TeachKey::of(&s.results))
        else {
            return;
        };
        if self.sweeps.teach.requested.as_ref() == Some(&key) {
            return;
        }
        self.sweeps.teach.requested = Some(key.clone());
        if let Err(e) = self.jobs.start.teach(
            key,
            self.options.worker.clone(),
            self.options.runtime_cache.clone(),
        ) {
            self.sweeps.teach.error = Some(e.to_string());
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
                if let Some(journal) = self.sweeps.journal_path().map(Path::to_path_buf) {
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
                    self.messages.error(e.to_string());
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
            Command::SetZoom(z) => {
                let z = settings::clamp_zoom(z);
                self.settings.zoom = z;
                ctx.set_zoom_factor(z);
            }
            Command::Present(on) => {
                let z = if on { settings::PRESENTATION_ZOOM } else { 1.0 };
                self.settings.zoom = z;
                self.settings.panels = !on;
                ctx.set_zoom_factor(z);
            }
            Command::SetTheme(t) => {
                self.settings.theme = t;
                t.apply(ctx);
            }
            Command::OpenLesson(name) => self.open_lesson(&name, ctx),
            Command::OpenLessonDialog => self.dialog(Dialog::Lesson),
            Command::LessonStep(i) => {
                if let Some(l) = &mut self.lesson {
                    l.current = i.min(l.lesson.steps.len().saturating_sub(1));
                }
            }
            Command::CloseLesson => self.lesson = None,
            Command::Quit => ctx.send_viewport_cmd(egui::ViewportCommand::Close),
        }
    }

    /// Starts a lesson (bundled name or file) with the Python field's interpreter; its journals
    /// go to a new folder beside the sweeps'.
    fn open_lesson(&mut self, name: &str, ctx: &egui::Context) {
        let lesson = match crate::lesson::Lesson::find(name) {
            Ok(l) => l,
            Err(e) => return self.messages.error(e.to_string()),
        };
        let dir = match &self.options.journal_dir {
            Some(d) => d.join(format!(
                "lesson-{}-{}",
                lesson.name,
                std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |t| t.as_millis())
            )),
            None => crate::lesson::runner::LessonRunner::default_dir(&lesson.name),
        };
        self.open_lesson_in(lesson, dir, ctx);
    }

    fn open_lesson_in(&mut self, lesson: crate::lesson::Lesson, dir: PathBuf, ctx: &egui::Context) {
        let python = self.settings.python.trim();
        let python = (!python.is_empty()).then(|| PathBuf::from(python));
        let title = lesson.title.clone();
        match lesson::LessonView::start(
            lesson,
            self.options.worker.clone(),
            python,
            dir,
            ctx.clone(),
        ) {
            Ok(v) => {
                self.messages.inform(format!("lesson: {title}"));
                self.lesson = Some(v);
            }
            Err(e) => self
                .messages
                .error(format!("cannot start the lesson's thread: {e}")),
        }
    }

    fn drain(&mut self) {
        if let Some(l) = &mut self.lesson {
            l.drain();
        }
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
        if self.window.terminate.load(Ordering::Relaxed) {
            self.cancel();
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
        let log_before = self.messages.log.len();
        self.drain();
        let (drained_ms, _) = timer.elapsed_ms();
        // Ctrl +/- (egui's own keys) zoom too; the zoom is remembered with the settings.
        let zoom = ctx.zoom_factor();
        if (zoom - self.settings.zoom).abs() > 1e-3 {
            self.settings.zoom = zoom;
        }
        let new_log_lines = self.messages.log.len() - log_before;
        self.take_dropped_files(&ctx);
        if ctx.input_mut(|i| i.consume_key(egui::Modifiers::COMMAND, egui::Key::Q)) {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
        self.check.refresh(&self.settings);
        self.refresh_host_problem();
        self.refresh_teach();
        // The panels edit copies of the settings and their own state, reading a narrow view.
        let mut settings = self.settings.clone();
        let mut panel = std::mem::take(&mut self.window.panel);
        let drawn = panels::draw(&self.view(), &mut settings, &mut panel, ui);
        self.settings = settings;
        self.window.panel = panel;
        self.window.plot_rect = drawn.plot_rect;
        for c in drawn.commands {
            self.apply(c, &ctx);
        }
        // Settings edited this frame are checked before the next one.
        if self.check.current(&self.settings).is_none() {
            self.check.refresh(&self.settings);
            ctx.request_repaint();
        }
        let running = self.sweeps.is_running();
        if running {
            // Keep the elapsed-time display moving, once a second: every frame costs a core on
            // a software-rendered display, and engine events repaint at once anyway.
            ctx.request_repaint_after(Duration::from_secs(1));
        }
        let (wall, cpu) = timer.elapsed_ms();
        if self.window.frame_log && (wall > FRAME_BUDGET_MS || cpu > FRAME_BUDGET_MS) {
            eprintln!(
                "slow frame {}: wall {wall:.2} ms cpu {cpu:.2} ms (drain {drained_ms:.2} ms, {new_log_lines} new log lines), trials {}, log {}",
                self.window.frame.frames_during_sweep,
                self.sweeps.results().map_or(0, |r| r.trials.len()),
                self.messages.log.len()
            );
        }
        self.window.frame.record(wall, cpu, running);
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        if self.options.persist {
            eframe::set_value(storage, eframe::APP_KEY, &self.settings);
        }
    }

    fn on_exit(&mut self) {
        // Stop listening, then wait: the engine cancels the trial in flight (recorded in the
        // journal) and ends at its next send, which fails now — exit cannot hang on a full channel.
        if let Some(r) = &mut self.sweeps.run {
            r.shut_down();
        }
    }
}

/// Why the window could not open.
#[derive(Debug, thiserror::Error)]
pub enum GuiError {
    #[error(transparent)]
    Worker(#[from] crate::worker::LocateError),
    #[error(
        "cannot open a window: {0}; on a machine without a display use the headless commands (`oomlab sweep --help`)"
    )]
    Window(#[from] eframe::Error),
}

/// Opens the window. `open` is a results/journal file to show at start.
pub fn run(open: Option<PathBuf>) -> Result<(), GuiError> {
    let worker = WorkerConfig::current()?;
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
    )?;
    Ok(())
}
