//! The engine with the real worker process: boundaries, determinism, real weights, crashes,
//! cancel and resume.

use crate::common::{
    TempDir, capacity_for, contradiction_setup, faulty_worker, fixtures, folder_missing_a_shard,
    kill, main_thread_syscall, plan, run, worker,
};
use oomlab::catalog::ModelRef;
use oomlab::plan::PlanError;
use oomlab::plan::{DeviceKind, PlanField, PlanOverrides, Precision, Strategy};
use oomlab::report::{self, Failure, Outcome, Purpose};
use oomlab::search::{BoundaryStatus, Contradiction};
use oomlab::sweep::{StartError, Sweep, SweepEvent};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

fn tiny(name: &str) -> ModelRef {
    ModelRef::Catalog(name.into())
}

#[test]
fn auto_finds_the_exact_boundary_in_two_trials_where_binsearch_needs_nine() {
    let dir = TempDir::new("strategies");
    let cap = capacity_for("tiny-bert", 64, Precision::F32, 27, &dir);
    let mut found = Vec::new();
    for s in [Strategy::Auto, Strategy::Grid, Strategy::Binsearch] {
        let p = plan(
            tiny("tiny-bert"),
            &[64],
            &[Precision::F32],
            (1, 256),
            cap,
            s,
        );
        let (r, _) = run(p, &dir.join(&format!("{s}.jsonl")), &worker());
        let b = &r.boundaries[0];
        assert_eq!(b.status, BoundaryStatus::Exact, "{s}: {b:?}");
        let star = b.max_batch.unwrap();
        // Both sides of the boundary were measured by this strategy's own trials.
        let search: Vec<_> = r
            .trials
            .iter()
            .filter(|t| t.purpose == Purpose::Search)
            .collect();
        assert!(
            search
                .iter()
                .any(|t| t.batch == star && t.outcome == Outcome::Fit)
        );
        assert!(
            search
                .iter()
                .any(|t| t.batch == star + 1 && t.outcome == Outcome::Oom)
        );
        assert!(search.iter().all(|t| t.strategy == s));
        assert_eq!(b.trials_used, search.len());
        // An OOM carries the size of the refused request.
        assert!(
            search
                .iter()
                .filter(|t| t.outcome == Outcome::Oom)
                .all(|t| t.requested_bytes.unwrap() > 0)
        );
        found.push((s, star, b.trials_used));
    }
    eprintln!("trials per strategy: {found:?}");
    let (_, a_star, auto) = found[0];
    let (_, g_star, grid) = found[1];
    let (_, b_star, bin) = found[2];
    assert_eq!(a_star, g_star);
    assert_eq!(a_star, b_star);
    assert!(
        (16..=31).contains(&a_star),
        "designed capacity should land in 16..31, got {a_star}"
    );
    assert_eq!(grid, a_star + 1);
    // From the estimator's b*: the two trials that prove the boundary.
    assert_eq!(auto, 2, "auto used {auto}");
    assert_eq!(
        bin, 9,
        "Lightning's binsearch needs 9 trials for b* in 16..31"
    );
    assert!(auto * 3 <= bin);
}

#[test]
fn peaks_are_identical_to_the_byte_across_processes() {
    let dir = TempDir::new("determinism");
    let mut peaks = Vec::new();
    for i in 0..3 {
        let p = plan(
            tiny("tiny-llama"),
            &[32],
            &[Precision::F32],
            (1, 3),
            1 << 32,
            Strategy::Grid,
        );
        let (r, _) = run(p, &dir.join(&format!("run{i}.jsonl")), &worker());
        let v: Vec<(usize, u64, u64)> = r
            .trials
            .iter()
            .map(|t| (t.batch, t.peak_bytes.unwrap(), t.total_bytes.unwrap()))
            .collect();
        assert_eq!(v.len(), 3);
        peaks.push(v);
    }
    assert_eq!(peaks[0], peaks[1]);
    assert_eq!(peaks[1], peaks[2]);
}

