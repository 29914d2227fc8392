//! Sweeps run in the window: tables against the journal, kills, cancels, bad input, PyTorch.

use super::*;

#[test]
fn run_a_sweep_and_the_drawn_tables_match_the_journal_on_disk() {
    let dir = TempDir::new("gui-run");
    let mut h = harness(&dir, None);
    h.run_steps(2);
    // Choose a tiny bundled model from the catalog and a small capacity.
    h.get_by_label_contains("Browse models").click();
    h.run_steps(2);
    h.get_by_label("Filter models")
        .set_text_value_accesskit("tiny-bert");
    h.run_steps(2);
    h.get_by_label_contains("tiny-bert  ").click();
    h.run_steps(2);
    assert_eq!(h.state().seen().settings.model, "tiny-bert");
    set_experiment(&mut h, "32, 64", "1..64", "6MiB");
    h.get_by_role_and_label(Role::Button, "Run").click();
    h.run_steps(1);
    assert!(h.state().seen().running);
    run_to_end(&mut h);
    let want = assert_screen_matches_journal(&h);
    assert_eq!(want.rows.len(), 2);
    assert!(want.rows.iter().all(|r| r[2] == "exact"), "{:?}", want.rows);
    // The event log said up front how many trials the search would take.
    shown(&h, "forecast: 2 curves, 5 trials if the estimator is right");
    let f = h.state().seen().frame_stats;
    eprintln!("{}", f.summary());
}

#[test]
fn killing_the_worker_inside_the_forward_shows_the_failed_trial_and_its_retry() {
    let dir = TempDir::new("gui-kill");
    let mut h = harness_with(&dir, None, faulty_worker(400, &[]), true);
    start(&mut h, "tiny-bert", Strategy::Grid, ["16", "1..3", "1GiB"]);
    // The window learns the worker's pid when it announces the forward of batch 2; kill it then.
    let mut killed = false;
    while h.state().seen().running {
        assert!(h.state_mut().wait_for_engine(Duration::from_mins(1)));
        h.step();
        if !killed && let Some((pid, 2)) = h.state().seen().trial_in_flight {
            // Inside the trial (the stall sits between announcing the forward and running it),
            // not waiting for a request on stdin.
            let at_kill = main_thread_syscall(pid);
            assert!(
                !at_kill.starts_with("0 "),
                "worker idle on stdin: {at_kill}"
            );
            kill(pid);
            killed = true;
        }
    }
    h.run_steps(2);
    assert!(killed);
    let want = assert_screen_matches_journal(&h);
    let at2: Vec<usize> = want
        .trials
        .iter()
        .enumerate()
        .filter(|(_, t)| t["batch"] == 2)
        .map(|(i, _)| i + 1)
        .collect();
    assert_eq!(at2.len(), 2, "the killed trial and its retry");
    let killed_row = row(&h, &format!("trial {}", at2[0]));
    assert_eq!(killed_row[4], "failed");
    assert!(
        killed_row[8].contains("killed by signal 9 (SIGKILL)"),
        "{killed_row:?}"
    );
    assert_eq!(row(&h, &format!("trial {}", at2[1]))[4], "fit");
    assert_eq!(row(&h, "seq 16 f32")[2], "above_range");
}

#[test]
fn an_oom_below_b_star_shows_non_monotone_in_the_window() {
    let dir = TempDir::new("gui-nonmono");
    let (p, star, confirmed) = contradiction_setup(&dir);
    let mut h = harness_with(&dir, None, faulty_worker(0, &[confirmed]), true);
    let cap = format!("{}B", p.capacity_bytes);
    start(&mut h, "tiny-bert", Strategy::Auto, ["64", "1..256", &cap]);
    run_to_end(&mut h);
    let want = assert_screen_matches_journal(&h);
    assert_eq!(want.rows[0][2], "non_monotone");
    h.get_by_label_contains(&format!(
        "seq 64 f32: batch {star} fitted but batch {confirmed} ran out of memory"
    ));
    let safe: usize = want.rows[0][4].parse().unwrap();
    assert!(safe < confirmed);
}

