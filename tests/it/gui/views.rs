//! What the window shows beside a sweep: snapshots, closing, the machine, explain, teaching,
//! confirming, the demo preset and the model picker.

use super::*;

/// Masks the frame-time readout (it changes from run to run, and so does its width: the mask
/// covers the widest it gets, from its right-aligned end).
pub(super) fn mask_frame_time(h: &mut Harness<'static, OomLabApp>) {
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
    // ROCm's message: its maker in the heading, its tools in the advice.
    h.get_by_label("Message").set_text_value_accesskit(
        "HIP out of memory. Tried to allocate 432.00 MiB. GPU 0 has a total capacity of 15.92 GiB of which 7.12 MiB is free. Of the allocated memory 8.08 GiB is allocated by PyTorch, and 6.21 GiB is reserved by PyTorch but unallocated.",
    );
    h.run_steps(3);
    shown(&h, "It comes from AMD's ROCm (HIP)");
    shown(
        &h,
        "1. reduce fragmentation: run with PYTORCH_HIP_ALLOC_CONF=expandable_segments:True",
    );
    // A message without figures says where its own framework shows them.
    h.get_by_label("Message").set_text_value_accesskit(
        "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: Out of memory; the output buffer could not be allocated",
    );
    h.run_steps(3);
    shown(&h, "`jax.devices()[0].memory_stats()` what JAX holds");
    // A TPU's compiler: the program's need against one core's memory.
    h.get_by_label("Message").set_text_value_accesskit(
        "jaxlib.xla_extension.XlaRuntimeError: RESOURCE_EXHAUSTED: XLA:TPU compile permanent error. Ran out of memory in memory space hbm. Used 21.90G of 7.48G hbm. Exceeded hbm capacity by 14.42G.",
    );
    h.run_steps(3);
    shown(&h, "• needs 21.90 GiB of 7.48 GiB HBM");
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
    // candle's allocator sees bytes only: the op and layer at the peak are the estimator's,
    // and so are the layer boundaries drawn on the timeline; both say so.
    let named = h
        .get_by_label_contains("the peak, by the estimator's simulated forward: ")
        .value()
        .unwrap();
    assert!(
        named.contains(" in layer ")
            || named.contains(" the last layer")
            || named.contains(" the first layer"),
        "{named}"
    );
    h.get_by_label_contains("where each layer begins in the estimator's simulated forward");
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

/// The labels drawn on the plot (b*, predicted b*, the two reference lines) and the legend's
/// entries, with where they are drawn.
fn plot_labels(h: &Harness<'static, OomLabApp>) -> (Vec<(String, egui::Rect)>, Vec<egui::Rect>) {
    let mut labels = Vec::new();
    let mut legend = Vec::new();
    for n in h.query_all_by_role(Role::Label) {
        let Some(v) = n.value() else { continue };
        if v.starts_with("b* = ") || v.starts_with("predicted b* = ") || v.starts_with("capacity ")
        {
            labels.push((v, n.rect()));
        } else if v.contains(": b* ") {
            legend.push(n.rect());
        }
    }
    (labels, legend)
}

/// The six-curve teaching demo's journal shown in a window of `size`, its estimator built.
fn teaching_demo(dir: &TempDir, size: egui::Vec2) -> Harness<'static, OomLabApp> {
    let mut h = harness_sized(dir, fixtures().join("gui/teaching-demo.jsonl"), size);
    wait_for_results(&mut h);
    wait_for_estimator(&mut h);
    h
}

