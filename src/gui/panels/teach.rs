//! The "Why memory grows" window: what-if controls over the estimator (runtime, and for PyTorch
//! the workload, optimizer and checkpointing; batch, sequence length, precision, GPU preset) with
//! the breakdown of the point's memory stacked by part, the predicted b*, the measurement at that
//! point when there is one, and the memory timeline of a measured trial (live bytes over its
//! forward, from the worker's allocator).

use super::View;
use crate::estimate::Breakdown;
use crate::plan::{Precision, human_bytes};
use crate::presets::{self, PRESETS};
use crate::report::{Outcome, Results, TrialRecord};
use eframe::egui;
use egui::{Color32, RichText};
use egui_plot::{HLine, Line, Plot, PlotPoint, Points, Text, VLine};

/// The window's own state.
#[derive(Debug, Clone, Default)]
pub struct TeachState {
    pub open: bool,
    pub batch: usize,
    pub seq: usize,
    pub dtype: Precision,
    /// A GPU preset's id, or None for the shown sweep's capacity.
    pub gpu: Option<&'static str>,
    /// The trial whose timeline is shown (index into the shown trials).
    pub selected: Option<usize>,
    /// The last estimate and predicted b*, and what they were for (recomputed on a change only:
    /// a bisection simulates the forward a few dozen times).
    cached: Option<(WhatIf, Option<Breakdown>, Option<usize>)>,
    /// The simulated forward's peak and layer starts for the shown candle trial, and its point.
    shape: Option<(ShapeKey, crate::estimate::ForwardShape)>,
    /// Which estimator answers: candle's, or PyTorch's for `how` (set from the shown sweep when
    /// the window first opens on it).
    pub runtime: crate::plan::Runtime,
    pub how: Option<crate::estimate::torch::How>,
    /// The last PyTorch estimate and predicted b*, and what they were for.
    torch_cached: Option<(TorchWhatIf, TorchAnswer)>,
}

/// The inputs of one PyTorch what-if estimate.
#[derive(Debug, Clone, PartialEq)]
struct TorchWhatIf {
    point: WhatIf,
    how: crate::estimate::torch::How,
}

/// A PyTorch estimate and its predicted b*, or why the point is not modelled.
type TorchAnswer = Result<(crate::estimate::torch::TorchBreakdown, Option<usize>), String>;

/// What a candle trial's [`crate::estimate::ForwardShape`] was simulated for.
type ShapeKey = (crate::catalog::ModelRef, usize, usize, Precision, usize);

/// The inputs of one what-if estimate.
#[derive(Debug, Clone, PartialEq)]
struct WhatIf {
    model: crate::catalog::ModelRef,
    batch: usize,
    seq: usize,
    dtype: Precision,
    capacity: u64,
}

impl TeachState {
    /// Shows trial `i` of `r`: its timeline, and the what-if set to its point.
    pub fn select(&mut self, r: &Results, i: usize) {
        if let Some(t) = r.trials.get(i) {
            self.selected = Some(i);
            self.batch = t.batch;
            self.seq = t.seq;
            self.dtype = t.dtype;
            self.open = true;
        }
    }
}

/// The parts of a forward's memory, in stacking order, with their colours.
const PARTS: [(&str, Color32); 4] = [
    ("weights", Color32::from_rgb(31, 119, 180)),
    ("activations", Color32::from_rgb(255, 127, 14)),
    ("KV cache", Color32::from_rgb(44, 160, 44)),
    ("overhead", Color32::from_rgb(148, 103, 189)),
];

pub fn window(view: &View<'_>, state: &mut TeachState, ctx: &egui::Context) {
    let mut open = state.open;
    egui::Window::new("Why memory grows")
        .open(&mut open)
        .default_size([620.0, 640.0])
        .vscroll(true)
        .show(ctx, |ui| body(view, state, ui));
    state.open = open;
}

