//! The desktop lab (eframe). The only module that imports egui.
//!
//! A second face over the same engine: a named thread runs [`crate::sweep::Sweep::run`] and
//! sends `SweepEvent`s over a bounded channel, waking the UI with `request_repaint`. The UI
//! drains the channel once per frame; it never runs a forward, never blocks on the worker, and
//! does its file I/O (dialogs, opening, exporting, PNG) on background threads.

mod panels;
mod plot;
mod settings;

pub use settings::{Settings, ThemeChoice};

use crate::catalog::{ModelRef, ModelSpec};
use crate::plan::{BatchRange, Precision, SweepPlan, parse_bytes, parse_headroom};
use crate::report::{self, JournalContents, Results};
use crate::sweep::{self, Sweep, SweepEvent};
use crate::worker::WorkerConfig;
use eframe::egui;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc::{Receiver, Sender, SyncSender, TryRecvError, channel, sync_channel};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

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
}

/// Messages from the engine thread.
#[derive(Debug)]
pub enum EngineMsg {
    Event(SweepEvent),
    /// The sweep could not start or its journal could not be written.
    Failed(String),
}

/// Messages from other background work (dialogs, file reads and writes).
#[derive(Debug)]
pub enum BgMsg {
    ModelPicked(PathBuf),
    ResultsPicked(PathBuf),
    ExportPicked(PathBuf),
    PngPicked(PathBuf),
    Opened(Result<(PathBuf, Option<JournalContents>, Box<Results>), String>),
    Exported(Result<PathBuf, String>),
    PngSaved(Result<PathBuf, String>),
    DialogEmpty(&'static str),
    /// Validation of settings that name a local path (read off the UI thread).
    Validated {
        key: Box<Settings>,
        result: Result<SweepPlan, String>,
        summary: Result<String, String>,
    },
}

struct RunHandle {
    rx: Receiver<EngineMsg>,
    cancel: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    started: Instant,
    current: Option<(String, Instant)>,
    done: bool,
    cancelled: bool,
}

/// What the centre, table and card show: a live sweep, or a reopened one.
pub struct View {
    pub contents: Option<JournalContents>,
    pub results: Arc<Results>,
    pub journal: Option<PathBuf>,
}

/// Cached validation of the settings (recomputed only when they change).
struct Validation {
    key: Settings,
    result: Result<SweepPlan, String>,
    /// One line about the model (family, size, positions), or why it cannot be read.
    summary: Result<String, String>,
}

/// Per-frame time spent in the app's own code (its `ui` call: drawing, draining, commands).
/// Wall time includes being preempted by the worker; CPU time is this thread's own work.
#[derive(Debug, Default, Clone, Copy)]
pub struct FrameStats {
    pub last_ms: f64,
    pub last_cpu_ms: f64,
    pub frames_during_sweep: u64,
    pub total_ms_during_sweep: f64,
    pub max_ms_during_sweep: f64,
    pub total_cpu_ms_during_sweep: f64,
    pub max_cpu_ms_during_sweep: f64,
    /// Frames during the sweep whose wall time exceeded the 5 ms budget.
    pub frames_over_budget: u64,
}

impl FrameStats {
    #[must_use]
    pub fn mean_ms_during_sweep(&self) -> f64 {
        if self.frames_during_sweep == 0 {
            0.0
        } else {
            self.total_ms_during_sweep / self.frames_during_sweep as f64
        }
    }

    #[must_use]
    pub fn mean_cpu_ms_during_sweep(&self) -> f64 {
        if self.frames_during_sweep == 0 {
            0.0
        } else {
            self.total_cpu_ms_during_sweep / self.frames_during_sweep as f64
        }
    }

    fn record(&mut self, wall_ms: f64, cpu_ms: f64, during_sweep: bool) {
        self.last_ms = wall_ms;
        self.last_cpu_ms = cpu_ms;
        if during_sweep {
            self.frames_during_sweep += 1;
            self.total_ms_during_sweep += wall_ms;
            self.max_ms_during_sweep = self.max_ms_during_sweep.max(wall_ms);
            self.total_cpu_ms_during_sweep += cpu_ms;
            self.max_cpu_ms_during_sweep = self.max_cpu_ms_during_sweep.max(cpu_ms);
            if wall_ms > FRAME_BUDGET_MS {
                self.frames_over_budget += 1;
            }
        }
    }

