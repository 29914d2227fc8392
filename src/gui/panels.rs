//! The panels. Each returns commands; nothing here mutates sweep state while drawing.

use super::{Command, OomLabApp, ThemeChoice, plot};
use crate::catalog::BUNDLED;
use crate::plan::{Strategy, human_bytes};
use crate::report::{CurvePhase, Outcome, Purpose, Results, TrialRecord};
use eframe::egui;
use egui::{Color32, RichText};
use std::path::PathBuf;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum SortColumn {
    Index,
    Seq,
    Dtype,
    Batch,
    Outcome,
    Peak,
    Total,
    Seconds,
}

/// One log line for a finished trial.
#[must_use]
pub fn trial_line(t: &TrialRecord) -> String {
    format!(
        "seq {} {} batch {}: {}",
        t.seq,
        t.dtype,
        t.batch,
        t.outcome_text()
    )
}

#[must_use]
pub fn phase_text(p: &CurvePhase) -> String {
    match p {
        CurvePhase::Done { found, recommended } => format!(
            "b* = {} ({}), recommended {}",
            found
                .max_batch
                .map_or_else(|| "none".into(), |b| b.to_string()),
            found.status.name(),
            recommended.map_or_else(|| "none".into(), |b| b.to_string())
        ),
        CurvePhase::Incomplete { reason, .. } => format!("incomplete: {reason}"),
        CurvePhase::Search(b) => format!("next trial at batch {b}"),
        CurvePhase::Recommend { batch, .. } => format!("confirming batch {batch}"),
    }
}

pub fn draw(app: &mut OomLabApp, ui: &mut egui::Ui) -> Vec<Command> {
    let mut cmds = Vec::new();
    menu_bar(app, ui, &mut cmds);
    // Full width under the side panels: the trials table needs the room.
    egui::Panel::bottom("results")
        .resizable(true)
        .default_size(230.0)
        .size_range(120.0..=560.0)
        .show(ui, |ui| bottom_panel(app, ui));
    egui::Panel::left("experiment")
        .resizable(true)
        .default_size(320.0)
        .size_range(280.0..=460.0)
        .show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| experiment_panel(app, ui, &mut cmds));
        });
    egui::Panel::right("recommendation")
        .resizable(true)
        .default_size(300.0)
        .size_range(240.0..=460.0)
        .show(ui, |ui| {
            egui::ScrollArea::vertical().show(ui, |ui| recommendation_card(app, ui, &mut cmds));
        });
    egui::CentralPanel::default_margins().show(ui, |ui| {
        if let Some(r) = app.shared_results() {
            ui.heading(format!("{} — memory against batch", r.model));
            ui.add(egui::Label::new(RichText::new(&r.forward).weak().small()).truncate())
                .on_hover_text(&r.forward);
            app.plot_rect = Some(plot::plot_ui(ui, &r));
        } else {
            app.plot_rect = None;
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
    });
    cmds
}

