//! The command line: argument types (clap) and the headless face over the engine.

use crate::catalog::ModelRef;
use crate::measure::host::HostMemory;
use crate::plan::{
    Attn, BatchRange, Confirm, DeviceKind, Face, Optimizer, PlanField, PlanOverrides, Precision,
    Runtime, Strategy, SweepPlan, Task, Workload, human_bytes, parse_bytes, parse_headroom,
};
use crate::report::{self, JournalError, Results};
use crate::sweep::{self, PlanError, Sweep, SweepEvent};
use crate::worker::{WorkerConfig, WorkerFaults};
use clap::{Args, Parser, Subcommand};

mod estimate;
mod explain;
mod models;
pub use estimate::EstimateArgs;
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// oomlab — find the exact out-of-memory boundary of a transformer with real forward passes.
///
/// With no command, opens the desktop lab. `oomlab sweep` runs the same engine headless.
/// Memory is the peak of real runs — candle's forward (built in, counted by oomlab's allocator)
/// or, with `--runtime torch`, your PyTorch's inference, forward-with-graph or training step
/// (PyTorch's own count) — on the CPU against a simulated capacity (the GPU you are sizing
/// for), or on an NVIDIA GPU.
#[derive(Debug, Parser)]
#[command(name = "oomlab", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the bundled models: id, family, parameters and weight bytes per precision.
    Models {
        /// A GPU preset (see `oomlab sweep --help`): which bundled models fit, and the largest
        /// batch at seq 128 in each precision (estimated).
        #[arg(long)]
        gpu: Option<String>,
    },
    /// Run a sweep: find, per (sequence length, precision), the largest batch that fits.
    Sweep(Box<SweepArgs>),
    /// Estimate a forward's memory without running it: weights, activations, KV cache and
    /// overhead for each (batch, seq, dtype), and the largest batch under a capacity.
    Estimate(Box<EstimateArgs>),
    /// List NVIDIA GPUs as the driver reports them: memory, utilization, processes holding
    /// memory, driver and CUDA versions (without a driver: one line, and the CPU remains).
    Devices {
        /// Write the list as JSON on stdout.
        #[arg(long)]
        json: bool,
    },
    /// Explain an out-of-memory message from PyTorch, TensorFlow, JAX or CUDA: every figure,
    /// what it means, and the fixes in order of effect.
    Explain {
        /// The message (quote it), or `-` to read it from stdin (the default).
        text: Option<String>,
        /// Read the message from this file.
        #[arg(long, conflicts_with = "text")]
        file: Option<PathBuf>,
        /// Write the figures and advice as JSON on stdout.
        #[arg(long)]
        json: bool,
        /// The model that ran out of memory (bundled id, Hugging Face id org/name[@revision],
        /// config.json or folder): the advice then
        /// names candle's estimated largest inference batch under the message's total capacity
        /// (or --gpu's), and how to measure the training batch.
        #[arg(long, short)]
        model: Option<String>,
        /// Sequence length for --model. Default: 128 (or the model's maximum).
        #[arg(long, requires = "model")]
        seq: Option<usize>,
        /// Precision for --model: f32, f16 or bf16. Default: f32.
        #[arg(long, requires = "model")]
        dtype: Option<Precision>,
        /// The GPU (a preset, see `oomlab sweep --help`): its compute capability decides between
        /// bf16 and fp16 advice, and with --model its memory is the capacity. Default: the preset
        /// whose total capacity is the message's.
        #[arg(long, value_parser = explain::parse_gpu_preset)]
        gpu: Option<&'static crate::presets::GpuPreset>,
    },
    /// Open a results file (.json) or a journal (.jsonl) in the desktop lab.
    Open {
        /// The file written by `--json` or `--journal`.
        path: PathBuf,
    },
    /// The trial process (started by oomlab itself; reads JSON requests on stdin).
    #[command(hide = true)]
    Worker(WorkerFaults),
}