    /// One line for the log and stderr.
    #[must_use]
    pub fn summary(&self) -> String {
        format!(
            "UI frame time during the sweep: mean {:.2} ms (cpu {:.2} ms), max {:.2} ms (cpu {:.2} ms), {} of {} frames over {FRAME_BUDGET_MS} ms",
            self.mean_ms_during_sweep(),
            self.mean_cpu_ms_during_sweep(),
            self.max_ms_during_sweep,
            self.max_cpu_ms_during_sweep,
            self.frames_over_budget,
            self.frames_during_sweep
        )
    }
}

/// The UI thread's budget per frame for the app's own code.
pub const FRAME_BUDGET_MS: f64 = 5.0;

/// CPU time this thread has used, in milliseconds.
fn thread_cpu_ms() -> f64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we own.
    unsafe {
        libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &raw mut ts);
    }
    ts.tv_sec as f64 * 1e3 + ts.tv_nsec as f64 / 1e6
}

static TERMINATE: AtomicBool = AtomicBool::new(false);

extern "C" fn on_sigterm(_: libc::c_int) {
    TERMINATE.store(true, Ordering::Relaxed);
}

pub struct OomLabApp {
    pub settings: Settings,
    options: AppOptions,
    validation: Option<Validation>,
    /// Settings being validated on a background thread.
    validating: Option<Settings>,
    run: Option<RunHandle>,
    view: Option<View>,
    log: Vec<String>,
    /// One line of feedback (errors from open/export, hints).
    pub notice: Option<String>,
    bg_tx: Sender<BgMsg>,
    bg_rx: Receiver<BgMsg>,
    frame: FrameStats,
    sort: (panels::SortColumn, bool),
    dialog_service: bool,
    export_path: String,
    export_overwrite: bool,
    open_path: String,
    plot_rect: Option<egui::Rect>,
    ctx: egui::Context,
}