fn body(view: &View<'_>, state: &mut TeachState, ui: &mut egui::Ui) {
    let Some(r) = &view.results else {
        ui.label("Run a sweep or open results: the estimator works on the shown model.");
        return;
    };
    let Some(m) = view.teach else {
        match view.teach_error {
            Some(e) => ui.label(format!("The estimator is not available: {e}")),
            None => ui.label("Building the estimator…"),
        };
        return;
    };
    if state.how.is_none() {
        // The runtime and workload of the shown sweep.
        state.runtime = *r
            .plan
            .runtimes
            .first()
            .unwrap_or(&crate::plan::Runtime::Candle);
        state.how = Some(crate::estimate::torch::How::of_curve(
            &r.plan,
            m.spec.family,
            r.plan
                .torch
                .checkpointing_list()
                .first()
                .copied()
                .unwrap_or(false),
        ));
    }
    if state.batch == 0 {
        // Start where the sweep's recommendation is.
        if let Some(p) = &r.recommendation.pick {
            (state.batch, state.seq, state.dtype) = (p.batch, p.seq, p.dtype);
        } else {
            state.batch = r.plan.batch.min;
            state.seq = r.plan.seqs.first().copied().unwrap_or(128);
            state.dtype = r.plan.dtypes.first().copied().unwrap_or_default();
        }
    }
    ui.label(RichText::new("What if").strong());
    runtime_controls(state, m, ui);
    ui.horizontal(|ui| {
        let l = ui.label("Batch");
        ui.add(egui::DragValue::new(&mut state.batch).range(1..=crate::plan::MAX_BATCH))
            .labelled_by(l.id);
        let l = ui.label("Sequence length");
        ui.add(egui::DragValue::new(&mut state.seq).range(1..=m.spec.dims.max_positions))
            .labelled_by(l.id);
    });
    let torch = state.runtime == crate::plan::Runtime::Torch;
    let train = state
        .how
        .is_some_and(|h| h.workload == crate::plan::Workload::Train);
    ui.horizontal(|ui| {
        ui.label("Precision");
        for d in Precision::ALL.into_iter().chain([Precision::AmpBf16]) {
            // PyTorch's estimate models f32, bf16 and f16, and amp-bf16 in training.
            let offered = if torch {
                matches!(d, Precision::F32 | Precision::Bf16 | Precision::F16)
                    || (train && d == Precision::AmpBf16)
            } else {
                m.runtimes.contains_key(&d)
            };
            if offered {
                ui.radio_value(&mut state.dtype, d, d.name());
            }
        }
    });
    let sweep_capacity = format!("this sweep's: {}", human_bytes(r.capacity_bytes));
    // The what-if preset, else the sweep's own capacity (and its preset).
    let preset = state
        .gpu
        .and_then(|id| presets::find(id).ok())
        .or(r.plan.gpu);
    let capacity = state
        .gpu
        .and_then(|id| presets::find(id).ok())
        .map_or(r.capacity_bytes, |p| p.total_bytes);
    ui.horizontal(|ui| {
        let l = ui.label("What-if capacity");
        egui::ComboBox::from_id_salt("teach-capacity")
            .selected_text(state.gpu.and_then(|id| presets::find(id).ok()).map_or_else(
                || sweep_capacity.clone(),
                |p| {
                    format!(
                        "{} ({})",
                        p.name,
                        presets::capacity_label(p.total_bytes, Some(p), false)
                    )
                },
            ))
            .show_ui(ui, |ui| {
                ui.selectable_value(&mut state.gpu, None, sweep_capacity.as_str());
                for p in PRESETS {
                    ui.selectable_value(&mut state.gpu, Some(p.id), p.name);
                }
            })
            .response
            .labelled_by(l.id);
    });
    ui.separator();
    let key = WhatIf {
        model: m.key.model.clone(),
        batch: state.batch,
        seq: state.seq,
        dtype: state.dtype,
        capacity,
    };
    if torch && let Some(how) = state.how {
        torch_body(r, state, m, (key, how, preset), ui);
        ui.separator();
        timeline(r, state, m, ui);
        return;
    }
    if state.cached.as_ref().is_none_or(|(k, _, _)| *k != key) {
        let e = m.estimate(state.batch, state.seq, state.dtype);
        let b = m.b_star(state.seq, state.dtype, capacity);
        state.cached = Some((key, e, b));
    }
    let Some((_, estimate, b_star)) = state.cached.clone() else {
        return;
    };
    let Some(e) = estimate else {
        ui.label(format!("{} does not run in {}", m.spec.name, state.dtype));
        return;
    };
    ui.label(
        RichText::new(format!(
            "candle's inference forward, estimated for batch {} × seq {} in {}: total {}",
            state.batch,
            state.seq,
            state.dtype,
            human_bytes(e.total_bytes)
        ))
        .strong(),
    );
    let parts = [
        e.weights_bytes,
        e.activation_bytes,
        e.kv_cache_bytes,
        e.overhead_bytes,
    ];
    stacked_bar(ui, &parts, capacity);
    for ((name, color), bytes) in PARTS.iter().zip(parts) {
        ui.horizontal(|ui| {
            let (rect, _) = ui.allocate_exact_size(egui::vec2(10.0, 10.0), egui::Sense::hover());
            ui.painter().rect_filled(rect, 2.0, *color);
            ui.label(format!("{name} {}", human_bytes(bytes)));
        });
    }
    // The estimator models candle: only candle's measurements are compared with it.
    let measured = r.trials.iter().enumerate().rev().find(|(_, t)| {
        t.runtime == crate::plan::Runtime::Candle
            && t.batch == state.batch
            && t.seq == state.seq
            && t.dtype == state.dtype
            && t.outcome == Outcome::Fit
    });
    if r.plan.uses_torch() {
        ui.label(
            RichText::new(
                "This is candle's estimate; choose Runtime: PyTorch for PyTorch's (its trials' timelines are below).",
            )
            .weak()
            .small(),
        );
    }
    measured_and_b_star(
        ui,
        measured.and_then(|(i, t)| Some((i, t.total_bytes?))),
        e.total_bytes,
        b_star,
        &presets::capacity_label(capacity, preset, !r.on_gpu()),
    );
    if preset.is_some() {
        ui.label(
            RichText::new(format!(
                "{}. Overhead estimated beside the weights on this CPU: {}; a GPU adds its CUDA context and workspace on top.",
                presets::CPU_NOTE,
                human_bytes(e.overhead_bytes)
            ))
            .small(),
        );
    }
    ui.separator();
    timeline(r, state, m, ui);
}

