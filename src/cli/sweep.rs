//! `oomlab sweep`: its arguments, the checks before a long run, the forecast, progress on
//! stderr and the tables at the end (see `tables`).

use super::tables::print_results;
use super::{CliError, Flags, ModelArgs, host_line};
use crate::catalog::ModelRef;
use crate::plan::PlanError;
use crate::plan::{
    Attn, BatchRange, Confirm, DeviceKind, Optimizer, PlanOverrides, Runtime, Strategy, SweepPlan,
    Task, Workload, human_bytes, parse_headroom,
};
use crate::report::{self, JournalError, Results};
use crate::sweep::{self, Sweep, SweepEvent};
use crate::worker::{WorkerConfig, WorkerFaults};
use clap::Args;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

#[derive(Debug, Args)]
#[command(after_long_help = AFTER_SWEEP)]
pub struct SweepArgs {
    #[command(flatten)]
    pub what: ModelArgs,
    /// Batch range, both ends included, e.g. 1..256. Default: 1..256.
    #[arg(long, allow_hyphen_values = true)]
    pub batch: Option<BatchRange>,
    /// Memory kept free by the recommendation, e.g. 10% or 0.1. Default: 10%.
    #[arg(long, value_parser = parse_headroom, allow_hyphen_values = true)]
    pub headroom: Option<f64>,
    /// Search strategy: auto (start at the estimator's b*, measure b* and b*+1), grid (every batch up to the first OOM,
    /// for plots) or binsearch (Lightning's power-then-bisect, for comparison). Default: auto.
    #[arg(long)]
    pub strategy: Option<Strategy>,
    /// Which recommendations to confirm with a trial: pick (the overall pick, the default), all
    /// (every curve's) or none (all computed from the measured line, marked so).
    #[arg(long, default_value = "pick")]
    pub confirm: Confirm,
    /// Device to measure on: cpu (default). cuda:N needs a build with the `cuda` feature.
    #[arg(long)]
    pub device: Option<DeviceKind>,
    /// Runtimes, comma-separated (one curve each per seq and precision): candle (built in, the
    /// default) and/or torch (PyTorch + transformers in your Python, see --python).
    #[arg(long, value_delimiter = ',', help_heading = "PyTorch runtime")]
    pub runtime: Vec<Runtime>,
    /// The Python with torch and transformers for the torch runtime. Default: a `python` beside
    /// oomlab, the active virtualenv or conda env, then python3 on PATH.
    #[arg(long, help_heading = "PyTorch runtime")]
    pub python: Option<PathBuf>,
    /// What a trial runs: infer (a forward under `no_grad`, the default), grad (a forward that
    /// keeps the autograd graph, as a script without `no_grad` does) or train (forward, backward,
    /// optimizer step: the larger of the first and second step). grad and train need torch.
    #[arg(long, help_heading = "PyTorch runtime")]
    pub workload: Option<Workload>,
    /// The model's head (torch): base, sequence-classification, causal-lm, masked-lm. Default:
    /// inference as candle measures (encoders base, decoders causal-lm with logits for every
    /// position); training sequence-classification for encoders, causal-lm for decoders.
    #[arg(long, help_heading = "PyTorch runtime")]
    pub task: Option<Task>,
    /// transformers' attention (torch): sdpa or eager; without it the model's default (sdpa;
    /// eager for Gemma 2, for which transformers refuses sdpa).
    #[arg(long, help_heading = "PyTorch runtime")]
    pub attn: Option<Attn>,
    /// The training step's optimizer (torch): adamw (PyTorch's default implementation, the
    /// default) or sgd (momentum 0.9).
    #[arg(long, help_heading = "PyTorch runtime")]
    pub optimizer: Option<Optimizer>,
    /// Gradient checkpointing in training (torch), comma-separated: off, on, or off,on for both
    /// curves side by side. Default: off.
    #[arg(long, value_delimiter = ',', value_parser = crate::runtime::parse_on_off, help_heading = "PyTorch runtime")]
    pub gradient_checkpointing: Vec<bool>,
    /// Append every outcome to this JSONL journal (default: a new file under
    /// ~/.local/share/oomlab/runs, printed at start).
    #[arg(long)]
    pub journal: Option<PathBuf>,
    /// Continue a killed or cancelled sweep from its journal without repeating finished trials.
    /// Other arguments may be omitted; any that contradict the journal are refused.
    #[arg(long)]
    pub resume: Option<PathBuf>,
    /// Write the results document (trials, boundaries, recommendation) as JSON.
    #[arg(long)]
    pub json: Option<PathBuf>,
    /// Write the recommended configuration: .toml or .json (by extension), or .csv of all trials.
    /// Repeat it to write several (`--export rec.toml --export rec.json --export trials.csv`).
    #[arg(long)]
    pub export: Vec<PathBuf>,
    /// Overwrite existing --json/--export files.
    #[arg(long)]
    pub force: bool,
    /// Run even when this machine cannot hold the simulated capacity (the worker still stops
    /// itself before the machine runs out of memory; such trials are marked `host_memory`).
    #[arg(long)]
    pub allow_overcommit: bool,
    /// With a Hugging Face id (`--model org/name`): download its safetensors weights too
    /// (sharded ones included) when the local HF cache lacks them, and measure with them.
    /// Without it only config.json is fetched and the weights are zeros of the right shapes.
    #[arg(long)]
    pub weights: bool,
    #[command(flatten)]
    pub faults: WorkerFaults,
}

