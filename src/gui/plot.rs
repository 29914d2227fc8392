//! The centre plot: memory against batch, one curve per (seq, dtype), OOM markers, capacity and
//! headroom lines, and each curve's boundary.

use crate::plan::{Curve, Runtime, human_bytes};
use crate::report::{BoundaryRecord, Outcome, Results, TrialRecord};
use eframe::egui;
use egui::Color32;
use egui_plot::{
    GridInput, GridMark, HLine, HoverPosition, Line, LineStyle, MarkerShape, Plot, PlotPoint,
    Points, VLine,
};
use std::collections::HashMap;
use std::fmt::Write as _;

/// One curve to draw: legend name, (batch, total bytes) points, colour, boundary b*.
type CurveItem = (String, Vec<[f64; 2]>, Color32, Option<usize>);

pub(crate) const PALETTE: [Color32; 8] = [
    Color32::from_rgb(31, 119, 180),
    Color32::from_rgb(44, 160, 44),
    Color32::from_rgb(148, 103, 189),
    Color32::from_rgb(255, 127, 14),
    Color32::from_rgb(23, 190, 207),
    Color32::from_rgb(140, 86, 75),
    Color32::from_rgb(188, 189, 34),
    Color32::from_rgb(227, 119, 194),
];
pub(crate) const OOM_RED: Color32 = Color32::from_rgb(214, 39, 40);
const HOST_ORANGE: Color32 = Color32::from_rgb(200, 120, 0);
const HEADROOM_AMBER: Color32 = Color32::from_rgb(230, 150, 30);

/// A curve's legend name: `seq 128 · f32` for candle, `PyTorch · seq 128 · f32` (`· ckpt`).
#[must_use]
pub fn curve_label(c: Curve) -> String {
    let ckpt = if c.checkpointing { " · ckpt" } else { "" };
    match c.runtime {
        Runtime::Candle => format!("seq {} · {}", c.seq, c.dtype),
        Runtime::Torch => format!("PyTorch · seq {} · {}{ckpt}", c.seq, c.dtype),
    }
}

/// How a runtime's measured curves are drawn, so both can share one plot: candle solid with
/// round points, PyTorch dotted with square ones (the legend names each).
#[must_use]
pub fn runtime_style(runtime: Runtime) -> (LineStyle, MarkerShape) {
    match runtime {
        Runtime::Candle => (LineStyle::Solid, MarkerShape::Circle),
        Runtime::Torch => (LineStyle::dotted_dense(), MarkerShape::Square),
    }
}

/// The curves present in the results, in plan order.
fn curves(r: &Results) -> Vec<Curve> {
    r.boundaries.iter().map(BoundaryRecord::curve).collect()
}

/// What a point says when hovered. An OOM cross leads with the request that failed, as
/// PyTorch's message does ("Tried to allocate …"), and the capacity it crossed.
fn hover_text(t: &TrialRecord, capacity_bytes: u64) -> String {
    let point = format!(
        "{}batch {} · seq {} · {}{}",
        match t.runtime {
            Runtime::Candle => "",
            Runtime::Torch => "PyTorch · ",
        },
        t.batch,
        t.seq,
        t.dtype,
        if t.checkpointing { " · ckpt" } else { "" },
    );
    let status = match t.outcome {
        Outcome::Oom => {
            let request = t.requested_bytes.map_or_else(
                || "the request that failed was not recorded".to_string(),
                |b| format!("tried to allocate {} ({b} B)", human_bytes(b)),
            );
            return format!(
                "OUT OF MEMORY: {request}\nthe capacity is {}\n{point}\n{:.3} s",
                human_bytes(capacity_bytes),
                t.seconds
            );
        }
        Outcome::Fit => "fits".to_string(),
        Outcome::HostMemory => "STOPPED: this machine's memory, not the capacity".to_string(),
        Outcome::Failed => format!("failed: {}", t.reason.as_deref().unwrap_or("?")),
    };
    let mut s = format!("{point}\n{status}");
    if let Some(total) = t.total_bytes {
        let _ = write!(s, "\ntotal {} ({total} B)", human_bytes(total));
    }
    if let Some(p) = t.peak_bytes {
        let _ = write!(s, "\nforward peak {} ({p} B)", human_bytes(p));
    }
    if let Some(r) = t.requested_bytes {
        let _ = write!(s, "\ntried to allocate {}", human_bytes(r));
    }
    if let Some(steps) = &t.steps_bytes {
        let list: Vec<String> = steps.iter().map(|b| human_bytes(*b)).collect();
        let _ = write!(s, "\ntraining steps 1, 2: {}", list.join(", "));
    }
    if let Some(label) = t
        .timeline
        .as_ref()
        .and_then(crate::report::Timeline::peak_label)
    {
        let _ = write!(s, "\npeak at {label}");
    }
    let _ = write!(s, "\n{:.3} s", t.seconds);
    s
}

