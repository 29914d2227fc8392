//! Lessons in the window: each bundled lesson given from the journals of a run made for it
//! (tests/fixtures/lessons/NAME, read back, no worker), a snapshot of each step's first frame,
//! and the caption drawn as the runner wrote it from those journals.

use super::*;

/// The window, with no sweep and no estimator.
fn lesson_harness(dir: &TempDir) -> Harness<'static, OomLabApp> {
    harness_full(dir, None, worker(), true, Err(NO_DRIVER.to_string()), false)
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// Waits for the shown step's results, then draws.
fn wait_for_step(h: &mut Harness<'static, OomLabApp>) {
    while h.state().seen().lesson.is_some_and(|(_, s)| s.is_none()) {
        assert!(
            h.state_mut().wait_for_lesson(Duration::from_mins(1)),
            "the lesson's thread stopped"
        );
    }
    h.run_steps(3);
}

/// Gives lesson `name` from its fixture journals, step by step, a snapshot of each step's
/// first frame (one harness a test: kittest merges a harness's snapshot results).
fn give(name: &str) {
    {
        let dir = TempDir::new(&format!("gui-lesson-{name}"));
        let runs = dir.join("runs");
        copy_dir(&fixtures().join("lessons").join(name), &runs);
        let mut h = lesson_harness(&dir);
        h.run_steps(2);
        h.state_mut().open_lesson_in(name, runs);
        let steps = oomlab::lesson::Lesson::find(name).unwrap().steps.len();
        for i in 0..steps {
            if i > 0 {
                h.get_by_label("Next").click();
                h.run_steps(1);
            }
            wait_for_step(&mut h);
            let seen = h.state().seen();
            let (current, Some(step)) = seen.lesson.unwrap() else {
                panic!("no results for step {}", i + 1)
            };
            assert_eq!(current, i);
            assert!(step.failures.is_empty(), "{:?}", step.failures);
            assert!(step.skipped.is_none(), "{:?}", step.skipped);
            assert!(!step.caption.contains("(not measured)"), "{}", step.caption);
            let caption = step.caption.clone();
            // The caption drawn is the runner's, from the journals.
            h.get_by_label(&caption);
            // The folder's path differs from clone to clone, and so does its width: the mask
            // covers the widest it gets.
            let r = h.get_by_label_contains("journals in").rect();
            h.mask(egui::Rect::from_min_max(
                r.min,
                egui::pos2(r.min.x + 500.0, r.max.y),
            ));
            super::views::mask_frame_time(&mut h);
            h.snapshot(format!("lesson_{name}_{}", i + 1));
        }
    }
}

#[test]
fn classic_oom_lesson_step_snapshots() {
    give("classic-oom");
}

#[test]
fn where_the_peak_is_lesson_step_snapshots() {
    give("where-the-peak-is");
}

#[test]
fn inference_vs_training_lesson_step_snapshots() {
    give("inference-vs-training");
}

#[test]
fn every_bundled_lesson_has_its_snapshot_test() {
    let names: Vec<&str> = oomlab::lesson::BUNDLED.iter().map(|(n, _)| *n).collect();
    assert_eq!(
        names,
        ["classic-oom", "where-the-peak-is", "inference-vs-training"]
    );
}