const AFTER_SWEEP: &str = "\
How the boundary is found:
  `auto` starts at the estimator's b* (`oomlab estimate`) on top of the worker's measured
  baseline and measures b* and b*+1: two trials when the estimate is right, one correction when it
  is a batch off; otherwise it follows the measured line (on the CPU memory grows monotonically
  with batch and, for f32/f16, exactly linearly) and bisects. No curve takes more than
  2·⌈log2(range)⌉ + 6 trials (grid: one per batch). Each boundary's status is exact, above_range,
  none_fits, non_monotone (a batch fitted at or above one that ran out of memory: the answer is
  then the largest fit below the lowest OOM) or incomplete.

The recommendation:
  Per (seq, dtype): the largest batch below every measured OOM whose total the measured line puts
  under capacity × (1 − headroom) — computed, marked so with the bytes it predicts. --confirm pick
  (default) measures only the overall pick, --confirm all every curve's, --confirm none none; a
  confirmation over the limit sends its curve to a measured search.
  Overall pick: the most tokens per step (batch × seq); ties go to the wider dtype (f32, then
  bf16, then f16), then to the longer sequence.

What is measured:
  Encoders: a forward over all positions. Decoders: the prefill with KV cache and logits for the
  last position only (what candle 0.11 computes); a Hugging Face evaluation forward computes
  logits for every position and needs more. With --runtime torch: the workload (--workload) in
  PyTorch, counted by PyTorch's profiler on the CPU (a trial runs to its end, then is compared
  with the capacity) and by torch.cuda's statistics on a GPU.

Example:
  oomlab sweep --model bert-base-uncased --seq 128,256 --dtype f32,f16,bf16 \\
               --batch 1..256 --capacity 1GiB --headroom 10% \\
               --json results.json --export recommended.toml";

impl SweepArgs {
    /// The plan fields given on the command line.
    pub fn overrides(&self) -> Result<PlanOverrides, CliError> {
        let model = match &self.what.model {
            Some(m) => Some(ModelRef::parse(m).map_err(|e| CliError::from(PlanError::Model(e)))?),
            None => None,
        };
        Ok(PlanOverrides {
            model,
            seqs: (!self.what.seq.is_empty()).then(|| self.what.seq.clone()),
            dtypes: (!self.what.dtype.is_empty()).then(|| self.what.dtype.clone()),
            batch: self.batch,
            capacity_bytes: self.what.capacity,
            gpu: self.what.gpu,
            headroom: self.headroom,
            strategy: self.strategy,
            device: self.device,
            threads: self.what.threads,
            runtimes: (!self.runtime.is_empty()).then(|| self.runtime.clone()),
            workload: self.workload,
            python: self.python.clone(),
            task: self.task,
            attn: self.attn,
            optimizer: self.optimizer,
            checkpointing: (!self.gradient_checkpointing.is_empty())
                .then(|| self.gradient_checkpointing.clone()),
        })
    }
}

