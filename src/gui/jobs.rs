//! Background work for the window: native dialogs, opening results, exporting, PNG encoding,
//! classifying dropped files, and checking settings that name a local path. Each job runs on a
//! named thread, reports one [`BgMsg`] and wakes the UI; the UI thread touches no file.

use super::check::Checker;
use super::form::Labels;
pub use super::msg::{BgMsg, Dropped};
use super::{OomLabApp, Shown};
use crate::report::{self, ExportError, Results};
use eframe::egui;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::time::Duration;

#[derive(Debug, Clone, Copy)]
pub enum Dialog {
    /// A lesson file.
    Lesson,
    ModelFolder,
    Config,
    Python,
    Results,
    Export,
    Png,
}

/// Whether a native file dialog can appear (xdg portal over D-Bus, or zenity/kdialog).
fn dialog_service_available() -> bool {
    let on_path = |name: &str| {
        std::env::var_os("PATH")
            .is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(name).is_file()))
    };
    std::env::var_os("DBUS_SESSION_BUS_ADDRESS").is_some()
        || on_path("zenity")
        || on_path("kdialog")
}

/// Receives what background jobs report; [`Self::start`] starts them.
pub struct Jobs {
    pub start: Spawner,
    rx: Receiver<BgMsg>,
}

impl Jobs {
    #[must_use]
    pub fn new(ctx: egui::Context) -> Self {
        // Bounded: a job sends once, the monitor once a second, the check once per change; the
        // UI drains it every frame, and only background threads ever wait on it.
        let (tx, rx) = sync_channel(64);
        Self {
            start: Spawner { tx, ctx },
            rx,
        }
    }

    /// The next message, if one is waiting.
    pub fn try_recv(&self) -> Option<BgMsg> {
        self.rx.try_recv().ok()
    }

    /// Blocks for the next message (tests).
    pub fn recv_timeout(&self, timeout: Duration) -> Option<BgMsg> {
        self.rx.recv_timeout(timeout).ok()
    }
}

/// A background job whose thread could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot start the {name} job: {source}")]
pub struct JobError {
    name: String,
    source: std::io::Error,
}

/// Starts one-shot jobs (cheap to clone into a callback).
#[derive(Clone)]
pub struct Spawner {
    tx: SyncSender<BgMsg>,
    ctx: egui::Context,
}

impl Spawner {
    /// Runs `job` on a named thread; its message wakes the UI. Says why when no thread starts.
    fn spawn(
        &self,
        name: &str,
        job: impl FnOnce() -> BgMsg + Send + 'static,
    ) -> Result<(), JobError> {
        let tx = self.tx.clone();
        let ctx = self.ctx.clone();
        std::thread::Builder::new()
            .name(format!("oomlab-{name}"))
            .spawn(move || {
                let _ = tx.send(job());
                ctx.request_repaint();
            })
            .map(drop)
            .map_err(|source| JobError {
                name: name.to_string(),
                source,
            })
    }

    /// Builds the estimator for a shown sweep (resolves its model, calibrates the runtime).
    pub fn teach(
        &self,
        key: super::teach::TeachKey,
        worker: crate::worker::WorkerConfig,
        cache: Option<PathBuf>,
    ) -> Result<(), JobError> {
        self.spawn("estimator", move || {
            let result = super::teach::load(&key, &worker, cache.as_ref()).map(Box::new);
            BgMsg::Teach(Box::new(key), result)
        })
    }

    /// Starts the settings checker, which reports through the same channel.
    pub fn checker(&self) -> std::io::Result<Checker> {
        Checker::start(self.tx.clone(), self.ctx.clone())
    }

    /// Lists the models of the Hugging Face cache at `cache` (reads their config.json files).
    pub fn scan_models(&self, cache: PathBuf) -> Result<(), JobError> {
        self.spawn("hf-cache", move || {
            BgMsg::CachedModels(crate::catalog::CatalogEntry::cached(&cache))
        })
    }

    /// Starts the machine monitor, which reports through the same channel.
    pub fn monitor(&self, sample_gpus: bool) -> std::io::Result<()> {
        super::monitor::start(self.tx.clone(), self.ctx.clone(), sample_gpus)
    }

    /// Shows a blocking rfd dialog on its own thread and reports the chosen path.
    /// Finds and probes the PyTorch runtime's interpreter (seconds: it imports torch).
    pub fn probe_python(&self, given: Option<PathBuf>, exe: PathBuf) -> Result<(), JobError> {
        self.spawn("python-probe", move || {
            use crate::worker::python;
            let r = python::find(given.as_deref(), &exe)
                .and_then(|f| python::probe(&f))
                .map(|p| {
                    format!(
                        "PyTorch runtime: {} (found by {}): {}",
                        p.python.display(),
                        p.how,
                        p.versions.text()
                    )
                });
            BgMsg::PythonProbed(r)
        })
    }