fn menu_bar(app: &mut OomLabApp, ui: &mut egui::Ui, cmds: &mut Vec<Command>) {
    egui::Panel::top("menu").show(ui, |ui| {
        egui::MenuBar::new().ui(ui, |ui| {
            ui.menu_button("File", |ui| {
                if ui.button("Open results…").clicked() {
                    cmds.push(Command::OpenResultsDialog);
                }
                ui.horizontal(|ui| {
                    let l = ui.label("Results path");
                    ui.add(
                        egui::TextEdit::singleline(&mut app.open_path)
                            .hint_text("results.json or journal.jsonl")
                            .desired_width(220.0),
                    )
                    .labelled_by(l.id);
                    if ui.button("Open").clicked() && !app.open_path.trim().is_empty() {
                        cmds.push(Command::OpenResultsPath(PathBuf::from(app.open_path.trim())));
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
            ui.menu_button("View", |ui| {
                for (t, name) in [
                    (ThemeChoice::System, "Follow the system"),
                    (ThemeChoice::Light, "Light"),
                    (ThemeChoice::Dark, "Dark"),
                ] {
                    if ui.radio(app.settings.theme == t, name).clicked() {
                        cmds.push(Command::SetTheme(t));
                    }
                }
            });
            ui.with_layout(egui::Layout::right_to_left(egui::Align::Center), |ui| {
                let f = app.frame_stats();
                ui.label(
                    RichText::new(format!(
                        "UI {:.2} ms/frame (cpu {:.2}){}",
                        f.last_ms,
                        f.last_cpu_ms,
                        if f.frames_during_sweep > 0 {
                            format!(
                                " · sweep: max {:.2} ms (cpu {:.2}), {} of {} frames over {}",
                                f.max_ms_during_sweep,
                                f.max_cpu_ms_during_sweep,
                                f.frames_over_budget,
                                f.frames_during_sweep,
                                super::FRAME_BUDGET_MS
                            )
                        } else {
                            String::new()
                        }
                    ))
                    .weak()
                    .small(),
                )
                .on_hover_text("time spent in oomlab's own code per frame; cpu = this thread's CPU time, wall also counts waiting for a core");
            });
        });
    });
}

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

fn experiment_panel(app: &mut OomLabApp, ui: &mut egui::Ui, cmds: &mut Vec<Command>) {
    ui.heading("Experiment");
    ui.add_space(4.0);
    let running = app.is_running();
    ui.add_enabled_ui(!running, |ui| {
        ui.label(RichText::new("Model").strong());
        let selected = BUNDLED
            .iter()
            .find(|b| b.id == app.settings.model)
            .map_or("(a path)", |b| b.id);
        egui::ComboBox::from_label("Bundled model")
            .selected_text(selected)
            .width(200.0)
            .show_ui(ui, |ui| {
                for b in BUNDLED {
                    // In-memory configs: cheap to describe while the list is open.
                    let text = crate::catalog::ModelSpec::resolve(&crate::catalog::ModelRef::Catalog(
                        b.id.to_string(),
                    ))
                    .map_or_else(
                        |_| b.id.to_string(),
                        |s| {
                            format!(
                                "{}  ({}, {})",
                                b.id,
                                s.family,
                                super::format_params(s.dims.published_parameters(s.family))
                            )
                        },
                    );
                    ui.selectable_value(&mut app.settings.model, b.id.to_string(), text);
                }
            });
        labelled_text(ui, "Model id or path", &mut app.settings.model, "id, config.json or folder");
        ui.horizontal(|ui| {
            if ui.button("Open model folder…").clicked() {
                cmds.push(Command::PickModelFolder);
            }
            if ui.button("Open config.json…").clicked() {
                cmds.push(Command::PickConfig);
            }
        });
        ui.label(RichText::new("or drop a folder / config.json onto the window").weak().small());
        let _ = app.plan();
        if let Some(Ok(s)) = app.model_summary() {
            ui.label(RichText::new(s).small());
        }
        ui.separator();
        ui.label(RichText::new("Device").strong());
        egui::ComboBox::from_label("Device")
            .selected_text("CPU (simulated capacity)")
            .show_ui(ui, |ui| {
                let _ = ui.selectable_label(true, "CPU (simulated capacity)");
            });
        labelled_text(ui, "Capacity", &mut app.settings.capacity, "e.g. 1GiB, 11GiB");
        ui.label(
            RichText::new(
                "Simulates a device of this size: forward passes run on the CPU and oomlab counts every byte they allocate.",
            )
            .weak()
            .small(),
        );
        ui.separator();
        ui.label(RichText::new("Sweep").strong());
        labelled_text(ui, "Batch range", &mut app.settings.batch, "e.g. 1..256");
        labelled_text(ui, "Sequence lengths", &mut app.settings.seqs, "e.g. 128, 512");
        ui.horizontal(|ui| {
            ui.label("Precisions");
            ui.checkbox(&mut app.settings.f32, "f32");
            ui.checkbox(&mut app.settings.f16, "f16");
            ui.checkbox(&mut app.settings.bf16, "bf16");
        });
        labelled_text(ui, "Headroom", &mut app.settings.headroom, "e.g. 10%");
        ui.horizontal(|ui| {
            ui.label("Strategy");
            for (s, tip) in [
                (Strategy::Auto, "probe, predict b*, confirm b* and b*+1 (about 3 trials per curve)"),
                (Strategy::Grid, "every batch up to the first OOM: the full curve, for teaching"),
                (Strategy::Binsearch, "Lightning's power-then-bisect, for comparison"),
            ] {
                ui.radio_value(&mut app.settings.strategy, s, s.name()).on_hover_text(tip);
            }
        });
        ui.horizontal(|ui| {
            let l = ui.label("Worker threads");
            ui.add(egui::DragValue::new(&mut app.settings.threads).range(1..=256))
                .labelled_by(l.id);
        });
    });
    ui.separator();
    let plan = app.plan();
    ui.horizontal(|ui| {
        if running {
            if ui.button(RichText::new("Cancel").size(16.0)).clicked() {
                cmds.push(Command::Cancel);
            }
        } else {
            let run = ui.add_enabled(
                plan.is_ok(),
                egui::Button::new(RichText::new("Run").size(16.0)),
            );
            let run = match &plan {
                Err(e) => run.on_disabled_hover_text(e.clone()),
                Ok(_) => run,
            };
            if run.clicked() {
                cmds.push(Command::Run);
            }
            let resumable = app.view.as_ref().and_then(|v| {
                (v.results.incomplete && v.contents.is_some())
                    .then(|| v.journal.clone())
                    .flatten()
            });
            if let Some(j) = resumable
                && ui
                    .button("Resume")
                    .on_hover_text(format!("continue {}", j.display()))
                    .clicked()
            {
                cmds.push(Command::Resume(j));
            }
        }
    });
    if let Err(e) = &plan {
        ui.label(RichText::new(format!("Cannot run: {e}")).color(Color32::from_rgb(200, 60, 60)));
    }
    if let Some(run) = &app.run
        && !run.done
    {
        let done = app.results().map_or(0, |r| {
            r.boundaries.iter().filter(|b| b.reason.is_none()).count()
        });
        let total = app.results().map_or(1, |r| r.boundaries.len().max(1));
        ui.add(
            egui::ProgressBar::new(done as f32 / total as f32)
                .text(format!("{done} of {total} curves")),
        );
        // No spinner: it repaints every frame, which on a software-rendered display costs a
        // core the worker needs. The elapsed time below refreshes once a second.
        ui.horizontal_wrapped(|ui| {
            match &run.current {
                Some((what, t)) => ui.label(format!(
                    "{}: {what} · {:.1}s",
                    app.results().map_or("", |r| r.model.as_str()),
                    t.elapsed().as_secs_f64()
                )),
                None => ui.label("starting the worker…"),
            };
        });
        ui.label(
            RichText::new(format!(
                "{} trials so far · {:.0}s",
                app.results().map_or(0, |r| r.trials.len()),
                run.started.elapsed().as_secs_f64()
            ))
            .small(),
        );
    }
    if let Some(n) = &app.notice {
        ui.label(RichText::new(n).italics());
    }
}

fn recommendation_card(app: &mut OomLabApp, ui: &mut egui::Ui, cmds: &mut Vec<Command>) {
    ui.heading("Recommendation");
    let Some(r) = app.shared_results() else {
        ui.label("Run a sweep to get a recommendation.");
        return;
    };
    recommendation_body(app, ui, cmds, &r);
}

fn recommendation_body(
    app: &mut OomLabApp,
    ui: &mut egui::Ui,
    cmds: &mut Vec<Command>,
    r: &Results,
) {
    match &r.recommendation.pick {
        Some(p) => {
            ui.label(
                RichText::new(format!("batch {} × seq {} in {}", p.batch, p.seq, p.dtype))
                    .size(20.0)
                    .strong(),
            );
            ui.label(format!(
                "{} tokens per step · total {} <= {} (capacity {} - {:.0}% headroom)",
                p.tokens_per_step,
                p.total_bytes.map_or_else(|| "?".into(), human_bytes),
                human_bytes(r.recommendation.limit_bytes),
                human_bytes(r.capacity_bytes),
                r.headroom * 100.0
            ));
        }
        None => {
            ui.label(if app.is_running() {
                "…measuring"
            } else {
                "No configuration fits under the headroom limit."
            });
        }
    }
    ui.label(RichText::new(&r.recommendation.rule).weak().small());
    ui.separator();
    ui.label(RichText::new("Boundaries").strong());
    egui::Grid::new("boundaries").striped(true).show(ui, |ui| {
        ui.label("curve");
        ui.label("b*");
        ui.label("status");
        ui.label("trials");
        ui.label("safe");
        ui.end_row();
        for (b, c) in r.boundaries.iter().zip(&r.recommendation.curves) {
            ui.label(format!("seq {} {}", b.seq, b.dtype));
            ui.label(
                RichText::new(b.max_batch.map_or_else(|| "–".into(), |m| m.to_string())).strong(),
            );
            // While a sweep runs, an unfinished curve is pending, not incomplete.
            let pending = app.is_running()
                && b.reason
                    .as_deref()
                    .is_some_and(|r| r.starts_with("not finished"));
            let status = ui.label(if pending { "pending" } else { b.status.name() });
            if let Some(reason) = &b.reason {
                status.on_hover_text(reason);
            }
            ui.label(b.trials_used.to_string());
            ui.label(c.batch.map_or_else(|| "–".into(), |m| m.to_string()));
            ui.end_row();
        }
    });
    ui.label(
        RichText::new(format!(
            "{} · {} · {} threads · {}",
            r.device,
            r.strategy,
            r.threads.map_or_else(|| "?".into(), |t| t.to_string()),
            r.weights_bytes
                .iter()
                .map(|(d, w)| format!("{d} weights {}", human_bytes(*w)))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .weak()
        .small(),
    );
    ui.separator();
    ui.label(RichText::new("Export").strong());
    ui.horizontal(|ui| {
        if ui
            .button("Export…")
            .on_hover_text("TOML, JSON (recommendation) or CSV (all trials)")
            .clicked()
        {
            cmds.push(Command::ExportDialog);
        }
        if ui.button("Save plot as PNG…").clicked() {
            cmds.push(Command::SavePngDialog);
        }
    });
    ui.horizontal(|ui| {
        let l = ui.label("Export path");
        ui.add(
            egui::TextEdit::singleline(&mut app.export_path)
                .hint_text(".toml, .json, .csv or .png")
                .desired_width(150.0),
        )
        .labelled_by(l.id);
        ui.checkbox(&mut app.export_overwrite, "overwrite");
        if ui.button("Write").clicked() && !app.export_path.trim().is_empty() {
            cmds.push(Command::ExportTo(
                PathBuf::from(app.export_path.trim()),
                app.export_overwrite,
            ));
        }
    });
    if let Some(j) = app.journal_path() {
        ui.label(
            RichText::new(format!("journal: {}", j.display()))
                .weak()
                .small(),
        );
    }
}

fn sort_key(t: &TrialRecord, i: usize, col: SortColumn) -> (u64, u64) {
    let n = |v: Option<u64>| v.unwrap_or(0);
    match col {
        SortColumn::Index => (i as u64, 0),
        SortColumn::Seq => (t.seq as u64, t.batch as u64),
        SortColumn::Dtype => (u64::from(t.dtype.width_rank()), t.batch as u64),
        SortColumn::Batch => (t.batch as u64, t.seq as u64),
        SortColumn::Outcome => (t.outcome as u64, t.batch as u64),
        SortColumn::Peak => (n(t.peak_bytes), 0),
        SortColumn::Total => (n(t.total_bytes), 0),
        SortColumn::Seconds => ((t.seconds * 1e6) as u64, 0),
    }
}

fn bottom_panel(app: &mut OomLabApp, ui: &mut egui::Ui) {
    egui::Panel::right("event-log")
        .resizable(true)
        .default_size(420.0)
        .size_range(200.0..=800.0)
        .show(ui, |ui| {
            ui.label(RichText::new("Event log").strong());
            let row_h = ui.text_style_height(&egui::TextStyle::Small) + 2.0;
            egui::ScrollArea::vertical()
                .id_salt("log")
                .stick_to_bottom(true)
                .auto_shrink([false, false])
                .show_rows(ui, row_h, app.log().len(), |ui, rows| {
                    for l in &app.log()[rows] {
                        ui.add(egui::Label::new(RichText::new(l).monospace().small()).truncate())
                            .on_hover_text(l);
                    }
                });
        });
    egui::CentralPanel::default_margins().show(ui, |ui| {
        ui.label(RichText::new("Trials").strong());
        match app.shared_results() {
            Some(r) => trials_table(app, ui, &r),
            None => {
                ui.label("no trials yet");
            }
        }
    });
}

/// Column widths of the trials table (fixed, so the header lines up with virtualized rows).
const COLS: [(&str, SortColumn, f32); 8] = [
    ("#", SortColumn::Index, 70.0),
    ("seq", SortColumn::Seq, 56.0),
    ("dtype", SortColumn::Dtype, 56.0),
    ("batch", SortColumn::Batch, 60.0),
    ("outcome", SortColumn::Outcome, 76.0),
    ("peak", SortColumn::Peak, 92.0),
    ("total", SortColumn::Total, 92.0),
    ("seconds", SortColumn::Seconds, 72.0),
];

fn cell(ui: &mut egui::Ui, width: f32, text: impl Into<egui::WidgetText>) {
    ui.add_sized([width, 18.0], egui::Label::new(text).truncate());
}

fn trials_table(app: &mut OomLabApp, ui: &mut egui::Ui, r: &Results) {
    let mut order: Vec<usize> = (0..r.trials.len()).collect();
    let (col, asc) = app.sort;
    order.sort_by_key(|&i| sort_key(&r.trials[i], i, col));
    if !asc {
        order.reverse();
    }
    ui.horizontal(|ui| {
        for (name, c, w) in COLS {
            let arrow = if app.sort.0 == c {
                if app.sort.1 { " ^" } else { " v" }
            } else {
                ""
            };
            if ui
                .add_sized([w, 20.0], egui::Button::new(format!("{name}{arrow}")))
                .clicked()
            {
                app.sort = (c, if app.sort.0 == c { !app.sort.1 } else { true });
            }
        }
        ui.label(format!("note · {} trials", r.trials.len()));
    });
    // Only the visible rows are laid out, so a long sweep costs the UI nothing extra per frame.
    let row_h = 20.0;
    egui::ScrollArea::both()
        .id_salt("trials")
        .auto_shrink([false, false])
        .show_rows(ui, row_h, order.len(), |ui, rows| {
            for &i in &order[rows] {
                let t = &r.trials[i];
                ui.horizontal(|ui| {
                    cell(ui, COLS[0].2, format!("trial {}", i + 1));
                    cell(ui, COLS[1].2, t.seq.to_string());
                    cell(ui, COLS[2].2, t.dtype.name());
                    cell(ui, COLS[3].2, t.batch.to_string());
                    let (text, color) = match t.outcome {
                        Outcome::Fit => ("fit", None),
                        Outcome::Oom => ("OOM", Some(Color32::from_rgb(214, 39, 40))),
                        Outcome::Failed => ("failed", Some(Color32::from_rgb(200, 120, 0))),
                    };
                    let mut rt = RichText::new(text);
                    if let Some(c) = color {
                        rt = rt.color(c).strong();
                    }
                    cell(ui, COLS[4].2, rt);
                    cell(
                        ui,
                        COLS[5].2,
                        t.peak_bytes.map_or_else(|| "–".into(), human_bytes),
                    );
                    cell(
                        ui,
                        COLS[6].2,
                        t.total_bytes.map_or_else(|| "–".into(), human_bytes),
                    );
                    cell(ui, COLS[7].2, format!("{:.3}", t.seconds));
                    let note = match (t.purpose, &t.reason, t.requested_bytes) {
                        (_, Some(reason), _) => reason.clone(),
                        (_, None, Some(req)) => format!("tried to allocate {}", human_bytes(req)),
                        (Purpose::Recommend, None, None) => "confirms the recommendation".into(),
                        _ => String::new(),
                    };
                    ui.label(RichText::new(note).small());
                });
            }
        });
}