/// A model that cannot be built (the worker's test hook): the card says nothing was measured
/// and why, never that nothing fits.
#[test]
fn a_model_that_cannot_be_built_says_so_on_the_card() {
    let dir = TempDir::new("gui-unbuilt");
    let mut w = worker();
    w.faults.build_fails = Some("candle refused it".into());
    let mut h = harness_with(&dir, None, w, true);
    start(
        &mut h,
        "tiny-qwen3",
        Strategy::Auto,
        ["16", "1..8", "64MiB"],
    );
    run_to_end(&mut h);
    shown(
        &h,
        "Nothing was measured: building the qwen3 model failed: candle refused it",
    );
    assert_eq!(
        h.query_all_by_label_contains("No configuration fits")
            .count(),
        0
    );
}

#[test]
fn cancel_mid_sweep_keeps_a_consistent_resumable_state() {
    let dir = TempDir::new("gui-cancel");
    let mut h = harness_with(&dir, None, faulty_worker(200, &[]), true);
    start(
        &mut h,
        "tiny-llama",
        Strategy::Grid,
        ["16", "1..6", "64MiB"],
    );
    // Wait for the first finished trial, then cancel while the next is in flight.
    while h.state().seen().results.is_none_or(|r| r.trials.is_empty()) {
        assert!(h.state_mut().wait_for_engine(Duration::from_mins(1)));
        h.step();
    }
    h.get_by_role_and_label(Role::Button, "Cancel").click();
    h.run_steps(1);
    run_to_end(&mut h);
    let want = assert_screen_matches_journal(&h);
    let last = want.trials.last().unwrap();
    assert_eq!(last["failure"], "cancelled", "{last}");
    assert_eq!(row(&h, "seq 16 f32")[2], "incomplete");
    // The card says the sweep is unfinished.
    h.get_by_label_contains("Incomplete: 1 not finished (seq 16 f32)");
    // Resume from the window finishes the sweep without repeating finished trials.
    h.get_by_role_and_label(Role::Button, "Resume").click();
    h.run_steps(1);
    run_to_end(&mut h);
    let want = assert_screen_matches_journal(&h);
    let fits: Vec<u64> = want
        .trials
        .iter()
        .filter(|t| t["outcome"] == "fit")
        .map(|t| t["batch"].as_u64().unwrap())
        .collect();
    assert_eq!(fits, (1..=6).collect::<Vec<_>>());
    assert_eq!(row(&h, "seq 16 f32")[2], "above_range");
    // The pick is the top of the range, flagged so; the sweep is no longer incomplete. The card
    // says what was sized, and that it is no training batch.
    h.get_by_label_contains("Every batch tried fits, up to 6");
    h.get_by_label_contains("candle · one inference forward (no_grad) · measured on this CPU");
    h.get_by_label_contains("this is an inference batch");
    assert!(h.query_by_label_contains("Incomplete:").is_none());
}

#[test]
fn invalid_input_disables_run_with_the_reason_in_the_windows_words() {
    let dir = TempDir::new("gui-invalid");
    let mut h = harness(&dir, None);
    h.state_mut().settings_mut().model = "tiny-bert".into();
    h.state_mut().settings_mut().seqs = "32".into();
    settle(&mut h);
    assert!(!run_disabled(&h));
    set_text(&mut h, "Batch range", "0..4");
    assert!(run_disabled(&h));
    h.get_by_label_contains("the Batch range field: batch sizes start at 1");
    set_text(&mut h, "Batch range", "1..4");
    assert!(!run_disabled(&h));
    set_text(&mut h, "Sequence lengths", "999");
    assert!(run_disabled(&h));
    h.get_by_label_contains("maximum of 64 positions");
    h.get_by_label_contains("choose 64 or less in the Sequence lengths field");
    set_text(&mut h, "Sequence lengths", "32");
    // tiny-bert's f32 weights are larger than 10 KiB.
    set_text(&mut h, "Capacity", "10KiB");
    assert!(run_disabled(&h));
    h.get_by_label_contains("raise the Capacity field above");
    assert!(
        h.query_by_label_contains("--").is_none(),
        "a flag name in the window"
    );
    set_text(&mut h, "Capacity", "1GiB");
    assert!(!run_disabled(&h));
    set_text(&mut h, "Model id or path", "/no/such/folder");
    h.get_by_label_contains("no such file or folder: /no/such/folder");
    assert!(run_disabled(&h));
    set_text(&mut h, "Model id or path", "no-such-model");
    h.get_by_label_contains("unknown model");
    h.get_by_label_contains("the Bundled model list");
    assert!(run_disabled(&h));
}