    pub fn dialog(&self, kind: Dialog) -> Result<(), JobError> {
        self.spawn("dialog", move || {
            let empty = |what| BgMsg::DialogEmpty {
                what,
                service: dialog_service_available(),
            };
            match kind {
                Dialog::Lesson => rfd::FileDialog::new()
                    .set_title("Open a lesson")
                    .add_filter("oomlab lesson", &["lesson", "txt"])
                    .pick_file()
                    .map_or_else(|| empty("lesson file"), BgMsg::LessonPicked),
                Dialog::ModelFolder => rfd::FileDialog::new()
                    .set_title("Open model folder (config.json + *.safetensors)")
                    .pick_folder()
                    .map_or_else(|| empty("model folder"), BgMsg::ModelPicked),
                Dialog::Config => rfd::FileDialog::new()
                    .set_title("Open config.json")
                    .add_filter("config.json", &["json"])
                    .pick_file()
                    .map_or_else(|| empty("config.json"), BgMsg::ModelPicked),
                Dialog::Python => rfd::FileDialog::new()
                    .set_title("Choose the Python with torch and transformers")
                    .pick_file()
                    .map_or_else(|| empty("Python interpreter"), BgMsg::PythonPicked),
                Dialog::Results => rfd::FileDialog::new()
                    .set_title("Open results or journal")
                    .add_filter("oomlab results", &["json", "jsonl"])
                    .pick_file()
                    .map_or_else(|| empty("results file"), BgMsg::ResultsPicked),
                Dialog::Export => rfd::FileDialog::new()
                    .set_title("Export recommendation")
                    .add_filter("TOML", &["toml"])
                    .add_filter("JSON", &["json"])
                    .add_filter("CSV (all trials)", &["csv"])
                    .set_file_name("recommended.toml")
                    .save_file()
                    .map_or_else(|| empty("export file"), BgMsg::ExportPicked),
                Dialog::Png => rfd::FileDialog::new()
                    .set_title("Save plot as PNG")
                    .add_filter("PNG", &["png"])
                    .set_file_name("oomlab-plot.png")
                    .save_file()
                    .map_or_else(|| empty("PNG file"), BgMsg::PngPicked),
            }
        })
    }

    /// Reads a results or journal file.
    pub fn open(&self, path: PathBuf) -> Result<(), JobError> {
        self.spawn("open", move || {
            let r = report::read_results(&path).map(Box::new);
            BgMsg::Opened(path, r)
        })
    }

    /// Writes the export that `path`'s extension names.
    pub fn export(
        &self,
        results: Arc<Results>,
        path: PathBuf,
        force: bool,
    ) -> Result<(), JobError> {
        self.spawn("export", move || {
            BgMsg::Exported(report::export(&results, &path, force).map(|()| path))
        })
    }

    /// Encodes the plot's region of a screenshot as PNG and writes it.
    pub fn save_png(
        &self,
        image: Arc<egui::ColorImage>,
        rect: egui::Rect,
        pixels_per_point: f32,
        path: PathBuf,
        force: bool,
    ) -> Result<(), JobError> {
        self.spawn("png", move || {
            BgMsg::PngSaved(
                write_png_region(&image, rect, pixels_per_point, &path, force).map(|()| path),
            )
        })
    }

    /// Looks at dropped files (is it a folder?) off the UI thread.
    pub fn classify_dropped(&self, paths: Vec<PathBuf>) -> Result<(), JobError> {
        self.spawn("drop", move || {
            BgMsg::Dropped(paths.into_iter().map(classify).collect())
        })
    }
}

fn classify(p: PathBuf) -> Dropped {
    let name = p
        .file_name()
        .map(|n| n.to_string_lossy().to_string())
        .unwrap_or_default();
    let ext = p
        .extension()
        .map(|e| e.to_string_lossy().to_ascii_lowercase())
        .unwrap_or_default();
    if p.is_dir() || name == "config.json" {
        Dropped::Model(p)
    } else if ext == "json" || ext == "jsonl" {
        Dropped::Results(p)
    } else {
        Dropped::Unknown(p)
    }
}

fn write_png_region(
    image: &egui::ColorImage,
    rect: egui::Rect,
    ppp: f32,
    path: &Path,
    force: bool,
) -> Result<(), ExportError> {
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
    .map_err(|e| ExportError::Encode {
        what: "PNG",
        message: e.to_string(),
    })?;
    report::write_atomic(path, &bytes, force)
}

/// The app's side of the jobs: starting them, and taking in what they report.
impl OomLabApp {
    /// Reports a job that could not start.
    pub(super) fn started(&mut self, r: Result<(), JobError>) {
        if let Err(e) = r {
            self.messages.notice = Some(e.to_string());
        }
    }

    /// Reads a results or journal file on a background thread.
    pub(super) fn open_results(&mut self, path: PathBuf) {
        let r = self.jobs.start.open(path);
        self.started(r);
    }