/// Width of the legend column beside the plot (points).
const LEGEND_WIDTH: f32 = 230.0;
/// Below this width (points) the legend goes under the plot, which keeps the whole width.
const NARROW: f32 = 700.0;

/// One curve's entry in the legend and its labels on the plot.
struct Entry {
    name: String,
    color: Color32,
    runtime: Runtime,
    b_star: Option<usize>,
    predicted_b_star: Option<usize>,
}

/// Draws the plot, with its legend in a column beside it (never over the data) and the labels
/// of the capacity, the headroom limit and each b* placed by [`super::labels::place`], and
/// returns the screen rectangle both occupy (for "Save plot as PNG"). `predicted`: the
/// estimator's curves, drawn dashed under the measured points (and before any trial).
pub fn plot_ui(
    ui: &mut egui::Ui,
    r: &Results,
    predicted: Option<&crate::gui::teach::TeachModel>,
) -> egui::Rect {
    let curves = curves(r);
    // Only a prediction for what is shown (the plan may have changed since it was asked for).
    let predicted = predicted.filter(|m| m.key == crate::gui::teach::TeachKey::of(r));
    let predicted_items: Vec<CurveItem> = curves
        .iter()
        .enumerate()
        .filter_map(|(i, c)| {
            let p = predicted?.curves.iter().find(|p| p.curve == *c)?;
            Some((
                format!("{} predicted", curve_label(*c)),
                p.points.clone(),
                PALETTE[i % PALETTE.len()],
                p.b_star,
            ))
        })
        .collect();
    let cap = r.capacity_bytes as f64;
    let limit = r.recommendation.limit_bytes as f64;
    // series name -> trials in point order, for the hover text
    let mut lookup: HashMap<String, Vec<&TrialRecord>> = HashMap::new();
    let mut max_batch = 1usize;
    for t in &r.trials {
        max_batch = max_batch.max(t.batch);
    }
    for (_, pts, _, _) in &predicted_items {
        if let Some(last) = pts.last() {
            max_batch = max_batch.max(last[0] as usize);
        }
    }
    let mut items: Vec<CurveItem> = Vec::new();
    let mut entries: Vec<Entry> = Vec::new();
    for (i, c) in curves.iter().enumerate() {
        let mut fits: Vec<&TrialRecord> = r
            .trials
            .iter()
            .filter(|t| t.curve() == *c && t.outcome == Outcome::Fit && t.total_bytes.is_some())
            .collect();
        fits.sort_by_key(|t| t.batch);
        fits.dedup_by_key(|t| t.batch);
        let name = curve_label(*c);
        let pts: Vec<[f64; 2]> = fits
            .iter()
            .map(|t| [t.batch as f64, t.total_bytes.unwrap_or(0) as f64])
            .collect();
        lookup.insert(name.clone(), fits.clone());
        let boundary = r
            .boundaries
            .iter()
            .find(|b| b.curve() == *c)
            .and_then(|b| b.max_batch);
        let color = PALETTE[i % PALETTE.len()];
        entries.push(Entry {
            name: name.clone(),
            color,
            runtime: c.runtime,
            b_star: boundary,
            predicted_b_star: predicted
                .and_then(|m| m.curves.iter().find(|p| p.curve == *c))
                .and_then(|p| p.b_star),
        });
        items.push((name, pts, color, boundary));
    }
    let ooms: Vec<&TrialRecord> = r
        .trials
        .iter()
        .filter(|t| t.outcome == Outcome::Oom)
        .collect();
    let oom_name = "OOM (the allocation that crossed the capacity)".to_string();
    let oom_pts: Vec<[f64; 2]> = ooms.iter().map(|t| [t.batch as f64, cap]).collect();
    lookup.insert(oom_name.clone(), ooms);
    let host_stops: Vec<&TrialRecord> = r
        .trials
        .iter()
        .filter(|t| t.outcome == Outcome::HostMemory)
        .collect();
    let host_name = "stopped by this machine's memory".to_string();
    let host_pts: Vec<[f64; 2]> = host_stops.iter().map(|t| [t.batch as f64, cap]).collect();
    lookup.insert(host_name.clone(), host_stops);
    let headroom_pct = r.headroom * 100.0;
    let cap_label = crate::presets::capacity_label(r.capacity_bytes, r.plan.gpu, !r.on_gpu());
    let capacity_bytes = r.capacity_bytes;
    let formatter = move |pos: &HoverPosition<'_>| -> Option<String> {
        match pos {
            HoverPosition::NearDataPoint {
                plot_name, index, ..
            } => lookup
                .get(*plot_name)
                .and_then(|v| v.get(*index))
                .map(|t| hover_text(t, capacity_bytes)),
            HoverPosition::Elsewhere { position } => Some(format!(
                "batch {:.0}\n{}",
                position.x,
                human_bytes(position.y.max(0.0) as u64)
            )),
        }
    };
    let any_predicted = !predicted_items.is_empty();
    let any_host = !host_pts.is_empty();
    let full = ui.available_rect_before_wrap();
    // The legend beside the plot where there is room for both, else under it, never over it.
    let beside = full.width() >= NARROW;
    let spacing = ui.spacing().item_spacing;
    let plot_size = if beside {
        egui::vec2(
            (full.width() - LEGEND_WIDTH - spacing.x).max(100.0),
            full.height().max(100.0),
        )
    } else {
        let rows = entries.len().div_ceil(2) as f32 + 3.0;
        egui::vec2(
            full.width(),
            (full.height() - rows * (ui.text_style_height(&egui::TextStyle::Body) + spacing.y))
                .max(100.0),
        )
    };
    let mut plot_rect = full;
    let layout = if beside {
        egui::Layout::left_to_right(egui::Align::Min)
    } else {
        egui::Layout::top_down(egui::Align::Min)
    };
    ui.with_layout(layout, |ui| {
        let resp = Plot::new("oomlab-memory-plot")
            .width(plot_size.x)
            .height(plot_size.y)
            .x_axis_label("batch size")
            .y_axis_label(if r.plan.uses_torch() {
                "memory held during the trial"
            } else {
                "memory held during the forward"
            })
            .y_grid_spacer(binary_grid_spacer)
            .y_axis_formatter(|m: GridMark, _| tick_label(m.value.max(0.0) as u64))
            .x_axis_formatter(|m: GridMark, _| format!("{:.0}", m.value))
            .label_formatter(formatter)
            .include_x(0.0)
            .include_x(max_batch as f64 * 1.1 + 2.0)
            .include_y(0.0)
            // Room above the capacity line for the labels that stack there.
            .include_y(cap * 1.25)
            .show(ui, move |pui| {
                pui.hline(HLine::new("capacity", cap).color(OOM_RED).width(2.0));
                pui.hline(
                    HLine::new("headroom limit", limit)
                        .color(HEADROOM_AMBER)
                        .style(LineStyle::dashed_loose())
                        .width(1.5),
                );
                // The prediction first, dashed and lighter: the measured points land on it.
                for (name, pts, color, _) in predicted_items {
                    pui.line(
                        Line::new(name, pts)
                            .color(color.gamma_multiply(0.55))
                            .style(LineStyle::dashed_loose())
                            .width(1.5),
                    );
                }
                for ((name, pts, color, boundary), c) in items.into_iter().zip(curves) {
                    let (style, marker) = runtime_style(c.runtime);
                    if let Some(b) = boundary {
                        pui.vline(
                            VLine::new(name.clone(), b as f64 + 0.5)
                                .color(color)
                                .style(LineStyle::dashed_dense())
                                .width(1.5),
                        );
                    }
                    pui.line(
                        Line::new(name.clone(), pts.clone())
                            .color(color)
                            .style(style)
                            .width(2.0),
                    );
                    pui.points(
                        Points::new(name, pts)
                            .color(color)
                            .radius(3.5)
                            .shape(marker)
                            .filled(true),
                    );
                }
                if !oom_pts.is_empty() {
                    pui.points(
                        Points::new(oom_name, oom_pts)
                            .color(OOM_RED)
                            .radius(7.0)
                            .shape(MarkerShape::Cross),
                    );
                }
                if !host_pts.is_empty() {
                    pui.points(
                        Points::new(host_name, host_pts)
                            .color(HOST_ORANGE)
                            .radius(7.0)
                            .shape(MarkerShape::Diamond),
                    );
                }
            });
        ui.vertical(|ui| {
            if beside {
                ui.set_width(LEGEND_WIDTH);
            }
            legend(ui, &entries, !beside, any_predicted, any_host, r);
        });
        plot_rect = resp.response.rect.union(ui.min_rect());
        // Last: placing a label moves the layout's cursor past it.
        let t = resp.transform;
        let labels = plot_labels(
            &entries,
            &format!("capacity {cap_label}"),
            &format!("capacity − {headroom_pct:.0}% headroom"),
            cap,
            limit,
        );
        draw_labels(
            ui,
            &labels,
            |x, y| t.position_from_point(&PlotPoint::new(x, y)),
            *t.frame(),
        );
    });
    plot_rect
}

