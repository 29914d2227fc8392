//! Lessons: a short sequence of steps a teacher gives with oomlab, each a few small sweeps, a
//! plot, a caption written from the measured numbers and a question for the class. A lesson is
//! a text file (the format is in the README, "Lessons"), so a teacher can write their own; the
//! bundled ones are `assets/lessons/*.lesson`. The command line (`oomlab lesson`) and the
//! window (Lessons menu) share the parser ([`Lesson::parse`]), the caption
//! ([`caption::render`]) and the runner ([`runner::LessonRunner`]).

pub mod caption;
pub mod runner;
#[cfg(test)]
mod tests;

use crate::catalog::ModelRef;
use crate::plan::{
    Attn, BatchRange, Optimizer, PlanOverrides, Precision, Runtime, Strategy, Task, Workload,
};
use caption::Template;
use clap::Parser;
use std::fmt;
use std::path::{Path, PathBuf};

/// The lessons built into oomlab: (name, file text).
pub const BUNDLED: &[(&str, &str)] = &[
    (
        "classic-oom",
        include_str!("../../assets/lessons/classic-oom.lesson"),
    ),
    (
        "where-the-peak-is",
        include_str!("../../assets/lessons/where-the-peak-is.lesson"),
    ),
    (
        "inference-vs-training",
        include_str!("../../assets/lessons/inference-vs-training.lesson"),
    ),
];

/// A lesson file that cannot be used: where (file and line) and what to change.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LessonError {
    /// The file (or the bundled lesson's name).
    pub origin: String,
    /// 1-based; 0 when the problem is the whole file (it cannot be read, it has no step).
    pub line: usize,
    pub message: String,
}

impl fmt::Display for LessonError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.line == 0 {
            write!(f, "{}: {}", self.origin, self.message)
        } else {
            write!(f, "{}, line {}: {}", self.origin, self.line, self.message)
        }
    }
}

impl std::error::Error for LessonError {}

/// One lesson: its title, an introduction, and its steps in order.
#[derive(Debug, Clone)]
pub struct Lesson {
    /// The bundled name, or the file's stem.
    pub name: String,
    /// Where it was read from: the bundled name or the path.
    pub origin: String,
    pub title: String,
    pub about: String,
    pub steps: Vec<Step>,
}

/// What a step shows beside its caption.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Show {
    /// Memory against batch, one line per run (the default).
    Plot,
    /// One trial's memory over time, with the op and layer at its peak.
    Timeline { run: String, batch: Option<usize> },
    /// Each run's memory in parts (weights, optimizer state, saved activations, gradients), one
    /// bar a run, with its measured peak.
    Parts,
}

/// One step: its runs, what it shows, the caption and the question.
#[derive(Debug, Clone)]
pub struct Step {
    /// The `step` line.
    pub line: usize,
    pub title: String,
    pub runs: Vec<RunSpec>,
    pub show: Show,
    pub caption: Template,
    pub question: Option<String>,
}

impl Step {
    /// Whether a run of this step needs the PyTorch runtime.
    #[must_use]
    pub fn needs_torch(&self) -> bool {
        self.runs.iter().any(|r| r.torch)
    }
}

/// One sweep of a step: a name the caption refers to, the words the plot's legend shows, and
/// the sweep's flags (over the lesson's `defaults`).
#[derive(Debug, Clone)]
pub struct RunSpec {
    pub line: usize,
    pub name: String,
    pub label: String,
    pub overrides: PlanOverrides,
    pub torch: bool,
}

/// The `oomlab sweep` flags a lesson's run may give: one curve each (one sequence length, one
/// precision, one runtime, checkpointing on or off).
#[derive(Debug, Parser)]
#[command(
    no_binary_name = true,
    args_override_self = true,
    disable_help_flag = true
)]
struct RunFlags {
    #[arg(long, short)]
    model: Option<String>,
    #[arg(long)]
    seq: Option<usize>,
    #[arg(long)]
    dtype: Option<Precision>,
    #[arg(long)]
    batch: Option<BatchRange>,
    #[arg(long, value_parser = crate::units::parse_bytes)]
    capacity: Option<u64>,
    #[arg(long, value_parser = crate::presets::find)]
    gpu: Option<&'static crate::presets::GpuPreset>,
    #[arg(long, value_parser = crate::units::parse_headroom)]
    headroom: Option<f64>,
    #[arg(long)]
    strategy: Option<Strategy>,
    #[arg(long)]
    threads: Option<usize>,
    #[arg(long)]
    runtime: Option<Runtime>,
    #[arg(long)]
    workload: Option<Workload>,
    #[arg(long)]
    task: Option<Task>,
    #[arg(long)]
    attn: Option<Attn>,
    #[arg(long)]
    optimizer: Option<Optimizer>,
    #[arg(long, value_parser = crate::runtime::parse_on_off)]
    gradient_checkpointing: Option<bool>,
}

