//! The desktop lab driven by `egui_kittest`: the real app, the real engine and worker.
//! No sleeps: between frames the test blocks on the engine's next event. Assertions read what
//! is drawn (table cells, the recommendation card) and compare it with an independent replay of
//! the journal file read back from disk.

use crate::common::{
    TempDir, contradiction_setup, faulty_worker, fixtures, kill, main_thread_syscall, worker,
};
use eframe::egui;
use egui::accesskit::Role;
use egui_kittest::Harness;
use egui_kittest::kittest::{NodeT, Queryable};
use oomlab::gui::{AppOptions, OomLabApp, TestHooks};
use oomlab::measure::host::HostMemory;
use oomlab::measure::nvml::{GpuInfo, GpuProcess, GpuReport, NO_DRIVER};
use oomlab::plan::{Strategy, human_bytes};
use oomlab::worker::WorkerConfig;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::time::Duration;

fn harness_with(
    dir: &TempDir,
    open: Option<PathBuf>,
    worker: WorkerConfig,
    checker: bool,
) -> Harness<'static, OomLabApp> {
    harness_gpus(dir, open, worker, checker, Err(NO_DRIVER.to_string()))
}

/// With the GPUs the window is told the driver reports (tests never ask a real driver).
fn harness_gpus(
    dir: &TempDir,
    open: Option<PathBuf>,
    worker: WorkerConfig,
    checker: bool,
    gpus: Result<GpuReport, String>,
) -> Harness<'static, OomLabApp> {
    harness_full(dir, open, worker, checker, gpus, true)
}

/// For snapshots: no estimator (its runtime figure is this machine's, pixels must not be).
fn snapshot_harness(dir: &TempDir, open: PathBuf) -> Harness<'static, OomLabApp> {
    harness_full(
        dir,
        Some(open),
        worker(),
        true,
        Err(NO_DRIVER.to_string()),
        false,
    )
}

fn harness_full(
    dir: &TempDir,
    open: Option<PathBuf>,
    worker: WorkerConfig,
    checker: bool,
    gpus: Result<GpuReport, String>,
    estimator: bool,
) -> Harness<'static, OomLabApp> {
    // The machine's memory as the worker sees it when the test fakes it; otherwise a fixed
    // 16 GiB, so what the window draws is the same on every machine.
    let host = Some(HostMemory::faked(
        worker.faults.host_available_bytes.unwrap_or(16 << 30),
    ));
    let options = AppOptions {
        worker,
        open,
        journal_dir: Some(dir.0.clone()),
        persist: false,
        checker,
        host,
        gpus: Some(gpus.map_err(oomlab::measure::nvml::GpuQueryError)),
        runtime_cache: Some(dir.join("runtime.json")),
        estimator,
        hf_cache: Some(dir.join("hub")),
    };
    Harness::builder()
        .with_size(egui::vec2(1280.0, 800.0))
        .build_eframe(move |cc| OomLabApp::new(cc, options))
}

fn harness(dir: &TempDir, open: Option<PathBuf>) -> Harness<'static, OomLabApp> {
    harness_with(dir, open, worker(), true)
}

/// Lets the settings checker (a background thread, for model paths) answer, then redraws.
fn settle(h: &mut Harness<'static, OomLabApp>) {
    h.run_steps(2);
    while h.state().seen().checking {
        assert!(h.state_mut().wait_for_background(Duration::from_secs(30)));
        h.run_steps(1);
    }
    h.run_steps(1);
}

/// Types into the text field labelled `label`, replacing its content.
fn set_text(h: &mut Harness<'static, OomLabApp>, label: &str, text: &str) {
    h.get_by_label(label).set_text_value_accesskit(text);
    settle(h);
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
    while h.state().seen().results.is_none() {
        h.state_mut().wait_for_background(Duration::from_secs(30));
        h.step();
        assert!(
            h.state().seen().notice.is_none(),
            "{:?}",
            h.state().seen().notice
        );
    }
    h.run_steps(2);
}