/// A label on the plot: its text, colour, and the plot point it names.
struct PlotLabel {
    text: String,
    color: Color32,
    strong: bool,
    at: (f64, f64),
}

/// The labels in the order they are placed: the two reference lines at their left end, then
/// each curve's measured b*, then each predicted b* (so a measured one keeps the nearer place).
fn plot_labels(
    entries: &[Entry],
    capacity: &str,
    headroom: &str,
    cap: f64,
    limit: f64,
) -> Vec<PlotLabel> {
    let mut out = vec![
        PlotLabel {
            text: capacity.to_string(),
            color: OOM_RED,
            strong: false,
            at: (f64::NEG_INFINITY, cap),
        },
        PlotLabel {
            text: headroom.to_string(),
            color: HEADROOM_AMBER,
            strong: false,
            at: (f64::NEG_INFINITY, limit),
        },
    ];
    for e in entries {
        if let Some(b) = e.b_star {
            out.push(PlotLabel {
                text: format!("b* = {b}"),
                color: e.color,
                strong: true,
                at: (b as f64 + 0.5, cap),
            });
        }
    }
    for e in entries {
        if let Some(b) = e.predicted_b_star {
            out.push(PlotLabel {
                text: format!("predicted b* = {b}"),
                color: e.color.gamma_multiply(0.7),
                strong: false,
                at: (b as f64 + 0.5, cap),
            });
        }
    }
    out
}