/// Whether a native file dialog can appear (xdg portal over D-Bus, or zenity).
fn dialog_service_available() -> bool {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
    };
    std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some()
        || on_path("zenity")
        || on_path("kdialog")
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
        let (bg_tx, bg_rx) = channel();
        let mut app = Self {
            settings,
            validation: None,
            validating: None,
            run: None,
            view: None,
            log: Vec::new(),
            notice: None,
            bg_tx,
            bg_rx,
            frame: FrameStats::default(),
            sort: (panels::SortColumn::Index, true),
            dialog_service: dialog_service_available(),
            export_path: String::new(),
            export_overwrite: false,
            open_path: String::new(),
            plot_rect: None,
            ctx: cc.egui_ctx.clone(),
            options,
        };
        app.settings.theme.apply(&cc.egui_ctx);
        if let Some(p) = app.options.open.clone() {
            app.open_results(p);
        }
        app
    }

    /// Installs SIGTERM/SIGINT handling: the window closes cleanly.
    pub fn install_terminate_handler(ctx: &egui::Context) {
        // SAFETY: the handler only stores to an atomic.
        unsafe {
            libc::signal(libc::SIGTERM, on_sigterm as *const () as libc::sighandler_t);
            libc::signal(libc::SIGINT, on_sigterm as *const () as libc::sighandler_t);
        }
        let ctx = ctx.clone();
        let _ = std::thread::Builder::new()
            .name("oomlab-sigterm".into())
            .spawn(move || {
                while !TERMINATE.load(Ordering::Relaxed) {
                    std::thread::sleep(Duration::from_millis(100));
                }
                ctx.request_repaint();
            });
    }

    // ---- read access for tests and panels ----

    #[must_use]
    pub fn is_running(&self) -> bool {
        self.run.as_ref().is_some_and(|r| !r.done)
    }

    #[must_use]
    pub fn results(&self) -> Option<&Results> {
        self.view.as_ref().map(|v| &*v.results)
    }

    /// The shown results, shared (panels hold them while they draw; no deep copy per frame).
    #[must_use]
    pub fn shared_results(&self) -> Option<Arc<Results>> {
        self.view.as_ref().map(|v| Arc::clone(&v.results))
    }

    #[must_use]
    pub fn journal_path(&self) -> Option<&PathBuf> {
        self.view.as_ref().and_then(|v| v.journal.as_ref())
    }

    #[must_use]
    pub fn frame_stats(&self) -> FrameStats {
        self.frame
    }

    #[must_use]
    pub fn log(&self) -> &[String] {
        &self.log
    }

    /// Test hook: blocks until the engine sends its next message (or `timeout`), then handles
    /// it as a frame would. Returns false when no sweep is running or nothing arrived.
    pub fn wait_for_engine(&mut self, timeout: Duration) -> bool {
        let Some(run) = &self.run else { return false };
        if run.done {
            return false;
        }
        match run.rx.recv_timeout(timeout) {
            Ok(msg) => {
                self.handle_engine(msg);
                true
            }
            Err(_) => false,
        }
    }

    /// Test hook: blocks until a background job (open, export) reports, then handles it.
    pub fn wait_for_background(&mut self, timeout: Duration) -> bool {
        match self.bg_rx.recv_timeout(timeout) {
            Ok(m) => {
                self.handle_bg(m);
                true
            }
            Err(_) => false,
        }
    }

    // ---- validation ----

    /// The plan the settings describe, or the reason Run is disabled. Bundled models are checked
    /// at once (in memory); a local path is read on a background thread.
    pub fn plan(&mut self) -> Result<SweepPlan, String> {
        if let Some(v) = &self.validation
            && v.key == self.settings
        {
            return v.result.clone();
        }
        let bundled = crate::catalog::BUNDLED
            .iter()
            .any(|b| b.id.eq_ignore_ascii_case(self.settings.model.trim()));
        if bundled {
            let (result, summary) = validate_settings(&self.settings);
            self.validation = Some(Validation {
                key: self.settings.clone(),
                result: result.clone(),
                summary,
            });
            return result;
        }
        if self.validating.as_ref() != Some(&self.settings) {
            self.validating = Some(self.settings.clone());
            let key = self.settings.clone();
            let tx = self.bg_tx.clone();
            let ctx = self.ctx.clone();
            let _ = std::thread::Builder::new()
                .name("oomlab-validate".into())
                .spawn(move || {
                    let (result, summary) = validate_settings(&key);
                    let _ = tx.send(BgMsg::Validated {
                        key: Box::new(key),
                        result,
                        summary,
                    });
                    ctx.request_repaint();
                });
        }
        Err("checking the model…".into())
    }

    /// The cached one-line model summary for the current settings.
    #[must_use]
    pub fn model_summary(&self) -> Option<&Result<String, String>> {
        self.validation
            .as_ref()
            .filter(|v| v.key.model == self.settings.model)
            .map(|v| &v.summary)
    }

    /// Whether settings are being checked on a background thread (tests wait for it).
    #[must_use]
    pub fn validating(&self) -> bool {
        self.validating.is_some()
    }

    // ---- actions ----

    fn start(&mut self, resume: Option<PathBuf>) {
        if self.is_running() {
            return;
        }
        let plan = if resume.is_none() {
            match self.plan() {
                Ok(p) => Some(p),
                Err(e) => {
                    self.notice = Some(e);
                    return;
                }
            }
        } else {
            None
        };
        let (tx, rx) = sync_channel::<EngineMsg>(256);
        let cancel = Arc::new(AtomicBool::new(false));
        let worker = self.options.worker.clone();
        let journal_dir = self.options.journal_dir.clone();
        let ctx = self.ctx.clone();
        let c2 = Arc::clone(&cancel);
        let spawn = std::thread::Builder::new()
            .name("oomlab-sweep".into())
            .spawn(move || engine_thread(plan, resume, journal_dir, &worker, &c2, &tx, &ctx));
        match spawn {
            Ok(handle) => {
                self.log.push("sweep started".into());
                self.notice = None;
                self.run = Some(RunHandle {
                    rx,
                    cancel,
                    thread: Some(handle),
                    started: Instant::now(),
                    current: None,
                    done: false,
                    cancelled: false,
                });
                self.frame = FrameStats::default();
            }
            Err(e) => self.notice = Some(format!("cannot start the sweep thread: {e}")),
        }
    }

    fn cancel(&mut self) {
        if let Some(r) = &self.run {
            r.cancel.store(true, Ordering::Relaxed);
            self.log
                .push("cancelling: the trial in flight is stopped and recorded".into());
        }
    }

    fn handle_engine(&mut self, msg: EngineMsg) {
        let Some(run) = self.run.as_mut() else { return };
        match msg {
            EngineMsg::Failed(e) => {
                run.done = true;
                self.log.push(format!("error: {e}"));
                self.notice = Some(e);
            }
            EngineMsg::Event(ev) => match ev {
                SweepEvent::Started {
                    journal,
                    contents,
                    resumed_trials,
                    model_name,
                    ..
                } => {
                    self.log.push(format!(
                        "{model_name}: journal {}{}",
                        journal.display(),
                        if resumed_trials > 0 {
                            format!(" (resuming, {resumed_trials} trials kept)")
                        } else {
                            String::new()
                        }
                    ));
                    let results = Arc::new(report::summarize(&contents));
                    self.view = Some(View {
                        contents: Some(*contents),
                        results,
                        journal: Some(journal),
                    });
                }
                SweepEvent::WorkerReady(w) => {
                    self.log.push(format!(
                        "worker ready ({}): weights {}, baseline {}, {} threads, built in {:.1}s",
                        w.dtype,
                        crate::plan::human_bytes(w.weights_bytes),
                        crate::plan::human_bytes(w.baseline_bytes),
                        w.threads,
                        w.build_seconds
                    ));
                    self.update_contents(|c| c.workers.push(w));
                }
                SweepEvent::LoadFailed { dtype, reason } => {
                    self.log
                        .push(format!("cannot build the {dtype} model: {reason}"));
                    self.update_contents(|c| c.load_failures.push((dtype, reason)));
                }
                SweepEvent::TrialStarted {
                    curve,
                    batch,
                    purpose,
                    ..
                } => {
                    let what = match purpose {
                        report::Purpose::Search => "",
                        report::Purpose::Recommend => " (confirming the recommendation)",
                    };
                    run.current = Some((format!("{curve} batch {batch}{what}"), Instant::now()));
                }
                SweepEvent::TrialFinished(t) => {
                    run.current = None;
                    self.log.push(panels::trial_line(&t));
                    self.update_contents(|c| c.trials.push(t));
                }
                SweepEvent::CurveDone { curve, phase } => {
                    self.log
                        .push(format!("{curve}: {}", panels::phase_text(&phase)));
                }
                SweepEvent::Finished { results, cancelled } => {
                    run.done = true;
                    run.cancelled = cancelled;
                    let line = format!(
                        "sweep {} in {:.1}s; {}",
                        if cancelled { "cancelled" } else { "finished" },
                        run.started.elapsed().as_secs_f64(),
                        self.frame.summary()
                    );
                    // Also on stderr, so a run under Xvfb or a terminal leaves the figure behind.
                    eprintln!("oomlab: {line}");
                    self.log.push(line);
                    if let Some(v) = &mut self.view {
                        v.results = Arc::new(*results);
                    }
                }
            },
        }
    }

    fn update_contents(&mut self, f: impl FnOnce(&mut JournalContents)) {
        if let Some(v) = &mut self.view
            && let Some(c) = &mut v.contents
        {
            f(c);
            v.results = Arc::new(report::summarize(c));
        }
    }

    fn handle_bg(&mut self, msg: BgMsg) {
        match msg {
            BgMsg::ModelPicked(p) => {
                self.settings.model = p.display().to_string();
            }
            BgMsg::ResultsPicked(p) => self.open_results(p),
            BgMsg::Validated {
                key,
                result,
                summary,
            } => {
                if self.validating.as_ref() == Some(&*key) {
                    self.validating = None;
                }
                self.validation = Some(Validation {
                    key: *key,
                    result,
                    summary,
                });
            }
            // The save dialog has already asked before replacing an existing file.
            BgMsg::ExportPicked(p) => self.export_to(p, true),
            BgMsg::PngPicked(p) => self.save_plot_png(p, true),
            BgMsg::Opened(Ok((path, contents, results))) => {
                self.log.push(format!("opened {}", path.display()));
                let journal = contents.as_ref().map(|_| path.clone());
                if !self.is_running() {
                    self.settings.load_from(&results);
                }
                self.view = Some(View {
                    contents,
                    results: Arc::new(*results),
                    journal,
                });
                self.notice = None;
            }
            BgMsg::Opened(Err(e)) | BgMsg::Exported(Err(e)) | BgMsg::PngSaved(Err(e)) => {
                self.log.push(format!("error: {e}"));
                self.notice = Some(e);
            }
            BgMsg::Exported(Ok(p)) => {
                let m = format!("exported {}", p.display());
                self.log.push(m.clone());
                self.notice = Some(m);
            }
            BgMsg::PngSaved(Ok(p)) => {
                let m = format!("plot saved to {}", p.display());
                self.log.push(m.clone());
                self.notice = Some(m);
            }
            BgMsg::DialogEmpty(what) => {
                self.notice = Some(if self.dialog_service {
                    format!("no {what} chosen")
                } else {
                    format!(
                        "no file dialog service found (xdg-desktop-portal or zenity); type the {what} path into the field, or drop it onto the window"
                    )
                });
            }
        }
    }

    /// Reads a results or journal file on a background thread.
    pub fn open_results(&mut self, path: PathBuf) {
        let tx = self.bg_tx.clone();
        let ctx = self.ctx.clone();
        let _ = std::thread::Builder::new()
            .name("oomlab-open".into())
            .spawn(move || {
                let msg = (|| {
                    let text = std::fs::read_to_string(&path).map_err(|e| {
                        format!("cannot read {}: {e}; check the path", path.display())
                    })?;
                    if let Ok(r) = serde_json::from_str::<Results>(&text) {
                        return Ok((path.clone(), None, Box::new(r)));
                    }
                    let c = report::parse_journal(&path, &text).map_err(|e| {
                        format!("{e} (expected an oomlab journal .jsonl or results .json)")
                    })?;
                    let r = report::summarize(&c);
                    Ok((path.clone(), Some(c), Box::new(r)))
                })();
                let _ = tx.send(BgMsg::Opened(msg));
                ctx.request_repaint();
            });
    }

    fn export_to(&mut self, path: PathBuf, force: bool) {
        let Some(v) = &self.view else {
            self.notice = Some("nothing to export yet: run a sweep or open results first".into());
            return;
        };
        let results = Arc::clone(&v.results);
        let tx = self.bg_tx.clone();
        let ctx = self.ctx.clone();
        let _ = std::thread::Builder::new()
            .name("oomlab-export".into())
            .spawn(move || {
                let r = report::export(&results, &path, force)
                    .map(|()| path.clone())
                    .map_err(write_error);
                let _ = tx.send(BgMsg::Exported(r));
                ctx.request_repaint();
            });
    }

    /// Runs a blocking rfd dialog on its own thread and reports the chosen path.
    fn dialog(&self, kind: Dialog) {
        let tx = self.bg_tx.clone();
        let ctx = self.ctx.clone();
        let _ = std::thread::Builder::new()
            .name("oomlab-dialog".into())
            .spawn(move || {
                let msg = match kind {
                    Dialog::ModelFolder => rfd::FileDialog::new()
                        .set_title("Open model folder (config.json + *.safetensors)")
                        .pick_folder()
                        .map_or(BgMsg::DialogEmpty("model folder"), BgMsg::ModelPicked),
                    Dialog::Config => rfd::FileDialog::new()
                        .set_title("Open config.json")
                        .add_filter("config.json", &["json"])
                        .pick_file()
                        .map_or(BgMsg::DialogEmpty("config.json"), BgMsg::ModelPicked),
                    Dialog::Results => match rfd::FileDialog::new()
                        .set_title("Open results or journal")
                        .add_filter("oomlab results", &["json", "jsonl"])
                        .pick_file()
                    {
                        Some(p) => BgMsg::ResultsPicked(p),
                        None => BgMsg::DialogEmpty("results file"),
                    },
                    Dialog::Export => match rfd::FileDialog::new()
                        .set_title("Export recommendation")
                        .add_filter("TOML", &["toml"])
                        .add_filter("JSON", &["json"])
                        .add_filter("CSV (all trials)", &["csv"])
                        .set_file_name("recommended.toml")
                        .save_file()
                    {
                        Some(p) => BgMsg::ExportPicked(p),
                        None => BgMsg::DialogEmpty("export file"),
                    },
                    Dialog::Png => match rfd::FileDialog::new()
                        .set_title("Save plot as PNG")
                        .add_filter("PNG", &["png"])
                        .set_file_name("oomlab-plot.png")
                        .save_file()
                    {
                        Some(p) => BgMsg::PngPicked(p),
                        None => BgMsg::DialogEmpty("PNG file"),
                    },
                };
                let _ = tx.send(msg);
                ctx.request_repaint();
            });
    }

    /// Asks the renderer for a screenshot and writes the plot's region as PNG (background thread).
    fn save_plot_png(&mut self, path: PathBuf, force: bool) {
        let Some(rect) = self.plot_rect else {
            self.notice = Some("no plot on screen to save".into());
            return;
        };
        let tx = self.bg_tx.clone();
        let ctx = self.ctx.clone();
        let ppp = self.ctx.pixels_per_point();
        let cb = egui::ScreenshotCallback::new(move |image: Arc<egui::ColorImage>| {
            let _ = std::thread::Builder::new()
                .name("oomlab-png".into())
                .spawn(move || {
                    let r =
                        write_png_region(&image, rect, ppp, &path, force).map(|()| path.clone());
                    let _ = tx.send(BgMsg::PngSaved(r));
                    ctx.request_repaint();
                });
        });
        self.ctx
            .send_viewport_cmd(egui::ViewportCommand::Screenshot(cb));
    }

    fn drain(&mut self) {
        loop {
            let msg = match &self.run {
                Some(r) if !r.done => match r.rx.try_recv() {
                    Ok(m) => m,
                    Err(TryRecvError::Empty) => break,
                    Err(TryRecvError::Disconnected) => {
                        if let Some(r) = &mut self.run {
                            r.done = true;
                        }
                        break;
                    }
                },
                _ => break,
            };
            self.handle_engine(msg);
        }
        if let Some(r) = &mut self.run
            && r.done
            && let Some(t) = r.thread.take()
        {
            let _ = t.join();
        }
        while let Ok(m) = self.bg_rx.try_recv() {
            self.handle_bg(m);
        }
    }

    fn handle_dropped_files(&mut self, ctx: &egui::Context) {
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        });
        for p in dropped {
            let name = p
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            if p.is_dir() || name == "config.json" {
                self.settings.model = p.display().to_string();
                self.log.push(format!("model set to {}", p.display()));
            } else if p
                .extension()
                .is_some_and(|e| e.eq_ignore_ascii_case("json") || e.eq_ignore_ascii_case("jsonl"))
            {
                self.open_results(p);
            } else {
                self.notice = Some(format!(
                    "{} is neither a model folder, a config.json, nor oomlab results (.json/.jsonl)",
                    p.display()
                ));
            }
        }
    }
}