impl RunFlags {
    fn overrides(&self) -> Result<PlanOverrides, String> {
        let model = match &self.model {
            Some(m) => Some(ModelRef::parse(m).map_err(|e| e.to_string())?),
            None => None,
        };
        Ok(PlanOverrides {
            model,
            seqs: self.seq.map(|s| vec![s]),
            dtypes: self.dtype.map(|d| vec![d]),
            batch: self.batch,
            capacity_bytes: self.capacity,
            gpu: self.gpu,
            headroom: self.headroom,
            // A lesson's runs draw lines: every batch of their range unless told otherwise.
            strategy: Some(self.strategy.unwrap_or(Strategy::Grid)),
            device: None,
            threads: self.threads,
            runtimes: self.runtime.map(|r| vec![r]),
            workload: self.workload,
            python: None,
            task: self.task,
            attn: self.attn,
            optimizer: self.optimizer,
            checkpointing: self.gradient_checkpointing.map(|c| vec![c]),
        })
    }
}

/// Splits a line into words; double quotes keep spaces inside one word.
fn words(text: &str) -> Result<Vec<String>, String> {
    let mut out = Vec::new();
    let mut cur = String::new();
    let mut quoted = false;
    let mut any = false;
    for c in text.chars() {
        match c {
            '"' => {
                quoted = !quoted;
                any = true;
            }
            c if c.is_whitespace() && !quoted => {
                if any {
                    out.push(std::mem::take(&mut cur));
                    any = false;
                }
            }
            c => {
                cur.push(c);
                any = true;
            }
        }
    }
    if quoted {
        return Err("a double quote is not closed".into());
    }
    if any {
        out.push(cur);
    }
    Ok(out)
}

/// A clap error in one line, without its usage text.
fn flag_error(e: &clap::Error) -> String {
    let text = e.to_string();
    let first = text
        .lines()
        .next()
        .unwrap_or_default()
        .trim_start_matches("error: ");
    format!("{first} (a run takes `oomlab sweep`'s flags, one value each)")
}

/// Whether `name` can name a run: letters, digits, `_` and `-`, starting with a letter.
fn is_name(name: &str) -> bool {
    name.chars().next().is_some_and(|c| c.is_ascii_alphabetic())
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
}

/// A step being read.
struct Partial {
    line: usize,
    title: String,
    runs: Vec<RunSpec>,
    show: Option<(usize, Show)>,
    caption: Vec<(usize, String)>,
    question: Option<String>,
}

impl Lesson {
    /// A bundled lesson by name, or a lesson file by path.
    pub fn find(name_or_path: &str) -> Result<Self, LessonError> {
        if let Some((name, text)) = BUNDLED.iter().find(|(n, _)| *n == name_or_path) {
            return Self::parse(text, name, name);
        }
        let path = Path::new(name_or_path);
        if !path.exists() {
            return Err(LessonError {
                origin: name_or_path.to_string(),
                line: 0,
                message: format!(
                    "no such lesson or file; the bundled lessons are {} (`oomlab lesson` lists them)",
                    BUNDLED
                        .iter()
                        .map(|(n, _)| *n)
                        .collect::<Vec<_>>()
                        .join(", ")
                ),
            });
        }
        Self::read(path)
    }

