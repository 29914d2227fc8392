//! The lesson view in the centre: the step's title, its figure (memory against batch, one
//! trial's timeline, or each run's memory in parts), the caption with the measured numbers, the
//! question, and Back / Next.

use super::super::Command;
use super::super::lesson::LessonView;
use super::super::plot::{OOM_RED, PALETTE, binary_grid_spacer, tick_label};
use crate::lesson::Show;
use crate::lesson::runner::{RunResult, StepResult};
use crate::plan::human_bytes;
use eframe::egui;
use egui::{Color32, RichText};
use egui_plot::{GridMark, HLine, Line, MarkerShape, Plot, Points, VLine};

/// The parts of a bar, in order, with their colours.
const PARTS: [(&str, Color32); 5] = [
    ("weights", Color32::from_rgb(31, 119, 180)),
    ("optimizer state", Color32::from_rgb(148, 103, 189)),
    ("saved activations", Color32::from_rgb(255, 127, 14)),
    ("gradients", Color32::from_rgb(44, 160, 44)),
    ("the rest at the peak", Color32::from_rgb(170, 170, 170)),
];

/// Width of the legend column beside a figure.
const LEGEND_WIDTH: f32 = 240.0;

pub fn draw(v: &LessonView, ui: &mut egui::Ui, cmds: &mut Vec<Command>) {
    let n = v.lesson.steps.len();
    let step = &v.lesson.steps[v.current];
    ui.horizontal(|ui| {
        ui.heading(format!(
            "{} — step {} of {n}: {}",
            v.lesson.title,
            v.current + 1,
            step.title
        ));
    });
    ui.horizontal(|ui| {
        if ui
            .add_enabled(v.current > 0, egui::Button::new("Back"))
            .clicked()
        {
            cmds.push(Command::LessonStep(v.current - 1));
        }
        if ui
            .add_enabled(v.current + 1 < n, egui::Button::new("Next"))
            .clicked()
        {
            cmds.push(Command::LessonStep(v.current + 1));
        }
        if ui.button("Close lesson").clicked() {
            cmds.push(Command::CloseLesson);
        }
        ui.label(
            RichText::new(format!("journals in {}", v.dir.display()))
                .weak()
                .small(),
        );
    });
    if let Some(e) = &v.error {
        ui.colored_label(OOM_RED, e);
        return;
    }
    let Some(r) = v.shown() else {
        ui.add_space(12.0);
        ui.horizontal(|ui| {
            ui.spinner();
            ui.label(format!(
                "Measuring this step… {}",
                v.progress.as_deref().unwrap_or("")
            ));
        });
        return;
    };
    // The words below the figure: their height first, so the figure takes the rest.
    let text_size = 17.0;
    if let Some(why) = &r.skipped {
        ui.colored_label(OOM_RED, why);
    }
    for (name, why) in &r.failures {
        ui.colored_label(OOM_RED, format!("run {name} failed: {why}"));
    }
    let words_height = 150.0;
    let figure_height = (ui.available_height() - words_height).max(160.0);
    if !r.runs.is_empty() {
        ui.allocate_ui(
            egui::vec2(ui.available_width(), figure_height),
            |ui| match &step.show {
                Show::Plot => plot(r, ui, figure_height),
                Show::Timeline { run, batch } => {
                    if let Some(run) = r.runs.iter().find(|x| &x.name == run) {
                        timeline(run, *batch, ui, figure_height);
                    }
                }
                Show::Parts => parts(r, ui),
            },
        );
    }
    ui.separator();
    ui.label(RichText::new(&r.caption).size(text_size));
    if let Some(q) = &step.question {
        ui.add_space(6.0);
        ui.label(
            RichText::new(format!("Question: {q}"))
                .size(text_size)
                .strong(),
        );
    }
}