#[derive(Debug, Clone, Copy)]
enum Dialog {
    ModelFolder,
    Config,
    Results,
    Export,
    Png,
}

/// A write error in the window's words (it has an "overwrite" box, not --force).
fn write_error(e: report::ExportError) -> String {
    match e {
        report::ExportError::Exists { path } => format!(
            "{} already exists; tick \"overwrite\" or choose another file name",
            path.display()
        ),
        other => other.to_string(),
    }
}

fn write_png_region(
    image: &egui::ColorImage,
    rect: egui::Rect,
    ppp: f32,
    path: &std::path::Path,
    force: bool,
) -> Result<(), String> {
    let [w, h] = image.size;
    let x0 = ((rect.min.x * ppp).max(0.0) as usize).min(w);
    let y0 = ((rect.min.y * ppp).max(0.0) as usize).min(h);
    let x1 = ((rect.max.x * ppp) as usize).clamp(x0, w);
    let y1 = ((rect.max.y * ppp) as usize).clamp(y0, h);
    let mut out = image::RgbaImage::new((x1 - x0) as u32, (y1 - y0) as u32);
    for y in y0..y1 {
        for x in x0..x1 {
            let c = image.pixels[y * w + x];
            out.put_pixel((x - x0) as u32, (y - y0) as u32, image::Rgba(c.to_array()));
        }
    }
    let mut bytes = Vec::new();
    out.write_to(
        &mut std::io::Cursor::new(&mut bytes),
        image::ImageFormat::Png,
    )
    .map_err(|e| format!("encoding PNG: {e}"))?;
    report::write_atomic(path, &bytes, force).map_err(write_error)
}