#[derive(Debug, Args)]
#[command(after_long_help = AFTER_SWEEP)]
pub struct SweepArgs {
    /// The model: a bundled id (see `oomlab models`), a Hugging Face id (org/name or
    /// org/name@revision, from the local HF cache or the Hub; see --weights), a config.json, or
    /// a folder with config.json + *.safetensors (real weights are loaded and their bytes counted).
    #[arg(long, short)]
    pub model: Option<String>,
    /// Sequence lengths, comma-separated (one curve each per precision). Default: 128 (or the
    /// model's maximum if shorter).
    #[arg(long, value_delimiter = ',')]
    pub seq: Vec<usize>,
    /// Precisions, comma-separated: f32 (also fp32, float32), f16 (fp16, float16, half), bf16
    /// (bfloat16); with the torch runtime also amp-bf16 and amp-f16 (f32 weights under
    /// torch.autocast). Aliases of one precision count once. Default: f32.
    #[arg(long, value_delimiter = ',')]
    pub dtype: Vec<Precision>,
    /// Batch range, both ends included, e.g. 1..256. Default: 1..256.
    #[arg(long, allow_hyphen_values = true)]
    pub batch: Option<BatchRange>,
    /// Simulated device capacity, e.g. 600MiB, 11GiB, 24GB (a unit is required: 1234B for
    /// bytes). Default: 1GiB.
    #[arg(long, value_parser = parse_bytes, allow_hyphen_values = true)]
    pub capacity: Option<u64>,
    /// A GPU's memory as the capacity: k80, gtx1080ti, t4, v100-16, rtx3090, rtx4090, l4, a10g,
    /// a100-40, a100-80, h100, h200. On the CPU the result is a CPU measurement against that
    /// capacity (no CUDA context or kernels in it), and is labelled so.
    #[arg(long, conflicts_with = "capacity", value_parser = parse_gpu)]
    pub gpu: Option<u64>,
    /// Memory kept free by the recommendation, e.g. 10% or 0.1. Default: 10%.
    #[arg(long, value_parser = parse_headroom, allow_hyphen_values = true)]
    pub headroom: Option<f64>,
    /// Search strategy: auto (start at the estimator's b*, measure b* and b*+1), grid (every batch up to the first OOM,
    /// for plots) or binsearch (Lightning's power-then-bisect, for comparison). Default: auto.
    #[arg(long)]
    pub strategy: Option<Strategy>,
    /// Threads the worker uses for forward passes. Default: every core (the worker runs niced).
    #[arg(long)]
    pub threads: Option<usize>,
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
    /// transformers' attention (torch): sdpa (its default) or eager.
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

/// A failure with the exit code it deserves: 2 for usage errors, 1 otherwise.
#[derive(Debug)]
pub struct CliError {
    pub code: i32,
    pub message: String,
}

impl CliError {
    fn usage(message: impl std::fmt::Display) -> Self {
        Self {
            code: 2,
            message: message.to_string(),
        }
    }
    fn runtime(message: impl std::fmt::Display) -> Self {
        Self {
            code: 1,
            message: message.to_string(),
        }
    }
}

/// The command line's words for the plan's fields: its flags.
pub struct Flags;

impl Face for Flags {
    fn control(&self, field: PlanField) -> &'static str {
        match field {
            PlanField::Model => "--model",
            PlanField::Seq => "--seq",
            PlanField::Dtype => "--dtype",
            PlanField::Batch => "--batch",
            PlanField::Capacity => "--capacity",
            PlanField::Headroom => "--headroom",
            PlanField::Strategy => "--strategy",
            PlanField::Device => "--device",
            PlanField::Threads => "--threads",
            PlanField::Runtime => "--runtime",
            PlanField::Workload => "--workload",
            PlanField::Python => "--python",
            PlanField::Task => "--task",
            PlanField::Attn => "--attn",
            PlanField::Optimizer => "--optimizer",
            PlanField::Checkpointing => "--gradient-checkpointing",
        }
    }
    fn model_list(&self) -> &'static str {
        "`oomlab models`"
    }
    fn overwrite(&self) -> &'static str {
        "pass --force to overwrite it"
    }
    fn allow_overcommit(&self) -> &'static str {
        "pass --allow-overcommit"
    }
}

impl From<PlanError> for CliError {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::Journal(j) => Self::runtime(journal_error(&j)),
            other => Self::usage(other.describe(&Flags)),
        }
    }
}

