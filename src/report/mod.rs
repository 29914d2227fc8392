//! Journal, results, recommendation and exports. No device, no threads.

mod export;
mod journal;
mod records;
mod summary;

pub use export::{ExportError, export, write_atomic, write_results};
pub use journal::{
    Journal, JournalContents, JournalError, parse as parse_journal, read as read_journal,
};
pub use records::{
    BoundaryRecord, Built, CUDA_FIGURES, CurvePick, CurveRecommendation, Failure,
    HOST_LIMITED_PICK, Header, JournalLine, Outcome, PICK_RULE, Purpose, Recommendation, Results,
    Stop, TRAINING_NEEDS_MORE, Timeline, TimelineMark, TrialRecord, Versions, WorkerInfo,
};
pub use summary::{CurvePhase, TORCH_CPU_JUMP, curve_phase, summarize, trial_cap};

/// Reads back a results file (`--json`) or a journal, whichever `path` is; for a journal, its
/// contents too (a sweep shown from them can be resumed).
pub fn read_results(
    path: &std::path::Path,
) -> Result<(Option<JournalContents>, Results), JournalError> {
    let text = std::fs::read_to_string(path).map_err(|source| JournalError::Read {
        path: path.to_path_buf(),
        source,
    })?;
    if let Ok(r) = serde_json::from_str::<Results>(&text) {
        return Ok((None, r));
    }
    let contents = parse_journal(path, &text)?;
    let results = summarize(&contents);
    Ok((Some(contents), results))
}
