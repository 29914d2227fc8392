//! The desktop lab driven by `egui_kittest`: the real app, the real engine and worker.
//! No sleeps: between frames the test blocks on the engine's next event.

use crate::common::{TempDir, bin, fixtures};
use eframe::egui;
use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};
use oomlab::gui::{AppOptions, OomLabApp};
use oomlab::report::{Failure, Outcome};
use oomlab::search::BoundaryStatus;
use oomlab::worker::{STALL_ENV, WorkerConfig};
use std::path::PathBuf;
use std::time::Duration;

fn harness(
    dir: &TempDir,
    open: Option<PathBuf>,
    stall_ms: Option<u64>,
) -> Harness<'static, OomLabApp> {
    let mut worker = WorkerConfig {
        exe: bin(),
        threads: 1,
        env: Vec::new(),
    };
    if let Some(ms) = stall_ms {
        worker.env.push((STALL_ENV.into(), ms.to_string()));
    }
    let options = AppOptions {
        worker,
        open,
        journal_dir: Some(dir.0.clone()),
        persist: false,
    };
    Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .build_eframe(move |cc| OomLabApp::new(cc, options))
}

/// Types into the text field labelled `label`, replacing its content.
fn set_text(h: &mut Harness<'static, OomLabApp>, label: &str, text: &str) {
    h.get_by_label(label).set_text_value_accesskit(text);
    h.run_steps(2);
    // A local path is checked on a background thread: block on it, then redraw.
    while h.state().validating() {
        h.state_mut().wait_for_background(Duration::from_secs(30));
        h.run_steps(1);
    }
    h.run_steps(1);
}

/// Clicks the export "Write" button and waits for the background write to report.
fn write_export(h: &mut Harness<'static, OomLabApp>) {
    h.get_by_role_and_label(Role::Button, "Write").click();
    h.run_steps(1);
    assert!(h.state_mut().wait_for_background(Duration::from_secs(30)));
    h.run_steps(1);
}

/// Whether the Run button is disabled.
fn run_disabled(h: &Harness<'static, OomLabApp>) -> bool {
    h.get_by_role_and_label(Role::Button, "Run")
        .accesskit_node()
        .is_disabled()
}

/// Steps the harness until opened results are shown (blocking on the background reader).
fn wait_for_results(h: &mut Harness<'static, OomLabApp>) {
    while h.state().results().is_none() {
        h.state_mut().wait_for_background(Duration::from_secs(30));
        h.step();
        assert!(h.state().notice.is_none(), "{:?}", h.state().notice);
    }
    h.run_steps(2);
}

/// Steps the harness until the sweep ends, blocking on each engine event between frames.
fn run_to_end(h: &mut Harness<'static, OomLabApp>) {
    let mut events = 0;
    while h.state().is_running() {
        assert!(
            h.state_mut().wait_for_engine(Duration::from_mins(2)),
            "the engine went silent"
        );
        events += 1;
        h.step();
        assert!(events < 10_000);
    }
    h.run_steps(2);
}

#[test]
fn run_a_sweep_from_the_window_and_see_the_engines_boundary() {
    let dir = TempDir::new("gui-run");
    let mut h = harness(&dir, None, None);
    h.run_steps(2);
    // Choose a tiny bundled model from the catalog and a small capacity.
    h.get_by_label("Bundled model").click();
    h.run_steps(2);
    h.get_by_label_contains("tiny-bert  (bert").click();
    h.run_steps(2);
    assert_eq!(h.state().settings.model, "tiny-bert");
    set_text(&mut h, "Sequence lengths", "32");
    set_text(&mut h, "Batch range", "1..64");
    set_text(&mut h, "Capacity", "6MiB");
    h.state_mut().settings.f16 = false;
    h.state_mut().settings.threads = 1;
    h.run_steps(2);
    h.get_by_role_and_label(Role::Button, "Run").click();
    h.run_steps(1);
    assert!(h.state().is_running());
    run_to_end(&mut h);
    let r = h.state().results().expect("results shown").clone();
    assert!(!r.trials.is_empty());
    // The table holds every trial.
    for i in 1..=r.trials.len() {
        h.get_by_label(&format!("trial {i}"));
    }
    assert!(
        h.query_by_label(&format!("trial {}", r.trials.len() + 1))
            .is_none()
    );
    // The boundary shown equals the engine's (journal replay is the engine's own summary).
    let journal = h.state().journal_path().unwrap().clone();
    let engine = oomlab::report::summarize(&oomlab::report::read_journal(&journal).unwrap());
    assert_eq!(engine.boundaries, r.boundaries);
    let b = &r.boundaries[0];
    assert_eq!(b.status, BoundaryStatus::Exact, "{b:?}");
    let star = b.max_batch.unwrap().to_string();
    // The card's boundary row shows the engine's b*.
    h.get_by_label("seq 32 f32");
    assert!(
        h.query_all_by_label(&star).count() >= 1,
        "b* {star} not displayed"
    );
    let f = h.state().frame_stats();
    eprintln!("{}", f.summary());
    assert!(f.frames_during_sweep > 0);
}