/// The measurement at the what-if point when a trial of the shown sweep has one (its index and
/// total) against the estimate's total, then the predicted b* under the capacity so labelled.
fn measured_and_b_star(
    ui: &mut egui::Ui,
    measured: Option<(usize, u64)>,
    estimate: u64,
    b_star: Option<usize>,
    capacity: &str,
) {
    if let Some((i, total)) = measured {
        ui.label(format!(
            "measured in trial {}: {} ({:+.2}% from the estimate)",
            i + 1,
            human_bytes(total),
            (estimate as f64 - total as f64) * 100.0 / total as f64
        ));
    }
    match b_star {
        Some(b) => ui.label(format!("predicted b* under {capacity}: {b}")),
        None => ui.label(format!("not even batch 1 fits under {capacity}")),
    };
}

/// The runtime radio, and for PyTorch the workload, and for training the optimizer and
/// checkpointing.
fn runtime_controls(state: &mut TeachState, m: &crate::gui::teach::TeachModel, ui: &mut egui::Ui) {
    use crate::plan::{Runtime, Workload};
    use crate::runtime::Optimizer;
    ui.horizontal(|ui| {
        ui.label("Runtime");
        ui.radio_value(&mut state.runtime, Runtime::Candle, "candle");
        ui.radio_value(&mut state.runtime, Runtime::Torch, "PyTorch");
    });
    if state.runtime != Runtime::Torch {
        return;
    }
    let decoder = m.spec.family.room().is_decoder();
    let Some(how) = state.how.as_mut() else {
        return;
    };
    let before = how.workload;
    ui.horizontal(|ui| {
        ui.label("Workload");
        ui.radio_value(&mut how.workload, Workload::Infer, "inference (no_grad)");
        ui.radio_value(&mut how.workload, Workload::Grad, "forward without no_grad");
        ui.radio_value(&mut how.workload, Workload::Train, "training step");
    });
    if how.workload != before {
        how.task = crate::plan::Task::default_for(how.workload, decoder);
        if how.workload != Workload::Train {
            how.checkpointing = false;
        }
    }
    if how.workload == Workload::Train {
        ui.horizontal(|ui| {
            ui.label("Optimizer");
            ui.radio_value(&mut how.optimizer, Optimizer::Adamw, "AdamW");
            ui.radio_value(&mut how.optimizer, Optimizer::Sgd, "SGD (momentum)");
            ui.checkbox(&mut how.checkpointing, "Gradient checkpointing");
        });
    } else if state.dtype == Precision::AmpBf16 {
        state.dtype = Precision::F32;
    }
}