/// Steps the harness until the sweep ends, blocking on each engine event between frames.
fn run_to_end(h: &mut Harness<'static, OomLabApp>) {
    let mut events = 0;
    while h.state().seen().running {
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

/// The texts drawn on the row of the label `first` (a text or a button), left to right,
/// starting with it.
fn row(h: &Harness<'static, OomLabApp>, first: &str) -> Vec<String> {
    let anchor = h.get_by_label(first).rect();
    let on_row = |r: egui::Rect| {
        r.center().y > anchor.min.y && r.center().y < anchor.max.y && r.min.x >= anchor.min.x - 0.5
    };
    let mut cells: Vec<(f32, String)> = h
        .query_all_by_role(Role::Label)
        .filter_map(|n| {
            on_row(n.rect())
                .then(|| Some((n.rect().min.x, n.value()?)))
                .flatten()
        })
        .chain(h.query_all_by_role(Role::Button).filter_map(|n| {
            on_row(n.rect())
                .then(|| Some((n.rect().min.x, n.accesskit_node().label()?)))
                .flatten()
        }))
        .collect();
    cells.sort_by(|a, b| a.0.total_cmp(&b.0));
    cells.into_iter().map(|(_, t)| t).collect()
}

/// What the boundary table and the card should show, replayed from the journal file with the
/// documented rules — independently of oomlab's summary code.
struct Replay {
    /// Per curve: curve, b*, status, trials, safe (as drawn).
    rows: Vec<[String; 5]>,
    /// The card's headline.
    pick: Option<String>,
    trials: Vec<Value>,
}

fn replay(journal: &Path) -> Replay {
    let lines: Vec<Value> = std::fs::read_to_string(journal)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let plan = &lines[0]["plan"];
    let (lo, hi) = (
        plan["batch"]["min"].as_u64().unwrap(),
        plan["batch"]["max"].as_u64().unwrap(),
    );
    let limit = (plan["capacity_bytes"].as_f64().unwrap()
        * (1.0 - plan["headroom"].as_f64().unwrap()))
    .floor() as u64;
    let trials: Vec<Value> = lines
        .iter()
        .filter(|l| l["type"] == "trial")
        .cloned()
        .collect();
    let dash = |v: Option<u64>| v.map_or_else(|| "–".to_string(), |b| b.to_string());
    let mut rows = Vec::new();
    let mut picks = Vec::new();
    for dtype in plan["dtypes"].as_array().unwrap() {
        for seq in plan["seqs"].as_array().unwrap() {
            let mine: Vec<&Value> = trials
                .iter()
                .filter(|t| t["seq"] == *seq && t["dtype"] == *dtype)
                .collect();
            let batches = |outcome: &str| -> Vec<u64> {
                mine.iter()
                    .filter(|t| t["outcome"] == outcome)
                    .map(|t| t["batch"].as_u64().unwrap())
                    .collect()
            };
            let (fits, mut ooms) = (batches("fit"), batches("oom"));
            let host_stops = batches("host_memory");
            ooms.extend(&host_stops);
            let lowest_oom = ooms.iter().min().copied();
            let below = |b: u64| lowest_oom.is_none_or(|o| b < o);
            let star = fits.iter().copied().filter(|&b| below(b)).max();
            let contradiction = lowest_oom.is_some_and(|o| fits.iter().any(|&f| f >= o));
            // The machine, not the capacity, stopped the curve when its lowest non-fit is a
            // host_memory trial.
            let host = |s: &'static str| match lowest_oom {
                Some(o) if host_stops.contains(&o) => "host_limited",
                _ => s,
            };
            let status = if contradiction {
                "non_monotone"
            } else if lowest_oom == Some(lo) {
                host("none_fits")
            } else if star == Some(hi) {
                "above_range"
            } else if star.is_some() && lowest_oom == star.map(|b| b + 1) {
                host("exact")
            } else {
                "incomplete"
            };
            // Safe: the largest fit under the headroom limit below every OOM and every fit over it.
            let total = |t: &Value| t["total_bytes"].as_u64();
            let over = mine
                .iter()
                .filter(|t| {
                    t["outcome"] == "oom"
                        || t["outcome"] == "host_memory"
                        || (t["outcome"] == "fit" && total(t) > Some(limit))
                })
                .map(|t| t["batch"].as_u64().unwrap())
                .min();
            let safe = mine
                .iter()
                .filter(|t| t["outcome"] == "fit" && total(t).is_some_and(|x| x <= limit))
                .map(|t| t["batch"].as_u64().unwrap())
                .filter(|&b| over.is_none_or(|o| b < o))
                .max();
            // Unless a confirmation fell over the limit, the line through the smallest and the
            // largest fit below the lowest OOM (the widest secant; or through the worker's
            // baseline and one fit) may put a larger batch under the limit: shown as computed.
            let confirm_failed = mine.iter().any(|t| {
                t["purpose"] == "recommend"
                    && !(t["outcome"] == "fit" && total(t).is_some_and(|x| x <= limit))
            });
            let baseline = trials
                .iter()
                .filter(|t| t["dtype"] == *dtype)
                .find_map(|t| t["baseline_bytes"].as_u64())
                .or_else(|| {
                    lines
                        .iter()
                        .rev()
                        .find(|l| l["type"] == "worker" && l["dtype"] == *dtype)
                        .and_then(|l| l["baseline_bytes"].as_u64())
                });
            let mut line: Vec<(i128, i128)> = mine
                .iter()
                .filter(|t| t["outcome"] == "fit" && below(t["batch"].as_u64().unwrap()))
                .filter_map(|t| Some((i128::from(t["batch"].as_u64()?), i128::from(total(t)?))))
                .collect();
            line.sort_unstable();
            line.dedup_by_key(|p| p.0);
            if line.len() == 1
                && let Some(base) = baseline
            {
                line.insert(0, (0, i128::from(base)));
            }
            let computed = match line[..] {
                [(b0, t0), .., (b1, t1)] if !confirm_failed && t1 > t0 => {
                    // The largest b with t1 + (b − b1)·(t1 − t0)/(b1 − b0) ≤ limit.
                    let (k, d) = (t1 - t0, b1 - b0);
                    let room = i128::from(limit) - t1;
                    let b = b1 + (room * d).div_euclid(k);
                    let b = b.min(over.map_or(i128::from(hi), |o| i128::from(o) - 1));
                    (b >= i128::from(lo) && safe.is_none_or(|s| b > i128::from(s)))
                        .then(|| u64::try_from(b).unwrap())
                }
                _ => None,
            };
            let searched = mine.iter().filter(|t| t["purpose"] == "search").count();
            // An unfinished search has no boundary yet, and so no safe batch.
            let (star, safe, computed) = if status == "incomplete" {
                (None, None, None)
            } else {
                (star, safe, computed)
            };
            let (seq, dtype) = (seq.as_u64().unwrap(), dtype.as_str().unwrap().to_string());
            rows.push([
                format!("seq {seq} {dtype}"),
                dash(star),
                status.to_string(),
                searched.to_string(),
                computed.map_or_else(|| dash(safe), |b| format!("{b} computed")),
            ]);
            if let Some(b) = computed.or(safe) {
                let width = match dtype.as_str() {
                    "f32" => 3,
                    "bf16" => 2,
                    _ => 1,
                };
                picks.push((
                    (b * seq, width, seq),
                    format!("batch {b} × seq {seq} in {dtype}"),
                ));
            }
        }
    }
    let pick = picks.into_iter().max_by_key(|p| p.0).map(|p| p.1);
    Replay { rows, pick, trials }
}

/// Asserts that the boundary table, the card and the trials table show what the journal holds.
fn assert_screen_matches_journal(h: &Harness<'static, OomLabApp>) -> Replay {
    let journal = h.state().seen().journal.expect("a journal").to_path_buf();
    let want = replay(&journal);
    for r in &want.rows {
        let drawn = row(h, &r[0]);
        assert_eq!(&drawn[..5], &r[..], "boundary row as drawn vs the journal");
    }
    match &want.pick {
        Some(p) => {
            h.get_by_label(p);
        }
        None => {
            h.get_by_label("No configuration fits under the headroom limit.");
        }
    }
    // Every trial row in view shows the journal's line.
    for (i, t) in want.trials.iter().enumerate() {
        let name = format!("trial {}", i + 1);
        if h.query_by_label(&name).is_none() {
            continue; // scrolled out of the virtualized table
        }
        let cells = row(h, &name);
        let bytes = |k: &str| t[k].as_u64().map_or_else(|| "–".to_string(), human_bytes);
        let outcome = match t["outcome"].as_str().unwrap() {
            "fit" => "fit",
            "oom" => "OOM",
            "host_memory" => "host mem",
            _ => "failed",
        };
        assert_eq!(
            cells[..7],
            [
                name.clone(),
                t["seq"].to_string(),
                t["dtype"].as_str().unwrap().to_string(),
                t["batch"].to_string(),
                outcome.to_string(),
                bytes("peak_bytes"),
                bytes("total_bytes"),
            ],
            "{name}"
        );
    }
    h.get_by_label_contains(&format!("· {} trials", want.trials.len()));
    want
}

/// Asserts that some drawn text contains `text` (a notice is also written to the event log).
fn shown(h: &Harness<'static, OomLabApp>, text: &str) {
    assert!(
        h.query_all_by_label_contains(text).count() >= 1,
        "'{text}' is not on screen"
    );
}

/// Sets the experiment through the window's fields (f32 only, one worker thread).
fn set_experiment(h: &mut Harness<'static, OomLabApp>, seq: &str, batch: &str, capacity: &str) {
    set_text(h, "Sequence lengths", seq);
    set_text(h, "Batch range", batch);
    set_text(h, "Capacity", capacity);
    h.state_mut().settings_mut().f16 = false;
    h.state_mut().settings_mut().threads = 1;
    settle(h);
}

/// Sets model, strategy and experiment, then presses Run.
fn start(
    h: &mut Harness<'static, OomLabApp>,
    model: &str,
    strategy: Strategy,
    [seq, batch, capacity]: [&str; 3],
) {
    h.state_mut().settings_mut().model = model.into();
    h.state_mut().settings_mut().strategy = strategy;
    set_experiment(h, seq, batch, capacity);
    h.get_by_role_and_label(Role::Button, "Run").click();
    h.run_steps(1);
    assert!(h.state().seen().running);
}

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

/// Masks the frame-time readout (it changes from run to run, and so does its width: the mask
/// covers the widest it gets, from its right-aligned end).
fn mask_frame_time(h: &mut Harness<'static, OomLabApp>) {
    let r = h.get_by_label_contains("ms/frame").rect();
    h.mask(egui::Rect::from_min_max(
        egui::pos2(r.max.x - 480.0, r.min.y),
        r.max,
    ));
}

#[test]
fn main_view_snapshot() {
    let dir = TempDir::new("gui-snapshot");
    // A relative path (tests run in the package root) keeps the picture the same in any clone.
    let mut h = snapshot_harness(
        &dir,
        PathBuf::from("tests/fixtures/gui/tiny-llama-grid.jsonl"),
    );
    wait_for_results(&mut h);
    mask_frame_time(&mut h);
    h.snapshot("main_view");
}

#[test]
fn finished_auto_sweep_light_snapshot() {
    let dir = TempDir::new("gui-snapshot-light");
    let mut h = snapshot_harness(
        &dir,
        PathBuf::from("tests/fixtures/gui/tiny-bert-auto.jsonl"),
    );
    wait_for_results(&mut h);
    h.get_by_label("View").click();
    h.run_steps(2);
    h.get_by_label("Light").click();
    h.run_steps(3);
    let want = assert_screen_matches_journal(&h);
    assert!(want.pick.is_some());
    mask_frame_time(&mut h);
    h.snapshot("auto_sweep_light");
}

#[test]
fn closing_during_a_sweep_returns_even_when_the_engine_waits_on_a_full_channel() {
    use eframe::App as _;
    let dir = TempDir::new("gui-exit");
    let mut h = harness(&dir, None);
    start(
        &mut h,
        "tiny-bert",
        Strategy::Grid,
        ["8", "1..1000", "1GiB"],
    );
    // No frames are drawn from here on, so nothing drains the engine's bounded channel (256
    // messages, two per trial): wait until the journal stops growing, i.e. the engine is blocked
    // on a send.
    let journal = loop {
        let found = std::fs::read_dir(&dir.0)
            .unwrap()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .find(|p| p.extension().is_some_and(|x| x == "jsonl"));
        if let Some(p) = found {
            break p;
        }
        std::thread::sleep(Duration::from_millis(20));
    };
    let trials = || {
        std::fs::read_to_string(&journal)
            .unwrap()
            .matches("\"type\":\"trial\"")
            .count()
    };
    let mut seen = 0;
    loop {
        std::thread::sleep(Duration::from_millis(1500));
        let now = trials();
        if now == seen && now >= 100 {
            break;
        }
        seen = now;
    }
    eprintln!("engine blocked after {seen} trials");
    // Closing must come back: a watchdog fails the run if it does not within two minutes.
    let (done, watch) = std::sync::mpsc::sync_channel::<()>(1);
    std::thread::Builder::new()
        .name("close-watchdog".into())
        .spawn(move || {
            if watch.recv_timeout(Duration::from_mins(2)).is_err() {
                eprintln!("closing the window hung on the engine");
                std::process::exit(1);
            }
        })
        .unwrap();
    h.state_mut().on_exit();
    done.send(()).unwrap();
    // The engine stopped on its own (at most the trial it was announcing is added) and left a
    // whole journal that a resume can continue.
    assert!(
        trials() <= seen + 1,
        "the engine went on after the window closed"
    );
    let contents = oomlab::report::read_journal(&journal).unwrap();
    assert!(!contents.torn_tail);
    assert!(oomlab::report::summarize(&contents).incomplete);
}

#[test]
fn a_capacity_this_machine_cannot_hold_disables_run_until_overcommit_is_ticked() {
    let dir = TempDir::new("gui-host");
    let mut w = worker();
    w.faults.host_available_bytes = Some(64 << 20);
    let mut h = harness_with(&dir, None, w, true);
    h.state_mut().settings_mut().model = "tiny-bert".into();
    h.state_mut().settings_mut().strategy = Strategy::Auto;
    set_experiment(&mut h, "64", "1..1024", "1GiB");
    assert!(run_disabled(&h));
    shown(
        &h,
        "This machine: 64.0 MiB, 64.0 MiB available; it can simulate up to 44.8 MiB.",
    );
    shown(
        &h,
        "a capacity of 1.0 GiB cannot be simulated on this machine",
    );
    shown(
        &h,
        "lower the Capacity field to 44.8 MiB or less, or tick \"Allow overcommit\"",
    );
    h.get_by_label("Allow overcommit").click();
    settle(&mut h);
    assert!(!run_disabled(&h));
    h.get_by_role_and_label(Role::Button, "Run").click();
    h.run_steps(1);
    run_to_end(&mut h);
    let want = assert_screen_matches_journal(&h);
    assert_eq!(want.rows[0][2], "host_limited");
    shown(&h, "this machine's boundary, not the simulated device's");
    shown(&h, oomlab::report::HOST_LIMITED_PICK);
}

#[test]
fn the_gpus_the_driver_reports_are_listed_with_live_gauges_and_their_processes() {
    let dir = TempDir::new("gui-gpus");
    let gib = 1u64 << 30;
    let gpu = |index: u32, processes| GpuInfo {
        index,
        name: "NVIDIA H200".into(),
        uuid: Some(format!("GPU-{index}")),
        total_bytes: 140 * gib,
        used_bytes: 2 * gib,
        free_bytes: 138 * gib,
        utilization_percent: Some(3),
        processes,
    };
    let report = GpuReport {
        driver_version: Some("580.65".into()),
        cuda_version: Some("13.0".into()),
        gpus: vec![
            gpu(
                0,
                Ok(vec![GpuProcess {
                    pid: 4242,
                    used_bytes: Some(512 << 20),
                }]),
            ),
            gpu(
                1,
                Err(oomlab::measure::nvml::GpuQueryError(
                    "not allowed to list the processes using this GPU".into(),
                )),
            ),
        ],
    };
    let mut h = harness_gpus(&dir, None, worker(), true, Ok(report));
    h.state_mut().settings_mut().model = "tiny-bert".into();
    h.state_mut().settings_mut().seqs = "32".into();
    settle(&mut h);
    shown(&h, "cuda:0 NVIDIA H200: 2.0 GiB of 140.0 GiB used, 3% busy");
    shown(&h, "pid 4242 holds 512.0 MiB");
    shown(
        &h,
        "processes: not allowed to list the processes using this GPU",
    );
    shown(&h, "driver 580.65, CUDA 13.0");
    assert!(!run_disabled(&h));
    // Each GPU is in the device picker by name and free memory; this build cannot use it.
    h.get_by_label("Device").click();
    h.run_steps(2);
    h.get_by_label_contains("cuda:1 · NVIDIA H200 · 138.0 GiB free (needs a CUDA build)")
        .click();
    settle(&mut h);
    assert_eq!(
        h.state().seen().settings.device,
        oomlab::plan::DeviceKind::Cuda { index: 1 }
    );
    assert!(run_disabled(&h));
    shown(
        &h,
        "cuda:1 needs CUDA, which this build of oomlab does not include",
    );
    shown(&h, "choose cpu in the Device choice");
}

#[test]
fn without_a_driver_the_window_carries_on_with_the_cpu() {
    let dir = TempDir::new("gui-nodriver");
    let mut h = harness(&dir, None);
    h.state_mut().settings_mut().model = "tiny-bert".into();
    h.state_mut().settings_mut().seqs = "32".into();
    settle(&mut h);
    shown(&h, NO_DRIVER);
    assert!(!run_disabled(&h));
    h.get_by_label("Device").click();
    h.run_steps(2);
    assert!(h.query_by_label_contains("cuda:").is_none());
}

#[test]
fn a_pasted_oom_message_is_explained_in_the_window() {
    let dir = TempDir::new("gui-explain");
    let mut h = harness(&dir, None);
    h.run_steps(2);
    h.get_by_label("Explain").click();
    h.run_steps(2);
    h.get_by_label("Explain an OOM message…").click();
    h.run_steps(2);
    h.get_by_label("Message").set_text_value_accesskit(
        "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 3.00 GiB. GPU 0 has a total capacty of 23.65 GiB of which 1.66 GiB is free. Including non-PyTorch memory, this process has 20.81 GiB memory in use. Of the allocated memory 12.09 GiB is allocated by PyTorch, and 4.84 GiB is reserved by PyTorch but unallocated.",
    );
    h.run_steps(3);
    shown(
        &h,
        "A PyTorch out-of-memory message in the format of 2.1 and later",
    );
    shown(&h, "reserved but unallocated 4.84 GiB");
    shown(
        &h,
        "1. reduce fragmentation: run with PYTORCH_CUDA_ALLOC_CONF=expandable_segments:True",
    );
    h.get_by_label("Message")
        .set_text_value_accesskit("RuntimeError: CUDA error: device-side assert triggered");
    h.run_steps(3);
    shown(&h, "not an out-of-memory message I recognise");
}

/// Steps until the estimator for the shown sweep is built (a background job).
fn wait_for_estimator(h: &mut Harness<'static, OomLabApp>) {
    for _ in 0..100 {
        if h.state().seen().estimator_ready {
            h.run_steps(2);
            return;
        }
        h.state_mut().wait_for_background(Duration::from_secs(30));
        h.step();
    }
    panic!("the estimator never arrived");
}

#[test]
fn teach_window_predicts_b_star_breaks_a_point_down_and_shows_a_trials_timeline() {
    let dir = TempDir::new("gui-teach");
    let cap = crate::common::capacity_for("tiny-bert", 64, oomlab::plan::Precision::F32, 23, &dir);
    let mut h = harness(&dir, None);
    h.run_steps(2);
    start(
        &mut h,
        "tiny-bert",
        Strategy::Auto,
        ["64", "1..256", &format!("{cap}B")],
    );
    run_to_end(&mut h);
    wait_for_estimator(&mut h);
    let want = assert_screen_matches_journal(&h);
    let star: usize = want.rows[0][1].parse().unwrap();
    // Click the first trial (it opens the window): its point in the what-if, its measurement
    // beside the estimate, and its timeline whose peak is the trial's total in the journal.
    let first = &want.trials[0];
    let total = first["total_bytes"].as_u64().unwrap();
    h.get_by_role_and_label(Role::Button, "trial 1").click();
    h.run_steps(3);
    // The estimator's b* (before any trial) is the one the sweep measured.
    h.get_by_label_contains(&format!("predicted b* under {}: {star}", human_bytes(cap)));
    h.get_by_label_contains(&format!(
        "estimated for batch {} × seq 64 in f32",
        first["batch"]
    ));
    h.get_by_label_contains(&format!("measured in trial 1: {}", human_bytes(total)));
    h.get_by_label_contains(&format!("peak {} at", human_bytes(total)));
    // The breakdown: each part once, and an encoder keeps no KV cache.
    let labels: Vec<String> = h
        .query_all_by_role(Role::Label)
        .filter_map(|n| n.value())
        .collect();
    for part in ["weights ", "activations ", "KV cache ", "overhead "] {
        assert_eq!(
            labels.iter().filter(|l| l.starts_with(part)).count(),
            1,
            "{part}: {labels:?}"
        );
    }
    assert!(labels.iter().any(|l| l == "KV cache 0 B"));
    // What if the sequence were half as long: a new estimate, no measurement at that point.
    h.get_by_label("Sequence length").set_value_accesskit(32.0);
    h.run_steps(3);
    h.get_by_label_contains(&format!(
        "estimated for batch {} × seq 32 in f32",
        first["batch"]
    ));
    assert!(h.query_by_label_contains("measured in trial").is_none());
    // And on a GPU one does not have: the preset's capacity, labelled as a CPU measurement.
    h.get_by_label("What-if capacity").click();
    h.run_steps(2);
    h.get_by_label("Tesla T4").click();
    h.run_steps(3);
    let line = h
        .query_all_by_role(Role::Label)
        .filter_map(|n| n.value())
        .find(|l| l.starts_with("predicted b* under 14.56 GiB (Tesla T4, CPU measurement): "))
        .expect("the T4's predicted b*");
    let t4: usize = line.rsplit(": ").next().unwrap().parse().unwrap();
    assert!(t4 > 1000 * star, "{line}");
    h.get_by_label_contains("not in it");
}

#[test]
fn a_computed_recommendation_is_confirmed_by_its_button() {
    let dir = TempDir::new("gui-confirm");
    let mut h = harness(&dir, None);
    h.run_steps(2);
    start(
        &mut h,
        "tiny-bert",
        Strategy::Auto,
        ["32, 64", "1..64", "6MiB"],
    );
    run_to_end(&mut h);
    let want = assert_screen_matches_journal(&h);
    // One curve is the pick (confirmed by a trial), the other computed from its line.
    let computed: Vec<&[String; 5]> = want
        .rows
        .iter()
        .filter(|r| r[4].ends_with(" computed"))
        .collect();
    assert_eq!(computed.len(), 1, "{:?}", want.rows);
    let curve = computed[0][0].clone();
    let batch = computed[0][4].trim_end_matches(" computed").to_string();
    let drawn = row(&h, &curve);
    assert_eq!(
        drawn.last().map(String::as_str),
        Some("Confirm"),
        "{drawn:?}"
    );
    let confirms_before = want
        .trials
        .iter()
        .filter(|t| t["purpose"] == "recommend")
        .count();
    // The Confirm button on that row (the only one in the card).
    h.get_by_role_and_label(Role::Button, "Confirm").click();
    h.run_steps(1);
    assert!(h.state().seen().running);
    run_to_end(&mut h);
    let after = assert_screen_matches_journal(&h);
    let confirms: Vec<&Value> = after
        .trials
        .iter()
        .filter(|t| t["purpose"] == "recommend")
        .collect();
    assert_eq!(confirms.len(), confirms_before + 1);
    assert_eq!(confirms.last().unwrap()["batch"].to_string(), batch);
    let r = after.rows.iter().find(|r| r[0] == curve).unwrap();
    assert_eq!(r[4], batch, "measured now: {r:?}");
    assert!(h.query_by_label("Confirm").is_none());
}

#[test]
fn the_teaching_demo_fills_the_form_and_its_grid_ends_every_curve_in_an_oom() {
    let dir = TempDir::new("gui-demo");
    let mut h = harness(&dir, None);
    h.run_steps(2);
    h.get_by_role_and_label(Role::Button, "Teaching demo")
        .click();
    settle(&mut h);
    // What the form now shows, read from the drawn fields.
    let field = |h: &Harness<'static, OomLabApp>, label: &str| {
        h.get_by_label(label).value().unwrap_or_default()
    };
    assert_eq!(field(&h, "Model id or path"), "bert-tiny");
    assert_eq!(field(&h, "Sequence lengths"), "128, 256, 512");
    assert_eq!(field(&h, "Capacity"), "44MiB");
    assert!(!run_disabled(&h));
    h.get_by_role_and_label(Role::Button, "Run").click();
    h.run_steps(1);
    run_to_end(&mut h);
    let want = assert_screen_matches_journal(&h);
    // Three lengths × f32 and f16, each boundary measured on both sides.
    assert_eq!(want.rows.len(), 6, "{:?}", want.rows);
    assert!(want.rows.iter().all(|r| r[2] == "exact"), "{:?}", want.rows);
    // The lengths separate: at each precision, b* falls as the sequence grows.
    for dtype in ["f32", "f16"] {
        let stars: Vec<usize> = want
            .rows
            .iter()
            .filter(|r| r[0].contains(dtype))
            .map(|r| r[1].parse().unwrap())
            .collect();
        assert_eq!(stars.len(), 3, "{:?}", want.rows);
        assert!(stars.windows(2).all(|w| w[0] > w[1]), "{dtype}: {stars:?}");
    }
}