/// A journal error in the command line's words.
pub(super) fn journal_error(e: &JournalError) -> String {
    match e {
        JournalError::Exists { path } => format!(
            "the journal {} already exists; pass --resume {} to continue it, or choose another --journal path",
            path.display(),
            path.display()
        ),
        JournalError::Write { path, source } => format!(
            "cannot write the journal {}: {source}; choose a writable path with --journal",
            path.display()
        ),
        other => other.to_string(),
    }
}

/// `--weights`: a Hugging Face id's safetensors into the local HF cache before the sweep.
fn fetch_weights(model: Option<&ModelRef>) -> Result<(), CliError> {
    match model {
        Some(ModelRef::Hub { repo, revision }) => {
            let id = crate::catalog::HubId {
                repo: repo.clone(),
                revision: revision.clone(),
            };
            eprintln!(
                "fetching {id}'s weights into {} (when missing)",
                crate::catalog::hub::cache_dir().display()
            );
            crate::catalog::hub::resolve(&id, true)
                .map(|_| ())
                .map_err(|e| CliError::from(PlanError::Model(e.into())))
        }
        Some(other) => Err(CliError::usage(format!(
            "--weights downloads a Hugging Face model's weights; {other} is not a Hugging Face id (a local folder's safetensors are read without it; bundled models have synthetic weights)"
        ))),
        None => Err(CliError::usage(
            "--weights needs --model with a Hugging Face id such as org/name",
        )),
    }
}

/// Checks before a long sweep that an output path can be written (so no result is lost at the end).
pub fn check_output_path(path: &Path, force: bool, flag: &str) -> Result<(), CliError> {
    if path.exists() && !force {
        return Err(CliError::usage(format!(
            "{} already exists; pass --force to overwrite it or choose another {flag} path",
            path.display()
        )));
    }
    if flag == "--export" {
        let ext = path
            .extension()
            .map(|e| e.to_string_lossy().to_ascii_lowercase())
            .unwrap_or_default();
        if !["toml", "json", "csv"].contains(&ext.as_str()) {
            return Err(CliError::usage(format!(
                "{}: --export needs a .toml, .json or .csv file name",
                path.display()
            )));
        }
    }
    let dir = path
        .parent()
        .filter(|d| !d.as_os_str().is_empty())
        .unwrap_or(Path::new("."));
    let probe = dir.join(format!(".oomlab-write-check-{}", std::process::id()));
    match std::fs::File::create(&probe) {
        Ok(_) => {
            let _ = std::fs::remove_file(&probe);
            Ok(())
        }
        Err(e) => Err(CliError::usage(format!(
            "cannot write {} for {flag}: {e}; choose a folder you can write to",
            path.display()
        ))),
    }
}

/// Refuses a capacity this machine cannot hold, unless `--allow-overcommit`.
fn check_host(
    plan: &SweepPlan,
    spec: &crate::catalog::ModelSpec,
    args: &SweepArgs,
    worker: &WorkerConfig,
) -> Result<(), CliError> {
    let host = worker.faults.host_memory();
    // Weights that cannot fit this machine are refused even with --allow-overcommit.
    crate::plan::check_weights_host(
        plan,
        &spec.name,
        &crate::plan::weights_per_dtype(spec),
        host.as_ref(),
    )?;
    if args.allow_overcommit {
        return Ok(());
    }
    crate::plan::check_host(plan, host.as_ref()).map_err(CliError::from)
}

