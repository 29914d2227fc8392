//! What background threads tell the window: one channel carries every job's report, the
//! settings checker's and the machine monitor's (see `jobs`, `check`, `monitor`).

use super::form::Checked;
use super::settings::Settings;
use crate::measure::host::HostMemory;
use crate::measure::nvml::{GpuQueryError, GpuReport};
use crate::report::{ExportError, JournalContents, JournalError, Results};
use crate::worker::python::PythonProblem;
use std::path::PathBuf;

/// What a background job reports.
#[derive(Debug)]
pub enum BgMsg {
    ModelPicked(PathBuf),
    PythonPicked(PathBuf),
    ResultsPicked(PathBuf),
    LessonPicked(PathBuf),
    ExportPicked(PathBuf),
    PngPicked(PathBuf),
    Opened(
        PathBuf,
        Result<Box<(Option<JournalContents>, Results)>, JournalError>,
    ),
    Exported(Result<PathBuf, ExportError>),
    PngSaved(Result<PathBuf, ExportError>),
    /// A dialog closed without a choice; `service` tells whether a dialog could appear at all.
    DialogEmpty {
        what: &'static str,
        service: bool,
    },
    Dropped(Vec<Dropped>),
    /// Settings checked off the UI thread.
    Checked {
        key: Box<Settings>,
        checked: Box<Checked>,
    },
    /// This machine's memory, sampled (None: it cannot be read).
    Host(Option<HostMemory>),
    /// The models found in the local Hugging Face cache.
    CachedModels(Vec<crate::catalog::CatalogEntry>),
    /// The GPUs the NVIDIA driver reports, or why there are none.
    Gpus(Result<GpuReport, GpuQueryError>),
    /// The PyTorch runtime's interpreter: where it was found and its versions, or why not.
    PythonProbed(Result<String, PythonProblem>),
    /// The estimator for a shown sweep.
    Teach(
        Box<super::teach::TeachKey>,
        Result<Box<super::teach::TeachModel>, super::teach::TeachError>,
    ),
}

/// A file dropped onto the window, once looked at.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Dropped {
    /// A model folder or a config.json.
    Model(PathBuf),
    /// A results .json or journal .jsonl.
    Results(PathBuf),
    Unknown(PathBuf),
}
