//! The right panel: the recommendation card, each curve's boundary, and the exports.

use super::{PanelState, View};
use crate::gui::Command;
use crate::plan::human_bytes;
use crate::report::{Results, Stop};
use crate::search::BoundaryStatus;
use eframe::egui;
use egui::{Color32, RichText};
use std::path::PathBuf;

pub fn card(view: &View<'_>, state: &mut PanelState, ui: &mut egui::Ui, cmds: &mut Vec<Command>) {
    ui.heading("Recommendation");
    let Some(r) = &view.results else {
        ui.label("Run a sweep to get a recommendation.");
        return;
    };
    let running = view.running.is_some();
    // A computed recommendation can be confirmed when its journal can be continued.
    let can_confirm = !running && view.journal.is_some();
    pick_ui(r, running, can_confirm, ui, cmds);
    ui.separator();
    boundaries_ui(r, running, can_confirm, ui, cmds);
    ui.separator();
    export_ui(view, state, ui, cmds);
}

fn pick_ui(
    r: &Results,
    running: bool,
    can_confirm: bool,
    ui: &mut egui::Ui,
    cmds: &mut Vec<Command>,
) {
    match &r.recommendation.pick {
        Some(p) => {
            ui.label(
                RichText::new(format!("batch {} × seq {} in {}", p.batch, p.seq, p.dtype))
                    .size(20.0)
                    .strong(),
            );
            // What was sized: the runtime, the workload and where (a forward-only figure is
            // not a training batch).
            ui.label(format!(
                "{}{}",
                r.sized(p.runtime),
                if p.checkpointing {
                    " · gradient checkpointing"
                } else {
                    ""
                }
            ));
            let total = match (p.total_bytes, p.predicted_bytes) {
                (Some(t), _) => format!("total {} measured", human_bytes(t)),
                (None, Some(pr)) => format!("total {} computed, not confirmed", human_bytes(pr)),
                (None, None) => "total ?".into(),
            };
            ui.label(format!(
                "{} tokens per step · {total} <= {} (capacity {} - {:.0}% headroom)",
                p.tokens_per_step,
                human_bytes(r.recommendation.limit_bytes),
                crate::presets::capacity_label(r.capacity_bytes, r.plan.gpu, !r.on_gpu()),
                r.headroom * 100.0
            ));
            if p.computed
                && can_confirm
                && ui
                    .button("Confirm the pick")
                    .on_hover_text("run one forward at this batch to measure it")
                    .clicked()
            {
                cmds.push(Command::Confirm(p.curve()));
            }
        }
        None => {
            ui.label(match (running, r.unbuilt()) {
                (true, _) => "…measuring".to_string(),
                (false, Some(why)) => format!("Nothing was measured: {why}"),
                (false, None) => "No configuration fits under the headroom limit.".to_string(),
            });
        }
    }
    if !r.on_gpu() && r.plan.gpu.is_some() {
        ui.label(
            RichText::new(format!(
                "{}: {}. The estimator's overhead beside the weights is shown in Teach > Why memory grows.",
                crate::presets::capacity_label(r.capacity_bytes, r.plan.gpu, true),
                crate::presets::CPU_NOTE
            ))
            .color(Color32::from_rgb(200, 120, 0))
            .small(),
        );
    }
    let warn = |ui: &mut egui::Ui, text: &str| {
        ui.label(
            RichText::new(text)
                .color(Color32::from_rgb(200, 120, 0))
                .small(),
        );
    };
    if r.pick_is_host_limited() {
        warn(ui, crate::report::HOST_LIMITED_PICK);
    }
    if let Some(p) = &r.recommendation.pick {
        if r.boundaries
            .iter()
            .any(|b| b.curve() == p.curve() && b.status == BoundaryStatus::AboveRange)
        {
            warn(
                ui,
                &format!(
                    "Every batch tried fits, up to {}: the boundary lies above the batch range, so larger batches may fit; widen the range to find it.",
                    r.batch_range[1]
                ),
            );
        }
        if r.inference_only() {
            ui.label(RichText::new(crate::report::TRAINING_NEEDS_MORE).small());
        }
    }
    let unfinished = r.unfinished_curves();
    if !running && !unfinished.is_empty() {
        warn(
            ui,
            &format!(
                "Incomplete: {} not finished ({}); the pick is among the finished curves only, and an export says so.",
                unfinished.len(),
                unfinished.join(", ")
            ),
        );
    }
    ui.label(RichText::new(&r.recommendation.rule).weak().small());
}