#[test]
fn cancel_mid_sweep_keeps_a_consistent_resumable_state() {
    let dir = TempDir::new("gui-cancel");
    let mut h = harness(&dir, None, Some(200));
    h.state_mut().settings.model = "tiny-llama".into();
    h.state_mut().settings.seqs = "16".into();
    h.state_mut().settings.batch = "1..6".into();
    h.state_mut().settings.capacity = "64MiB".into();
    h.state_mut().settings.f16 = false;
    h.state_mut().settings.strategy = oomlab::plan::Strategy::Grid;
    h.state_mut().settings.threads = 1;
    h.run_steps(2);
    h.get_by_role_and_label(Role::Button, "Run").click();
    h.run_steps(1);
    // Wait for the first finished trial, then cancel while the next is in flight.
    while h.state().results().is_none_or(|r| r.trials.is_empty()) {
        assert!(h.state_mut().wait_for_engine(Duration::from_mins(1)));
        h.step();
    }
    h.get_by_role_and_label(Role::Button, "Cancel").click();
    h.run_steps(1);
    run_to_end(&mut h);
    let r = h.state().results().unwrap().clone();
    let last = r.trials.last().unwrap();
    assert_eq!(last.failure, Some(Failure::Cancelled), "{last:?}");
    assert!(r.incomplete);
    // Everything shown is in the journal.
    let journal = h.state().journal_path().unwrap().clone();
    assert_eq!(
        oomlab::report::read_journal(&journal).unwrap().trials,
        r.trials
    );
    // Resume from the window finishes the sweep without repeating finished trials.
    h.get_by_role_and_label(Role::Button, "Resume").click();
    h.run_steps(1);
    run_to_end(&mut h);
    let r = h.state().results().unwrap().clone();
    assert!(!r.incomplete, "{:?}", r.boundaries);
    let fits: Vec<usize> = r
        .trials
        .iter()
        .filter(|t| t.outcome == Outcome::Fit)
        .map(|t| t.batch)
        .collect();
    assert_eq!(fits, (1..=6).collect::<Vec<_>>());
}

#[test]
fn invalid_input_disables_run_with_the_reason() {
    let dir = TempDir::new("gui-invalid");
    let mut h = harness(&dir, None, None);
    h.state_mut().settings.model = "tiny-bert".into();
    h.state_mut().settings.seqs = "32".into();
    h.run_steps(2);
    assert!(!run_disabled(&h));
    set_text(&mut h, "Batch range", "0..4");
    assert!(run_disabled(&h));
    h.get_by_label_contains("batch sizes start at 1");
    set_text(&mut h, "Batch range", "1..4");
    set_text(&mut h, "Sequence lengths", "999");
    assert!(run_disabled(&h));
    h.get_by_label_contains("maximum of 64 positions");
    set_text(&mut h, "Sequence lengths", "32");
    set_text(&mut h, "Capacity", "10KiB");
    h.get_by_label_contains("raise --capacity");
    set_text(&mut h, "Capacity", "1GiB");
    set_text(&mut h, "Model id or path", "/no/such/folder");
    h.get_by_label_contains("unknown model");
    assert!(run_disabled(&h));
}

#[test]
fn reopened_results_export_and_bad_paths_get_clear_messages() {
    let dir = TempDir::new("gui-open");
    let mut h = harness(
        &dir,
        Some(fixtures().join("gui/tiny-llama-grid.jsonl")),
        None,
    );
    wait_for_results(&mut h);
    let r = h.state().results().unwrap().clone();
    assert_eq!(r.model, "tiny-llama");
    h.get_by_label_contains("batch 39 × seq 64 in f16");
    // Export through the typed path (works without a dialog service).
    let out = dir.join("rec.toml");
    h.state_mut().settings.model.clear();
    h.run_steps(1);
    let field = h.get_by_label("Export path");
    field.set_text_value_accesskit(&out.display().to_string());
    h.run_steps(1);
    write_export(&mut h);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("per_device_eval_batch_size = 39"), "{text}");
    // Writing again without "overwrite" is refused with the fix in the message.
    write_export(&mut h);
    assert!(
        h.state()
            .notice
            .as_deref()
            .unwrap()
            .contains("already exists")
    );
    // An unwritable path names the path and says what to do.
    let field = h.get_by_label("Export path");
    field.set_text_value_accesskit("/proc/oomlab/nope.toml");
    h.run_steps(1);
    write_export(&mut h);
    let n = h.state().notice.clone().unwrap();
    assert!(
        n.contains("/proc/oomlab/nope.toml") && n.contains("choose a folder"),
        "{n}"
    );
    // A file that is not oomlab results is refused clearly.
    h.state_mut()
        .open_results(fixtures().join("checkpoints/tiny-bert/config.json"));
    assert!(h.state_mut().wait_for_background(Duration::from_secs(30)));
    h.run_steps(1);
    assert!(
        h.state()
            .notice
            .as_deref()
            .unwrap()
            .contains("not an oomlab journal")
    );
}

#[test]
fn main_view_snapshot() {
    let dir = TempDir::new("gui-snapshot");
    // A relative path (tests run in the package root) keeps the picture the same in any clone.
    let mut h = harness(
        &dir,
        Some(PathBuf::from("tests/fixtures/gui/tiny-llama-grid.jsonl")),
        None,
    );
    wait_for_results(&mut h);
    // The frame-time readout changes from run to run.
    let rect = h.get_by_label_contains("ms/frame").rect();
    h.mask(rect);
    h.snapshot("main_view");
}