    pub(super) fn export_to(&mut self, path: PathBuf, force: bool) {
        let Some(v) = &self.sweeps.shown else {
            self.messages.notice =
                Some("nothing to export yet: run a sweep or open results first".into());
            return;
        };
        let r = self.jobs.start.export(Arc::clone(&v.results), path, force);
        self.started(r);
    }

    /// Asks the renderer for a screenshot and writes the plot's region as PNG (background job).
    pub(super) fn save_plot_png(&mut self, path: PathBuf, force: bool) {
        let Some(rect) = self.window.plot_rect else {
            self.messages.notice = Some("no plot on screen to save".into());
            return;
        };
        let start = self.jobs.start.clone();
        let ppp = self.window.ctx.pixels_per_point();
        let cb = egui::ScreenshotCallback::new(move |image: Arc<egui::ColorImage>| {
            let _ = start.save_png(image, rect, ppp, path.clone(), force);
        });
        self.window
            .ctx
            .send_viewport_cmd(egui::ViewportCommand::Screenshot(cb));
    }

    pub(super) fn dialog(&mut self, kind: Dialog) {
        let r = self.jobs.start.dialog(kind);
        self.started(r);
    }

    pub(super) fn handle_bg(&mut self, msg: BgMsg) {
        match msg {
            BgMsg::ModelPicked(p) => self.settings.model = p.display().to_string(),
            BgMsg::PythonPicked(p) => self.settings.python = p.display().to_string(),
            BgMsg::PythonProbed(Ok(text)) => self.messages.inform(text),
            BgMsg::ResultsPicked(p) => self.open_results(p),
            BgMsg::LessonPicked(p) => {
                let ctx = self.window.ctx.clone();
                self.open_lesson(&p.display().to_string(), &ctx);
            }
            // The save dialog has already asked before replacing an existing file.
            BgMsg::ExportPicked(p) => self.export_to(p, true),
            BgMsg::PngPicked(p) => self.save_plot_png(p, true),
            BgMsg::Checked { key, checked } => self.check.receive(*key, *checked),
            BgMsg::Host(host) => self.machine.on_host(host),
            BgMsg::Gpus(gpus) => self.machine.on_gpus(gpus),
            BgMsg::CachedModels(found) => self.machine.on_cached_models(found),
            BgMsg::Teach(key, result) => self.sweeps.on_teach(&key, result),
            BgMsg::Opened(path, Ok(opened)) => {
                let (contents, results) = *opened;
                self.messages.log.push(format!("opened {}", path.display()));
                let journal = contents.as_ref().map(|_| path);
                if !self.sweeps.is_running() {
                    self.settings.apply_plan(&results.plan);
                }
                self.sweeps.shown = Some(Shown {
                    contents,
                    results: Arc::new(results),
                    journal,
                });
                self.messages.notice = None;
            }
            BgMsg::Opened(_, Err(e)) => self.messages.error(e.to_string()),
            BgMsg::PythonProbed(Err(e)) => self.messages.error(e.to_string()),
            BgMsg::Exported(Err(e)) | BgMsg::PngSaved(Err(e)) => {
                self.messages.error(e.describe(&Labels));
            }
            BgMsg::Exported(Ok(p)) => self.messages.inform(format!("exported {}", p.display())),
            BgMsg::PngSaved(Ok(p)) => self
                .messages
                .inform(format!("plot saved to {}", p.display())),
            BgMsg::DialogEmpty { what, service } => {
                self.messages.notice = Some(if service {
                    format!("no {what} chosen")
                } else {
                    format!(
                        "no file dialog service found (xdg-desktop-portal or zenity); type the {what} path into the field, or drop it onto the window"
                    )
                });
            }
            BgMsg::Dropped(list) => {
                for d in list {
                    match d {
                        Dropped::Model(p) => {
                            self.messages
                                .log
                                .push(format!("model set to {}", p.display()));
                            self.settings.model = p.display().to_string();
                        }
                        Dropped::Results(p) => self.open_results(p),
                        Dropped::Unknown(p) => {
                            self.messages.notice = Some(format!(
                                "{} is neither a model folder, a config.json, nor oomlab results (.json/.jsonl)",
                                p.display()
                            ));
                        }
                    }
                }
            }
        }
    }

    /// Hands dropped files to a background job (looking at them is file-system work).
    pub(super) fn take_dropped_files(&mut self, ctx: &egui::Context) {
        let dropped: Vec<PathBuf> = ctx.input(|i| {
            i.raw
                .dropped_files
                .iter()
                .map(|f| f.path().to_path_buf())
                .filter(|p| !p.as_os_str().is_empty())
                .collect()
        });
        if !dropped.is_empty() {
            let r = self.jobs.start.classify_dropped(dropped);
            self.started(r);
        }
    }
}