/// Places the labels inside the plot's frame by the rule in [`super::labels::place`] and draws
/// each as a label widget (so it can be read back, by tests and screen readers, where it is).
fn draw_labels(
    ui: &mut egui::Ui,
    labels: &[PlotLabel],
    to_screen: impl Fn(f64, f64) -> egui::Pos2,
    frame: egui::Rect,
) {
    let gap = 2.0;
    let bounds = frame.shrink(gap);
    let galleys: Vec<_> = labels
        .iter()
        .map(|l| {
            let mut text = egui::RichText::new(&l.text).color(l.color);
            if l.strong {
                text = text.strong();
            }
            egui::WidgetText::from(text).into_galley(
                ui,
                Some(egui::TextWrapMode::Extend),
                f32::INFINITY,
                egui::FontSelection::Default,
            )
        })
        .collect();
    let wanted: Vec<super::labels::Wanted> = labels
        .iter()
        .zip(&galleys)
        .map(|(l, g)| {
            let p = to_screen(l.at.0.max(0.0), l.at.1);
            let x = if l.at.0.is_finite() {
                p.x
            } else {
                bounds.left()
            };
            super::labels::Wanted {
                size: g.size(),
                anchor: egui::pos2(x, p.y),
            }
        })
        .collect();
    for (rect, galley) in super::labels::place(&wanted, bounds, gap)
        .into_iter()
        .zip(galleys)
    {
        if let Some(rect) = rect {
            ui.put(rect, egui::Label::new(galley).selectable(false));
        }
    }
}

