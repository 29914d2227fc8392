//! The command line: argument types (clap) and the headless face over the engine.

use crate::catalog::{BUNDLED, ModelRef, ModelSpec};
use crate::models;
use crate::plan::{
    BatchRange, Precision, Strategy, SweepPlan, human_bytes, parse_bytes, parse_headroom,
};
use crate::report::{self, Results};
use crate::sweep::{self, PlanError, Sweep, SweepEvent};
use crate::worker::{WorkerConfig, default_threads};
use clap::{Args, Parser, Subcommand};
use std::io::IsTerminal;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// oomlab — find the exact out-of-memory boundary of a transformer with real forward passes.
///
/// With no command, opens the desktop lab. `oomlab sweep` runs the same engine headless.
/// Memory is the peak counted by oomlab's allocator during real candle forward passes on the
/// CPU, against a simulated capacity (the GPU you are sizing for).
#[derive(Debug, Parser)]
#[command(name = "oomlab", version, about, long_about)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// List the bundled models: id, family, parameters and weight bytes per precision.
    Models,
    /// Run a sweep: find, per (sequence length, precision), the largest batch that fits.
    Sweep(Box<SweepArgs>),
    /// Open a results file (.json) or a journal (.jsonl) in the desktop lab.
    Open {
        /// The file written by `--json` or `--journal`.
        path: PathBuf,
    },
    /// The trial process (started by oomlab itself; reads JSON requests on stdin).
    #[command(hide = true)]
    Worker,
}

#[derive(Debug, Args)]
#[command(after_long_help = AFTER_SWEEP)]
pub struct SweepArgs {
    /// Bundled model id (see `oomlab models`), a config.json, or a model folder
    /// (config.json + *.safetensors; real weights are loaded and their bytes counted).
    #[arg(long, short)]
    pub model: Option<String>,
    /// Sequence lengths, comma-separated (one curve each per precision). Default: 128 (or the
    /// model's maximum if shorter).
    #[arg(long, value_delimiter = ',')]
    pub seq: Vec<usize>,
    /// Precisions, comma-separated: f32, f16, bf16. Default: f32.
    #[arg(long, value_delimiter = ',')]
    pub dtype: Vec<Precision>,
    /// Batch range, both ends included, e.g. 1..256. Default: 1..256.
    #[arg(long)]
    pub batch: Option<BatchRange>,
    /// Simulated device capacity, e.g. 600MiB, 11GiB, 24GB. Default: 4GiB.
    #[arg(long, value_parser = parse_bytes)]
    pub capacity: Option<u64>,
    /// Memory kept free by the recommendation, e.g. 10% or 0.1. Default: 10%.
    #[arg(long, value_parser = parse_headroom)]
    pub headroom: Option<f64>,
    /// Search strategy: auto (probe, predict, confirm), grid (every batch up to the first OOM,
    /// for plots) or binsearch (Lightning's power-then-bisect, for comparison). Default: auto.
    #[arg(long)]
    pub strategy: Option<Strategy>,
    /// Threads the worker uses for forward passes. Default: every core (the worker runs niced).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Device to measure on. Only `cpu` in this build.
    #[arg(long)]
    pub device: Option<String>,
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
    #[arg(long)]
    pub export: Option<PathBuf>,
    /// Overwrite existing --json/--export files.
    #[arg(long)]
    pub force: bool,
}

const AFTER_SWEEP: &str = "\
How the boundary is found:
  Memory grows monotonically with batch and, for f32/f16, exactly linearly from the bytes held
  before the forward. `auto` measures the range minimum, predicts the largest batch b* under the
  capacity, and confirms that b* fits and b*+1 does not: typically 3 trials. It bisects when a
  prediction misses. Each boundary's status is exact, above_range, none_fits or incomplete.

The recommendation:
  Per (seq, dtype): the largest batch whose measured total stays under capacity × (1 − headroom),
  confirmed by one trial at that batch. Overall pick: the most tokens per step (batch × seq);
  ties go to the wider dtype (f32, then bf16, then f16), then to the longer sequence.