/// In a narrower window the legend goes under the plot, below every label on it, and still no
/// two labels overlap.
#[test]
fn in_a_narrow_window_the_legend_goes_under_the_plot() {
    let dir = TempDir::new("gui-labels-narrow");
    let h = teaching_demo(&dir, egui::vec2(1280.0, 800.0));
    let (labels, legend) = plot_labels(&h);
    let rects: Vec<egui::Rect> = labels.iter().map(|(_, r)| *r).collect();
    assert!(rects.len() >= 8, "{labels:?}");
    assert!(oomlab::gui::labels::disjoint(&rects), "{labels:?}");
    let below_labels = rects.iter().map(egui::Rect::bottom).fold(0.0, f32::max);
    assert_eq!(legend.len(), 6);
    assert!(
        legend.iter().all(|l| l.top() >= below_labels),
        "legend {legend:?} not under the plot's labels (down to y {below_labels})"
    );
}

/// The six-curve demo at 1600×1000, then at presentation zoom: every curve's b* and predicted
/// b* is labelled, no two labels overlap (read from where they are drawn), and the legend stands
/// beside the plot, right of every label on it.
#[test]
#[allow(clippy::float_cmp)] // the zoom is set to exactly 1.5
fn six_curves_label_every_boundary_without_overlap_and_keep_the_legend_off_the_data() {
    let dir = TempDir::new("gui-labels");
    let mut h = teaching_demo(&dir, egui::vec2(1600.0, 1000.0));
    let r = h.state().seen().results.unwrap().clone();
    assert_eq!(r.boundaries.len(), 6);
    for zoom in [1.0, 1.5] {
        let (labels, legend) = plot_labels(&h);
        let texts: Vec<&str> = labels.iter().map(|(t, _)| t.as_str()).collect();
        for b in &r.boundaries {
            let b_star = b.max_batch.unwrap();
            assert!(
                texts.contains(&format!("b* = {b_star}").as_str()),
                "{zoom}: {texts:?}"
            );
        }
        assert_eq!(
            texts
                .iter()
                .filter(|t| t.starts_with("predicted b* = "))
                .count(),
            6,
            "{zoom}: {texts:?}"
        );
        assert_eq!(
            texts.iter().filter(|t| t.starts_with("capacity ")).count(),
            2
        );
        let rects: Vec<egui::Rect> = labels.iter().map(|(_, r)| *r).collect();
        for (i, (ta, a)) in labels.iter().enumerate() {
            for (tb, b) in &labels[i + 1..] {
                assert!(
                    !oomlab::gui::labels::overlap(*a, *b),
                    "{zoom}: '{ta}' {a:?} overlaps '{tb}' {b:?}"
                );
            }
        }
        assert!(oomlab::gui::labels::disjoint(&rects));
        let right_of_labels = rects.iter().map(egui::Rect::right).fold(0.0, f32::max);
        assert_eq!(legend.len(), 6, "{zoom}");
        assert!(
            legend.iter().all(|l| l.left() >= right_of_labels),
            "{zoom}: legend {legend:?} not right of the plot's labels (up to x {right_of_labels})"
        );
        if zoom == 1.0 {
            // View → Presentation: bigger text, the plot alone; the settings keep the zoom.
            h.get_by_label("View").click();
            h.run_steps(2);
            h.get_by_label_contains("Presentation (150%").click();
            h.run_steps(4);
            let s = h.state().seen().settings.clone();
            assert_eq!((s.zoom, s.panels), (1.5, false));
            assert!(h.query_by_label("Experiment").is_none());
            // Text and lines are drawn half again as large (the rectangles are in points).
            assert_eq!(h.ctx.zoom_factor(), 1.5);
        }
    }
}

