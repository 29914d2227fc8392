//! The command line: argument types (clap) and the headless face over the engine.

/// `println!` for the command line's answers: a reader that has gone (`oomlab sweep … | head`)
/// ends the output quietly, never the command, so a sweep still finishes and writes its results.
/// (Rust ignores SIGPIPE, and `println!` panics on the failed write.)
macro_rules! out {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = writeln!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// `print!` the same way: part of a line.
macro_rules! out_part {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

use crate::measure::host::HostMemory;
pub use crate::plan::Flags;
use crate::plan::PlanError;
use crate::plan::{Precision, human_bytes, parse_bytes};
use crate::worker::{WorkerConfig, WorkerFaults};
use clap::{Args, Parser, Subcommand};

mod devices;
mod estimate;
mod estimate_torch;
mod explain;
mod lesson;
mod models;
mod sweep;
mod tables;
pub use devices::devices;
pub use estimate::EstimateArgs;
use std::path::PathBuf;
pub use sweep::{SweepArgs, check_output_path, sweep};
pub use tables::print_results;

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
    /// Explain an out-of-memory message from PyTorch, TensorFlow, JAX, PyTorch/XLA (GPU or TPU), CuPy, Numba or CUDA: every figure,
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
        /// config.json or folder): the advice then names the largest batches under the message's
        /// total capacity (or --gpu's). For a PyTorch message, the PyTorch estimator's: inference
        /// under `no_grad`, a forward without it, and a training step with `AdamW` (f32 and amp-bf16,
        /// with and without gradient checkpointing); with --runtime candle, candle's inference
        /// forward, and how to measure the training batch.
        #[arg(long, short)]
        model: Option<String>,
        /// Sequence length for --model. Default: 128 (or the model's maximum).
        #[arg(long, requires = "model")]
        seq: Option<usize>,
        /// Precision for --model's inference batches: f32, f16 or bf16 (the training line always
        /// answers for f32 and amp-bf16). Default: f32.
        #[arg(long, requires = "model")]
        dtype: Option<Precision>,
        /// The GPU (a preset, see `oomlab sweep --help`): its compute capability decides between
        /// bf16 and fp16 advice, and with --model its memory is the capacity. Default: the preset
        /// whose total capacity is the message's.
        #[arg(long, value_parser = explain::parse_gpu_preset)]
        gpu: Option<&'static crate::presets::GpuPreset>,
        /// Whose memory --model's batches are: torch (the PyTorch estimator, the default for a
        /// PyTorch message where it models the model) or candle (candle's estimate of one
        /// inference forward).
        #[arg(long, requires = "model")]
        runtime: Option<crate::plan::Runtime>,
    },
    /// Give a lesson headless: each step's small sweeps, a caption with the measured numbers,
    /// and a question for the class. Without a name, the bundled lessons.
    Lesson(Box<lesson::LessonArgs>),
    /// Open a results file (.json) or a journal (.jsonl) in the desktop lab.
    Open {
        /// The file written by `--json` or `--journal`.
        path: PathBuf,
    },
    /// The trial process (started by oomlab itself; reads JSON requests on stdin).
    #[command(hide = true)]
    Worker(WorkerFaults),
}

/// What to size: the flags `sweep` and `estimate` share (one definition, so they read alike).
#[derive(Debug, Args)]
pub struct ModelArgs {
    /// The model: a bundled id (see `oomlab models`), a Hugging Face id (org/name or
    /// org/name@revision, from the local HF cache or the Hub; see `sweep --weights`), a
    /// config.json, or a folder with config.json + *.safetensors (real weights are loaded and
    /// their bytes counted).
    #[arg(long, short)]
    pub model: Option<String>,
    /// Sequence lengths, comma-separated (a sweep measures one curve each per precision).
    /// Default: 128 (or the model's maximum if shorter).
    #[arg(long, value_delimiter = ',')]
    pub seq: Vec<usize>,
    /// Precisions, comma-separated: f32 (also fp32, float32), f16 (fp16, float16, half), bf16
    /// (bfloat16); with the torch runtime also amp-bf16 and amp-f16 (f32 weights under
    /// torch.autocast). Aliases of one precision count once. Default: f32.
    #[arg(long, value_delimiter = ',')]
    pub dtype: Vec<Precision>,
    /// Device capacity, e.g. 600MiB, 11GiB, 24GB (a unit is required: 1234B for bytes): what
    /// a sweep measures against (default 1GiB), and what `estimate` finds the largest batch
    /// under (`max_batch`).
    #[arg(long, value_parser = parse_bytes, allow_hyphen_values = true)]
    pub capacity: Option<u64>,
    /// A GPU's memory as the capacity: k80, gtx1080ti, t4, v100-16, rtx3090, rtx4090, l4, a10g,
    /// a100-40, a100-80, h100, h200. On the CPU a sweep's result is a CPU measurement against
    /// that capacity (no CUDA context or kernels in it), and is labelled so.
    #[arg(long, conflicts_with = "capacity", value_parser = crate::presets::find)]
    pub gpu: Option<&'static crate::presets::GpuPreset>,
    /// Threads for forward passes (the runtime's own memory grows with them). Default: every
    /// core (the worker runs niced).
    #[arg(long)]
    pub threads: Option<usize>,
}

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

impl From<crate::worker::LocateError> for CliError {
    fn from(e: crate::worker::LocateError) -> Self {
        Self::runtime(e.to_string())
    }
}

impl From<PlanError> for CliError {
    fn from(e: PlanError) -> Self {
        Self::usage(e.describe(&Flags))
    }
}

impl From<crate::sweep::StartError> for CliError {
    fn from(e: crate::sweep::StartError) -> Self {
        match e {
            crate::sweep::StartError::Plan(p) => p.into(),
            crate::sweep::StartError::Journal(j) => Self::runtime(sweep::journal_error(&j)),
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

/// Entry point for the binary: parses arguments and dispatches. Returns the exit code.
pub fn main_with(
    cli: Cli,
    gui: &dyn Fn(Option<PathBuf>) -> Result<(), crate::gui::GuiError>,
) -> i32 {
    let result =
        match cli.command {
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
            Some(Command::Lesson(args)) => lesson::lesson(&args),
            Some(Command::Models { gpu: None }) => models::models(),
            Some(Command::Models { gpu: Some(g) }) => WorkerConfig::current()
                .map_err(CliError::from)
                .and_then(|w| models::models_on_gpu(&g, &w)),
            Some(Command::Explain {
                text,
                file,
                json,
                model,
                seq,
                dtype,
                gpu,
                runtime,
            }) => {
                return explain::explain(
                    text,
                    file,
                    json,
                    model.map(|m| (m, seq, dtype)).as_ref(),
                    gpu,
                    runtime,
                );
            }
            Some(Command::Devices { json }) => {
                devices(json);
                Ok(())
            }
            Some(Command::Worker(faults)) => return crate::worker::run_worker(&faults),
            Some(Command::Estimate(args)) => WorkerConfig::current()
                .map_err(CliError::from)
                .and_then(|w| {
                    if args.runtime == Some(crate::plan::Runtime::Torch) {
                        estimate_torch::run(&args, &w)
                    } else {
                        estimate::run(&args, &w)
                    }
                }),
            Some(Command::Sweep(args)) => {
                WorkerConfig::current()
                    .map_err(CliError::from)
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
                    })
            }
        };
    match result {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("oomlab: {}", e.message);
            e.code
        }
    }
}
