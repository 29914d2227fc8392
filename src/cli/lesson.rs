//! `oomlab lesson [NAME|PATH]`: a lesson headless, step by step: each step's runs, its caption
//! with the measured numbers, and its question.

use super::CliError;
use crate::lesson::runner::{LessonRunner, RunResult, StepResult};
use crate::lesson::{BUNDLED, Lesson};
use crate::plan::human_bytes;
use crate::worker::{WorkerConfig, WorkerFaults};
use clap::Args;
use std::fmt::Write as _;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Args)]
pub struct LessonArgs {
    /// A bundled lesson (without one, the list) or the path of a lesson file (the format is in
    /// the README, "Lessons").
    pub lesson: Option<String>,
    /// The PyTorch runtime's interpreter for the steps that use it. Default: as `oomlab sweep`
    /// finds it. Without PyTorch those steps say so and the rest run.
    #[arg(long)]
    pub python: Option<PathBuf>,
    /// The folder for the runs' journals (default: a new one under ~/.local/share/oomlab/runs).
    /// Runs already finished there are read back, not run again: run a lesson before class,
    /// then give it from its folder.
    #[arg(long)]
    pub dir: Option<PathBuf>,
    /// Run only this step (1-based). A caption naming an earlier step's run then says
    /// "(not measured)" for it.
    #[arg(long)]
    pub step: Option<usize>,
    #[command(flatten)]
    pub faults: WorkerFaults,
}

/// `oomlab lesson`
pub fn lesson(args: &LessonArgs) -> Result<(), CliError> {
    let Some(name) = &args.lesson else {
        for (name, _) in BUNDLED {
            let l = Lesson::find(name).map_err(|e| CliError::runtime(e.to_string()))?;
            out!("{name:<24} {} ({} steps)", l.title, l.steps.len());
        }
        return Ok(());
    };
    let lesson = Lesson::find(name).map_err(|e| CliError::usage(e.to_string()))?;
    if let Some(s) = args.step
        && (s == 0 || s > lesson.steps.len())
    {
        return Err(CliError::usage(format!(
            "--step {s}: {} has steps 1 to {}",
            lesson.name,
            lesson.steps.len()
        )));
    }
    let mut worker = WorkerConfig::current().map_err(CliError::from)?;
    worker.faults = args.faults.clone();
    let dir = args
        .dir
        .clone()
        .unwrap_or_else(|| LessonRunner::default_dir(&lesson.name));
    let mut runner =
        LessonRunner::new(lesson, worker, args.python.clone(), dir).map_err(CliError::usage)?;
    let cancel = Arc::new(AtomicBool::new(false));
    let on_signal = Arc::clone(&cancel);
    crate::signals::on_terminate(move || on_signal.store(true, Ordering::Relaxed))
        .map_err(|e| CliError::runtime(format!("cannot watch for Ctrl-C: {e}")))?;
    let l = &runner.lesson;
    out!("{} ({}, {} steps)", l.title, l.name, l.steps.len());
    if !l.about.is_empty() {
        out!("{}", l.about);
    }
    eprintln!("journals: {}", runner.dir.display());
    let steps: Vec<usize> = match args.step {
        Some(s) => vec![s - 1],
        None => (0..runner.lesson.steps.len()).collect(),
    };
    let mut failed = false;
    for i in steps {
        let step = &runner.lesson.steps[i];
        out!("");
        out!(
            "Step {} of {}: {}",
            i + 1,
            runner.lesson.steps.len(),
            step.title
        );
        let said = |line: String| eprintln!("{line}");
        let result = runner.run_step(i, &cancel, &said);
        print_step(&result);
        if let Some(q) = &runner.lesson.steps[i].question {
            out!("Question: {q}");
        }
        out!("({:.1} s)", result.seconds);
        failed |= !result.failures.is_empty();
        if cancel.load(Ordering::Relaxed) {
            return Err(CliError {
                code: 130,
                message: format!(
                    "cancelled; finished runs are kept: `oomlab lesson {} --dir {}` goes on from them",
                    runner.lesson.origin,
                    runner.dir.display()
                ),
            });
        }
    }
    if failed {
        return Err(CliError::runtime("some runs failed (said above)"));
    }
    Ok(())
}

fn print_step(r: &StepResult) {
    if let Some(why) = &r.skipped {
        out!("  (not run: {why})");
    }
    for run in &r.runs {
        out!("  {}", run_line(run));
    }
    for (name, why) in &r.failures {
        out!("  run {name} failed: {why}");
    }
    if !r.caption.is_empty() {
        out!("{}", r.caption);
    }
}

/// One run in a line: what it measured and the figures at its batches.
fn run_line(run: &RunResult) -> String {
    let fits = run.fits();
    let r = &run.results;
    let mut s = format!("{} ({}): ", run.name, run.label);
    match fits.as_slice() {
        [] => s.push_str("nothing fitted"),
        [t] => {
            let _ = write!(
                s,
                "batch {}: total {}, {} above what was live before it",
                t.batch,
                human_bytes(t.total_bytes.unwrap_or(0)),
                human_bytes(t.peak_bytes.unwrap_or(0))
            );
        }
        many => {
            let (a, b) = (many[0], many[many.len() - 1]);
            let _ = write!(
                s,
                "{} batches fitted, total {} at batch {} to {} at batch {}",
                many.len(),
                human_bytes(a.total_bytes.unwrap_or(0)),
                a.batch,
                human_bytes(b.total_bytes.unwrap_or(0)),
                b.batch
            );
        }
    }
    let ooms = run.ooms();
    if !ooms.is_empty() {
        let mut b: Vec<usize> = ooms.iter().map(|t| t.batch).collect();
        b.sort_unstable();
        b.dedup();
        let _ = write!(
            s,
            "; out of memory at batch {}",
            b.iter()
                .map(ToString::to_string)
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    let _ = write!(
        s,
        " [{}, {}]",
        r.plan.runtimes.first().map_or("candle", |rt| rt.label()),
        crate::presets::capacity_label(r.capacity_bytes, r.plan.gpu, !r.on_gpu())
    );
    s
}