/// The teaching window answers for PyTorch too: with Runtime PyTorch and a training step, it
/// draws the PyTorch estimate's peak, its parts (optimizer state, gradients, saved activations)
/// and its b* under a T4's capacity, each what `oomlab estimate --runtime torch` prints
/// for the same point; the what-ifs (checkpointing, SGD) change them as that command does.
#[test]
fn teach_window_answers_for_a_pytorch_training_step_with_its_parts() {
    let dir = TempDir::new("gui-teach-torch");
    let mut h = teaching_demo(&dir, egui::vec2(1600.0, 1000.0));
    let r = h.state().seen().results.unwrap().clone();
    h.get_by_label("Teach").click();
    h.run_steps(2);
    h.get_by_label("Why memory grows…").click();
    h.run_steps(3);
    h.get_by_role_and_label(Role::RadioButton, "PyTorch")
        .click();
    h.run_steps(2);
    h.get_by_role_and_label(Role::RadioButton, "training step")
        .click();
    h.run_steps(3);
    // On a T4 (the sweep's 44 MiB holds no training step of bert-tiny).
    h.get_by_label("What-if capacity").click();
    h.run_steps(2);
    h.get_by_label("Tesla T4").click();
    h.run_steps(3);
    let drawn = |h: &Harness<'_, OomLabApp>, prefix: &str| -> String {
        h.query_all_by_role(Role::Label)
            .filter_map(|n| n.value())
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| {
                let all: Vec<String> = h
                    .query_all_by_role(Role::Label)
                    .filter_map(|n| n.value())
                    .collect();
                panic!("no label starting {prefix:?}: {all:?}")
            })
    };
    // The point the window shows, read from what it drew.
    let head = drawn(&h, "PyTorch's one training step");
    let point = head
        .split(", estimated for batch ")
        .nth(1)
        .and_then(|p| p.split(": peak ").next())
        .unwrap()
        .to_string();
    let (batch, rest) = point.split_once(" × seq ").unwrap();
    let (seq, dtype) = rest.split_once(" in ").unwrap();
    let estimate = |extra: &[&str]| -> Value {
        let out = std::process::Command::new(crate::common::bin())
            .args([
                "estimate",
                "--runtime",
                "torch",
                "--workload",
                "train",
                "--model",
                "bert-tiny",
                "--batch",
                batch,
                "--seq",
                seq,
                "--dtype",
                dtype,
                "--threads",
                &r.plan.device.threads().to_string(),
                "--gpu",
                "t4",
                // The window's teaching view answers with the CPU arm (its caption says so);
                // `--gpu` alone would pick the CUDA arm.
                "--device",
                "cpu",
                "--json",
            ])
            .args(extra)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).unwrap()
    };
    let check = |h: &Harness<'_, OomLabApp>, e: &Value| {
        let bytes = |k: &str| human_bytes(e[k].as_u64().unwrap());
        assert!(
            drawn(h, "PyTorch's one training step")
                .ends_with(&format!(": peak {}", bytes("total_bytes")))
        );
        assert_eq!(
            drawn(h, "optimizer state "),
            format!("optimizer state {}", bytes("optimizer_bytes"))
        );
        assert_eq!(
            drawn(h, "gradients "),
            format!("gradients {}", bytes("gradient_bytes"))
        );
        assert_eq!(
            drawn(h, "saved activations "),
            format!("saved activations {}", bytes("saved_activation_bytes"))
        );
        let b_star = drawn(h, "predicted b* under ");
        assert!(
            b_star.ends_with(&format!(": {}", e["max_batch"].as_u64().unwrap())),
            "{b_star} against {e}"
        );
    };
    let adamw = estimate(&[]);
    check(&h, &adamw);
    // Checkpointing keeps fewer activations: a larger b*, as the command says.
    h.get_by_label("Gradient checkpointing").click();
    h.run_steps(3);
    let ckpt = estimate(&["--gradient-checkpointing", "on"]);
    assert!(ckpt["max_batch"].as_u64() > adamw["max_batch"].as_u64());
    check(&h, &ckpt);
    // SGD keeps one state tensor per parameter where AdamW keeps two (and a step each).
    h.get_by_role_and_label(Role::RadioButton, "SGD (momentum)")
        .click();
    h.run_steps(3);
    let sgd = estimate(&["--gradient-checkpointing", "on", "--optimizer", "sgd"]);
    assert!(
        sgd["optimizer_bytes"].as_u64().unwrap() * 2
            < adamw["optimizer_bytes"].as_u64().unwrap() + 1024
    );
    check(&h, &sgd);
}
