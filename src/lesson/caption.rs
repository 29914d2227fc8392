//! A step's caption: text with placeholders filled from the measured runs, so that the words
//! are written as the result came out. `{RUN.FIELD}` or `{RUN.FIELD@BATCH}`, and a ratio of two
//! byte figures `{A.FIELD@B / C.FIELD@D}` (printed with one decimal). Fields:
//!
//! - `bstar`: the largest batch that fitted the capacity (the boundary the run found);
//! - `total`: the total memory at the batch (weights, runtime, inputs and everything live at
//!   the peak), `act`: what the trial added on top of what was live before it (its peak);
//! - `slope`: what one more sample adds (from the two smallest measured batches);
//! - `weights`, `capacity`;
//! - `peak`: the op and layer at the trial's peak (PyTorch's profiler; for candle the
//!   estimator's simulated forward, said so);
//! - `state`, `saved`, `grads`: a PyTorch training trial's optimizer state, saved activations
//!   (with the loss) and gradients, from its second step (see [`Parts`]).
//!
//! Without `@BATCH` a figure is taken at the run's largest batch that fitted.

use crate::plan::human_bytes;
use std::fmt::Write as _;

/// A figure a placeholder names.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    BStar,
    Total,
    Act,
    Slope,
    Weights,
    Capacity,
    Peak,
    State,
    Saved,
    Grads,
}

const FIELDS: &[(&str, Field)] = &[
    ("bstar", Field::BStar),
    ("total", Field::Total),
    ("act", Field::Act),
    ("slope", Field::Slope),
    ("weights", Field::Weights),
    ("capacity", Field::Capacity),
    ("peak", Field::Peak),
    ("state", Field::State),
    ("saved", Field::Saved),
    ("grads", Field::Grads),
];

impl Field {
    /// Whether the figure is bytes (so it can be divided by another).
    fn is_bytes(self) -> bool {
        !matches!(self, Self::BStar | Self::Peak)
    }
}

/// One figure: a run, a field, perhaps a batch.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Figure {
    pub run: String,
    pub field: Field,
    pub batch: Option<usize>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Piece {
    Text(String),
    One(Figure),
    Ratio(Figure, Figure),
}

/// A caption read once, its placeholders checked against the lesson's runs.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Template {
    pieces: Vec<Piece>,
}

/// A placeholder that cannot be read.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TemplateError {
    /// The placeholder as written (to find its line).
    pub placeholder: String,
    pub message: String,
}

fn figure(text: &str, names: &[String], whole: &str) -> Result<Figure, TemplateError> {
    let bad = |message: String| TemplateError {
        placeholder: whole.to_string(),
        message,
    };
    let text = text.trim();
    let (run, rest) = text.split_once('.').ok_or_else(|| {
        bad(format!(
            "`{whole}`: a placeholder is {{RUN.FIELD}} or {{RUN.FIELD@BATCH}}, e.g. {{grad.act@8}}"
        ))
    })?;
    if !names.iter().any(|n| n == run) {
        return Err(bad(format!(
            "`{whole}`: no run named `{run}` in this step or an earlier one{}",
            if names.is_empty() {
                String::new()
            } else {
                format!(" (runs: {})", names.join(", "))
            }
        )));
    }
    let (field, batch) = match rest.split_once('@') {
        Some((f, b)) => (
            f,
            Some(
                b.trim()
                    .parse::<usize>()
                    .map_err(|_| bad(format!("`{whole}`: `{b}` is not a batch size")))?,
            ),
        ),
        None => (rest, None),
    };
    let field = FIELDS
        .iter()
        .find(|(n, _)| *n == field.trim())
        .map(|(_, f)| *f)
        .ok_or_else(|| {
            bad(format!(
                "`{whole}`: unknown field `{field}`; fields are {}",
                FIELDS
                    .iter()
                    .map(|(n, _)| *n)
                    .collect::<Vec<_>>()
                    .join(", ")
            ))
        })?;
    Ok(Figure {
        run: run.to_string(),
        field,
        batch,
    })
}

impl Template {
    /// Reads `{…}` placeholders; `names`: the runs they may name.
    pub fn parse(text: &str, names: &[String]) -> Result<Self, TemplateError> {
        let mut pieces = Vec::new();
        let mut rest = text;
        while let Some(open) = rest.find('{') {
            if open > 0 {
                pieces.push(Piece::Text(rest[..open].to_string()));
            }
            let close = rest[open..].find('}').ok_or_else(|| TemplateError {
                placeholder: rest[open..].to_string(),
                message: format!("`{}`: a `{{` is not closed by `}}`", &rest[open..]),
            })? + open;
            let whole = &rest[open..=close];
            let inner = &rest[open + 1..close];
            let piece = match inner.split_once('/') {
                Some((a, b)) => {
                    let (a, b) = (figure(a, names, whole)?, figure(b, names, whole)?);
                    if !a.field.is_bytes() || !b.field.is_bytes() {
                        return Err(TemplateError {
                            placeholder: whole.to_string(),
                            message: format!(
                                "`{whole}`: a ratio divides two byte figures (total, act, slope, weights, capacity, state, saved, grads)"
                            ),
                        });
                    }
                    Piece::Ratio(a, b)
                }
                None => Piece::One(figure(inner, names, whole)?),
            };
            pieces.push(piece);
            rest = &rest[close + 1..];
        }
        if !rest.is_empty() {
            pieces.push(Piece::Text(rest.to_string()));
        }
        Ok(Self { pieces })
    }

