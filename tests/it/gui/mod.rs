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

/// A window of `size` showing `open`, with the estimator (its predicted curves and labels).
fn harness_sized(dir: &TempDir, open: PathBuf, size: egui::Vec2) -> Harness<'static, OomLabApp> {
    let options = AppOptions {
        worker: worker(),
        open: Some(open),
        journal_dir: Some(dir.0.clone()),
        persist: false,
        checker: true,
        host: Some(HostMemory::faked(16 << 30)),
        gpus: Some(Err(oomlab::measure::nvml::GpuQueryError(NO_DRIVER.into()))),
        runtime_cache: Some(dir.join("runtime.json")),
        estimator: true,
        hf_cache: Some(dir.join("hub")),
    };
    Harness::builder()
        .with_size(size)
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

mod lessons;
mod sweeps;
mod views;