/// A legend entry: a colour swatch and its words.
fn swatch(ui: &mut egui::Ui, color: Color32, text: &str) {
    ui.horizontal(|ui| {
        let (rect, _) = ui.allocate_exact_size(egui::vec2(14.0, 14.0), egui::Sense::hover());
        ui.painter().rect_filled(rect, 2.0, color);
        ui.label(text);
    });
}

/// Memory against batch: one line a run, red crosses where a batch ran out of memory.
fn plot(r: &StepResult, ui: &mut egui::Ui, height: f32) {
    let capacity = r.runs.first().map_or(0, |x| x.results.capacity_bytes) as f64;
    let width = (ui.available_width() - LEGEND_WIDTH).max(200.0);
    ui.horizontal_top(|ui| {
        Plot::new(("lesson-plot", r.index))
            .width(width)
            .height(height)
            .x_axis_label("batch size")
            .y_axis_label("memory held")
            .y_grid_spacer(binary_grid_spacer)
            .y_axis_formatter(|m: GridMark, _| tick_label(m.value.max(0.0) as u64))
            .include_x(0.0)
            .include_y(0.0)
            .include_y(capacity * 1.1)
            .show(ui, |pui| {
                pui.hline(HLine::new("capacity", capacity).color(OOM_RED).width(2.0));
                for (i, run) in r.runs.iter().enumerate() {
                    let color = PALETTE[i % PALETTE.len()];
                    let pts: Vec<[f64; 2]> = run
                        .fits()
                        .iter()
                        .map(|t| [t.batch as f64, t.total_bytes.unwrap_or(0) as f64])
                        .collect();
                    pui.line(
                        Line::new(run.label.clone(), pts.clone())
                            .color(color)
                            .width(2.5),
                    );
                    pui.points(
                        Points::new(run.label.clone(), pts)
                            .color(color)
                            .radius(4.0)
                            .filled(true),
                    );
                    let ooms: Vec<[f64; 2]> = run
                        .ooms()
                        .iter()
                        .map(|t| [t.batch as f64, capacity])
                        .collect();
                    if !ooms.is_empty() {
                        pui.points(
                            Points::new("out of memory", ooms)
                                .color(OOM_RED)
                                .radius(8.0)
                                .shape(MarkerShape::Cross),
                        );
                    }
                }
            });
        ui.vertical(|ui| {
            ui.set_width(LEGEND_WIDTH - 10.0);
            for (i, run) in r.runs.iter().enumerate() {
                swatch(ui, PALETTE[i % PALETTE.len()], &run.label);
            }
            swatch(
                ui,
                OOM_RED,
                &format!("capacity {}", human_bytes(capacity as u64)),
            );
            if r.runs.iter().any(|x| !x.ooms().is_empty()) {
                ui.label(RichText::new("red crosses: out of memory").color(OOM_RED));
            }
        });
    });
}