    /// A lesson file.
    pub fn read(path: &Path) -> Result<Self, LessonError> {
        let origin = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| LessonError {
            origin: origin.clone(),
            line: 0,
            message: format!("cannot read it: {e}"),
        })?;
        let name = path
            .file_stem()
            .map_or_else(|| origin.clone(), |s| s.to_string_lossy().into_owned());
        Self::parse(&text, &name, &origin)
    }

    /// Every bundled lesson.
    #[must_use]
    pub fn bundled() -> Vec<Self> {
        BUNDLED
            .iter()
            .filter_map(|(name, text)| Self::parse(text, name, name).ok())
            .collect()
    }

    /// Reads a lesson's text. Each line starts with a keyword: `lesson TITLE` (once, first),
    /// `about TEXT`, `defaults FLAGS`, `step TITLE`, then in a step `run NAME "LABEL" FLAGS`,
    /// `show plot|timeline RUN[@BATCH]|parts`, `caption TEXT` and `question TEXT`. `#` starts a
    /// comment line; blank lines are ignored.
    pub fn parse(text: &str, name: &str, origin: &str) -> Result<Self, LessonError> {
        let err = |line: usize, message: String| LessonError {
            origin: origin.to_string(),
            line,
            message,
        };
        let mut title: Option<String> = None;
        let mut about = Vec::new();
        let mut defaults: Vec<String> = Vec::new();
        let mut steps: Vec<Step> = Vec::new();
        let mut step: Option<Partial> = None;
        let mut names: Vec<String> = Vec::new();
        for (i, raw) in text.lines().enumerate() {
            let n = i + 1;
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let (keyword, rest) = line.split_once(char::is_whitespace).unwrap_or((line, ""));
            let rest = rest.trim();
            let need_text = |what: &str| {
                if rest.is_empty() {
                    Err(err(n, format!("`{keyword}` needs {what} after it")))
                } else {
                    Ok(rest.to_string())
                }
            };
            if title.is_none() && keyword != "lesson" {
                return Err(err(
                    n,
                    "a lesson file starts with `lesson TITLE` (after any comments)".into(),
                ));
            }
            match keyword {
                "lesson" => {
                    if title.is_some() {
                        return Err(err(
                            n,
                            "a second `lesson` line; a file holds one lesson".into(),
                        ));
                    }
                    title = Some(need_text("the lesson's title")?);
                }
                "about" => {
                    if step.is_some() || !steps.is_empty() {
                        return Err(err(n, "`about` goes before the first step".into()));
                    }
                    about.push(need_text("a sentence")?);
                }
                "defaults" => {
                    if step.is_some() || !steps.is_empty() {
                        return Err(err(n, "`defaults` goes before the first step".into()));
                    }
                    let w = words(rest).map_err(|e| err(n, e))?;
                    RunFlags::try_parse_from(&w).map_err(|e| err(n, flag_error(&e)))?;
                    defaults.extend(w);
                }
                "step" => {
                    if let Some(p) = step.take() {
                        steps.push(finish(p, &names).map_err(|(l, m)| err(l, m))?);
                    }
                    step = Some(Partial {
                        line: n,
                        title: need_text("the step's title")?,
                        runs: Vec::new(),
                        show: None,
                        caption: Vec::new(),
                        question: None,
                    });
                }
                "run" | "show" | "caption" | "question" => {
                    let Some(p) = step.as_mut() else {
                        return Err(err(
                            n,
                            format!(
                                "`{keyword}` belongs to a step: put a `step TITLE` line before it"
                            ),
                        ));
                    };
                    match keyword {
                        "run" => {
                            let run = parse_run(rest, &defaults).map_err(|m| err(n, m))?;
                            if names.contains(&run.0) {
                                return Err(err(
                                    n,
                                    format!(
                                        "a run named `{}` already exists in this lesson; give each run its own name",
                                        run.0
                                    ),
                                ));
                            }
                            names.push(run.0.clone());
                            p.runs.push(RunSpec {
                                line: n,
                                name: run.0,
                                label: run.1,
                                torch: run.2.runtimes.as_deref() == Some(&[Runtime::Torch]),
                                overrides: run.2,
                            });
                        }
                        "show" => {
                            if p.show.is_some() {
                                return Err(err(
                                    n,
                                    "a second `show` line in this step; a step shows one thing"
                                        .into(),
                                ));
                            }
                            p.show = Some((n, parse_show(rest).map_err(|m| err(n, m))?));
                        }
                        "caption" => p.caption.push((n, need_text("a sentence")?)),
                        _ => {
                            if p.question.is_some() {
                                return Err(err(
                                    n,
                                    "a second `question` in this step; ask one".into(),
                                ));
                            }
                            p.question = Some(need_text("the question")?);
                        }
                    }
                }
                other => {
                    return Err(err(
                        n,
                        format!(
                            "unknown keyword `{other}`; a line starts with lesson, about, defaults, step, run, show, caption or question (# for a comment)"
                        ),
                    ));
                }
            }
        }
        if let Some(p) = step.take() {
            steps.push(finish(p, &names).map_err(|(l, m)| err(l, m))?);
        }
        let Some(title) = title else {
            return Err(err(
                0,
                "empty: a lesson file starts with `lesson TITLE`".into(),
            ));
        };
        if steps.is_empty() {
            return Err(err(
                0,
                "no step: add `step TITLE` with its runs, caption and question".into(),
            ));
        }
        Ok(Self {
            name: name.to_string(),
            origin: origin.to_string(),
            title,
            about: about.join(" "),
            steps,
        })
    }

    /// The run named `name`, anywhere in the lesson.
    #[must_use]
    pub fn run(&self, name: &str) -> Option<&RunSpec> {
        self.steps
            .iter()
            .flat_map(|s| &s.runs)
            .find(|r| r.name == name)
    }
}