fn engine_thread(
    plan: Option<SweepPlan>,
    resume: Option<PathBuf>,
    journal_dir: Option<PathBuf>,
    worker: &WorkerConfig,
    cancel: &Arc<AtomicBool>,
    tx: &SyncSender<EngineMsg>,
    ctx: &egui::Context,
) {
    let send = |m: EngineMsg| {
        let _ = tx.send(m);
        ctx.request_repaint();
    };
    let sweep = match (plan, resume) {
        (_, Some(path)) => Sweep::resume(&path, None),
        (Some(plan), None) => Sweep::create(plan, |spec| {
            let path = sweep::default_journal_path(&spec.name);
            match journal_dir {
                Some(d) => d.join(path.file_name().unwrap_or_default()),
                None => path,
            }
        }),
        (None, None) => return,
    };
    match sweep {
        Err(e) => send(EngineMsg::Failed(e.to_string())),
        Ok(s) => {
            if let Err(e) = s.run(worker, cancel, &mut |ev| send(EngineMsg::Event(ev))) {
                send(EngineMsg::Failed(e.to_string()));
            }
        }
    }
}

impl eframe::App for OomLabApp {
    fn ui(&mut self, ui: &mut egui::Ui, _frame: &mut eframe::Frame) {
        let t0 = Instant::now();
        let cpu0 = thread_cpu_ms();
        let ctx = ui.ctx().clone();
        if TERMINATE.load(Ordering::Relaxed) {
            self.cancel();
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
        let log_before = self.log.len();
        self.drain();
        let drained_ms = t0.elapsed().as_secs_f64() * 1000.0;
        let new_log_lines = self.log.len() - log_before;
        self.handle_dropped_files(&ctx);
        if ctx.input_mut(|i| i.consume_key(egui::Modifiers::COMMAND, egui::Key::Q)) {
            ctx.send_viewport_cmd(egui::ViewportCommand::Close);
        }
        let commands = panels::draw(self, ui);
        for c in commands {
            self.apply(c, &ctx);
        }
        if self.is_running() {
            // Keep the elapsed-time display moving, once a second: every frame costs a core on
            // a software-rendered display, and engine events repaint at once anyway.
            ctx.request_repaint_after(Duration::from_secs(1));
        }
        let running = self.is_running();
        if std::env::var_os("OOMLAB_FRAME_LOG").is_some() {
            let (wall, cpu) = (t0.elapsed().as_secs_f64() * 1000.0, thread_cpu_ms() - cpu0);
            if wall > FRAME_BUDGET_MS || cpu > FRAME_BUDGET_MS {
                eprintln!(
                    "slow frame {}: wall {wall:.2} ms cpu {cpu:.2} ms (drain {drained_ms:.2} ms, {new_log_lines} new log lines), trials {}, log {}",
                    self.frame.frames_during_sweep,
                    self.results().map_or(0, |r| r.trials.len()),
                    self.log.len()
                );
            }
        }
        self.frame.record(
            t0.elapsed().as_secs_f64() * 1000.0,
            thread_cpu_ms() - cpu0,
            running,
        );
    }

    fn save(&mut self, storage: &mut dyn eframe::Storage) {
        if self.options.persist {
            eframe::set_value(storage, eframe::APP_KEY, &self.settings);
        }
    }

    fn on_exit(&mut self) {
        // Stop the worker; the trial in flight is recorded as cancelled.
        if let Some(r) = &mut self.run {
            r.cancel.store(true, Ordering::Relaxed);
            if let Some(t) = r.thread.take() {
                let _ = t.join();
            }
        }
    }
}

/// What panels ask for; applied after drawing so no panel mutates state mid-frame.
#[derive(Debug, Clone)]
#[must_use]
pub enum Command {
    Run,
    Cancel,
    Resume(PathBuf),
    PickModelFolder,
    PickConfig,
    OpenResultsDialog,
    OpenResultsPath(PathBuf),
    ExportDialog,
    ExportTo(PathBuf, bool),
    SavePngDialog,
    SetTheme(ThemeChoice),
    Quit,
}

impl OomLabApp {
    fn apply(&mut self, c: Command, ctx: &egui::Context) {
        match c {
            Command::Run => self.start(None),
            Command::Cancel => self.cancel(),
            Command::Resume(p) => self.start(Some(p)),
            Command::PickModelFolder => self.dialog(Dialog::ModelFolder),
            Command::PickConfig => self.dialog(Dialog::Config),
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
}

/// Opens the window. `open` is a results/journal file to show at start.
pub fn run(open: Option<PathBuf>) -> Result<(), String> {
    let worker = WorkerConfig::current(crate::worker::default_threads())
        .map_err(|e| format!("cannot locate the oomlab binary: {e}"))?;
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
    };
    eframe::run_native(
        "oomlab",
        options,
        Box::new(move |cc| {
            OomLabApp::install_terminate_handler(&cc.egui_ctx);
            Ok(Box::new(OomLabApp::new(cc, app_options)))
        }),
    )
    .map_err(|e| {
        format!(
            "cannot open a window: {e}; on a machine without a display use the headless commands (`oomlab sweep --help`)"
        )
    })
}

/// Validates settings and describes their model (may read a config and safetensors headers).
fn validate_settings(s: &Settings) -> (Result<SweepPlan, String>, Result<String, String>) {
    let summary = ModelRef::parse(&s.model)
        .map_err(|e| e.to_string())
        .and_then(|r| ModelSpec::resolve(&r).map_err(|e| e.to_string()))
        .map(|spec| {
            let params = format_params(spec.dims.published_parameters(spec.family));
            format!(
                "{} · {params} · up to {} positions · {}",
                spec.family,
                spec.dims.max_positions,
                if spec.checkpoint.is_some() {
                    "real weights"
                } else {
                    "synthetic weights"
                }
            )
        });
    (s.to_plan(), summary)
}

/// `109.5M`, `1.10B`, `26.8K`.
#[must_use]
pub fn format_params(n: u64) -> String {
    let n = n as f64;
    if n >= 1e9 {
        format!("{:.2}B parameters", n / 1e9)
    } else if n >= 1e6 {
        format!("{:.1}M parameters", n / 1e6)
    } else {
        format!("{:.1}K parameters", n / 1e3)
    }
}

/// Parses `128, 512` into sequence lengths.
pub fn parse_seqs(s: &str) -> Result<Vec<usize>, String> {
    let mut out = Vec::new();
    for part in s
        .split(|c: char| c == ',' || c.is_whitespace())
        .filter(|p| !p.is_empty())
    {
        let n: usize = part.parse().map_err(|_| {
            format!("sequence length '{part}' is not a number; write e.g. 128, 512")
        })?;
        if !out.contains(&n) {
            out.push(n);
        }
    }
    if out.is_empty() {
        return Err("give at least one sequence length, e.g. 128".into());
    }
    Ok(out)
}

impl Settings {
    /// The plan these settings describe, validated against the model (the reason otherwise).
    pub fn to_plan(&self) -> Result<SweepPlan, String> {
        let model = ModelRef::parse(&self.model).map_err(|e| e.to_string())?;
        let seqs = parse_seqs(&self.seqs)?;
        let dtypes: Vec<Precision> = [
            (self.f32, Precision::F32),
            (self.f16, Precision::F16),
            (self.bf16, Precision::Bf16),
        ]
        .into_iter()
        .filter_map(|(on, p)| on.then_some(p))
        .collect();
        let batch: BatchRange = self.batch.parse()?;
        let capacity_bytes = parse_bytes(&self.capacity)?;
        let headroom = parse_headroom(&self.headroom)?;
        let plan = SweepPlan {
            model,
            seqs,
            dtypes,
            batch,
            capacity_bytes,
            headroom,
            strategy: self.strategy,
            device: "cpu".into(),
            threads: self.threads.max(1),
        };
        sweep::validate(&plan).map_err(|e| e.to_string())?;
        Ok(plan)
    }
}