#[test]
fn the_runtime_picker_shows_pytorch_settings_only_where_they_apply() {
    let dir = TempDir::new("gui-runtime");
    let mut h = harness(&dir, None);
    h.state_mut().settings_mut().model = "tiny-bert".into();
    h.state_mut().settings_mut().seqs = "32".into();
    settle(&mut h);
    assert!(!run_disabled(&h));
    // candle alone: nothing of PyTorch's is drawn.
    for l in [
        "Workload",
        "Python",
        "Optimizer",
        "Gradient checkpointing",
        "amp-bf16",
    ] {
        assert!(h.query_by_label(l).is_none(), "{l} drawn without PyTorch");
    }
    h.get_by_role_and_label(Role::CheckBox, "PyTorch").click();
    settle(&mut h);
    h.get_by_label("Python");
    h.get_by_label("amp-bf16");
    h.get_by_role_and_label(Role::RadioButton, "grad");
    assert!(
        h.query_by_label("Optimizer").is_none(),
        "the optimizer belongs to training"
    );
    h.get_by_role_and_label(Role::RadioButton, "train").click();
    settle(&mut h);
    h.get_by_label("Optimizer");
    h.get_by_label("Gradient checkpointing");
    // Both runtimes ticked and a training step: candle cannot, and Run says so in the window's words.
    assert!(run_disabled(&h));
    h.get_by_label_contains("the candle runtime runs inference forwards only");
    h.get_by_label_contains("choose torch alone in the Runtime boxes");
    h.get_by_role_and_label(Role::CheckBox, "candle").click();
    settle(&mut h);
    assert!(!run_disabled(&h));
    // Checkpointing on and off: two curves in the plan Run would start.
    // (Below the panel's fold at this size: set as a click would.)
    h.state_mut().settings_mut().checkpointing_on = true;
    settle(&mut h);
    let plan = h.state().seen().checked_plan.expect("a plan");
    assert_eq!(plan.curves().len(), 2);
    assert!(
        plan.curves()
            .iter()
            .all(|c| c.runtime == oomlab::plan::Runtime::Torch)
    );
    assert_eq!(plan.workload, oomlab::plan::Workload::Train);
}

/// A new user's PyTorch run: Runtime PyTorch, Workload train, checkpointing off and on; both
/// curves drawn in the boundary table, the card says what was sized, the export is Trainer's.
#[test]
fn a_pytorch_training_sweep_in_the_window_draws_both_checkpointing_curves_and_exports() {
    let Some(py) = crate::torch::torch_python() else {
        return;
    };
    let dir = TempDir::new("gui-torch");
    let mut h = harness(&dir, None);
    {
        let s = h.state_mut().settings_mut();
        s.model = "tiny-llama".into();
        s.candle = false;
        s.torch = true;
        s.python = py.display().to_string();
        s.workload = oomlab::plan::Workload::Train;
        s.checkpointing_on = true;
        s.strategy = Strategy::Grid;
    }
    set_experiment(&mut h, "64", "1..2", "1GiB");
    assert!(!run_disabled(&h));
    h.get_by_role_and_label(Role::Button, "Run").click();
    h.run_steps(1);
    run_to_end(&mut h);
    // Both curves, read from the drawn boundary table (grid up to the range's top: 2).
    for curve in ["torch seq 64 f32", "torch seq 64 f32 ckpt"] {
        let cells = row(&h, curve);
        assert_eq!(cells[1], "2", "{curve}: {cells:?}");
        assert_eq!(cells[2], "above_range", "{curve}: {cells:?}");
    }
    shown(&h, "PyTorch");
    shown(&h, "one training step (forward, backward, optimizer step)");
    let out = dir.join("rec.toml");
    h.get_by_label("Export path")
        .set_text_value_accesskit(&out.display().to_string());
    h.run_steps(1);
    write_export(&mut h);
    let text = std::fs::read_to_string(&out).unwrap();
    let doc: toml::Value = toml::from_str(&text).unwrap();
    let hf = &doc["huggingface"];
    assert_eq!(
        hf["per_device_train_batch_size"].as_integer(),
        Some(2),
        "{text}"
    );
    assert_eq!(doc["oomlab"]["runtime"].as_str(), Some("torch"), "{text}");
    assert!(hf.get("per_device_eval_batch_size").is_none(), "{text}");
}

