//! The centre plot: memory against batch, one curve per (seq, dtype), OOM markers, capacity and
//! headroom lines, and each curve's boundary.

use crate::plan::{Curve, Runtime, human_bytes};
use crate::report::{BoundaryRecord, Outcome, Results, TrialRecord};
use eframe::egui;
use egui::Color32;
use egui_plot::{
    Corner, GridInput, GridMark, HLine, HoverPosition, Legend, Line, LineStyle, MarkerShape, Plot,
    PlotPoint, Points, Text, VLine,
};
use std::collections::HashMap;
use std::fmt::Write as _;

/// One curve to draw: legend name, (batch, total bytes) points, colour, boundary b*.
type CurveItem = (String, Vec<[f64; 2]>, Color32, Option<usize>);

const PALETTE: [Color32; 8] = [
    Color32::from_rgb(31, 119, 180),
    Color32::from_rgb(44, 160, 44),
    Color32::from_rgb(148, 103, 189),
    Color32::from_rgb(255, 127, 14),
    Color32::from_rgb(23, 190, 207),
    Color32::from_rgb(140, 86, 75),
    Color32::from_rgb(188, 189, 34),
    Color32::from_rgb(227, 119, 194),
];
const OOM_RED: Color32 = Color32::from_rgb(214, 39, 40);
const HOST_ORANGE: Color32 = Color32::from_rgb(200, 120, 0);

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

fn hover_text(t: &TrialRecord) -> String {
    let mut s = format!(
        "{}batch {} · seq {} · {}{}\n{}",
        match t.runtime {
            Runtime::Candle => "",
            Runtime::Torch => "PyTorch · ",
        },
        t.batch,
        t.seq,
        t.dtype,
        if t.checkpointing { " · ckpt" } else { "" },
        match t.outcome {
            Outcome::Fit => "fits".to_string(),
            Outcome::Oom => "OUT OF MEMORY".to_string(),
            Outcome::HostMemory => "STOPPED: this machine's memory, not the capacity".to_string(),
            Outcome::Failed => format!("failed: {}", t.reason.as_deref().unwrap_or("?")),
        }
    );
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

/// Draws the plot and returns the screen rectangle it occupies (for "Save plot as PNG").
/// `predicted`: the estimator's curves, drawn dashed under the measured points (and before
/// any trial), each with its predicted b*.
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
    let styles: Vec<(LineStyle, MarkerShape)> =
        curves.iter().map(|c| runtime_style(c.runtime)).collect();
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
        items.push((name, pts, PALETTE[i % PALETTE.len()], boundary));
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
    let formatter = move |pos: &HoverPosition<'_>| -> Option<String> {
        match pos {
            HoverPosition::NearDataPoint {
                plot_name, index, ..
            } => lookup
                .get(*plot_name)
                .and_then(|v| v.get(*index))
                .map(|t| hover_text(t)),
            HoverPosition::Elsewhere { position } => Some(format!(
                "batch {:.0}\n{}",
                position.x,
                human_bytes(position.y.max(0.0) as u64)
            )),
        }
    };
    let resp = Plot::new("oomlab-memory-plot")
        .legend(Legend::default().position(Corner::RightBottom))
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
        // Room on the right for the last "b* = N" label.
        .include_x(max_batch as f64 * 1.1 + 2.0)
        .include_y(0.0)
        .include_y(cap * (1.04 + 0.03 * curves.len() as f64))
        .show(ui, move |pui| {
            pui.hline(
                HLine::new(format!("capacity {cap_label}"), cap)
                    .color(OOM_RED)
                    .width(2.0),
            );
            pui.hline(
                HLine::new(format!("capacity - {headroom_pct:.0}% headroom"), limit)
                    .color(Color32::from_rgb(230, 150, 30))
                    .style(LineStyle::dashed_loose())
                    .width(1.5),
            );
            // The prediction first, dashed and lighter: the measured points land on it.
            for (name, pts, color, b_star) in predicted_items {
                let faint = color.gamma_multiply(0.55);
                pui.line(
                    Line::new(name.clone(), pts)
                        .color(faint)
                        .style(LineStyle::dashed_loose())
                        .width(1.5),
                );
                if let Some(b) = b_star {
                    pui.text(
                        Text::new(
                            name,
                            PlotPoint::new(b as f64 + 0.5, cap * 0.97),
                            egui::RichText::new(format!("predicted b* = {b}")).color(faint),
                        )
                        .color(faint)
                        .anchor(egui::Align2::RIGHT_TOP),
                    );
                }
            }
            for (i, ((name, pts, color, boundary), (style, marker))) in
                items.into_iter().zip(styles).enumerate()
            {
                if let Some(b) = boundary {
                    pui.vline(
                        VLine::new(name.clone(), b as f64 + 0.5)
                            .color(color)
                            .style(LineStyle::dashed_dense())
                            .width(1.5),
                    );
                    // Staggered so neighbouring boundaries stay readable.
                    pui.text(
                        Text::new(
                            name.clone(),
                            PlotPoint::new(b as f64 + 0.5, cap * (1.015 + 0.03 * i as f64)),
                            egui::RichText::new(format!("b* = {b}"))
                                .strong()
                                .color(color),
                        )
                        .color(color)
                        .anchor(egui::Align2::LEFT_BOTTOM),
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
    resp.response.rect
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