/// `NAME "LABEL" FLAGS…` over the lesson's defaults.
fn parse_run(rest: &str, defaults: &[String]) -> Result<(String, String, PlanOverrides), String> {
    let mut w = words(rest)?.into_iter();
    let name = w.next().unwrap_or_default();
    if !is_name(&name) {
        return Err(format!(
            "`run` needs a name first (letters, digits, _ or -, starting with a letter), then \"the legend's words\", then the sweep's flags; found `{name}`"
        ));
    }
    let label = w
        .next()
        .filter(|l| !l.starts_with("--"))
        .ok_or_else(|| format!("run {name}: give the words its line has in the legend, quoted, after its name (run {name} \"with no_grad\" --model …)"))?;
    let flags: Vec<String> = defaults.iter().cloned().chain(w).collect();
    let parsed =
        RunFlags::try_parse_from(&flags).map_err(|e| format!("run {name}: {}", flag_error(&e)))?;
    let overrides = parsed.overrides().map_err(|e| format!("run {name}: {e}"))?;
    if overrides.model.is_none() {
        return Err(format!(
            "run {name} names no model: give --model here or in the lesson's `defaults` line"
        ));
    }
    Ok((name, label, overrides))
}

fn parse_show(rest: &str) -> Result<Show, String> {
    let w: Vec<&str> = rest.split_whitespace().collect();
    match w.as_slice() {
        ["plot"] => Ok(Show::Plot),
        ["parts"] => Ok(Show::Parts),
        ["timeline", what] => {
            let (run, batch) = match what.split_once('@') {
                Some((r, b)) => (
                    r,
                    Some(b.parse::<usize>().map_err(|_| {
                        format!("`show timeline {what}`: `{b}` is not a batch size")
                    })?),
                ),
                None => (*what, None),
            };
            Ok(Show::Timeline {
                run: run.to_string(),
                batch,
            })
        }
        _ => Err(format!(
            "`show {rest}`: a step shows `plot`, `parts` or `timeline RUN` (`timeline RUN@BATCH` for one batch)"
        )),
    }
}

/// Checks a step that has been read whole; names: the runs of the lesson so far.
fn finish(p: Partial, names: &[String]) -> Result<Step, (usize, String)> {
    if p.runs.is_empty() && p.caption.is_empty() {
        return Err((
            p.line,
            format!("step \"{}\" has neither a run nor a caption", p.title),
        ));
    }
    let (show_line, show) = p.show.unwrap_or((p.line, Show::Plot));
    if let Show::Timeline { run, .. } = &show
        && !p.runs.iter().any(|r| &r.name == run)
    {
        return Err((
            show_line,
            format!("`show timeline {run}`: this step has no run named `{run}`"),
        ));
    }
    let mut text = String::new();
    let mut first_line = p.line;
    for (k, (line, c)) in p.caption.iter().enumerate() {
        if k == 0 {
            first_line = *line;
        } else {
            text.push(' ');
        }
        text.push_str(c);
    }
    let caption = Template::parse(&text, names).map_err(|m| {
        let line = p
            .caption
            .iter()
            .find(|(_, c)| c.contains(&m.placeholder))
            .map_or(first_line, |(l, _)| *l);
        (line, m.message)
    })?;
    Ok(Step {
        line: p.line,
        title: p.title,
        runs: p.runs,
        show,
        caption,
        question: p.question,
    })
}

/// Where a lesson run keeps its journals: `DIR/<step>-<run>.jsonl`.
#[must_use]
pub fn journal_path(dir: &Path, step: usize, run: &str) -> PathBuf {
    dir.join(format!("step{}-{run}.jsonl", step + 1))
}