#[test]
fn the_model_picker_groups_by_family_filters_as_you_type_and_lists_the_hf_cache() {
    let dir = TempDir::new("gui-picker");
    crate::hub::cache_model(
        &dir.join("hub"),
        "acme/tiny-llama",
        &crate::common::fixtures().join("checkpoints/tiny-llama"),
        &["main"],
    );
    let mut h = harness(&dir, None);
    h.run_steps(2);
    // The cache is read on a background thread.
    h.get_by_label_contains("Browse models").click();
    h.run_steps(2);
    while h.query_all_by_label_contains("HF cache").count() == 0 {
        assert!(h.state_mut().wait_for_background(Duration::from_secs(30)));
        h.run_steps(2);
    }
    // Parameters and weight bytes per precision beside each name; families as groups.
    shown(&h, "Llama-3.2-1B  1.24B · f32 ");
    shown(&h, "bert-base-uncased  109.5M · f32 ");
    assert!(h.query_by_label("llama").is_some() && h.query_by_label("bert").is_some());
    // Filtering as you type: llama-family names stay, BERTs go.
    h.get_by_label("Filter models")
        .set_text_value_accesskit("llama");
    h.run_steps(2);
    shown(&h, "SmolLM2-135M");
    shown(&h, "acme/tiny-llama  ");
    assert_eq!(
        h.query_all_by_label_contains("bert-base-uncased").count(),
        0
    );
    h.get_by_label_contains("acme/tiny-llama  ").click();
    settle(&mut h);
    assert_eq!(
        h.get_by_label("Model id or path")
            .value()
            .unwrap_or_default(),
        "acme/tiny-llama"
    );
    // The pick closed the list; open it again.
    assert!(h.query_by_label("Filter models").is_none());
    h.get_by_label_contains("Browse models").click();
    h.run_steps(2);
    h.get_by_label("Filter models")
        .set_text_value_accesskit("no such thing");
    h.run_steps(2);
    shown(&h, "no model matches");
}