    /// Whether the caption is empty.
    #[must_use]
    pub fn is_empty(&self) -> bool {
        self.pieces.is_empty()
    }

    /// The runs the caption names.
    #[must_use]
    pub fn runs(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for p in &self.pieces {
            let figs: Vec<&Figure> = match p {
                Piece::Text(_) => vec![],
                Piece::One(f) => vec![f],
                Piece::Ratio(a, b) => vec![a, b],
            };
            for f in figs {
                if !out.contains(&f.run.as_str()) {
                    out.push(&f.run);
                }
            }
        }
        out
    }
}

/// What stands where a figure could not be measured (its run was skipped, or it holds no such
/// figure).
pub const NOT_MEASURED: &str = "(not measured)";

/// The caption with every figure filled in from `find` (a run by name).
pub fn render<'a>(template: &Template, find: &dyn Fn(&str) -> Option<&'a dyn Measured>) -> String {
    let mut out = String::new();
    for piece in &template.pieces {
        match piece {
            Piece::Text(s) => out.push_str(s),
            Piece::One(fig) => {
                let text = find(&fig.run).and_then(|r| value(r, fig)).map(|v| match v {
                    Value::Bytes(b) => human_bytes(b),
                    Value::Count(n) => n.to_string(),
                    Value::Words(w) => w,
                });
                out.push_str(text.as_deref().unwrap_or(NOT_MEASURED));
            }
            Piece::Ratio(over, under) => {
                let bytes = |fig: &Figure| match find(&fig.run).and_then(|r| value(r, fig)) {
                    Some(Value::Bytes(n)) => Some(n),
                    _ => None,
                };
                match (bytes(over), bytes(under)) {
                    (Some(x), Some(y)) if y > 0 => {
                        let _ = write!(out, "{:.1}", x as f64 / y as f64);
                    }
                    _ => out.push_str(NOT_MEASURED),
                }
            }
        }
    }
    out
}

enum Value {
    Bytes(u64),
    Count(usize),
    Words(String),
}

/// What a caption reads of a run (the runner's `RunResult`).
pub trait Measured {
    /// The largest batch that fitted.
    fn b_star(&self) -> Option<usize>;
    /// A fitting trial's (total, peak over what was live before it) at `batch`, or at the
    /// largest batch that fitted.
    fn totals_at(&self, batch: Option<usize>) -> Option<(Option<u64>, Option<u64>)>;
    fn slope(&self) -> Option<u64>;
    fn weights(&self) -> Option<u64>;
    fn capacity(&self) -> u64;
    fn peak_label(&self, batch: Option<usize>) -> Option<String>;
    fn parts(&self, batch: Option<usize>) -> Option<Parts>;
}

fn value(r: &dyn Measured, f: &Figure) -> Option<Value> {
    Some(match f.field {
        Field::BStar => Value::Count(r.b_star()?),
        Field::Total => Value::Bytes(r.totals_at(f.batch)?.0?),
        Field::Act => Value::Bytes(r.totals_at(f.batch)?.1?),
        Field::Slope => Value::Bytes(r.slope()?),
        Field::Weights => Value::Bytes(r.weights()?),
        Field::Capacity => Value::Bytes(r.capacity()),
        Field::Peak => Value::Words(r.peak_label(f.batch)?),
        Field::State => Value::Bytes(r.parts(f.batch)?.state?),
        Field::Saved => Value::Bytes(r.parts(f.batch)?.saved?),
        Field::Grads => Value::Bytes(r.parts(f.batch)?.grads?),
    })
}

/// A trial's memory in parts. Weights are the build's; for a PyTorch training trial the rest
/// are differences of PyTorch's own live bytes where its second step's phases begin: the
/// optimizer state (step 2's forward less step 1's), the saved activations with the loss (step
/// 2's backward less its forward), the gradients (its optimizer step less its forward).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Parts {
    pub weights: u64,
    pub state: Option<u64>,
    pub saved: Option<u64>,
    pub grads: Option<u64>,
    /// The trial's measured total at its peak.
    pub peak: u64,
}
