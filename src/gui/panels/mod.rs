//! The panels. They read a narrow [`View`] of the app, edit only the settings and their own
//! [`PanelState`], and return [`Command`]s that the app applies after drawing.

mod card;
mod experiment;
mod explain;
mod lesson;
mod tables;
pub mod teach;

pub use tables::SortColumn;

use super::Command;
use super::engine::InFlight;
use super::frame_stats::{FRAME_BUDGET_MS, FrameStats};
use super::plot;
use super::settings::{PRESENTATION_ZOOM, Settings, ThemeChoice};
use crate::measure::host::HostMemory;
use crate::measure::nvml::GpuReport;
use crate::report::Results;
use eframe::egui;
use egui::RichText;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Instant;

/// Whether Run can start, as the settings checker last said.
#[derive(Debug, Clone, Copy)]
pub enum PlanStatus<'a> {
    Ready,
    /// Why Run is disabled, in the window's words.
    Invalid(&'a str),
    /// A local model path is being read off the UI thread.
    Checking,
}

/// A sweep in progress.
#[derive(Debug, Clone, Copy)]
pub struct Progress<'a> {
    pub current: Option<&'a InFlight>,
    pub started: Instant,
}

/// What the panels may read of the app this frame.
pub struct View<'a> {
    pub results: Option<Arc<Results>>,
    pub journal: Option<&'a Path>,
    /// The journal that Resume would continue (shown results are unfinished).
    pub resumable: Option<&'a Path>,
    pub running: Option<Progress<'a>>,
    pub plan: PlanStatus<'a>,
    /// This machine's memory, when known.
    pub host: Option<HostMemory>,
    /// The GPUs the NVIDIA driver reports, or why there are none (`None` until known).
    pub gpus: Option<&'a Result<GpuReport, crate::measure::nvml::GpuQueryError>>,
    /// The worker computing a trial now (its process is marked in the GPU monitor).
    pub worker_pid: Option<u32>,
    pub model_summary: Option<&'a str>,
    /// The model picker's list (bundled, then found in the HF cache).
    pub models: &'a [crate::catalog::CatalogEntry],
    pub notice: Option<&'a str>,
    pub log: &'a [String],
    pub frame: FrameStats,
    pub theme: ThemeChoice,
    pub zoom: f32,
    /// The estimator for the shown sweep, once built (or why it could not be).
    pub teach: Option<&'a crate::gui::teach::TeachModel>,
    pub teach_error: Option<&'a str>,
    /// The lesson being given (it takes the centre).
    pub lesson: Option<&'a super::lesson::LessonView>,
}

/// Text being typed and table state: the panels' own, kept between frames.
#[derive(Debug, Clone)]
pub struct PanelState {
    /// What the model picker's filter holds.
    pub model_filter: String,
    pub open_path: String,
    pub export_path: String,
    pub export_overwrite: bool,
    pub sort: (SortColumn, bool),
    pub explain: explain::ExplainState,
    pub teach: teach::TeachState,
}

impl Default for PanelState {
    fn default() -> Self {
        Self {
            open_path: String::new(),
            export_path: String::new(),
            export_overwrite: false,
            sort: (SortColumn::Index, true),
            explain: explain::ExplainState::default(),
            teach: teach::TeachState::default(),
            model_filter: String::new(),
        }
    }
}

/// What drawing produced.
pub struct Drawn {
    pub commands: Vec<Command>,
    /// Where the plot is on screen (for "Save plot as PNG").
    pub plot_rect: Option<egui::Rect>,
}

pub fn draw(
    view: &View<'_>,
    settings: &mut Settings,
    state: &mut PanelState,
    ui: &mut egui::Ui,
) -> Drawn {
    let mut cmds = Vec::new();
    menu_bar(view, settings, state, ui, &mut cmds);
    if settings.panels {
        side_panels(view, settings, state, ui, &mut cmds);
    }
    explain::window(state, ui.ctx());
    teach::window(view, &mut state.teach, ui.ctx());
    let mut plot_rect = None;
    egui::CentralPanel::default_margins().show(ui, |ui| {
        if !settings.panels {
            ui.label(
                RichText::new("the plot alone: View > Normal size (or the panels' checkbox there) brings the controls back")
                    .weak()
                    .small(),
            );
        }
        if let Some(l) = view.lesson {
            lesson::draw(l, ui, &mut cmds);
        } else {
            plot_rect = centre(view, ui);
        }
    });
    Drawn {
        commands: cmds,
        plot_rect,
    }
}