/// PyTorch's parts, in stacking order, with their colours: for a training step what each of
/// step 2's phases keeps (they need not all be live at the peak), else the forward's.
const TORCH_PARTS: [(&str, Color32); 5] = [
    ("weights", Color32::from_rgb(31, 119, 180)),
    ("optimizer state", Color32::from_rgb(148, 103, 189)),
    ("gradients", Color32::from_rgb(214, 39, 40)),
    ("saved activations", Color32::from_rgb(255, 127, 14)),
    ("activations", Color32::from_rgb(44, 160, 44)),
];

/// The PyTorch estimate at the what-if point: its parts, the peak, the predicted b*, and the
/// measurement at the point when the shown sweep has one.
fn torch_body(
    r: &Results,
    state: &mut TeachState,
    m: &crate::gui::teach::TeachModel,
    (point, how, preset): (
        WhatIf,
        crate::estimate::torch::How,
        Option<&'static presets::GpuPreset>,
    ),
    ui: &mut egui::Ui,
) {
    use crate::estimate::torch;
    let capacity = point.capacity;
    let key = TorchWhatIf { point, how };
    if state.torch_cached.as_ref().is_none_or(|(k, _)| *k != key) {
        let threads = m.key.threads;
        let answer = torch::estimate(&m.spec, state.batch, state.seq, state.dtype, how, threads)
            .map(|e| {
                let b = torch::max_batch(
                    &m.spec,
                    state.seq,
                    state.dtype,
                    how,
                    threads,
                    capacity,
                    crate::plan::MAX_BATCH,
                )
                .flatten();
                (e, b)
            })
            .map_err(|e| e.to_string());
        state.torch_cached = Some((key, answer));
    }
    let Some((_, answer)) = &state.torch_cached else {
        return;
    };
    let (e, b_star) = match answer {
        Ok(a) => *a,
        Err(why) => {
            ui.label(format!("Not modelled: {why}"));
            return;
        }
    };
    ui.label(
        RichText::new(format!(
            "PyTorch's {}, estimated for batch {} × seq {} in {}: peak {}",
            how.workload.describe(),
            state.batch,
            state.seq,
            state.dtype,
            human_bytes(e.total_bytes)
        ))
        .strong(),
    );
    let parts: [u64; 5] = match (
        e.optimizer_bytes,
        e.gradient_bytes,
        e.saved_activation_bytes,
    ) {
        (Some(state_bytes), Some(grads), Some(saved)) => {
            [e.weights_bytes, state_bytes, grads, saved, 0]
        }
        _ => [e.weights_bytes, 0, 0, 0, e.activation_bytes + e.input_bytes],
    };
    parts_bar(ui, &parts, e.total_bytes, capacity);
    for ((name, color), bytes) in TORCH_PARTS.iter().zip(parts) {
        if bytes == 0 && *name != "weights" {
            continue;
        }
        ui.horizontal(|ui| {
            let (rect, _) = ui.allocate_exact_size(egui::vec2(10.0, 10.0), egui::Sense::hover());
            ui.painter().rect_filled(rect, 2.0, *color);
            ui.label(format!("{name} {}", human_bytes(bytes)));
        });
    }
    if e.optimizer_bytes.is_some() {
        ui.label(
            RichText::new(
                "Each part is what a phase of the second step keeps (the optimizer state, the gradients, the activations autograd saves); they need not all be live at the peak, which the light tick marks (the red one is the capacity).",
            )
            .weak()
            .small(),
        );
    }
    let measured = r.trials.iter().enumerate().rev().find(|(_, t)| {
        t.runtime == crate::plan::Runtime::Torch
            && r.plan.workload == how.workload
            && r.plan.torch.optimizer == how.optimizer
            && t.checkpointing == how.checkpointing
            && t.batch == state.batch
            && t.seq == state.seq
            && t.dtype == state.dtype
            && t.outcome == Outcome::Fit
    });
    measured_and_b_star(
        ui,
        measured.and_then(|(i, t)| Some((i, t.total_bytes?))),
        e.total_bytes,
        b_star,
        &presets::capacity_label(capacity, preset, !r.on_gpu()),
    );
    ui.label(
        RichText::new(
            "PyTorch's estimate follows transformers' code as PyTorch runs it on the CPU (its allocations, its default optimizers); a GPU adds its CUDA context and the caching allocator's rounding, and CUDA's kernels differ.",
        )
        .small(),
    );
}

