//! The bottom panel: every trial (sortable, virtualized) and the event log.

use super::{PanelState, View};
use crate::plan::human_bytes;
use crate::report::{Outcome, Purpose, Results, TrialRecord};
use eframe::egui;
use egui::{Color32, RichText};

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

pub fn bottom_panel(view: &View<'_>, state: &mut PanelState, ui: &mut egui::Ui) {
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
                .show_rows(ui, row_h, view.log.len(), |ui, rows| {
                    for l in &view.log[rows] {
                        ui.add(egui::Label::new(RichText::new(l).monospace().small()).truncate())
                            .on_hover_text(l);
                    }
                });
        });
    egui::CentralPanel::default_margins().show(ui, |ui| {
        ui.label(RichText::new("Trials").strong());
        match &view.results {
            Some(r) => trials_table(state, ui, r),
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

fn trials_table(state: &mut PanelState, ui: &mut egui::Ui, r: &Results) {
    let mut order: Vec<usize> = (0..r.trials.len()).collect();
    let (col, asc) = state.sort;
    order.sort_by_key(|&i| sort_key(&r.trials[i], i, col));
    if !asc {
        order.reverse();
    }
    ui.horizontal(|ui| {
        for (name, c, w) in COLS {
            let arrow = if state.sort.0 == c {
                if state.sort.1 { " ^" } else { " v" }
            } else {
                ""
            };
            if ui
                .add_sized([w, 20.0], egui::Button::new(format!("{name}{arrow}")))
                .clicked()
            {
                state.sort = (
                    c,
                    if state.sort.0 == c {
                        !state.sort.1
                    } else {
                        true
                    },
                );
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
                    // Clicking a trial shows its memory timeline and breakdown.
                    let chosen = state.teach.selected == Some(i);
                    if ui
                        .add_sized(
                            [COLS[0].2, 18.0],
                            egui::Button::selectable(chosen, format!("trial {}", i + 1)),
                        )
                        .on_hover_text("show its memory timeline and breakdown")
                        .clicked()
                    {
                        state.teach.select(r, i);
                    }
                    cell(ui, COLS[1].2, t.seq.to_string());
                    let dtype = match (t.runtime, t.checkpointing) {
                        (crate::plan::Runtime::Candle, _) => t.dtype.name().to_string(),
                        (crate::plan::Runtime::Torch, false) => format!("PT {}", t.dtype),
                        (crate::plan::Runtime::Torch, true) => format!("PT {} ck", t.dtype),
                    };
                    cell(ui, COLS[2].2, dtype);
                    cell(ui, COLS[3].2, t.batch.to_string());
                    let (text, color) = match t.outcome {
                        Outcome::Fit => ("fit", None),
                        Outcome::Oom => ("OOM", Some(Color32::from_rgb(214, 39, 40))),
                        Outcome::HostMemory => ("host mem", Some(Color32::from_rgb(200, 120, 0))),
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
                    let gpu = t.pool_reserved_bytes.map(|reserved| {
                        let b = |v: Option<u64>| v.map_or_else(|| "?".into(), human_bytes);
                        format!(
                            "pool peak {} · reserved {} · device {} · nvidia-smi {}",
                            b(t.pool_peak_bytes),
                            human_bytes(reserved),
                            b(t.device_used_bytes),
                            b(t.process_bytes)
                        )
                    });
                    let note = match (t.purpose, &t.reason, t.requested_bytes) {
                        _ if gpu.is_some() => gpu.unwrap_or_default(),
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