/// The legend, beside the plot: one entry per curve (its line and marker, its name, its b* and
/// the estimator's), then one line for what the dashes and markers mean.
fn legend(
    ui: &mut egui::Ui,
    entries: &[Entry],
    wrapped: bool,
    predicted: bool,
    host: bool,
    results: &Results,
) {
    ui.label(egui::RichText::new("Curves").strong());
    let entry = |ui: &mut egui::Ui, e: &Entry| {
        ui.horizontal(|ui| {
            let (rect, _) = ui.allocate_exact_size(egui::vec2(28.0, 14.0), egui::Sense::hover());
            let mid = rect.center().y;
            let stroke = egui::Stroke::new(2.0, e.color);
            let (a, b) = (egui::pos2(rect.left(), mid), egui::pos2(rect.right(), mid));
            match e.runtime {
                Runtime::Candle => {
                    ui.painter().line_segment([a, b], stroke);
                    ui.painter().circle_filled(rect.center(), 3.5, e.color);
                }
                Runtime::Torch => {
                    ui.painter()
                        .extend(egui::Shape::dotted_line(&[a, b], e.color, 4.0, 1.2));
                    ui.painter().rect_filled(
                        egui::Rect::from_center_size(rect.center(), egui::vec2(7.0, 7.0)),
                        0.0,
                        e.color,
                    );
                }
            }
            let boundaries = match (e.b_star, e.predicted_b_star) {
                (Some(b), Some(p)) => format!(": b* {b} (predicted {p})"),
                (Some(b), None) => format!(": b* {b}"),
                (None, Some(p)) => format!(": predicted b* {p}"),
                (None, None) => String::new(),
            };
            let text = format!("{}{boundaries}", e.name);
            let label = egui::Label::new(egui::RichText::new(text).color(e.color));
            // In a row of entries each keeps its line; in the column it wraps.
            ui.add(if wrapped {
                label.extend()
            } else {
                label.wrap()
            });
        });
    };
    if wrapped {
        // Under the plot: two entries a row.
        egui::Grid::new("legend-rows")
            .spacing(egui::vec2(24.0, 2.0))
            .show(ui, |ui| {
                for (i, e) in entries.iter().enumerate() {
                    entry(ui, e);
                    if i % 2 == 1 {
                        ui.end_row();
                    }
                }
            });
    } else {
        for e in entries {
            entry(ui, e);
        }
    }
    ui.add_space(4.0);
    let mut key = String::from("solid: candle");
    if results.plan.runtimes.contains(&Runtime::Torch) {
        key.push_str(" · dotted: PyTorch");
    }
    if predicted {
        key.push_str(" · dashed = predicted by the estimator");
    }
    key.push_str(" · red × on the capacity line: an OOM (hover it for the request that failed)");
    if host {
        key.push_str(" · orange diamond: stopped by this machine's memory");
    }
    ui.add(egui::Label::new(egui::RichText::new(key).small().weak()).wrap());
}

/// Grid marks on the memory axis at multiples of powers of two (64 MiB, 128 MiB, 1 GiB …), in
/// three sizes like `egui_plot`'s default spacer, so tick labels read as round binary sizes.
#[allow(clippy::needless_pass_by_value)] // the signature `Plot::y_grid_spacer` takes
pub fn binary_grid_spacer(input: GridInput) -> Vec<GridMark> {
    let (lo, hi) = input.bounds;
    if lo.is_nan() || hi.is_nan() || hi <= lo || input.base_step_size <= 0.0 {
        return Vec::new();
    }
    // The smallest power of two at or above the suggested step; marks are counted in it.
    let small = 2f64.powi(input.base_step_size.log2().ceil().clamp(0.0, 62.0) as i32);
    let (first, last) = ((lo / small).ceil() as i64, (hi / small).floor() as i64);
    if last - first > 10_000 {
        return Vec::new();
    }
    (first..=last)
        .map(|k| {
            // The largest of the three steps (1, 4, 16 small ones) this mark is a multiple of.
            let times = [16, 4, 1].into_iter().find(|t| k % t == 0).unwrap_or(1);
            GridMark {
                value: k as f64 * small,
                step_size: times as f64 * small,
            }
        })
        .collect()
}