/// On a GPU each trial gets a worker of its own (what a forward can reach there depends on what
/// ran before it in the process); the CPU shares one. The mechanism is the same on both: here it
/// runs on the CPU, where the figures must not change with it.
#[test]
fn a_fresh_worker_per_trial_measures_what_a_shared_worker_does() {
    let dir = TempDir::new("fresh");
    let p = plan(
        tiny("tiny-llama"),
        &[32],
        &[Precision::F32],
        (1, 3),
        1 << 32,
        Strategy::Grid,
    );
    let (shared, _) = run(p.clone(), &dir.join("shared.jsonl"), &worker());
    let fresh_worker = oomlab::worker::WorkerConfig {
        fresh_per_trial: true,
        ..worker()
    };
    let (fresh, events) = run(p, &dir.join("fresh.jsonl"), &fresh_worker);
    let figures = |r: &report::Results| -> Vec<(usize, Option<u64>, Option<u64>)> {
        r.trials
            .iter()
            .map(|t| (t.batch, t.peak_bytes, t.total_bytes))
            .collect()
    };
    assert_eq!(figures(&shared), figures(&fresh));
    let pids = |r: &report::Results| {
        r.trials
            .iter()
            .map(|t| t.worker_pid.unwrap())
            .collect::<std::collections::BTreeSet<_>>()
            .len()
    };
    assert_eq!(pids(&shared), 1, "{:?}", shared.trials);
    assert_eq!(pids(&fresh), 3, "{:?}", fresh.trials);
    let ready = events
        .iter()
        .filter(|e| matches!(e, SweepEvent::WorkerReady(_)))
        .count();
    assert_eq!(ready, 3, "one worker built per trial");
}

#[test]
fn bert_f16_peak_is_half_of_f32_up_to_dtype_independent_metadata() {
    let dir = TempDir::new("half");
    let p = plan(
        tiny("bert-base-uncased"),
        &[128],
        &[Precision::F32, Precision::F16],
        (1, 2),
        1 << 32,
        Strategy::Grid,
    );
    let (r, _) = run(p, &dir.join("half.jsonl"), &worker());
    for b in 1..=2 {
        let peak = |d| {
            r.trials
                .iter()
                .find(|t| t.batch == b && t.dtype == d && t.purpose == Purpose::Search)
                .and_then(|t| t.peak_bytes)
                .unwrap()
        };
        // Tensor data halves exactly; candle's per-tensor metadata (a few KiB, the same in both
        // precisions) is counted too, so f16 x 2 exceeds f32 by that much (measured: 4,736 B + 44 B
        // per sample at seq 128, 0.07 %).
        let (f16, f32) = (peak(Precision::F16), peak(Precision::F32));
        eprintln!(
            "batch {b}: f32 peak {f32}, f16 peak {f16}, 2*f16 - f32 = {}",
            (2 * f16).cast_signed() - f32.cast_signed()
        );
        assert!(2 * f16 >= f32, "batch {b}");
        assert!(
            (2 * f16 - f32) * 1000 <= f32,
            "batch {b}: f16 {f16} vs f32 {f32}"
        );
    }
    assert_eq!(r.weights_bytes["f32"], 108_891_648 * 4);
    assert_eq!(r.weights_bytes["f16"], 108_891_648 * 2);
}

/// Sum of the data sizes in a safetensors file's header.
fn safetensors_bytes(path: &std::path::Path) -> u64 {
    let data = std::fs::read(path).unwrap();
    let n = u64::from_le_bytes(data[..8].try_into().unwrap()) as usize;
    let header: serde_json::Value = serde_json::from_slice(&data[8..8 + n]).unwrap();
    header
        .as_object()
        .unwrap()
        .iter()
        .filter(|(k, _)| *k != "__metadata__")
        .map(|(_, v)| {
            let o = v["data_offsets"].as_array().unwrap();
            o[1].as_u64().unwrap() - o[0].as_u64().unwrap()
        })
        .sum()
}

