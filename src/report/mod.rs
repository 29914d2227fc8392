//! Journal, results, recommendation and exports. No device, no threads.

mod export;
mod journal;
mod records;
mod summary;

pub use export::{
    ExportError, export, recommendation_text, trials_csv, write_atomic, write_results,
};
pub use journal::{
    Journal, JournalContents, JournalError, parse as parse_journal, read as read_journal,
};
pub use records::{
    BoundaryRecord, CurvePick, CurveRecommendation, Failure, Header, JournalLine, Outcome,
    PICK_RULE, Purpose, Recommendation, Results, TrialRecord, WorkerInfo,
};
pub use summary::{CurvePhase, curve_phase, summarize};

/// Opens a results file (`--json` output) or a journal, whichever `path` is.
pub fn open_results(path: &std::path::Path) -> Result<Results, String> {
    let text = std::fs::read_to_string(path)
        .map_err(|e| format!("cannot read {}: {e}; check the path", path.display()))?;
    if let Ok(r) = serde_json::from_str::<Results>(&text) {
        return Ok(r);
    }
    parse_journal(path, &text)
        .map(|c| summarize(&c))
        .map_err(|e| format!("{e} (expected an oomlab journal .jsonl or results .json)"))
}