/// A journal error in the command line's words.
fn journal_error(e: &JournalError) -> String {
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

/// A `--gpu` preset's memory.
fn parse_gpu(text: &str) -> Result<u64, String> {
    crate::presets::find(text).map(|p| p.total_bytes)
}

/// `oomlab devices`: the GPUs NVML sees (exit 0 without a driver: the CPU is always there).
pub fn devices(json: bool) {
    let report = crate::measure::nvml::query();
    if json {
        let doc = match &report {
            Ok(r) => serde_json::json!({
                "driver_version": r.driver_version,
                "cuda_version": r.cuda_version,
                "gpus": r.gpus,
                "note": null,
            }),
            Err(why) => serde_json::json!({
                "driver_version": null,
                "cuda_version": null,
                "gpus": [],
                "note": why,
            }),
        };
        println!("{doc:#}");
        return;
    }
    let r = match report {
        Ok(r) => r,
        Err(why) => {
            println!("{why}");
            return;
        }
    };
    println!(
        "driver {}, CUDA {}; {} GPU{}",
        r.driver_version.as_deref().unwrap_or("?"),
        r.cuda_version.as_deref().unwrap_or("?"),
        r.gpus.len(),
        if r.gpus.len() == 1 { "" } else { "s" }
    );
    for g in &r.gpus {
        println!(
            "cuda:{} {} ({})
  memory: {} total, {} used, {} free; utilization {}",
            g.index,
            g.name,
            g.uuid.as_deref().unwrap_or("no uuid"),
            human_bytes(g.total_bytes),
            human_bytes(g.used_bytes),
            human_bytes(g.free_bytes),
            g.utilization_percent
                .map_or_else(|| "unknown".into(), |u| format!("{u}%"))
        );
        match &g.processes {
            Ok(list) if list.is_empty() => println!("  no process holds memory"),
            Ok(list) => {
                for p in list {
                    println!(
                        "  pid {:>7} holds {}",
                        p.pid,
                        p.used_bytes
                            .map_or_else(|| "(not reported)".into(), human_bytes)
                    );
                }
            }
            Err(why) => println!("  processes: {why}"),
        }
    }
}

/// One line about this machine's memory and the largest capacity it can simulate.
pub(super) fn host_line(host: Option<&HostMemory>) -> String {
    host.map_or_else(
        || "this machine's memory could not be read; capacities are not checked against it".into(),
        |h| {
            format!(
                "this machine: {}; the largest capacity it can simulate on the CPU is {}",
                h.describe(),
                human_bytes(h.largest_capacity_bytes())
            )
        },
    )
}

pub(super) fn group(n: u64) -> String {
    let s = n.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
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

impl SweepArgs {
    /// The plan fields given on the command line.
    pub fn overrides(&self) -> Result<PlanOverrides, CliError> {
        let model = match &self.model {
            Some(m) => Some(ModelRef::parse(m).map_err(|e| CliError::from(PlanError::Model(e)))?),
            None => None,
        };
        Ok(PlanOverrides {
            model,
            seqs: (!self.seq.is_empty()).then(|| self.seq.clone()),
            dtypes: (!self.dtype.is_empty()).then(|| self.dtype.clone()),
            batch: self.batch,
            capacity_bytes: self.capacity.or(self.gpu),
            headroom: self.headroom,
            strategy: self.strategy,
            device: self.device,
            threads: self.threads,
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
    sweep::check_weights_host(
        plan,
        &spec.name,
        &sweep::weights_per_dtype(spec),
        host.as_ref(),
    )?;
    if args.allow_overcommit {
        return Ok(());
    }
    sweep::check_host(plan, host.as_ref()).map_err(CliError::from)
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
        let (mut plan, spec) = sweep::plan_from(&given)?;
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
                                plan.torch.attn,
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
                        matches!(plan.device, crate::plan::Device::Cpu { .. })
                    ),
                    plan.strategy,
                    plan.device
                ));
                if matches!(plan.device, crate::plan::Device::Cpu { .. })
                    && crate::presets::matching(plan.capacity_bytes).is_some()
                {
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
                human_bytes(w.weights_bytes),
                human_bytes(w.baseline_bytes),
                w.build_seconds
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

fn opt_bytes(v: Option<u64>) -> String {
    v.map_or_else(|| "-".into(), |b| b.to_string())
}

/// The tables on stdout.
pub fn print_results(r: &Results) {
    println!(
        "model {} ({}), device {}, capacity {} ({} bytes), headroom {:.0}%",
        r.model,
        r.family,
        r.device,
        crate::presets::capacity_label(r.capacity_bytes, !r.on_gpu()),
        r.capacity_bytes,
        r.headroom * 100.0
    );
    if !r.on_gpu() && crate::presets::matching(r.capacity_bytes).is_some() {
        println!("({})", crate::presets::CPU_NOTE);
        for (d, base) in &r.baseline_bytes {
            if let Some(w) = r.weights_bytes.get(d) {
                println!(
                    "overhead beside the weights on this CPU ({d}): {} measured; on the GPU, add its CUDA context and workspace",
                    human_bytes(base.saturating_sub(*w))
                );
            }
        }
    }
    for runtime in &r.plan.runtimes {
        println!("what was sized: {}", r.sized(*runtime));
    }
    let torch = r.plan.uses_torch();
    if torch {
        println!(
            "PyTorch figures are PyTorch's own count (its profiler on the CPU, torch.cuda's statistics on a GPU)"
        );
        for (build, v) in &r.torch_versions {
            println!("{build}: {}", v.text());
        }
    }
    if r.plan.runtimes.contains(&Runtime::Candle) {
        println!("forward: {}", r.forward);
    }
    for (d, w) in &r.weights_bytes {
        println!("weights {d}: {w} bytes ({})", human_bytes(*w));
    }
    for (d, o) in &r.overhead_bytes {
        println!(
            "outside the pool {d}: overhead {} (context, kernels, cuBLAS workspace), ballast {}",
            human_bytes(*o),
            r.ballast_bytes
                .get(d)
                .copied()
                .map_or_else(|| "?".into(), human_bytes)
        );
    }
    if r.on_gpu() {
        println!("{}", report::CUDA_FIGURES);
    }
    println!();
    // With PyTorch in the plan each row names its runtime (and checkpointing).
    let rt = |runtime: Runtime, checkpointing: bool| -> String {
        if !torch {
            return String::new();
        }
        let ck = if checkpointing { "+ckpt" } else { "" };
        format!("{:<12} ", format!("{}{ck}", runtime.name()))
    };
    let rt_head = if torch {
        format!("{:<12} ", "runtime")
    } else {
        String::new()
    };
    let w = if torch { 8 } else { 5 };
    println!(
        "{:>4} {rt_head}{:>6} {:<w$} {:>6} {:<9} {:<9} {:<7} {:>13} {:>13} {:>13} {:>8}",
        "#",
        "seq",
        "dtype",
        "batch",
        "strategy",
        "purpose",
        "outcome",
        "peak_bytes",
        "total_bytes",
        "requested",
        "seconds"
    );
    let gpu = r.on_gpu();
    if gpu {
        println!(
            "{:>4} {:>6} {:<5} {:>6} {:>15} {:>15} {:>15} {:>15}",
            "#",
            "seq",
            "dtype",
            "batch",
            "pool_peak",
            "pool_reserved",
            "device_used",
            "nvml_process"
        );
        for (i, t) in r.trials.iter().enumerate() {
            println!(
                "{:>4} {:>6} {:<5} {:>6} {:>15} {:>15} {:>15} {:>15}",
                i + 1,
                t.seq,
                t.dtype.name(),
                t.batch,
                opt_bytes(t.pool_peak_bytes),
                opt_bytes(t.pool_reserved_bytes),
                opt_bytes(t.device_used_bytes),
                opt_bytes(t.process_bytes)
            );
        }
        println!();
    }
    for (i, t) in r.trials.iter().enumerate() {
        println!(
            "{:>4} {}{:>6} {:<w$} {:>6} {:<9} {:<9} {:<7} {:>13} {:>13} {:>13} {:>8.3}",
            i + 1,
            rt(t.runtime, t.checkpointing),
            t.seq,
            t.dtype.name(),
            t.batch,
            t.strategy.name(),
            t.purpose.name(),
            t.outcome.name(),
            opt_bytes(t.peak_bytes),
            opt_bytes(t.total_bytes),
            opt_bytes(t.requested_bytes),
            t.seconds
        );
    }
    println!();
    println!(
        "{rt_head}{:>6} {:<w$} {:<9} {:>9} {:<12} {:>11} {:>11}",
        "seq", "dtype", "strategy", "max_batch", "status", "trials_used", "recommended"
    );
    for (b, c) in r.boundaries.iter().zip(&r.recommendation.curves) {
        println!(
            "{}{:>6} {:<w$} {:<9} {:>9} {:<12} {:>11} {:>11}{}",
            rt(b.runtime, b.checkpointing),
            b.seq,
            b.dtype.name(),
            b.strategy.name(),
            b.max_batch.map_or_else(|| "-".into(), |m| m.to_string()),
            b.status.name(),
            b.trials_used,
            c.batch.map_or_else(
                || "-".into(),
                |m| if c.computed {
                    format!("{m}*")
                } else {
                    m.to_string()
                }
            ),
            b.reason
                .as_ref()
                .map_or_else(String::new, |r| format!("  ({r})"))
        );
    }
    if r.recommendation.curves.iter().any(|c| c.computed) {
        println!(
            "* computed from the measured line, not confirmed by a trial (--confirm all measures each)"
        );
    }
    println!();
    match &r.recommendation.pick {
        Some(p) => println!(
            "recommended: batch {} × seq {} in {}{} = {} tokens/step, {} ≤ limit {} (capacity − {:.0}% headroom)",
            p.batch,
            p.seq,
            p.dtype,
            match (torch, p.runtime, p.checkpointing) {
                (false, _, _) => String::new(),
                (true, Runtime::Torch, true) => " on PyTorch with gradient checkpointing".into(),
                (true, runtime, _) => format!(" on {}", runtime.label()),
            },
            p.tokens_per_step,
            match (p.total_bytes, p.predicted_bytes) {
                (Some(t), _) => format!("total {} measured", human_bytes(t)),
                (None, Some(pr)) => format!("total {} computed (not confirmed)", human_bytes(pr)),
                (None, None) => "total ?".into(),
            },
            human_bytes(r.recommendation.limit_bytes),
            r.headroom * 100.0
        ),
        // Nothing measured (every model build failed): saying that nothing fits would mislead.
        None if r.unbuilt().is_some() => {
            println!("no recommendation: no trial ran (the reason is above)");
        }
        None => println!(
            "no configuration fits under the headroom limit of {}",
            human_bytes(r.recommendation.limit_bytes)
        ),
    }
    if r.pick_is_host_limited() {
        println!("({})", report::HOST_LIMITED_PICK);
    }
    if r.recommendation.pick.is_some() && r.inference_only() {
        println!("({})", report::TRAINING_NEEDS_MORE);
    }
    let unfinished = r.unfinished_curves();
    if !unfinished.is_empty() {
        println!(
            "incomplete: {} not finished ({}); the pick is among the finished curves only",
            unfinished.len(),
            unfinished.join(", ")
        );
    }
    if r.floor_seconds > 0.0 {
        println!(
            "time in trials {:.1} s; the floor (b* and b*+1 of each curve) {:.1} s: {:.2}× the floor",
            r.trial_seconds,
            r.floor_seconds,
            r.trial_seconds / r.floor_seconds
        );
    }
}

/// Entry point for the binary: parses arguments and dispatches. Returns the exit code.
pub fn main_with(cli: Cli, gui: &dyn Fn(Option<PathBuf>) -> Result<(), String>) -> i32 {
    let result = match cli.command {
        None => gui(None).map_err(CliError::runtime),
        Some(Command::Open { path }) => {
            if path.is_file() {
                gui(Some(path)).map_err(CliError::runtime)
            } else {
                Err(CliError::usage(format!(
                    "{} does not exist; give the results .json or journal .jsonl of a sweep",
                    path.display()
                )))
            }
        }
        Some(Command::Models { gpu: None }) => models::models(),
        Some(Command::Models { gpu: Some(g) }) => WorkerConfig::current()
            .map_err(|e| CliError::runtime(format!("cannot locate the oomlab binary: {e}")))
            .and_then(|w| models::models_on_gpu(&g, &w)),
        Some(Command::Explain {
            text,
            file,
            json,
            model,
            seq,
            dtype,
            gpu,
        }) => {
            return explain::explain(
                text,
                file,
                json,
                model.map(|m| (m, seq, dtype)).as_ref(),
                gpu,
            );
        }
        Some(Command::Devices { json }) => {
            devices(json);
            Ok(())
        }
        Some(Command::Worker(faults)) => return crate::worker::run_worker(&faults),
        Some(Command::Estimate(args)) => WorkerConfig::current()
            .map_err(|e| CliError::runtime(format!("cannot locate the oomlab binary: {e}")))
            .and_then(|w| estimate::run(&args, &w)),
        Some(Command::Sweep(args)) => WorkerConfig::current()
            .map_err(|e| CliError::runtime(format!("cannot locate the oomlab binary: {e}")))
            .and_then(|w| {
                let w = WorkerConfig {
                    faults: args.faults.clone(),
                    ..w
                };
                // A sweep whose model could not be built failed, for a script as for a person.
                sweep(&args, &w).and_then(|r| match r.unbuilt() {
                    Some(why) => Err(CliError::runtime(format!("no trial ran: {why}"))),
                    None => Ok(()),
                })
            }),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("oomlab: {}", e.message);
            e.code
        }
    }
}
