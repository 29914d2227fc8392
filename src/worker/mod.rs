//! The trial process and its supervisor.

mod process;
pub mod protocol;
mod supervisor;

pub use process::{STALL_ENV, run as run_worker};
pub use protocol::{Ready, Request, Response, TrialMeasure};
pub use supervisor::{
    Death, Supervisor, TrialResult, WorkerConfig, classify_exit, default_threads,
};
