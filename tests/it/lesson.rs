//! Lessons headless: the list, a bad file's one error, captions written from the run's own
//! journal (a different capacity, different numbers), and the steps that need PyTorch without it.

use crate::common::{TempDir, bin};
use oomlab::report::{read_journal, summarize};
use std::path::Path;
use std::process::Command;

fn lesson(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(bin())
        .arg("lesson")
        .args(args)
        .output()
        .unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn lesson_without_a_name_lists_the_bundled_lessons_one_a_line() {
    let (code, out, _) = lesson(&[]);
    assert_eq!(code, 0);
    let names: Vec<&str> = out
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .collect();
    assert_eq!(
        names,
        ["classic-oom", "where-the-peak-is", "inference-vs-training"]
    );
}

#[test]
fn a_bad_lesson_file_is_one_error_naming_its_line() {
    let dir = TempDir::new("lesson-bad");
    let file = dir.join("bad.lesson");
    std::fs::write(
        &file,
        "lesson Bad\n\nstep One\nrun a \"x\" --model bert-tiny --batch 0..2\n",
    )
    .unwrap();
    let (code, out, err) = lesson(&[
        file.to_str().unwrap(),
        "--dir",
        dir.join("runs").to_str().unwrap(),
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains(&format!("{}, line 4: run a:", file.display())),
        "{err}"
    );
    assert_eq!(err.trim().lines().count(), 1, "{err}");
}

/// A one-step candle lesson at `capacity`: its caption, and the run's journal read back.
fn batch_lesson(dir: &TempDir, capacity: &str) -> (String, oomlab::report::Results) {
    let file = dir.join(&format!("batch-{capacity}.lesson"));
    std::fs::write(
        &file,
        format!(
            "lesson Batch\nstep The batch\nrun b \"candle\" --model tiny-bert --seq 64 --batch 1..64 --strategy binsearch --capacity {capacity}\n\
             caption largest {{b.bstar}}; each sample {{b.slope}}; at 4 {{b.total@4}}; {{b.total@4 / b.total@2}}x\nquestion Why?\n"
        ),
    )
    .unwrap();
    let runs = dir.join(&format!("runs-{capacity}"));
    let (code, out, err) = lesson(&[file.to_str().unwrap(), "--dir", runs.to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    let caption = out
        .lines()
        .find(|l| l.starts_with("largest"))
        .unwrap_or_else(|| panic!("no caption in {out}"))
        .to_string();
    assert!(out.contains("Question: Why?"), "{out}");
    let results = summarize(&read_journal(&runs.join("step1-b.jsonl")).unwrap());
    (caption, results)
}

fn caption_from(r: &oomlab::report::Results) -> String {
    let total = |b: usize| {
        r.trials
            .iter()
            .find(|t| t.batch == b && t.total_bytes.is_some())
            .and_then(|t| t.total_bytes)
            .unwrap()
    };
    format!(
        "largest {}; each sample {}; at 4 {}; {:.1}x",
        r.boundaries[0].max_batch.unwrap(),
        oomlab::plan::human_bytes((total(4) - total(2)) / 2),
        oomlab::plan::human_bytes(total(4)),
        total(4) as f64 / total(2) as f64
    )
}

#[test]
fn a_caption_carries_the_numbers_its_run_measured() {
    let dir = TempDir::new("lesson-caption");
    let (small, rs) = batch_lesson(&dir, "8MiB");
    let (large, rl) = batch_lesson(&dir, "12MiB");
    assert_eq!(small, caption_from(&rs));
    assert_eq!(large, caption_from(&rl));
    // Another capacity, another largest batch: the caption follows the run.
    assert_ne!(rs.boundaries[0].max_batch, rl.boundaries[0].max_batch);
    assert_ne!(small, large);
}

#[test]
fn without_pytorch_the_lesson_says_which_steps_need_it_and_runs_the_rest() {
    let dir = TempDir::new("lesson-no-torch");
    let runs = dir.join("runs");
    let missing = dir.join("no-python");
    for step in ["1", "4"] {
        let (code, out, err) = lesson(&[
            "classic-oom",
            "--step",
            step,
            "--python",
            missing.to_str().unwrap(),
            "--dir",
            runs.to_str().unwrap(),
        ]);
        assert_eq!(code, 0, "{err}");
        if step == "1" {
            assert!(
                out.contains("(not run: this step needs the PyTorch runtime"),
                "{out}"
            );
            assert!(out.contains(&missing.display().to_string()), "{out}");
            assert!(!Path::new(&runs.join("step1-infer.jsonl")).exists());
        } else {
            assert!(!out.contains("not run"), "{out}");
            assert!(runs.join("step4-bf16.jsonl").exists());
            assert!(!out.contains("(not measured)"), "{out}");
        }
    }
}

#[test]
fn a_step_outside_the_lesson_is_refused_naming_its_steps() {
    let (code, out, err) = lesson(&["classic-oom", "--step", "9"]);
    assert_eq!(code, 2, "{err}");
    assert!(out.is_empty(), "{out}");
    assert!(
        err.contains("--step 9: classic-oom has steps 1 to 6"),
        "{err}"
    );
}

#[test]
fn pytorch_estimator_flags_without_the_torch_runtime_are_refused() {
    let out = Command::new(bin())
        .args(["estimate", "-m", "bert-tiny", "--workload", "grad"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("add --runtime torch"), "{err}");
}