/// `oomlab sweep`
pub fn sweep(args: &SweepArgs, worker: &WorkerConfig) -> Result<Results, CliError> {
    if let Some(p) = &args.json {
        check_output_path(p, args.force, "--json")?;
    }
    for (i, p) in args.export.iter().enumerate() {
        check_output_path(p, args.force, "--export")?;
        if args.export[..i].contains(p) || args.json.as_ref() == Some(p) {
            return Err(CliError::usage(format!(
                "{} is named twice among --json and --export; give each output its own file",
                p.display()
            )));
        }
    }
    let given = args.overrides()?;
    if args.weights {
        fetch_weights(given.model.as_ref())?;
    }
    let sweep = if let Some(resume) = &args.resume {
        if args.journal.is_some() {
            return Err(CliError::usage(
                "--journal and --resume both name a journal; pass only --resume JOURNAL to continue it",
            ));
        }
        let mut sweep = Sweep::resume(resume, &given)?;
        check_host(&sweep.plan, &sweep.spec, args, worker)?;
        say_python(sweep::probe_python(&mut sweep.plan, &worker.exe)?);
        sweep
    } else {
        let (mut plan, spec) = crate::plan::plan_from(&given)?;
        check_host(&plan, &spec, args, worker)?;
        say_python(sweep::probe_python(&mut plan, &worker.exe)?);
        let journal = args
            .journal
            .clone()
            .unwrap_or_else(|| sweep::default_journal_path(&spec.name));
        Sweep::with_spec(plan, spec, &journal)?
    };
    let cancel = Arc::new(AtomicBool::new(false));
    let on_signal = Arc::clone(&cancel);
    crate::signals::on_terminate(move || on_signal.store(true, Ordering::Relaxed))
        .map_err(|e| CliError::runtime(format!("cannot watch for Ctrl-C: {e}")))?;
    let mut face = Progress::new(std::io::stderr().is_terminal());
    // A resumed sweep has done part of its work: the forecast is for a fresh one.
    if args.resume.is_none() {
        face.pending_time = say_forecast(args, &sweep, worker, &cancel);
    }
    let (plan, spec) = (sweep.plan.clone(), sweep.spec.clone());
    let results = sweep
        .confirming(args.confirm.clone())
        .run(worker, &cancel, &mut |e| face.event(&e))
        .map_err(|e| match e {
            sweep::SweepError::Journal(j) => CliError::runtime(journal_error(&j)),
        })?;
    face.finish();
    // This sweep's pace sizes the next one's forecast.
    crate::forecast::record_pace(&plan, &spec, &results.trials);
    print_results(&results);
    let cancelled = cancel.load(Ordering::Relaxed);
    if let Some(p) = &args.json {
        report::write_results(&results, p, args.force)
            .map_err(|e| CliError::runtime(e.describe(&Flags)))?;
        eprintln!("results written to {}", p.display());
    }
    // Nothing to export when no model was built: `main_with` says why instead of "nothing fits".
    if results.unbuilt().is_none() {
        for p in &args.export {
            report::export(&results, p, args.force)
                .map_err(|e| CliError::runtime(e.describe(&Flags)))?;
            eprintln!("{} written to {}", export_what(p), p.display());
        }
    }
    if cancelled {
        return Err(CliError {
            code: 130,
            message: format!(
                "cancelled; finished trials are kept: continue with `oomlab sweep --resume {}`",
                face.journal
                    .as_deref()
                    .map_or_else(String::new, |p| p.display().to_string())
            ),
        });
    }
    Ok(results)
}

/// Says how many trials the sweep should take and about how long. Returns the forecast work
/// when the time must wait for the first trial.
fn say_forecast(
    args: &SweepArgs,
    sweep: &Sweep,
    worker: &WorkerConfig,
    cancel: &AtomicBool,
) -> Option<(f64, crate::catalog::ModelSpec)> {
    let f = crate::forecast::of_sweep(&sweep.plan, &sweep.spec, &args.confirm, worker, cancel)?;
    eprintln!("{}", f.text());
    (f.seconds.is_none() && f.work > 0.0).then(|| (f.work, sweep.spec.clone()))
}

/// What an export file holds, by its extension.
fn export_what(path: &Path) -> &'static str {
    match path.extension().and_then(|e| e.to_str()) {
        Some(e) if e.eq_ignore_ascii_case("csv") => "trials",
        _ => "recommendation",
    }
}

/// The PyTorch runtime's interpreter and versions, before any trial.
fn say_python(probed: Option<crate::worker::python::Probed>) {
    if let Some(p) = probed {
        eprintln!(
            "PyTorch runtime: {} (found by {}): {}",
            p.python.display(),
            p.how,
            p.versions.text()
        );
    }
}

/// Progress on stderr: a spinner line on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    n: usize,
    journal: Option<PathBuf>,
    /// Without a recorded pace: the work of every forecast trial, to time the sweep by its first
    /// trial (and the model, to measure that trial's work). None once said.
    pending_time: Option<(f64, crate::catalog::ModelSpec)>,
}

impl Progress {
    fn new(tty: bool) -> Self {
        let bar = tty.then(|| {
            let b = indicatif::ProgressBar::new_spinner();
            b.enable_steady_tick(std::time::Duration::from_millis(120));
            b
        });
        Self {
            bar,
            n: 0,
            journal: None,
            pending_time: None,
        }
    }