What is measured:
  Encoders: a forward over all positions. Decoders: the prefill with KV cache and logits for the
  last position only (what candle 0.11 computes); a Hugging Face evaluation forward computes
  logits for every position and needs more.

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

impl From<PlanError> for CliError {
    fn from(e: PlanError) -> Self {
        match e {
            PlanError::Journal(j) => Self::runtime(j),
            other => Self::usage(other),
        }
    }
}

/// `oomlab models`
pub fn models() -> Result<(), CliError> {
    println!(
        "{:<24} {:<11} {:>15} {:>11} {:>11} {:>11} {:>8}",
        "id", "family", "parameters", "f32", "f16", "bf16", "max seq"
    );
    for b in BUNDLED {
        let spec =
            ModelSpec::resolve(&ModelRef::Catalog(b.id.into())).map_err(CliError::runtime)?;
        let w = |p: Precision| human_bytes(models::weights_bytes(&spec, p.candle()));
        println!(
            "{:<24} {:<11} {:>15} {:>11} {:>11} {:>11} {:>8}{}",
            b.id,
            spec.family.name(),
            group(spec.dims.published_parameters(spec.family)),
            w(Precision::F32),
            w(Precision::F16),
            w(Precision::Bf16),
            spec.dims.max_positions,
            if b.tiny { "  (tiny, for tests)" } else { "" }
        );
    }
    println!(
        "\nparameters as published (BERT includes its pooler); weight bytes as candle holds them."
    );
    println!("--model also takes a config.json or a folder with config.json + *.safetensors.");
    Ok(())
}