/// The experiment (left), the recommendation (right), the trials and the log (bottom).
fn side_panels(
    view: &View<'_>,
    settings: &mut Settings,
    state: &mut PanelState,
    ui: &mut egui::Ui,
    cmds: &mut Vec<Command>,
) {
    // Full width under the side panels: the trials table needs the room.
    egui::Panel::bottom("results")
        .resizable(true)
        .default_size(230.0)
        .size_range(120.0..=560.0)
        .show(ui, |ui| tables::bottom_panel(view, state, ui));
    egui::Panel::left("experiment")
        .resizable(true)
        .default_size(320.0)
        .size_range(280.0..=460.0)
        .show(ui, |ui| {
            // Run / Cancel / Resume stay in view however long the settings grow.
            egui::Panel::bottom("experiment-run")
                .resizable(false)
                .show(ui, |ui| experiment::run_ui(view, ui, cmds));
            egui::ScrollArea::vertical().show(ui, |ui| {
                experiment::panel(view, settings, &mut state.model_filter, ui, cmds);
            });
        });
    egui::Panel::right("recommendation")
        .resizable(true)
        .default_size(300.0)
        .size_range(240.0..=460.0)
        .show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| card::card(view, state, ui, cmds));
        });
}

/// The plot of the shown results, or what to do first; where the plot is.
fn centre(view: &View<'_>, ui: &mut egui::Ui) -> Option<egui::Rect> {
    let mut plot_rect = None;
    {
        if let Some(r) = &view.results {
            ui.heading(format!("{} — memory against batch", r.model));
            // What one trial runs, per runtime: candle's forward, PyTorch's workload.
            let what = match (r.plan.uses_torch(), r.plan.runtimes.len()) {
                (false, _) => r.forward.clone(),
                (true, 1) => format!(
                    "PyTorch: {} · PyTorch's own count of tensor bytes",
                    r.plan.workload.describe()
                ),
                (true, _) => format!(
                    "PyTorch: {} · candle: {}",
                    r.plan.workload.describe(),
                    r.forward
                ),
            };
            ui.add(egui::Label::new(RichText::new(&what).weak().small()).truncate())
                .on_hover_text(what);
            plot_rect = Some(plot::plot_ui(ui, r, view.teach));
        } else {
            ui.centered_and_justified(|ui| {
                ui.label(
                    RichText::new(
                        "Pick a model, sequence lengths and precisions on the left, then press Run.\n\
                         Each point is a real forward pass; red crosses are out-of-memory trials.\n\
                         You can also open earlier results (File > Open results…) or drop a file here.",
                    )
                    .size(16.0),
                );
            });
        }
    }
    plot_rect
}