/// PyTorch's parts side by side in one bar, the peak as a tick in the text colour and the
/// capacity as a red one, scaled to the largest of the three.
fn parts_bar(ui: &mut egui::Ui, parts: &[u64; 5], peak: u64, capacity: u64) {
    let total: u64 = parts.iter().sum();
    let scale = total.max(capacity).max(peak).max(1) as f32;
    let width = ui.available_width().min(560.0);
    let (rect, _) = ui.allocate_exact_size(egui::vec2(width, 22.0), egui::Sense::hover());
    let painter = ui.painter();
    painter.rect_stroke(
        rect,
        2.0,
        egui::Stroke::new(1.0, Color32::GRAY),
        egui::StrokeKind::Inside,
    );
    let mut x = rect.left();
    for ((_, color), bytes) in TORCH_PARTS.iter().zip(parts) {
        let w = width * (*bytes as f32 / scale);
        painter.rect_filled(
            egui::Rect::from_min_size(egui::pos2(x, rect.top()), egui::vec2(w, rect.height())),
            0.0,
            *color,
        );
        x += w;
    }
    for (bytes, color) in [
        (peak, ui.visuals().strong_text_color()),
        (capacity, Color32::from_rgb(214, 39, 40)),
    ] {
        let cx = rect.left() + width * (bytes as f32 / scale);
        painter.line_segment(
            [
                egui::pos2(cx, rect.top() - 3.0),
                egui::pos2(cx, rect.bottom() + 3.0),
            ],
            egui::Stroke::new(2.0, color),
        );
    }
}

/// The parts side by side in one bar, scaled to the capacity (or the total, when larger).
fn stacked_bar(ui: &mut egui::Ui, parts: &[u64; 4], capacity: u64) {
    let total: u64 = parts.iter().sum();
    let scale = total.max(capacity).max(1) as f32;
    let width = ui.available_width().min(560.0);
    let (rect, _) = ui.allocate_exact_size(egui::vec2(width, 22.0), egui::Sense::hover());
    let painter = ui.painter();
    painter.rect_stroke(
        rect,
        2.0,
        egui::Stroke::new(1.0, Color32::GRAY),
        egui::StrokeKind::Inside,
    );
    let mut x = rect.left();
    for ((_, color), bytes) in PARTS.iter().zip(parts) {
        let w = width * (*bytes as f32 / scale);
        painter.rect_filled(
            egui::Rect::from_min_size(egui::pos2(x, rect.top()), egui::vec2(w, rect.height())),
            0.0,
            *color,
        );
        x += w;
    }
    // The capacity as a red tick.
    let cx = rect.left() + width * (capacity as f32 / scale);
    painter.line_segment(
        [
            egui::pos2(cx, rect.top() - 3.0),
            egui::pos2(cx, rect.bottom() + 3.0),
        ],
        egui::Stroke::new(2.0, Color32::from_rgb(214, 39, 40)),
    );
}