/// A tick label: `64 MiB`, `1 GiB`, `1.5 GiB`, `1040 MiB` — the largest unit in which the value
/// is a whole number or a quarter, without trailing zeros.
#[must_use]
pub fn tick_label(bytes: u64) -> String {
    const UNITS: [(u64, &str); 3] = [(1 << 30, "GiB"), (1 << 20, "MiB"), (1 << 10, "KiB")];
    for (size, unit) in UNITS {
        let quarters = bytes as f64 * 4.0 / size as f64;
        if bytes >= size && quarters.fract() == 0.0 {
            let text = format!("{:.2}", quarters / 4.0);
            let text = text.trim_end_matches('0').trim_end_matches('.');
            return format!("{text} {unit}");
        }
    }
    format!("{bytes} B")
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An OOM cross names the request that failed first, as PyTorch's message does, then the
    /// capacity it crossed and the trial; one whose request was not recorded says so.
    #[test]
    fn an_oom_cross_names_the_request_that_failed() {
        let line = r#"{"type":"trial","batch":44,"seq":64,"dtype":"f32","strategy":"grid","purpose":"search","outcome":"oom","peak_bytes":null,"total_bytes":null,"requested_bytes":360448,"live_before_bytes":null,"baseline_bytes":null,"failure":null,"reason":null,"seconds":0.042,"worker_pid":16100}"#;
        let crate::report::JournalLine::Trial(mut t) = serde_json::from_str(line).unwrap() else {
            panic!("not a trial")
        };
        let text = hover_text(&t, 16 << 20);
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(
            lines[0],
            "OUT OF MEMORY: tried to allocate 352.0 KiB (360448 B)"
        );
        assert_eq!(lines[1], "the capacity is 16.0 MiB");
        assert_eq!(lines[2], "batch 44 · seq 64 · f32");
        t.requested_bytes = None;
        assert!(
            hover_text(&t, 16 << 20)
                .starts_with("OUT OF MEMORY: the request that failed was not recorded")
        );
    }

    #[test]
    fn memory_ticks_are_round_binary_sizes() {
        assert_eq!(tick_label(64 << 20), "64 MiB");
        assert_eq!(tick_label(1 << 30), "1 GiB");
        assert_eq!(tick_label(3 << 29), "1.5 GiB");
        assert_eq!(tick_label(0), "0 B");
        assert_eq!(tick_label((1 << 30) + (16 << 20)), "1040 MiB");
        assert_eq!(tick_label(1_000_000_000), "976562.5 KiB");
        // A 1 GiB capacity axis on a plot a few hundred points tall.
        let marks = binary_grid_spacer(GridInput {
            bounds: (0.0, 1.2 * f64::from(1u32 << 30)),
            base_step_size: 9.0e6,
        });
        assert!(!marks.is_empty());
        for m in &marks {
            assert!((m.value / m.step_size).fract().abs() < 1e-12, "{m:?}");
            assert_eq!((m.step_size as u64).count_ones(), 1, "{m:?}");
            let label = tick_label(m.value as u64);
            let number = label.split(' ').next().unwrap();
            assert!(
                !number.contains('.') || [".25", ".5", ".75"].iter().any(|q| number.ends_with(q)),
                "{label}"
            );
        }
        let labels: Vec<String> = marks
            .iter()
            .filter(|m| m.step_size >= 256.0 * f64::from(1u32 << 20))
            .map(|m| tick_label(m.value as u64))
            .collect();
        assert!(labels.contains(&"256 MiB".to_string()), "{labels:?}");
        assert!(labels.contains(&"1 GiB".to_string()), "{labels:?}");
    }
}