#[test]
fn real_checkpoints_count_their_bytes_and_peak_like_synthetic_weights() {
    let dir = TempDir::new("real");
    for name in ["tiny-bert", "tiny-llama"] {
        let folder = fixtures().join("checkpoints").join(name);
        let file_bytes: u64 = std::fs::read_dir(&folder)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|p| p.extension().is_some_and(|x| x == "safetensors"))
            .map(|p| safetensors_bytes(&p))
            .sum();
        let real = plan(
            ModelRef::Folder(folder),
            &[16],
            &[Precision::F32],
            (1, 3),
            1 << 32,
            Strategy::Grid,
        );
        let synth = plan(
            tiny(name),
            &[16],
            &[Precision::F32],
            (1, 3),
            1 << 32,
            Strategy::Grid,
        );
        let (rr, ev) = run(real, &dir.join(&format!("{name}-real.jsonl")), &worker());
        let (rs, _) = run(synth, &dir.join(&format!("{name}-synth.jsonl")), &worker());
        assert_eq!(rr.weights_bytes["f32"], file_bytes, "{name}");
        assert_eq!(rs.weights_bytes["f32"], file_bytes, "{name}");
        assert!(
            ev.iter()
                .any(|e| matches!(e, SweepEvent::WorkerReady(w) if w.built.from_checkpoint))
        );
        let peaks = |r: &report::Results| {
            r.trials
                .iter()
                .map(|t| (t.batch, t.peak_bytes))
                .collect::<Vec<_>>()
        };
        assert_eq!(peaks(&rr), peaks(&rs), "{name}");
    }
}

#[test]
fn every_family_runs_real_forwards() {
    // The tiny configs cover every family oomlab reads, once each.
    let families: Vec<oomlab::catalog::Family> = crate::common::TINY_MODELS
        .iter()
        .map(|m| {
            oomlab::catalog::ModelSpec::resolve(&tiny(m))
                .unwrap()
                .family
        })
        .collect();
    assert_eq!(families, oomlab::catalog::Family::all().collect::<Vec<_>>());
    let dir = TempDir::new("families");
    for &name in crate::common::TINY_MODELS {
        let dtypes: &[Precision] =
            if matches!(name, "tiny-distilbert" | "tiny-mixtral" | "tiny-modernbert") {
                &[Precision::F32]
            } else {
                &[Precision::F32, Precision::Bf16]
            };
        let p = plan(
            tiny(name),
            &[8, 16],
            dtypes,
            (1, 2),
            1 << 32,
            Strategy::Grid,
        );
        let (r, _) = run(p, &dir.join(&format!("{name}.jsonl")), &worker());
        assert_eq!(r.trials.len(), 4 * dtypes.len(), "{name}");
        for t in &r.trials {
            assert_eq!(t.outcome, Outcome::Fit, "{name}: {t:?}");
            assert!(t.peak_bytes.unwrap() > 0);
        }
        // Longer sequences need more memory.
        let p8 = r
            .trials
            .iter()
            .find(|t| t.seq == 8 && t.batch == 2 && t.dtype == Precision::F32)
            .unwrap();
        let p16 = r
            .trials
            .iter()
            .find(|t| t.seq == 16 && t.batch == 2 && t.dtype == Precision::F32)
            .unwrap();
        assert!(p16.peak_bytes > p8.peak_bytes, "{name}");
        assert!(
            r.boundaries
                .iter()
                .all(|b| b.status == BoundaryStatus::AboveRange)
        );
    }
}