    fn line(&self, s: &str) {
        match &self.bar {
            Some(b) => b.println(s),
            None => eprintln!("{s}"),
        }
    }

    fn event(&mut self, e: &SweepEvent) {
        match e {
            SweepEvent::Started {
                journal,
                plan,
                model_name,
                family,
                resumed_trials,
                contents,
            } => {
                self.journal = Some(journal.clone());
                if plan.runtimes != [Runtime::Candle] {
                    self.line(&format!(
                        "runtimes {}; workload: {}{}",
                        plan.runtimes
                            .iter()
                            .map(|r| r.label())
                            .collect::<Vec<_>>()
                            .join(", "),
                        plan.workload.describe(),
                        if plan.uses_torch() {
                            format!(
                                "; PyTorch: attention {}{}",
                                plan.torch_attn(*family),
                                if plan.workload == Workload::Train {
                                    format!(", optimizer {}", plan.torch.optimizer)
                                } else {
                                    String::new()
                                }
                            )
                        } else {
                            String::new()
                        }
                    ));
                }
                self.line(&format!(
                    "sweeping {model_name}: seq {}, {}, batch {}, capacity {}, strategy {}, device {}",
                    plan.seqs
                        .iter()
                        .map(ToString::to_string)
                        .collect::<Vec<_>>()
                        .join(","),
                    plan.dtypes.iter().map(|d| d.name()).collect::<Vec<_>>().join(","),
                    plan.batch,
                    crate::presets::capacity_label(
                        plan.capacity_bytes,
                        plan.gpu,
                        matches!(plan.device, crate::plan::Device::Cpu { .. })
                    ),
                    plan.strategy,
                    plan.device
                ));
                if matches!(plan.device, crate::plan::Device::Cpu { .. }) && plan.gpu.is_some() {
                    self.line(&format!("({})", crate::presets::CPU_NOTE));
                }
                self.line(&format!("journal: {}", journal.display()));
                self.line(&host_line(contents.host.as_ref()));
                if *resumed_trials > 0 {
                    // Trial numbers continue from the journal's.
                    self.n = *resumed_trials;
                    self.line(&format!("resuming: {resumed_trials} finished trials kept"));
                }
            }
            SweepEvent::WorkerReady(w) => self.line(&format!(
                "worker ready ({}): weights {}, baseline {}, built in {:.1}s",
                w.build().label(),
                human_bytes(w.built.weights_bytes),
                human_bytes(w.built.baseline_bytes),
                w.built.build_seconds
            )),
            SweepEvent::LoadFailed { build, reason } => {
                self.line(&format!(
                    "cannot build the {} model: {reason}",
                    build.label()
                ));
            }
            SweepEvent::TrialStarted {
                curve,
                batch,
                purpose,
                ..
            } => {
                let what = format!("{curve} batch {batch} ({})", purpose.name());
                if let Some(b) = &self.bar {
                    b.set_message(format!("trial {}: {what}", self.n + 1));
                }
            }
            SweepEvent::TrialFinished(t) => {
                self.n += 1;
                let runtime = match t.runtime {
                    Runtime::Candle => "",
                    Runtime::Torch if t.checkpointing => "torch ckpt ",
                    Runtime::Torch => "torch ",
                };
                self.line(&format!(
                    "trial {:>3}  {runtime}seq {:>5} {:<4} batch {:>5}  {} {:.2}s",
                    self.n,
                    t.seq,
                    t.dtype,
                    t.batch,
                    t.outcome_text(),
                    t.seconds
                ));
                if t.outcome == report::Outcome::Fit
                    && t.seconds >= 0.05
                    && let Some((total, spec)) = self.pending_time.take()
                {
                    let rate = t.seconds / crate::forecast::work(&spec, t.batch, t.seq);
                    self.line(&format!(
                        "at this trial's pace the forecast trials take about {} in all (other precisions may run slower on a CPU)",
                        crate::forecast::duration(rate * total)
                    ));
                }
            }
            SweepEvent::CurveDone { .. } | SweepEvent::Finished { .. } => {}
        }
    }

    fn finish(&self) {
        if let Some(b) = &self.bar {
            b.finish_and_clear();
        }
    }
}