/// The selected trial's timeline (or the latest trial that has one).
fn timeline(
    r: &Results,
    state: &mut TeachState,
    model: &crate::gui::teach::TeachModel,
    ui: &mut egui::Ui,
) {
    let chosen = state
        .selected
        .filter(|&i| r.trials.get(i).is_some_and(|t| t.timeline.is_some()))
        .or_else(|| r.trials.iter().rposition(|t| t.timeline.is_some()));
    let Some(i) = chosen else {
        ui.label("No trial with a memory timeline yet (click a trial in the table to pick one).");
        return;
    };
    let t: &TrialRecord = &r.trials[i];
    let Some(tl) = &t.timeline else { return };
    let torch = t.runtime == crate::plan::Runtime::Torch;
    ui.label(
        RichText::new(format!(
            "Timeline of trial {}: batch {} × seq {} in {}{}",
            i + 1,
            t.batch,
            t.seq,
            t.dtype,
            if torch {
                format!(" on PyTorch ({})", r.plan.workload.describe())
            } else {
                String::new()
            }
        ))
        .strong(),
    );
    let n = tl.live_bytes.len().max(1);
    let pts: Vec<[f64; 2]> = tl
        .live_bytes
        .iter()
        .enumerate()
        .map(|(k, &v)| [k as f64 * 100.0 / n as f64, v as f64])
        .collect();
    let (peak_at, peak) = tl
        .live_bytes
        .iter()
        .enumerate()
        .max_by_key(|(_, v)| **v)
        .map_or((0, 0), |(k, v)| (k, *v));
    let peak_pct = peak_at as f64 * 100.0 / n as f64;
    let what = if torch { "the trial" } else { "the forward" };
    ui.label(format!(
        "peak {} at {peak_pct:.0}% of {what} ({} allocations and frees)",
        human_bytes(peak),
        tl.events
    ));
    // PyTorch's profiler names the op and the module that made the peak allocation; candle's
    // allocator sees only bytes, so its trials are named from the estimator's simulated forward
    // at the same point, and say so.
    // Where the layers begin: PyTorch's profiler saw the modules run; candle's, the estimator's.
    let mut layers: Vec<f64> = tl
        .layers
        .iter()
        .map(|&at| at as f64 * 100.0 / n as f64)
        .collect();
    let mut layers_from = "the first forward, from PyTorch's profiler";
    if let Some(label) = tl.peak_label() {
        ui.label(RichText::new(format!("the peak: {label}")).strong());
    } else if !torch && model.key.model == r.plan.model {
        let key: ShapeKey = (
            model.key.model.clone(),
            t.batch,
            t.seq,
            t.dtype,
            model.key.threads,
        );
        if state.shape.as_ref().map(|(k, _)| k) != Some(&key) {
            let shape = crate::estimate::forward_shape(
                &model.spec,
                t.batch,
                t.seq,
                t.dtype,
                model.key.threads,
            );
            state.shape = Some((key, shape));
        }
        if let Some((_, shape)) = &state.shape {
            ui.label(
                RichText::new(format!(
                    "the peak, by the estimator's simulated forward: {}",
                    shape.peak_at
                ))
                .strong(),
            );
            layers = shape.layer_starts.iter().map(|f| f * 100.0).collect();
            layers_from = "the estimator's simulated forward";
        }
    }
    let mut marks: Vec<(f64, String)> = tl
        .marks
        .iter()
        .map(|m| (m.at as f64 * 100.0 / n as f64, m.label.clone()))
        .collect();
    // Layer boundaries (the estimator's, for candle), a label on at most eight of them.
    let every = layers.len().div_ceil(8).max(1);
    for (l, x) in layers.iter().enumerate() {
        let label = if l % every == 0 {
            format!("layer {l}")
        } else {
            String::new()
        };
        marks.push((*x, label));
    }
    if !layers.is_empty() {
        ui.label(
            RichText::new(format!(
                "dashed lines: where each layer begins in {layers_from} (layers counted from 0, as Hugging Face names them)"
            ))
            .small()
            .weak(),
        );
    }
    let cap = r.capacity_bytes as f64;
    Plot::new("teach-timeline")
        .height(220.0)
        .y_grid_spacer(crate::gui::plot::binary_grid_spacer)
        .x_axis_label(if torch {
            "progress through the trial (%)"
        } else {
            "progress through the forward (%)"
        })
        .y_axis_formatter(|m, _| crate::gui::plot::tick_label(m.value.max(0.0) as u64))
        .include_y(0.0)
        .show(ui, |pui| {
            pui.line(Line::new("live bytes", pts).color(Color32::from_rgb(31, 119, 180)));
            pui.points(
                Points::new("peak", vec![[peak_pct, peak as f64]])
                    .radius(5.0)
                    .color(Color32::from_rgb(214, 39, 40)),
            );
            pui.text(Text::new(
                "peak label",
                PlotPoint::new(peak_pct, peak as f64),
                format!("peak {}", human_bytes(peak)),
            ));
            // Where the forward, the backward and the optimizer step begin.
            for (x, label) in marks {
                pui.vline(
                    VLine::new(label.clone(), x)
                        .color(Color32::GRAY)
                        .style(egui_plot::LineStyle::dashed_dense()),
                );
                if !label.is_empty() {
                    pui.text(
                        Text::new(label.clone(), PlotPoint::new(x, 0.0), label)
                            .anchor(egui::Align2::LEFT_BOTTOM),
                    );
                }
            }
            if cap <= peak as f64 * 1.5 {
                pui.hline(HLine::new("capacity", cap).color(Color32::from_rgb(214, 39, 40)));
            }
        });
}