/// The journal's lines, each parsed as JSON (read back from disk, independently of oomlab).
fn journal_lines(path: &std::path::Path) -> Vec<serde_json::Value> {
    std::fs::read_to_string(path)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn ends_with_end_line(path: &std::path::Path) -> bool {
    journal_lines(path).last().unwrap()["type"] == "end"
}

#[test]
fn a_worker_killed_inside_the_forward_is_recorded_retried_and_the_sweep_finishes() {
    let dir = TempDir::new("kill");
    // bert-base at seq 128: a forward of batch 3 takes long enough (about half a second on one
    // thread) that the kill lands inside candle's forward itself, with no stall.
    let p = plan(
        tiny("bert-base-uncased"),
        &[128],
        &[Precision::F32],
        (1, 3),
        1 << 34,
        Strategy::Grid,
    );
    let sweep = Sweep::new(p, &dir.join("kill.jsonl")).unwrap();
    let cancel = Arc::new(AtomicBool::new(false));
    let mut syscall_at_kill = None;
    let r = sweep
        .run(&worker(), &cancel, &mut |e| {
            // TrialStarted comes when the worker has announced the measured forward.
            if let SweepEvent::TrialStarted {
                worker_pid,
                batch: 3,
                ..
            } = e
                && syscall_at_kill.is_none()
            {
                syscall_at_kill = Some(main_thread_syscall(worker_pid));
                kill(worker_pid);
            }
        })
        .unwrap();
    // The worker was computing, not waiting for a request on stdin (syscall 0, read).
    let at_kill = syscall_at_kill.expect("the trial at batch 3 started");
    eprintln!("worker's main thread when killed: {at_kill}");
    assert!(
        !at_kill.starts_with("0 "),
        "worker idle on stdin: {at_kill}"
    );
    let at3: Vec<_> = r.trials.iter().filter(|t| t.batch == 3).collect();
    assert_eq!(
        at3.len(),
        2,
        "killed trial recorded and retried once: {at3:?}"
    );
    assert_eq!(at3[0].outcome, Outcome::Failed);
    assert_eq!(at3[0].failure, Some(Failure::Killed));
    assert!(at3[0].reason.as_deref().unwrap().contains("signal 9"));
    assert_eq!(at3[1].outcome, Outcome::Fit);
    assert_eq!(r.boundaries[0].status, BoundaryStatus::AboveRange);
    // Every request produced exactly one record, and the journal has them all.
    let j = report::read_journal(&dir.join("kill.jsonl")).unwrap();
    assert_eq!(j.trials, r.trials);
}

#[test]
fn a_second_kill_marks_the_curve_incomplete() {
    let dir = TempDir::new("kill2");
    let p = plan(
        tiny("tiny-bert"),
        &[16],
        &[Precision::F32],
        (1, 3),
        1 << 32,
        Strategy::Grid,
    );
    let sweep = Sweep::new(p, &dir.join("kill2.jsonl")).unwrap();
    let cancel = Arc::new(AtomicBool::new(false));
    let r = sweep
        .run(&faulty_worker(400, &[]), &cancel, &mut |e| {
            if let SweepEvent::TrialStarted { worker_pid, .. } = e {
                kill(worker_pid);
            }
        })
        .unwrap();
    assert_eq!(r.trials.len(), 2);
    assert_eq!(r.boundaries[0].status, BoundaryStatus::Incomplete);
    assert!(r.boundaries[0].reason().unwrap().contains("killed twice"));
    assert!(r.incomplete);
    assert!(r.recommendation.pick.is_none());
}

#[test]
fn cancel_records_the_trial_in_flight_and_resume_finishes_without_repeats() {
    let dir = TempDir::new("cancel");
    let path = dir.join("c.jsonl");
    let p = plan(
        tiny("tiny-bert"),
        &[16, 32],
        &[Precision::F32],
        (1, 4),
        1 << 32,
        Strategy::Grid,
    );
    let sweep = Sweep::new(p.clone(), &path).unwrap();
    let cancel = Arc::new(AtomicBool::new(false));
    let c2 = Arc::clone(&cancel);
    let mut started = 0;
    let mut cancelled_flag = false;
    let r = sweep
        .run(&faulty_worker(300, &[]), &cancel, &mut |e| match e {
            SweepEvent::TrialStarted { .. } => {
                started += 1;
                if started == 3 {
                    c2.store(true, Ordering::Relaxed);
                }
            }
            SweepEvent::Finished { cancelled, .. } => cancelled_flag = cancelled,
            _ => {}
        })
        .unwrap();
    assert!(cancelled_flag);
    assert_eq!(r.trials.len(), 3);
    assert_eq!(r.trials[2].failure, Some(Failure::Cancelled));
    assert!(r.incomplete);
    assert!(!ends_with_end_line(&path));
    // Resume: fields that contradict the journal are refused, named as data...
    let contradiction = |given: PlanOverrides| match Sweep::resume(&path, &given) {
        Err(StartError::Plan(PlanError::Contradicts { differences, .. })) => {
            differences.iter().map(|d| d.field).collect::<Vec<_>>()
        }
        Err(e) => panic!("unexpected error {e}"),
        Ok(_) => panic!("a contradicting resume was accepted"),
    };
    let capacity = PlanOverrides {
        capacity_bytes: Some(1 << 30),
        ..PlanOverrides::default()
    };
    assert_eq!(contradiction(capacity), [PlanField::Capacity]);
    let device = PlanOverrides {
        device: Some(DeviceKind::Cuda { index: 0 }),
        ..PlanOverrides::default()
    };
    assert_eq!(contradiction(device), [PlanField::Device]);
    let threads = PlanOverrides {
        threads: Some(2),
        ..PlanOverrides::default()
    };
    assert_eq!(contradiction(threads), [PlanField::Threads]);
    // ...the same values, or none, continue it.
    let same = PlanOverrides {
        capacity_bytes: Some(p.capacity_bytes),
        device: Some(DeviceKind::Cpu),
        ..PlanOverrides::default()
    };
    let resumed = Sweep::resume(&path, &same).unwrap();
    let r2 = resumed
        .run(&worker(), &Arc::new(AtomicBool::new(false)), &mut |_| {})
        .unwrap();
    assert!(!r2.incomplete);
    let finished: Vec<_> = r2
        .trials
        .iter()
        .filter(|t| t.outcome != Outcome::Failed)
        .map(|t| (t.seq, t.batch, t.purpose))
        .collect();
    let mut dedup = finished.clone();
    dedup.sort_by_key(|x| (x.0, x.1, x.2 == Purpose::Search));
    dedup.dedup();
    assert_eq!(
        dedup.len(),
        finished.len(),
        "a finished trial was repeated: {finished:?}"
    );
    assert!(
        r2.boundaries
            .iter()
            .all(|b| b.status == BoundaryStatus::AboveRange)
    );
}

#[test]
fn a_torn_journal_tail_is_ignored_on_resume() {
    let dir = TempDir::new("torn");
    let path = dir.join("t.jsonl");
    let p = plan(
        tiny("tiny-bert"),
        &[16],
        &[Precision::F32],
        (1, 2),
        1 << 32,
        Strategy::Grid,
    );
    let (r, _) = run(p, &path, &worker());
    // Drop the end line and tear the last trial in half.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<&str> = text.lines().collect();
    lines.pop();
    let last = lines.pop().unwrap();
    let torn = format!("{}\n{}", lines.join("\n"), &last[..last.len() / 2]);
    std::fs::write(&path, torn).unwrap();
    let c = report::read_journal(&path).unwrap();
    assert!(c.torn_tail);
    assert_eq!(c.trials.len(), r.trials.len() - 1);
    let r2 = Sweep::resume(&path, &PlanOverrides::default())
        .unwrap()
        .run(&worker(), &Arc::new(AtomicBool::new(false)), &mut |_| {})
        .unwrap();
    assert_eq!(r2.trials.len(), r.trials.len());
    assert_eq!(r2.boundaries, r.boundaries);
    // The journal on disk is whole again: the torn half-line is gone, the trial it held was run
    // again and appended, and the sweep's end is recorded.
    let text = std::fs::read_to_string(&path).unwrap();
    assert!(text.ends_with('\n'));
    let lines = journal_lines(&path);
    let trials: Vec<_> = lines.iter().filter(|l| l["type"] == "trial").collect();
    assert_eq!(trials.len(), r.trials.len());
    assert_eq!(trials.last().unwrap()["batch"], 2);
    assert!(ends_with_end_line(&path));
    let back = report::read_journal(&path).unwrap();
    assert!(!back.torn_tail);
    assert_eq!(back.trials, r2.trials);
    // A damaged line in the middle is an error naming the line.
    let text = std::fs::read_to_string(&path).unwrap();
    let mut lines: Vec<String> = text.lines().map(String::from).collect();
    lines[1] = "{garbage".into();
    std::fs::write(&path, lines.join("\n") + "\n").unwrap();
    let e = report::read_journal(&path).unwrap_err().to_string();
    assert!(e.contains("line 2"), "{e}");
}

#[test]
fn a_checkpoint_that_does_not_match_its_config_is_rejected_with_the_tensor_and_shapes() {
    let dir = TempDir::new("mismatch");
    let src = fixtures().join("checkpoints/tiny-bert");
    let folder = dir.join("ck");
    std::fs::create_dir_all(&folder).unwrap();
    std::fs::copy(
        src.join("model.safetensors"),
        folder.join("model.safetensors"),
    )
    .unwrap();
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    // The error for the folder once its config.json has `from` replaced by `to`.
    let error_with = |from: &str, to: &str| {
        std::fs::write(folder.join("config.json"), cfg.replace(from, to)).unwrap();
        oomlab::catalog::ModelSpec::resolve(&ModelRef::Folder(folder.clone()))
            .unwrap_err()
            .to_string()
    };
    let e = error_with("\"intermediate_size\": 64", "\"intermediate_size\": 48");
    assert!(
        e.contains("bert.encoder.layer.0.intermediate.dense.weight"),
        "{e}"
    );
    assert!(e.contains("[48, 32]") && e.contains("[64, 32]"), "{e}");
    let e = error_with("\"num_hidden_layers\": 2", "\"num_hidden_layers\": 3");
    assert!(
        e.contains("encoder.layer.2.") && e.contains("no tensor"),
        "{e}"
    );
    // A shard named by the index but absent.
    let sharded = folder_missing_a_shard(&dir, "sharded");
    let e = oomlab::catalog::ModelSpec::resolve(&ModelRef::Folder(sharded))
        .unwrap_err()
        .to_string();
    assert!(e.contains("model-00002-of-00002.safetensors"), "{e}");
}

#[test]
fn an_oom_below_a_measured_fit_ends_non_monotone_in_results_and_journal() {
    let dir = TempDir::new("nonmono");
    let (p, star, confirmed) = contradiction_setup(&dir);
    // The same sweep on a "device" where the confirmation batch runs out of memory for real
    // (the worker's allocator refuses the forward), although b* fitted: memory not monotone.
    let path = dir.join("nonmono.jsonl");
    let sweep = Sweep::new(p, &path).unwrap();
    let r = sweep
        .run(
            &faulty_worker(0, &[confirmed]),
            &Arc::new(AtomicBool::new(false)),
            &mut |_| {},
        )
        .unwrap();
    let b = &r.boundaries[0];
    assert_eq!(b.status, BoundaryStatus::NonMonotone, "{b:?}");
    assert_eq!(
        b.contradiction,
        Some(Contradiction {
            fit_batch: star,
            oom_batch: confirmed
        })
    );
    assert!(b.max_batch.unwrap() < confirmed);
    let pick = r.recommendation.pick.as_ref().unwrap();
    assert!(pick.batch < confirmed, "{pick:?}");
    assert!(!r.incomplete);
    let oom = r.trials.iter().find(|t| t.batch == confirmed).unwrap();
    assert_eq!(
        (oom.outcome, oom.purpose),
        (Outcome::Oom, Purpose::Recommend)
    );
    assert!(oom.requested_bytes.unwrap() > 0);
    // The journal on disk says the same when replayed.
    let back = report::summarize(&report::read_journal(&path).unwrap());
    assert_eq!(back.boundaries, r.boundaries);
    let lines = journal_lines(&path);
    assert!(
        lines
            .iter()
            .any(|l| l["type"] == "trial" && l["batch"] == confirmed && l["outcome"] == "oom")
    );
}

#[test]
fn each_trial_carries_its_memory_timeline_with_the_peak_in_it() {
    let dir = TempDir::new("timeline");
    let p = plan(
        tiny("tiny-llama"),
        &[32],
        &[Precision::F32],
        (1, 2),
        1 << 32,
        Strategy::Grid,
    );
    let (r, _) = run(p, &dir.join("t.jsonl"), &worker());
    for t in &r.trials {
        let tl = t.timeline.as_ref().expect("a timeline");
        assert!(tl.events > 100, "{}", tl.events);
        assert!(!tl.live_bytes.is_empty() && tl.live_bytes.len() <= 400);
        // Reduced to a few hundred samples, the timeline still holds the trial's peak.
        assert_eq!(tl.live_bytes.iter().max().copied(), t.total_bytes);
        assert!(tl.live_bytes[0] >= t.live_before_bytes.unwrap());
    }
}