/// One trial's live memory over its events, the layers' starts dashed, the peak named.
fn timeline(run: &RunResult, batch: Option<usize>, ui: &mut egui::Ui, height: f32) {
    let Some(t) = run.trial_at(batch) else {
        ui.label("This run has no trial that fitted.");
        return;
    };
    let Some(tl) = &t.timeline else {
        ui.label("This trial has no timeline.");
        return;
    };
    if let Some(label) = run.peak_label(batch) {
        ui.label(RichText::new(format!("peak at {label}")).strong());
    }
    let n = tl.live_bytes.len().max(1) as f64;
    let pts: Vec<[f64; 2]> = tl
        .live_bytes
        .iter()
        .enumerate()
        .map(|(k, &b)| [k as f64 * 100.0 / n, b as f64])
        .collect();
    let layers: Vec<f64> = if tl.layers.is_empty() {
        // candle: the estimator's layer starts (fractions of its simulated forward).
        run.spec
            .as_ref()
            .map(|s| {
                let threads = run.results.threads.unwrap_or(1);
                crate::estimate::forward_shape(s, t.batch, t.seq, t.dtype, threads)
                    .layer_starts
                    .iter()
                    .map(|f| f * 100.0)
                    .collect()
            })
            .unwrap_or_default()
    } else {
        tl.layers.iter().map(|&at| at as f64 * 100.0 / n).collect()
    };
    let marks: Vec<(f64, String)> = tl
        .marks
        .iter()
        .map(|m| (m.at as f64 * 100.0 / n, m.label.clone()))
        .collect();
    Plot::new(("lesson-timeline", run.name.as_str()))
        .height(height - 30.0)
        .x_axis_label(format!(
            "progress through the trial (%), batch {} × seq {}; dashed: where each layer begins",
            t.batch, t.seq
        ))
        .y_axis_label("live memory")
        .y_grid_spacer(binary_grid_spacer)
        .y_axis_formatter(|m: GridMark, _| tick_label(m.value.max(0.0) as u64))
        .include_y(0.0)
        .show(ui, |pui| {
            pui.line(Line::new("live memory", pts).color(PALETTE[0]).width(2.5));
            for (k, x) in layers.iter().enumerate() {
                pui.vline(
                    VLine::new(format!("layer {k}"), *x)
                        .color(Color32::GRAY)
                        .style(egui_plot::LineStyle::dashed_dense())
                        .width(1.0),
                );
            }
            for (x, label) in marks {
                pui.vline(VLine::new(label, x).color(PALETTE[3]).width(1.5));
            }
        });
}

/// One bar a run: its memory in parts, and its measured peak.
fn parts(r: &StepResult, ui: &mut egui::Ui) {
    let rows: Vec<(&RunResult, crate::lesson::caption::Parts)> = r
        .runs
        .iter()
        .filter_map(|run| Some((run, run.parts(None)?)))
        .collect();
    let scale = rows
        .iter()
        .map(|(_, p)| {
            p.peak
                .max(p.weights + p.state.unwrap_or(0) + p.saved.unwrap_or(0) + p.grads.unwrap_or(0))
        })
        .max()
        .unwrap_or(1)
        .max(1) as f32;
    ui.horizontal_top(|ui| {
        ui.vertical(|ui| {
            let width = (ui.available_width() - LEGEND_WIDTH).max(200.0);
            for (run, p) in &rows {
                ui.label(
                    RichText::new(format!("{} — peak {}", run.label, human_bytes(p.peak)))
                        .size(16.0),
                );
                let (rect, _) =
                    ui.allocate_exact_size(egui::vec2(width, 30.0), egui::Sense::hover());
                let painter = ui.painter();
                let train = p.state.is_some();
                // Inference and a forward keeping the graph: weights, then the rest at the peak.
                let values: [u64; 5] = if train {
                    [
                        p.weights,
                        p.state.unwrap_or(0),
                        p.saved.unwrap_or(0),
                        p.grads.unwrap_or(0),
                        0,
                    ]
                } else {
                    [p.weights, 0, 0, 0, p.peak.saturating_sub(p.weights)]
                };
                let mut x = rect.left();
                for ((_, color), bytes) in PARTS.iter().zip(values) {
                    let w = width * bytes as f32 / scale;
                    painter.rect_filled(
                        egui::Rect::from_min_size(egui::pos2(x, rect.top()), egui::vec2(w, 30.0)),
                        0.0,
                        *color,
                    );
                    x += w;
                }
                // The measured peak as a black tick.
                let px = rect.left() + width * p.peak as f32 / scale;
                painter.line_segment(
                    [
                        egui::pos2(px, rect.top() - 4.0),
                        egui::pos2(px, rect.bottom() + 4.0),
                    ],
                    egui::Stroke::new(3.0, ui.visuals().strong_text_color()),
                );
                ui.add_space(8.0);
            }
        });
        ui.vertical(|ui| {
            ui.set_width(LEGEND_WIDTH - 10.0);
            for (name, color) in PARTS {
                swatch(ui, color, name);
            }
            ui.label("the tick: the measured peak");
            ui.label(
                RichText::new("a training step's parts are where its second step's phases begin")
                    .weak()
                    .small(),
            );
        });
    });
}
