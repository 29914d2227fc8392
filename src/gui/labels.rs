//! Where the plot's labels go ("b* = 12", "predicted b* = 14", the capacity line's name): each
//! beside the point it names, and never over another. Pure geometry, so the rule is tested on
//! its own; the window test reads every drawn label back and checks that none overlaps another.

use eframe::egui::{Pos2, Rect, Vec2, pos2};

/// A label to place: its size on screen and the point it names.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Wanted {
    pub size: Vec2,
    pub anchor: Pos2,
}

/// Places the labels in the order given. Each one is tried right of its anchor with its bottom
/// at the anchor's height, then one row higher at a time (a row is the label's height and
/// `gap`), then one row lower at a time; then the same left of the anchor. The first rectangle
/// inside `bounds` that keeps `gap` from every label placed before wins. A label with no such
/// place is left out (`None`): the legend carries every curve's b* as well, so nothing is lost,
/// and no two labels ever overlap.
#[must_use]
pub fn place(wanted: &[Wanted], bounds: Rect, gap: f32) -> Vec<Option<Rect>> {
    let mut placed: Vec<Rect> = Vec::with_capacity(wanted.len());
    wanted
        .iter()
        .map(|w| {
            let found = candidates(w, bounds, gap).find(|r| {
                bounds.contains_rect(*r) && placed.iter().all(|p| !overlap(p.expand(gap), *r))
            });
            if let Some(r) = found {
                placed.push(r);
            }
            found
        })
        .collect()
}

/// The rectangles tried for one label, in the order of [`place`].
fn candidates(w: &Wanted, bounds: Rect, gap: f32) -> impl Iterator<Item = Rect> + '_ {
    let row = w.size.y + gap;
    let rows = if row > 0.0 {
        (bounds.height() / row).ceil() as i32 + 1
    } else {
        1
    };
    // 0, +1, +2 … rows up, then −1, −2 … rows down.
    let offsets = (0..=rows).chain((1..=rows).map(|k| -k));
    let right = w.anchor.x + gap;
    let left = w.anchor.x - gap - w.size.x;
    [right, left].into_iter().flat_map(move |x| {
        offsets.clone().map(move |k| {
            let bottom = w.anchor.y - k as f32 * row;
            Rect::from_min_size(pos2(x, bottom - w.size.y), w.size)
        })
    })
}

/// Whether two rectangles share some area (touching edges do not).
#[must_use]
pub fn overlap(a: Rect, b: Rect) -> bool {
    a.min.x < b.max.x && b.min.x < a.max.x && a.min.y < b.max.y && b.min.y < a.max.y
}

/// Whether no two of `rects` overlap.
#[must_use]
pub fn disjoint(rects: &[Rect]) -> bool {
    rects
        .iter()
        .enumerate()
        .all(|(i, a)| rects[i + 1..].iter().all(|b| !overlap(*a, *b)))
}

#[cfg(test)]
#[allow(clippy::float_cmp)] // whole-point geometry: exact in f32
mod tests {
    use super::*;
    use eframe::egui::vec2;

    fn bounds() -> Rect {
        Rect::from_min_size(pos2(0.0, 0.0), vec2(800.0, 500.0))
    }

    /// Six curves whose boundaries sit one batch apart, all at the capacity line: the first
    /// label keeps its place, the others stack above it, none overlaps, all inside the plot.
    #[test]
    fn crowded_labels_stack_without_overlapping() {
        let wanted: Vec<Wanted> = (0..6)
            .map(|i| Wanted {
                size: vec2(60.0, 14.0),
                anchor: pos2(300.0 + i as f32 * 4.0, 120.0),
            })
            .collect();
        let placed: Vec<Rect> = place(&wanted, bounds(), 2.0)
            .into_iter()
            .map(Option::unwrap)
            .collect();
        assert_eq!(placed[0].left_bottom(), pos2(302.0, 120.0));
        assert!(disjoint(&placed), "{placed:?}");
        assert!(placed.iter().all(|r| bounds().contains_rect(*r)));
        // Each later label sits a row above the one before it.
        for w in placed.windows(2) {
            assert!(w[1].bottom() <= w[0].top() - 2.0 + 1e-3, "{w:?}");
        }
    }

    /// At the top of the plot labels go below the anchor; at the right edge, left of it.
    #[test]
    fn labels_turn_away_from_the_edges() {
        let top = place(
            &[Wanted {
                size: vec2(60.0, 14.0),
                anchor: pos2(100.0, 5.0),
            }],
            bounds(),
            2.0,
        );
        let r = top[0].unwrap();
        assert!(r.top() >= 0.0 && r.left() == 102.0, "{r:?}");
        let edge = place(
            &[Wanted {
                size: vec2(60.0, 14.0),
                anchor: pos2(790.0, 200.0),
            }],
            bounds(),
            2.0,
        );
        assert_eq!(edge[0].unwrap().right(), 788.0);
    }

    /// More labels than the plot can hold: the extra ones are left out, never drawn over others.
    #[test]
    fn labels_that_cannot_fit_are_left_out() {
        let small = Rect::from_min_size(pos2(0.0, 0.0), vec2(100.0, 40.0));
        let wanted = vec![
            Wanted {
                size: vec2(90.0, 14.0),
                anchor: pos2(5.0, 20.0),
            };
            5
        ];
        let placed = place(&wanted, small, 2.0);
        let shown: Vec<Rect> = placed.iter().flatten().copied().collect();
        assert_eq!(shown.len(), 2, "{placed:?}");
        assert!(disjoint(&shown));
    }
}