fn group(n: u64) -> String {
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

/// Default capacity when none is given: 4 GiB, a small GPU.
pub const DEFAULT_CAPACITY: u64 = 4 << 30;

impl SweepArgs {
    fn any_plan_arg(&self) -> bool {
        self.model.is_some()
            || !self.seq.is_empty()
            || !self.dtype.is_empty()
            || self.batch.is_some()
            || self.capacity.is_some()
            || self.headroom.is_some()
            || self.strategy.is_some()
            || self.threads.is_some()
            || self.device.is_some()
    }

    /// The journal's plan with the arguments given now laid over it.
    pub fn overlay(&self, base: &SweepPlan) -> Result<SweepPlan, CliError> {
        let mut p = base.clone();
        if let Some(m) = &self.model {
            p.model = ModelRef::parse(m).map_err(CliError::usage)?;
        }
        if !self.seq.is_empty() {
            p.seqs.clone_from(&self.seq);
        }
        if !self.dtype.is_empty() {
            p.dtypes.clone_from(&self.dtype);
        }
        p.batch = self.batch.unwrap_or(p.batch);
        p.capacity_bytes = self.capacity.unwrap_or(p.capacity_bytes);
        p.headroom = self.headroom.unwrap_or(p.headroom);
        p.strategy = self.strategy.unwrap_or(p.strategy);
        p.threads = self.threads.unwrap_or(p.threads);
        if let Some(d) = &self.device {
            p.device.clone_from(d);
        }
        Ok(p)
    }

    /// The plan these arguments describe, with defaults filled in.
    pub fn plan(&self) -> Result<SweepPlan, CliError> {
        let model = self.model.as_deref().ok_or_else(|| {
            CliError::usage("no model given; pass --model bert-base-uncased (see `oomlab models`), a config.json or a model folder, or --resume JOURNAL")
        })?;
        let mut dtypes = if self.dtype.is_empty() {
            vec![Precision::F32]
        } else {
            self.dtype.clone()
        };
        dedup_keep_order(&mut dtypes);
        let model = ModelRef::parse(model).map_err(CliError::usage)?;
        let mut seqs = if self.seq.is_empty() {
            // 128, or the model's maximum when it is shorter.
            let max = ModelSpec::resolve(&model).map_or(128, |s| s.dims.max_positions);
            vec![128.min(max)]
        } else {
            self.seq.clone()
        };
        dedup_keep_order(&mut seqs);
        Ok(SweepPlan {
            model,
            seqs,
            dtypes,
            batch: self.batch.unwrap_or(BatchRange { min: 1, max: 256 }),
            capacity_bytes: self.capacity.unwrap_or(DEFAULT_CAPACITY),
            headroom: self.headroom.unwrap_or(0.1),
            strategy: self.strategy.unwrap_or_default(),
            device: self.device.clone().unwrap_or_else(|| "cpu".into()),
            threads: self.threads.unwrap_or_else(default_threads),
        })
    }
}

fn dedup_keep_order<T: PartialEq + Copy>(v: &mut Vec<T>) {
    let mut out: Vec<T> = Vec::with_capacity(v.len());
    for x in v.iter() {
        if !out.contains(x) {
            out.push(*x);
        }
    }
    *v = out;
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

static INTERRUPTED: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    INTERRUPTED.store(true, Ordering::Relaxed);
}

/// Ctrl-C / SIGTERM cancel the sweep after recording the trial in flight.
fn install_cancel(cancel: &Arc<AtomicBool>) {
    // SAFETY: the handler only stores to an atomic, which is async-signal-safe.
    unsafe {
        libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
        libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
    }
    let c = Arc::clone(cancel);
    let _ = std::thread::Builder::new()
        .name("oomlab-signal-watch".into())
        .spawn(move || {
            loop {
                if INTERRUPTED.load(Ordering::Relaxed) {
                    c.store(true, Ordering::Relaxed);
                    break;
                }
                std::thread::sleep(std::time::Duration::from_millis(50));
            }
        });
}

/// `oomlab sweep`
pub fn sweep(args: &SweepArgs, worker: &WorkerConfig) -> Result<Results, CliError> {
    if let Some(p) = &args.json {
        check_output_path(p, args.force, "--json")?;
    }
    if let Some(p) = &args.export {
        check_output_path(p, args.force, "--export")?;
    }
    let sweep = if let Some(resume) = &args.resume {
        if args.journal.is_some() {
            return Err(CliError::usage(
                "--journal and --resume both name a journal; pass only --resume JOURNAL to continue it",
            ));
        }
        let given = if args.any_plan_arg() {
            // Arguments given with --resume are laid over the journal's plan, so only those
            // actually given are compared with it.
            let journal = report::read_journal(resume).map_err(CliError::runtime)?;
            Some(args.overlay(&journal.header.plan)?)
        } else {
            None
        };
        Sweep::resume(resume, given.as_ref())?
    } else {
        let journal = args.journal.clone();
        Sweep::create(args.plan()?, |spec| {
            journal.unwrap_or_else(|| sweep::default_journal_path(&spec.name))
        })?
    };
    let cancel = Arc::new(AtomicBool::new(false));
    install_cancel(&cancel);
    let mut face = Progress::new(std::io::stderr().is_terminal());
    let results = sweep
        .run(worker, &cancel, &mut |e| face.event(&e))
        .map_err(CliError::runtime)?;
    face.finish();
    print_results(&results);
    let cancelled = cancel.load(Ordering::Relaxed);
    if let Some(p) = &args.json {
        report::write_results(&results, p, args.force).map_err(CliError::runtime)?;
        eprintln!("results written to {}", p.display());
    }
    if let Some(p) = &args.export {
        match report::export(&results, p, args.force) {
            Ok(()) => eprintln!("recommendation written to {}", p.display()),
            Err(e) => return Err(CliError::runtime(e)),
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

/// Progress on stderr: a spinner line on a terminal, plain lines otherwise.
struct Progress {
    bar: Option<indicatif::ProgressBar>,
    n: usize,
    journal: Option<PathBuf>,
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
                ..
            } => {
                self.journal = Some(journal.clone());
                self.line(&format!(
                    "sweeping {model_name}: seq {:?}, {} , batch {}, capacity {}, strategy {}, {} threads",
                    plan.seqs,
                    plan.dtypes.iter().map(|d| d.name()).collect::<Vec<_>>().join(","),
                    plan.batch,
                    human_bytes(plan.capacity_bytes),
                    plan.strategy,
                    plan.threads
                ));
                self.line(&format!("journal: {}", journal.display()));
                if *resumed_trials > 0 {
                    self.line(&format!("resuming: {resumed_trials} finished trials kept"));
                }
            }
            SweepEvent::WorkerReady(w) => self.line(&format!(
                "worker ready ({}): weights {}, baseline {}, built in {:.1}s",
                w.dtype,
                human_bytes(w.weights_bytes),
                human_bytes(w.baseline_bytes),
                w.build_seconds
            )),
            SweepEvent::LoadFailed { dtype, reason } => {
                self.line(&format!("cannot build the {dtype} model: {reason}"));
            }
            SweepEvent::TrialStarted {
                curve,
                batch,
                purpose,
                ..
            } => {
                let what = format!("{curve} batch {batch} ({purpose:?})").to_lowercase();
                if let Some(b) = &self.bar {
                    b.set_message(format!("trial {}: {what}", self.n + 1));
                }
            }
            SweepEvent::TrialFinished(t) => {
                self.n += 1;
                self.line(&format!(
                    "trial {:>3}  seq {:>5} {:<4} batch {:>5}  {} {:.2}s",
                    self.n,
                    t.seq,
                    t.dtype,
                    t.batch,
                    t.outcome_text(),
                    t.seconds
                ));
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
        "model {} ({}), device {}, threads {}, capacity {} ({} bytes), headroom {:.0}%",
        r.model,
        r.family,
        r.device,
        r.threads.map_or_else(|| "?".into(), |t| t.to_string()),
        human_bytes(r.capacity_bytes),
        r.capacity_bytes,
        r.headroom * 100.0
    );
    println!("forward: {}", r.forward);
    for (d, w) in &r.weights_bytes {
        println!("weights {d}: {w} bytes ({})", human_bytes(*w));
    }
    println!();
    println!(
        "{:>4} {:>6} {:<5} {:>6} {:<9} {:<9} {:<7} {:>13} {:>13} {:>13} {:>8}",
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
    for (i, t) in r.trials.iter().enumerate() {
        println!(
            "{:>4} {:>6} {:<5} {:>6} {:<9} {:<9} {:<7} {:>13} {:>13} {:>13} {:>8.3}",
            i + 1,
            t.seq,
            t.dtype.name(),
            t.batch,
            t.strategy.name(),
            format!("{:?}", t.purpose).to_lowercase(),
            format!("{:?}", t.outcome).to_lowercase(),
            opt_bytes(t.peak_bytes),
            opt_bytes(t.total_bytes),
            opt_bytes(t.requested_bytes),
            t.seconds
        );
    }
    println!();
    println!(
        "{:>6} {:<5} {:<9} {:>9} {:<12} {:>11} {:>11}",
        "seq", "dtype", "strategy", "max_batch", "status", "trials_used", "recommended"
    );
    for (b, c) in r.boundaries.iter().zip(&r.recommendation.curves) {
        println!(
            "{:>6} {:<5} {:<9} {:>9} {:<12} {:>11} {:>11}{}",
            b.seq,
            b.dtype.name(),
            b.strategy.name(),
            b.max_batch.map_or_else(|| "-".into(), |m| m.to_string()),
            b.status.name(),
            b.trials_used,
            c.batch.map_or_else(|| "-".into(), |m| m.to_string()),
            b.reason
                .as_ref()
                .map_or_else(String::new, |r| format!("  ({r})"))
        );
    }
    println!();
    match &r.recommendation.pick {
        Some(p) => println!(
            "recommended: batch {} × seq {} in {} = {} tokens/step, total {} ≤ limit {} (capacity − {:.0}% headroom)",
            p.batch,
            p.seq,
            p.dtype,
            p.tokens_per_step,
            p.total_bytes.map_or_else(|| "?".into(), human_bytes),
            human_bytes(r.recommendation.limit_bytes),
            r.headroom * 100.0
        ),
        None => println!(
            "no configuration fits under the headroom limit of {}",
            human_bytes(r.recommendation.limit_bytes)
        ),
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
        Some(Command::Models) => models(),
        Some(Command::Worker) => return crate::worker::run_worker(),
        Some(Command::Sweep(args)) => WorkerConfig::current(default_threads())
            .map_err(|e| CliError::runtime(format!("cannot locate the oomlab binary: {e}")))
            .and_then(|w| sweep(&args, &w).map(|_| ())),
    };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("oomlab: {}", e.message);
            e.code
        }
    }
}