fn boundaries_ui(
    r: &Results,
    running: bool,
    can_confirm: bool,
    ui: &mut egui::Ui,
    cmds: &mut Vec<Command>,
) {
    ui.label(RichText::new("Boundaries").strong());
    egui::Grid::new("boundaries").striped(true).show(ui, |ui| {
        for head in ["curve", "b*", "status", "trials", "safe", ""] {
            ui.label(head);
        }
        ui.end_row();
        for (b, c) in r.boundaries.iter().zip(&r.recommendation.curves) {
            ui.label(b.curve().to_string());
            ui.label(
                RichText::new(b.max_batch.map_or_else(|| "–".into(), |m| m.to_string())).strong(),
            );
            // While a sweep runs, an unfinished curve is pending, not incomplete.
            let pending = running && b.stop == Some(Stop::NotFinished);
            let status = if pending { "pending" } else { b.status.name() };
            let status = if b.contradiction.is_some() {
                ui.label(RichText::new(status).color(Color32::from_rgb(200, 120, 0)))
            } else {
                ui.label(status)
            };
            if let Some(reason) = b.reason() {
                status.on_hover_text(reason);
            }
            ui.label(b.trials_used.to_string());
            match (c.batch, c.predicted_bytes.filter(|_| c.computed)) {
                (Some(m), Some(predicted)) => {
                    ui.label(format!("{m} computed")).on_hover_text(format!(
                        "the measured line puts batch {m} at {}; no trial has measured it",
                        human_bytes(predicted)
                    ));
                    if can_confirm
                        && ui
                            .small_button("Confirm")
                            .on_hover_text(format!("measure batch {m} with one forward"))
                            .clicked()
                    {
                        cmds.push(Command::Confirm(c.curve()));
                    }
                }
                (Some(m), None) => {
                    ui.label(m.to_string());
                }
                (None, _) => {
                    ui.label("–");
                }
            }
            ui.end_row();
        }
    });
    // What a person must know to read b*: memory not monotone, or the machine's own limit.
    for b in &r.boundaries {
        let text = match (b.contradiction, b.status) {
            (Some(c), _) => format!(
                "{}; b* is the largest fit below batch {}",
                c.text(),
                c.oom_batch
            ),
            (None, BoundaryStatus::HostLimited) => b.reason().unwrap_or_default(),
            _ => continue,
        };
        ui.label(
            RichText::new(format!("seq {} {}: {text}", b.seq, b.dtype))
                .color(Color32::from_rgb(200, 120, 0))
                .small(),
        );
    }
    if r.on_gpu() {
        for (d, o) in &r.overhead_bytes {
            ui.label(
                RichText::new(format!(
                    "{d}: overhead outside the pool {}, ballast {}",
                    human_bytes(*o),
                    r.ballast_bytes
                        .get(d)
                        .copied()
                        .map_or_else(|| "?".into(), human_bytes)
                ))
                .small(),
            );
        }
        ui.label(RichText::new(crate::report::CUDA_FIGURES).weak().small());
    }
    ui.label(
        RichText::new(format!(
            "{} · {} · {}",
            r.device,
            r.strategy,
            r.weights_bytes
                .iter()
                .map(|(d, w)| format!("{d} weights {}", human_bytes(*w)))
                .collect::<Vec<_>>()
                .join(", ")
        ))
        .weak()
        .small(),
    );
}

fn export_ui(view: &View<'_>, state: &mut PanelState, ui: &mut egui::Ui, cmds: &mut Vec<Command>) {
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
            egui::TextEdit::singleline(&mut state.export_path)
                .hint_text(".toml, .json, .csv or .png")
                .desired_width(150.0),
        )
        .labelled_by(l.id);
        ui.checkbox(&mut state.export_overwrite, "overwrite");
        if ui.button("Write").clicked() && !state.export_path.trim().is_empty() {
            cmds.push(Command::ExportTo(
                PathBuf::from(state.export_path.trim()),
                state.export_overwrite,
            ));
        }
    });
    if let Some(j) = view.journal {
        ui.label(
            RichText::new(format!("journal: {}", j.display()))
                .weak()
                .small(),
        );
    }
}