#[test]
fn without_a_checker_thread_a_path_gets_an_error_not_a_stuck_check() {
    let dir = TempDir::new("gui-nochecker");
    let mut h = harness_with(&dir, None, worker(), false);
    h.state_mut().settings_mut().model = fixtures()
        .join("checkpoints/tiny-bert")
        .display()
        .to_string();
    h.run_steps(3);
    assert!(!h.state().seen().checking);
    assert!(run_disabled(&h));
    h.get_by_label_contains("cannot check the model");
    assert!(h.query_by_label_contains("checking the model").is_none());
    // A bundled model needs no thread: it is checked at once.
    h.state_mut().settings_mut().model = "tiny-bert".into();
    h.state_mut().settings_mut().seqs = "32".into();
    h.run_steps(3);
    assert!(!run_disabled(&h));
}

#[test]
fn reopened_results_export_and_bad_paths_get_clear_messages() {
    let dir = TempDir::new("gui-open");
    let mut h = harness(&dir, Some(fixtures().join("gui/tiny-llama-grid.jsonl")));
    wait_for_results(&mut h);
    let r = h.state().seen().results.unwrap().clone();
    assert_eq!(r.model, "tiny-llama");
    h.get_by_label("batch 39 × seq 64 in f16");
    // The reopened plan is what Run would repeat.
    assert_eq!(h.state().seen().settings.model, "tiny-llama");
    assert_eq!(row(&h, "seq 64 f16")[2], "exact");
    // Export through the typed path (works without a dialog service).
    let out = dir.join("rec.toml");
    let field = h.get_by_label("Export path");
    field.set_text_value_accesskit(&out.display().to_string());
    h.run_steps(1);
    write_export(&mut h);
    let text = std::fs::read_to_string(&out).unwrap();
    assert!(text.contains("per_device_eval_batch_size = 39"), "{text}");
    // Writing again without "overwrite" is refused with the window's fix in the message.
    write_export(&mut h);
    shown(&h, "already exists; tick \"overwrite\"");
    // An unwritable path names the path and says what to do.
    let field = h.get_by_label("Export path");
    field.set_text_value_accesskit("/proc/oomlab/nope.toml");
    h.run_steps(1);
    write_export(&mut h);
    let n = h.state().seen().notice.unwrap().to_string();
    assert!(
        n.contains("/proc/oomlab/nope.toml") && n.contains("choose a folder"),
        "{n}"
    );
    h.get_by_label(&n);
    // A file that is not oomlab results is refused clearly.
    h.state_mut()
        .open_results(fixtures().join("checkpoints/tiny-bert/config.json"));
    assert!(h.state_mut().wait_for_background(Duration::from_secs(30)));
    h.run_steps(1);
    shown(&h, "is not an oomlab journal or results file");
}

/// On a GPU, totals move in the allocator pool's steps: two neighbouring batches can take the
/// same bytes. In this journal batches 33 and 34 do, so only the widest secant (from batch 1)
/// has a slope and computes a batch; the line through the two largest fits would compute none.
/// The replay follows the code's rule, and the drawn table must agree with it.
#[test]
fn a_journal_with_pool_steps_is_drawn_as_the_widest_secant_replays_it() {
    let dir = TempDir::new("gui-steps");
    let mut h = harness(&dir, Some(fixtures().join("gui/pool-steps.jsonl")));
    wait_for_results(&mut h);
    let want = assert_screen_matches_journal(&h);
    assert!(
        want.rows
            .iter()
            .any(|r| r[0] == "seq 32 f32" && r[4] == "30 computed"),
        "{:?}",
        want.rows
    );
}