fn menu_bar(
    view: &View<'_>,
    settings: &mut Settings,
    state: &mut PanelState,
    ui: &mut egui::Ui,
    cmds: &mut Vec<Command>,
) {
    egui::Panel::top("menu").show(ui, |ui| {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                if ui.button("Open results…").clicked() {
                    cmds.push(Command::OpenResultsDialog);
                }
                ui.horizontal(|ui| {
                    let l = ui.label("Results path");
                    ui.add(
                        egui::TextEdit::singleline(&mut state.open_path)
                            .hint_text("results.json or journal.jsonl")
                            .desired_width(220.0),
                    )
                    .labelled_by(l.id);
                    if ui.button("Open").clicked() && !state.open_path.trim().is_empty() {
                        cmds.push(Command::OpenResultsPath(PathBuf::from(
                            state.open_path.trim(),
                        )));
                    }
                });
                ui.separator();
                if ui.button("Open model folder…").clicked() {
                    cmds.push(Command::PickModelFolder);
                }
                if ui.button("Open config.json…").clicked() {
                    cmds.push(Command::PickConfig);
                }
                ui.separator();
                if ui.button("Export…").clicked() {
                    cmds.push(Command::ExportDialog);
                }
                if ui.button("Save plot as PNG…").clicked() {
                    cmds.push(Command::SavePngDialog);
                }
                ui.separator();
                if ui
                    .add(egui::Button::new("Quit").shortcut_text("Ctrl+Q"))
                    .clicked()
                {
                    cmds.push(Command::Quit);
                }
            });
            ui.menu_button("Explain", |ui| {
                if ui.button("Explain an OOM message…").clicked() {
                    state.explain.open = true;
                }
            });
            ui.menu_button("Teach", |ui| {
                if ui.button("Why memory grows…").clicked() {
                    state.teach.open = true;
                }
            });
            ui.menu_button("Lessons", |ui| {
                for (name, text) in crate::lesson::BUNDLED {
                    let title = crate::lesson::Lesson::parse(text, name, name)
                        .map_or_else(|_| (*name).to_string(), |l| l.title);
                    if ui.button(title).clicked() {
                        cmds.push(Command::OpenLesson((*name).to_string()));
                    }
                }
                ui.separator();
                if ui.button("Open lesson file…").clicked() {
                    cmds.push(Command::OpenLessonDialog);
                }
            });
            ui.menu_button("View", |ui| {
                for (t, name) in [
                    (ThemeChoice::System, "Follow the system"),
                    (ThemeChoice::Light, "Light"),
                    (ThemeChoice::Dark, "Dark"),
                ] {
                    if ui.radio(view.theme == t, name).clicked() {
                        cmds.push(Command::SetTheme(t));
                    }
                }
                ui.separator();
                let presenting = (view.zoom - PRESENTATION_ZOOM).abs() < 1e-3;
                if ui
                    .radio(
                        presenting,
                        format!("Presentation ({:.0}%, the plot alone)", PRESENTATION_ZOOM * 100.0),
                    )
                    .on_hover_text(
                        "bigger text and lines, and only the plot, to read from the back of a room",
                    )
                    .clicked()
                {
                    cmds.push(Command::Present(true));
                }
                if ui
                    .radio((view.zoom - 1.0).abs() < 1e-3, "Normal size (100%)")
                    .clicked()
                {
                    cmds.push(Command::Present(false));
                }
                ui.checkbox(&mut settings.panels, "Experiment, recommendation and trials panels");
                if ui
                    .add(egui::Button::new("Zoom in").shortcut_text("Ctrl +"))
                    .clicked()
                {
                    cmds.push(Command::SetZoom(view.zoom + 0.1));
                }
                if ui
                    .add(egui::Button::new("Zoom out").shortcut_text("Ctrl -"))
                    .clicked()
                {
                    cmds.push(Command::SetZoom(view.zoom - 0.1));
                }
                ui.label(RichText::new(format!("now {:.0}%", view.zoom * 100.0)).weak());
            });
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                let f = view.frame;
                let during = if f.frames_during_sweep > 0 {
                    format!(
                        " · sweep: max {:.2} ms (cpu {:.2}), {} of {} frames over {FRAME_BUDGET_MS}",
                        f.max_ms_during_sweep,
                        f.max_cpu_ms_during_sweep,
                        f.frames_over_budget,
                        f.frames_during_sweep,
                    )
                } else {
                    String::new()
                };
                ui.label(
                    RichText::new(format!(
                        "UI {:.2} ms/frame (cpu {:.2}){during}",
                        f.last_ms, f.last_cpu_ms
                    ))
                    .weak()
                    .small(),
                )
                .on_hover_text("time spent in oomlab's own code per frame; cpu = this thread's CPU time, wall also counts waiting for a core");
            });
        });
    });
}

/// A text field with a label that names it (tests and screen readers find it by the label).
fn labelled_text(ui: &mut egui::Ui, label: &str, value: &mut String, hint: &str) -> egui::Response {
    ui.horizontal(|ui| {
        let l = ui.label(label);
        ui.add(
            egui::TextEdit::singleline(value)
                .hint_text(hint)
                .desired_width(f32::INFINITY),
        )
        .labelled_by(l.id)
    })
    .inner
}
