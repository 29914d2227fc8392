//! The PyTorch runtime, end to end through the binary, on tiny configs with the pinned venv
//! (`scripts/torch-venv.sh`, which `.ci/run` runs first): an exact boundary on the CPU, infer <
//! grad < train, checkpointing lowering a training peak, mixed precision against f32, the
//! refusals, the export's Trainer keys, and both ends of the protocol on the same fixtures.
//!
//! Without the venv these tests say so and pass on a developer's machine; in CI (`CI` set) its
//! absence fails them, so they cannot silently not run.

use crate::common::{TempDir, bin, fixtures};
use oomlab::plan::{Precision, Runtime};
use oomlab::report::{Outcome, Results};
use oomlab::search::BoundaryStatus;
use std::path::PathBuf;
use std::process::{Command, Output};

/// The venv `scripts/torch-venv.sh` makes.
pub fn venv_python() -> Option<PathBuf> {
    let cache = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    let p = cache.join("oomlab/torch-venv/bin/python");
    p.is_file().then_some(p)
}

/// The venv's python, or `None` (with a note) where it is absent outside CI.
pub fn torch_python() -> Option<PathBuf> {
    let found = venv_python();
    if found.is_none() {
        assert!(
            std::env::var_os("CI").is_none(),
            "CI must run the PyTorch tests: scripts/torch-venv.sh did not leave a venv"
        );
        eprintln!("skipped: no PyTorch venv (run scripts/torch-venv.sh to run these tests)");
    }
    found
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// `oomlab sweep --runtime torch --python P ARGS --json DIR/NAME.json`: the results.
fn torch_sweep(python: &PathBuf, dir: &TempDir, name: &str, args: &[&str]) -> Results {
    let json = dir.join(&format!("{name}.json"));
    let journal = dir.join(&format!("{name}.jsonl"));
    let mut cmd = Command::new(bin());
    cmd.args(["sweep", "--runtime", "torch", "--python"])
        .arg(python)
        .args(args)
        .arg("--json")
        .arg(&json)
        .arg("--journal")
        .arg(&journal);
    let o = cmd.output().unwrap();
    assert!(o.status.success(), "{args:?}: {}", stderr(&o));
    serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap()
}

/// The one fit of a single-point sweep: (total, trial).
fn only_fit(r: &Results) -> (u64, &oomlab::report::TrialRecord) {
    let fits: Vec<_> = r
        .trials
        .iter()
        .filter(|t| t.outcome == Outcome::Fit)
        .collect();
    assert_eq!(fits.len(), 1, "{:?}", r.trials);
    (fits[0].total_bytes.unwrap(), fits[0])
}

#[test]
fn the_boundary_is_exact_on_the_cpu_with_both_sides_measured() {
    let Some(py) = torch_python() else { return };
    let d = TempDir::new("torch-exact");
    // One point first, to size a capacity a few batches up (no figure is assumed).
    let one = torch_sweep(
        &py,
        &d,
        "one",
        &[
            "--model",
            "tiny-bert",
            "--seq",
            "32",
            "--batch",
            "1",
            "--capacity",
            "1GiB",
        ],
    );
    let (total1, t1) = only_fit(&one);
    let base = t1.baseline_bytes.unwrap();
    assert!(
        total1 > base && t1.live_before_bytes.unwrap() >= base,
        "{t1:?}"
    );
    assert_eq!(t1.runtime, Runtime::Torch);
    let capacity = base + 6 * (total1 - base) + (total1 - base) / 2;
    let cap = format!("{capacity}B");
    let r = torch_sweep(
        &py,
        &d,
        "exact",
        &[
            "--model",
            "tiny-bert",
            "--seq",
            "32",
            "--batch",
            "1..64",
            "--capacity",
            &cap,
            "--confirm",
            "none",
        ],
    );
    let b = &r.boundaries[0];
    assert_eq!(b.status, BoundaryStatus::Exact, "{r:#?}");
    let b_star = b.max_batch.unwrap();
    let fit = r
        .trials
        .iter()
        .find(|t| t.batch == b_star && t.outcome == Outcome::Fit)
        .expect("b* measured");
    let oom = r
        .trials
        .iter()
        .find(|t| t.batch == b_star + 1 && t.outcome == Outcome::Oom)
        .expect("b*+1 measured");
    assert!(fit.total_bytes.unwrap() <= capacity);
    // The allocation that took PyTorch's count over the capacity.
    assert!(oom.requested_bytes.is_some_and(|n| n > 0), "{oom:?}");
    assert!((2..64).contains(&b_star), "{b_star}");
    // Every figure is PyTorch's own count, recorded with the versions that made it.
    let v = r.torch_versions.values().next().expect("versions recorded");
    assert!(v.torch.starts_with("2.15.0"), "{v:?}");
}

#[test]
fn inference_then_a_forward_keeping_the_graph_then_a_training_step() {
    let Some(py) = torch_python() else { return };
    let d = TempDir::new("torch-workloads");
    let point = [
        "--model",
        "tiny-bert",
        "--seq",
        "32",
        "--batch",
        "4",
        "--capacity",
        "1GiB",
    ];
    let total = |workload: &str| {
        let mut args = point.to_vec();
        args.extend(["--workload", workload]);
        let r = torch_sweep(&py, &d, workload, &args);
        assert_eq!(r.plan.workload.name(), workload);
        let (total, t) = only_fit(&r);
        (total, t.steps_bytes.clone())
    };
    let (infer, none) = total("infer");
    let (grad, _) = total("grad");
    let (train, steps) = total("train");
    // Each trial's timeline marks where tiny-bert's two layers begin in its first forward
    // (the profiler's module ranges), in order, inside the forward phase.
    let r = oomlab::report::read_results(&d.join("train.json"))
        .unwrap()
        .1;
    let tl = only_fit(&r).1.timeline.clone().expect("a timeline");
    assert_eq!(tl.layers.len(), 2, "{:?}", tl.layers);
    let forward = tl.marks.iter().find(|m| m.label == "forward").unwrap().at;
    let backward = tl.marks.iter().find(|m| m.label == "backward").unwrap().at;
    assert!(
        forward <= tl.layers[0] && tl.layers[0] < tl.layers[1] && tl.layers[1] < backward,
        "forward {forward}, layers {:?}, backward {backward}",
        tl.layers
    );
    assert!(none.is_none());
    assert!(infer < grad && grad < train, "{infer} {grad} {train}");
    // The measured figure is the larger of the first step and the second.
    let steps = steps.expect("both steps recorded");
    assert_eq!(steps.len(), 2);
    assert_eq!(train, *steps.iter().max().unwrap());
}

#[test]
fn checkpointing_lowers_a_training_peak_and_the_export_takes_trainer_keys() {
    let Some(py) = torch_python() else { return };
    let d = TempDir::new("torch-ckpt");
    let export = d.join("recommended.toml");
    let json = d.join("r.json");
    // At seq 128 and batch 8 tiny-llama's activations dwarf its weights and AdamW's state.
    let o = Command::new(bin())
        .args(["sweep", "--runtime", "torch", "--python"])
        .arg(&py)
        .args([
            "--model",
            "tiny-llama",
            "--seq",
            "128",
            "--batch",
            "8",
            "--capacity",
            "1GiB",
            "--workload",
            "train",
            "--gradient-checkpointing",
            "off,on",
        ])
        .arg("--json")
        .arg(&json)
        .arg("--export")
        .arg(&export)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let r: Results = serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let total = |ckpt: bool| {
        r.trials
            .iter()
            .find(|t| t.checkpointing == ckpt && t.outcome == Outcome::Fit)
            .and_then(|t| t.total_bytes)
            .unwrap()
    };
    assert!(
        total(true) < total(false),
        "{} {}",
        total(true),
        total(false)
    );
    assert_eq!(r.boundaries.len(), 2);
    let text = std::fs::read_to_string(&export).unwrap();
    let doc: toml::Value = toml::from_str(&text).unwrap();
    let hf = &doc["huggingface"];
    assert_eq!(
        hf["per_device_train_batch_size"].as_integer(),
        Some(8),
        "{text}"
    );
    assert!(hf.get("per_device_eval_batch_size").is_none(), "{text}");
    assert_eq!(hf["optim"].as_str(), Some("adamw_torch"));
    assert_eq!(hf["attn_implementation"].as_str(), Some("sdpa"));
    // Batch 8 fits both ways: the pick takes the faster, without checkpointing.
    assert_eq!(
        hf["gradient_checkpointing"].as_bool(),
        Some(false),
        "{text}"
    );
    assert_eq!(doc["oomlab"]["runtime"].as_str(), Some("torch"));
    assert!(
        doc["oomlab"]["torch_version"]
            .as_str()
            .is_some_and(|v| v.starts_with("2.15.0")),
        "{text}"
    );
    assert!(
        doc["oomlab"]["workload"]
            .as_str()
            .unwrap()
            .contains("training step")
    );
    readme_snippet_applies(&py, &d, &export);
}

/// The README's Python lines that apply an export run as they stand on `export`: a model folder
/// (the tiny-llama checkpoint, with a small tokenizer beside it) loads with its dtype and
/// attention, the tokenizer truncates at `max_length`, and `TrainingArguments` takes the rest.
fn readme_snippet_applies(py: &PathBuf, d: &TempDir, export: &std::path::Path) {
    let readme =
        std::fs::read_to_string(std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md"))
            .unwrap();
    let snippet = readme
        .split("```python\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("README.md has a ```python block");
    assert!(snippet.lines().count() <= 6, "{snippet}");
    let model = d.join("model");
    std::fs::create_dir_all(&model).unwrap();
    for f in std::fs::read_dir(fixtures().join("checkpoints/tiny-llama")).unwrap() {
        let f = f.unwrap().path();
        std::fs::copy(&f, model.join(f.file_name().unwrap())).unwrap();
    }
    if export != d.join("recommended.toml") {
        std::fs::copy(export, d.join("recommended.toml")).unwrap();
    }
    let script = format!(
        "from transformers import BertTokenizer\n\
         open('vocab.txt', 'w').write('\\n'.join(['[PAD]', '[UNK]', '[CLS]', '[SEP]', '[MASK]'] + ['w%d' % i for i in range(40)]))\n\
         BertTokenizer('vocab.txt').save_pretrained('model')\n\
         name, texts = 'model', [' '.join('w%d' % (i % 40) for i in range(300))]\n\
         {snippet}\n\
         assert args.per_device_train_batch_size == 8, args.per_device_train_batch_size\n\
         assert args.optim == 'adamw_torch', args.optim\n\
         assert str(model.dtype) == 'torch.float32', model.dtype\n\
         assert model.config._attn_implementation == 'sdpa', model.config._attn_implementation\n\
         assert len(inputs['input_ids'][0]) == 128, len(inputs['input_ids'][0])\n\
         print('applied')\n"
    );
    let o = Command::new(py)
        .arg("-c")
        .arg(&script)
        .current_dir(&d.0)
        .output()
        .unwrap();
    assert!(
        String::from_utf8_lossy(&o.stdout).contains("applied"),
        "{}",
        stderr(&o)
    );
}

#[test]
fn mixed_precision_keeps_f32_weights_beside_its_casts() {
    let Some(py) = torch_python() else { return };
    let d = TempDir::new("torch-amp");
    let r = torch_sweep(
        &py,
        &d,
        "amp",
        &[
            "--model",
            "tiny-bert",
            "--seq",
            "64",
            "--batch",
            "16",
            "--capacity",
            "1GiB",
            "--dtype",
            "f32,amp-bf16,bf16",
        ],
    );
    let point = |p: Precision| {
        r.trials
            .iter()
            .find(|t| t.dtype == p && t.outcome == Outcome::Fit)
            .map(|t| (t.baseline_bytes.unwrap(), t.total_bytes.unwrap()))
            .unwrap()
    };
    let (f32_base, f32_total) = point(Precision::F32);
    let (amp_base, amp_total) = point(Precision::AmpBf16);
    let (bf16_base, _) = point(Precision::Bf16);
    // amp keeps the f32 weights (bf16 halves them) ...
    assert_eq!(amp_base, f32_base);
    assert!(bf16_base < f32_base);
    // ... and its forward holds other bytes than f32's (bf16 activations, bf16 weight casts).
    assert_ne!(amp_total, f32_total);
}

/// amp-f16 training whose float16 gradients overflow at the `GradScaler`'s initial scale in both
/// of the trial's steps (tiny Gemma 3: its scaled embeddings) never makes the optimizer's state:
/// the trial says so and is not counted, rather than reporting a training step without it; and
/// with no curve finished the sweep does not claim that nothing fits.
/// A sweep that names no attention runs the model's default: eager for Gemma 2, which
/// transformers runs without sdpa (before, the sweep asked for sdpa and every trial failed).
#[test]
fn a_gemma_2_sweep_runs_eager_attention_by_default() {
    let Some(py) = torch_python() else { return };
    let d = TempDir::new("torch-gemma2");
    let export = d.join("recommended.toml");
    let o = Command::new(bin())
        .args(["sweep", "--runtime", "torch", "--python"])
        .arg(&py)
        .args(["--model", "tiny-gemma2", "--batch", "1", "--seq", "8"])
        .arg("--export")
        .arg(&export)
        .output()
        .unwrap();
    let err = stderr(&o);
    assert!(o.status.success(), "{err}");
    assert!(err.contains("PyTorch: attention eager"), "{err}");
    let text = std::fs::read_to_string(&export).unwrap();
    let doc: toml::Value = toml::from_str(&text).unwrap();
    assert_eq!(
        doc["huggingface"]["attn_implementation"].as_str(),
        Some("eager"),
        "{text}"
    );
}

#[test]
fn a_training_trial_whose_steps_the_grad_scaler_skipped_is_not_counted() {
    let Some(py) = torch_python() else { return };
    // Gemma 3's float16 gradients overflow at the scaler's initial scale at random init.
    let point = [
        "--model",
        "tiny-gemma3",
        "--workload",
        "train",
        "--dtype",
        "amp-f16",
        "--batch",
        "1",
        "--seq",
        "8",
    ];
    let run = |command: &[&str]| {
        Command::new(bin())
            .args(command)
            .arg("--python")
            .arg(&py)
            .args(point)
            .output()
            .unwrap()
    };
    let o = run(&["sweep", "--runtime", "torch"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(
        out.contains("the GradScaler skipped the first training step")
            && out.contains("measure amp-bf16 instead"),
        "{out}"
    );
    assert!(
        out.contains("no recommendation: no curve finished"),
        "{out}"
    );
    assert!(!out.contains("no configuration fits"), "{out}");
    // `estimate --check` at the same point gives no measured figure, and says why.
    let o = run(&["estimate", "--runtime", "torch", "--check", "--json"]);
    assert!(o.status.success(), "{}", stderr(&o));
    let point: serde_json::Value =
        serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap()).unwrap();
    assert!(point["measured_total_bytes"].is_null(), "{point}");
    assert!(
        point["not_measured"]
            .as_str()
            .is_some_and(|w| w.contains("the GradScaler skipped the first training step")),
        "{point}"
    );
}

#[test]
fn unusable_interpreters_and_runtime_mismatches_are_one_sentence_and_exit_2() {
    let d = TempDir::new("torch-refusals");
    let run = |args: &[&str]| {
        let mut full = vec!["sweep", "--model", "tiny-bert"];
        full.extend_from_slice(args);
        Command::new(bin()).args(&full).output().unwrap()
    };
    let refused = |args: &[&str], needles: &[&str]| {
        let o = run(args);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
        for n in needles {
            assert!(err.contains(n), "{args:?}: missing '{n}' in {err}");
        }
        let lines = err.lines().filter(|l| !l.trim().is_empty()).count();
        assert_eq!(lines, 1, "one sentence: {err}");
        assert!(
            !err.contains("panicked") && !err.contains("Traceback"),
            "{err}"
        );
    };
    refused(
        &["--runtime", "torch", "--python", "/no/such/python"],
        &["/no/such/python does not exist", "--python"],
    );
    refused(
        &["--workload", "train"],
        &[
            "candle runtime runs inference forwards only",
            "--runtime",
            "--workload",
        ],
    );
    refused(
        &["--dtype", "amp-bf16"],
        &["no mixed precision", "--runtime"],
    );
    // The estimator models candle: it refuses mixed precision the same way.
    let o = Command::new(bin())
        .args(["estimate", "--model", "tiny-bert", "--dtype", "amp-bf16"])
        .output()
        .unwrap();
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no mixed precision"), "{}", stderr(&o));
    refused(
        &["--runtime", "torch", "--gradient-checkpointing", "on"],
        &[
            "only changes a training step",
            "--workload",
            "--gradient-checkpointing",
        ],
    );
    refused(
        &[
            "--runtime",
            "torch",
            "--workload",
            "train",
            "--task",
            "base",
        ],
        &["needs a head with a loss", "--task"],
    );
    // transformers runs Gemma 2 with eager attention only: sdpa is refused before any Python.
    let o = Command::new(bin())
        .args([
            "sweep",
            "--model",
            "tiny-gemma2",
            "--runtime",
            "torch",
            "--attn",
            "sdpa",
        ])
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("eager attention only") && err.contains("--attn"),
        "{err}"
    );
    assert_eq!(
        err.lines().filter(|l| !l.trim().is_empty()).count(),
        1,
        "{err}"
    );
    // An interpreter that is not Python at all, and one without torch.
    let fake = d.join("python");
    std::fs::write(&fake, "#!/bin/sh\necho not python >&2\nexit 3\n").unwrap();
    std::fs::set_permissions(&fake, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let fake_s = fake.display().to_string();
    refused(
        &["--runtime", "torch", "--python", &fake_s],
        &[&fake_s, "cannot run the PyTorch worker", "not python"],
    );
    let bare = d.join("bare");
    let made = Command::new("python3")
        .args(["-m", "venv", "--without-pip"])
        .arg(&bare)
        .status();
    if made.is_ok_and(|s| s.success()) {
        let p = bare.join("bin/python").display().to_string();
        refused(
            &["--runtime", "torch", "--python", &p],
            &[
                &p,
                "has no PyTorch (torch)",
                "-m pip install torch transformers",
            ],
        );
    }
}

#[test]
fn both_ends_of_the_protocol_read_the_same_fixtures() {
    let Some(py) = torch_python() else { return };
    let o = oomlab::worker::python::worker_command(&py, "selftest")
        .arg(fixtures().join("protocol"))
        .output()
        .unwrap();
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(o.status.success(), "{out}{}", stderr(&o));
    assert!(out.contains(" passed, 0 failed"), "{out}");
}

#[test]
fn a_worker_that_outgrows_this_machine_is_stopped_before_the_kernel_would() {
    let Some(py) = torch_python() else { return };
    let d = TempDir::new("torch-host");
    // The machine taken to have 200 MiB available: importing torch alone takes more, so the
    // supervisor, watching the worker's resident memory, ends it while it builds the model.
    let o = Command::new(bin())
        .args(["sweep", "--runtime", "torch", "--python"])
        .arg(&py)
        .args([
            "--model",
            "tiny-bert",
            "--seq",
            "32",
            "--batch",
            "1..4",
            "--capacity",
            "64MiB",
            "--worker-host-available-bytes=200MiB",
            "--journal",
        ])
        .arg(d.join("j.jsonl"))
        .output()
        .unwrap();
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{err}");
    assert!(
        err.contains("no trial ran")
            && err.contains("more memory than this machine can give the worker"),
        "{err}"
    );
}

#[test]
fn a_killed_torch_sweep_resumes_without_repeating_a_trial() {
    let Some(py) = torch_python() else { return };
    let d = TempDir::new("torch-resume");
    let j = d.join("j.jsonl");
    let jp = j.display().to_string();
    let mut child = Command::new(bin())
        .args(["sweep", "--runtime", "torch", "--python"])
        .arg(&py)
        .args([
            "--model",
            "tiny-bert",
            "--seq",
            "16",
            "--batch",
            "1..3",
            "--strategy",
            "grid",
            "--capacity",
            "1GiB",
            "--journal",
            &jp,
        ])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Bounded by journal lines, not time (the bound only guards a hang: importing torch on a
    // loaded 2-core machine takes tens of seconds): one finished trial, then the CLI is killed.
    let mut trials = 0;
    for _ in 0..60_000 {
        if child.try_wait().unwrap().is_some() {
            break;
        }
        trials = std::fs::read_to_string(&j).map_or(0, |t| t.matches("\"type\":\"trial\"").count());
        if trials >= 1 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(trials >= 1, "journal did not grow");
    child.kill().unwrap();
    child.wait().unwrap();
    let before = oomlab::report::read_journal(&j).unwrap();
    assert_eq!(before.header.plan.runtimes, [Runtime::Torch]);
    // The journal records the interpreter the sweep found.
    assert_eq!(
        before.header.plan.torch.python.as_deref(),
        Some(py.as_path())
    );
    // The venv moved: another interpreter path continues the sweep.
    let moved = d.join("python");
    std::fs::write(&moved, format!("#!/bin/sh\nexec {} \"$@\"\n", py.display())).unwrap();
    std::fs::set_permissions(&moved, std::os::unix::fs::PermissionsExt::from_mode(0o755)).unwrap();
    let o = Command::new(bin())
        .args(["sweep", "--resume", &jp, "--python"])
        .arg(&moved)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains(&format!("PyTorch runtime: {}", moved.display())),
        "{}",
        stderr(&o)
    );
    let after = oomlab::report::read_journal(&j).unwrap();
    let mut batches: Vec<usize> = after
        .trials
        .iter()
        .filter(|t| t.outcome != Outcome::Failed)
        .map(|t| t.batch)
        .collect();
    batches.sort_unstable();
    assert_eq!(batches, [1, 2, 3], "no finished trial repeated");
    assert!(after.trials.iter().all(|t| t.runtime == Runtime::Torch));
}

/// `oomlab estimate --runtime torch --check --json` at `batches`, with `extra` of `estimate`'s
/// options: (estimated, measured) totals.
fn estimate_checked_with(
    python: &PathBuf,
    (model, seq, dtype, attn, workload): (&str, &str, &str, &str, &str),
    batches: &str,
    extra: &[&str],
) -> Vec<(u64, u64)> {
    let out = Command::new(bin())
        .args([
            "estimate",
            "--runtime",
            "torch",
            "--check",
            "--json",
            "--threads",
            "2",
            "--model",
            model,
        ])
        .args([
            "--seq",
            seq,
            "--dtype",
            dtype,
            "--batch",
            batches,
            "--attn",
            attn,
            "--workload",
            workload,
            "--python",
        ])
        .arg(python)
        .args(extra)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", stderr(&out));
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            let v: serde_json::Value = serde_json::from_str(l).unwrap();
            (
                v["total_bytes"].as_u64().unwrap(),
                v["measured_total_bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

/// The PyTorch estimator against the torch runtime on tiny configs: the batch slope to the byte
/// and the total within 1%, for every modelled family, f32 and bf16, sdpa and eager; Mistral
/// below and past its window.
#[test]
fn the_pytorch_estimator_pins_the_batch_slope_to_the_byte() {
    let Some(python) = torch_python() else { return };
    let cases = [
        ("tiny-bert", "24", "f32", "sdpa", "infer"),
        ("tiny-bert", "40", "bf16", "eager", "infer"),
        ("bert-mini", "24", "f32", "sdpa", "grad"),
        ("bert-mini", "40", "bf16", "eager", "grad"),
        ("tiny-llama", "24", "f32", "sdpa", "infer"),
        ("tiny-qwen2", "20", "bf16", "sdpa", "infer"),
        ("tiny-qwen3", "24", "f32", "sdpa", "infer"),
        ("tiny-mistral", "3", "bf16", "sdpa", "infer"),
        // Past its window (4): the sliding-window mask, and `repeat_kv` for the masked kernel.
        ("tiny-mistral", "16", "bf16", "sdpa", "infer"),
        ("tiny-mistral", "12", "f32", "sdpa", "grad"),
        // The decoders' eager attention (its additive causal mask, repeat_kv, f32 softmax).
        ("tiny-qwen3", "12", "bf16", "eager", "grad"),
        ("tiny-mistral", "12", "f32", "eager", "infer"),
        ("tiny-distilbert", "24", "f32", "eager", "grad"),
        ("tiny-llama", "24", "f32", "sdpa", "grad"),
        ("tiny-qwen3", "20", "bf16", "sdpa", "grad"),
        ("tiny-distilbert", "24", "bf16", "sdpa", "infer"),
        ("tiny-distilbert", "24", "f32", "sdpa", "grad"),
        ("tiny-roberta", "24", "bf16", "sdpa", "infer"),
        ("tiny-roberta", "24", "f32", "eager", "grad"),
    ];
    let masked_lm: &[&str] = &["--task", "masked-lm"];
    let heads = cases.iter().map(|c| (*c, &[][..])).chain([
        // The masked-LM head: transform, `LayerNorm`, the decoder over the vocabulary.
        (("tiny-bert", "24", "f32", "sdpa", "infer"), masked_lm),
        (("tiny-roberta", "24", "bf16", "eager", "grad"), masked_lm),
        (("tiny-distilbert", "24", "f32", "eager", "grad"), masked_lm),
        (
            ("tiny-distilbert", "24", "amp-bf16", "sdpa", "infer"),
            masked_lm,
        ),
        // RoBERTa's own classification head (no pooler) outside training; a decoder's base
        // head (the last hidden state and the cache, no logits).
        (
            ("tiny-roberta", "24", "f32", "sdpa", "grad"),
            &["--task", "sequence-classification"][..],
        ),
        (
            ("tiny-qwen3", "20", "bf16", "sdpa", "grad"),
            &["--task", "base"][..],
        ),
        (
            ("tiny-mistral", "16", "f32", "sdpa", "infer"),
            &["--task", "base"][..],
        ),
        // Autocast outside training: the forward in eval mode on the tape, the parameters'
        // casts cached through it.
        (("bert-mini", "64", "amp-bf16", "sdpa", "infer"), &[][..]),
        (
            ("tiny-distilbert", "24", "amp-bf16", "eager", "grad"),
            &[][..],
        ),
        (("tiny-qwen3", "24", "amp-bf16", "sdpa", "infer"), &[][..]),
        (("tiny-mistral", "16", "amp-f16", "sdpa", "grad"), &[][..]),
        // RoBERTa's base head under autocast: the pooler, not the classification head.
        (("tiny-roberta", "4", "amp-bf16", "sdpa", "grad"), &[][..]),
        // The decoders' classification head: `score` on every position, the last token that
        // is not padding pooled (the indices saved with the graph).
        (
            ("tiny-qwen2", "20", "bf16", "eager", "grad"),
            &["--task", "sequence-classification"][..],
        ),
        (
            ("tiny-mistral", "16", "amp-bf16", "sdpa", "infer"),
            &["--task", "sequence-classification"][..],
        ),
        // Phi-3: the fused projections' slices, the rotation's concatenation (sdpa's output
        // heads-major, copied by `contiguous`; eager's query folded as a view).
        (("tiny-phi3", "16", "f32", "sdpa", "grad"), &[][..]),
        (("tiny-phi3", "16", "bf16", "eager", "infer"), &[][..]),
        // Gemma 3: its norms in f32 with `1 + weight`, global and local layers (past the local
        // window: both masks), one key/value head (repeat_kv's view, folded by copies).
        (("tiny-gemma3", "24", "bf16", "eager", "grad"), &[][..]),
        (("tiny-gemma3", "8", "amp-bf16", "sdpa", "infer"), &[][..]),
        // Gemma 2 (eager only): the scores' and the logits' soft-capping.
        (("tiny-gemma2", "12", "bf16", "eager", "grad"), &[][..]),
        // ModernBERT past its local window (2 each side): the window's mask, the fused Wqkv's
        // slices rotated in f32 (bf16: `.float()` copies and widened tables, both rotated
        // before either is cast back), the GeGLU halves.
        (
            ("tiny-modernbert", "40", "bf16", "sdpa", "infer"),
            masked_lm,
        ),
        (
            ("tiny-modernbert", "40", "f32", "sdpa", "grad"),
            &["--task", "sequence-classification"][..],
        ),
        // Its eager attention: the global layers without a mask, the local ones with the
        // additive one; q and k keep Wqkv's row layout, so folding them into `bmm` copies.
        (
            ("tiny-modernbert", "40", "bf16", "eager", "grad"),
            &["--task", "sequence-classification"][..],
        ),
    ]);
    for (case, extra) in heads {
        let (model, seq, dtype, attn, workload) = case;
        let points = estimate_checked_with(&python, case, "1,3", extra);
        let [(e1, m1), (e3, m3)] = points[..] else {
            panic!("{model}: {points:?}")
        };
        assert_eq!(
            e3 - e1,
            m3 - m1,
            "{model} {seq} {dtype} {attn} {workload}: slope"
        );
        for (e, m) in [(e1, m1), (e3, m3)] {
            let err = (e as f64 - m as f64).abs() / m as f64;
            assert!(
                err < 0.01,
                "{model} {seq} {dtype} {attn} {workload}: {e} against {m}"
            );
        }
    }
}

/// The PyTorch estimator's training step (forward in train mode, backward, `AdamW`) against the
/// torch runtime: the batch slope and the totals to the byte, where the backward sets
/// the peak (tiny BERT with its dropouts on: f32, bf16 with SGD, amp-bf16, and with gradient
/// checkpointing, and eager attention; tiny `DistilBERT` with its dropouts on; the tiny Llama,
/// Qwen2 and Qwen3 configs, amp-bf16 and checkpointed, sdpa and eager; tiny Mistral past its
/// window; the bundled tiny BERT and `DistilBERT`, dropouts off: the flash kernel; eager
/// `DistilBERT`) and
/// where the backward or the optimizer step may (bert-mini at seq 128).
#[test]
fn the_pytorch_estimator_pins_a_training_step_to_the_byte() {
    let Some(python) = torch_python() else { return };
    let d = TempDir::new("torch-train-estimate");
    // The tiny encoders with their dropouts on (the bundled ones have them off).
    let with_fields = |name: &str, file: &str, fields: &[(&str, serde_json::Value)]| {
        let path = d.join(file);
        let mut tiny: serde_json::Value = serde_json::from_str(
            &std::fs::read_to_string(
                std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
                    .join(format!("assets/models/{name}.json")),
            )
            .unwrap(),
        )
        .unwrap();
        for (field, value) in fields {
            tiny[*field] = value.clone();
        }
        std::fs::write(&path, tiny.to_string()).unwrap();
        path.to_string_lossy().into_owned()
    };
    let with_dropout = |name: &str, fields: [&str; 2]| {
        with_fields(
            name,
            &format!("{name}-dropout.json"),
            &fields.map(|f| (f, 0.1.into())),
        )
    };
    // Gemma 3 with two key/value heads, as gemma-3-4b and larger have (candle cannot run it).
    let gemma3_kv2 = with_fields(
        "tiny-gemma3",
        "tiny-gemma3-kv2.json",
        &[("num_key_value_heads", 2.into())],
    );
    let config = with_dropout(
        "tiny-bert",
        ["hidden_dropout_prob", "attention_probs_dropout_prob"],
    );
    let distil = with_dropout("tiny-distilbert", ["dropout", "attention_dropout"]);
    // ReLU saves its output for the backward (gelu and silu their input): one tensor fewer in
    // each MLP, and in BERT's and DistilBERT's masked-LM transform.
    let relu = |name: &str, field: &str| {
        with_fields(
            name,
            &format!("{name}-relu.json"),
            &[(field, "relu".into())],
        )
    };
    let (relu_bert, relu_distil) = (
        relu("tiny-bert", "hidden_act"),
        relu("tiny-distilbert", "activation"),
    );
    let relu_llama = relu("tiny-llama", "hidden_act");
    // A Mistral whose head is tied to its embeddings: transformers ties it (candle never).
    let tied_mistral = with_fields(
        "tiny-mistral",
        "tiny-mistral-tied.json",
        &[("tie_word_embeddings", true.into())],
    );
    // A Llama whose head_dim is not hidden / heads (candle cannot run it).
    let wide_llama = with_fields(
        "tiny-llama",
        "tiny-llama-hd16.json",
        &[("head_dim", 16.into())],
    );
    // The optimizer walks `model.parameters()`, the classes' registration order: BERT's
    // position table before its token types, RoBERTa's after its embedding LayerNorm, the
    // masked-LM bias first in its head, and XLM-RoBERTa's head before the model (transformers
    // 5). At a vocabulary of 97 and seq 7 (or 12 under autocast) AdamW's peak is where the
    // orders differ.
    let odd: [(&str, serde_json::Value); 4] = [
        ("vocab_size", 97.into()),
        ("hidden_size", 48.into()),
        ("num_attention_heads", 3.into()),
        ("intermediate_size", 40.into()),
    ];
    let (bert_v97, xlmr_v97) = (
        with_fields("tiny-bert", "tiny-bert-v97.json", &odd),
        with_fields("tiny-roberta", "tiny-roberta-v97.json", &odd),
    );
    // Attention dropout alone (sdpa's math kernel) at batch 1: `matmul` folds the heads-major
    // operands into `bmm`'s batch as views, where above batch 1 it copies them.
    let attn_dropout = with_fields(
        "tiny-bert",
        "tiny-bert-attn-dropout.json",
        &[
            ("attention_probs_dropout_prob", 0.1.into()),
            ("hidden_size", 24.into()),
            ("num_attention_heads", 2.into()),
            ("num_hidden_layers", 1.into()),
            ("intermediate_size", 40.into()),
            ("vocab_size", 1000.into()),
        ],
    );
    // A narrow MLP and a key/value head per query head: inference peaks in the rotation, where
    // the caller's q lives until k is rotated too.
    let narrow_llama = with_fields(
        "tiny-llama",
        "tiny-llama-narrow.json",
        &[
            ("intermediate_size", 16.into()),
            ("num_key_value_heads", 4.into()),
        ],
    );
    // Phi-3 with a key/value head per query head: under checkpointing (no cache copies them)
    // the values are a slice of the fused rows, which `matmul` copies to fold, so the fused
    // projection goes as the attention returns.
    let phi3_mha = with_fields(
        "tiny-phi3",
        "tiny-phi3-mha.json",
        &[("num_key_value_heads", 4.into())],
    );
    // The decoders' constructors register a layer's norms after its projections and MLP: with
    // a vocabulary of 97, AdamW's peak is q_proj's update beside the embeddings' denominator
    // (in the forward's order the input norm came between them). tiny-qwen3 has biases: a bias
    // stays after its weight, the norms over the heads after o_proj.
    let small_vocab: [(&str, serde_json::Value); 4] = [
        ("vocab_size", 97.into()),
        ("hidden_size", 64.into()),
        ("intermediate_size", 64.into()),
        ("num_key_value_heads", 1.into()),
    ];
    // A decoder's attention dropout under eager attention: its mask (in the weights' type) and
    // output, which `matmul` saves in place of the softmax's.
    let llama_attn_dropout = with_fields(
        "tiny-llama",
        "tiny-llama-attn-dropout.json",
        &[("attention_dropout", 0.1.into())],
    );
    let llama_v97 = with_fields("tiny-llama", "tiny-llama-v97.json", &small_vocab);
    // Llama with `attention_bias` and `mlp_bias` (candle cannot load them): the seven
    // projections' biases, each after its weight in the optimizer's walk.
    let llama_bias_v97 = with_fields(
        "tiny-llama",
        "tiny-llama-bias-v97.json",
        &[
            small_vocab[0].clone(),
            small_vocab[1].clone(),
            small_vocab[2].clone(),
            small_vocab[3].clone(),
            ("attention_bias", true.into()),
            ("mlp_bias", true.into()),
        ],
    );
    let qwen3_v97 = with_fields("tiny-qwen3", "tiny-qwen3-v97.json", &small_vocab);
    // A fine-tuned classifier's own labels (`id2label`, else `num_labels`): the classifier's
    // weight, its gradient and state, and the logits (read as 2, these were 18480 bytes short).
    let llama_labels = with_fields(
        "tiny-llama",
        "tiny-llama-labels.json",
        &[("num_labels", 37.into())],
    );
    let bert_labels = with_fields(
        "tiny-bert",
        "tiny-bert-labels.json",
        &[(
            "id2label",
            (0..37)
                .map(|i| (i.to_string(), serde_json::Value::from(format!("L{i}"))))
                .collect::<serde_json::Map<_, _>>()
                .into(),
        )],
    );
    // ModernBERT with its decoder untied from the embeddings: a weight and a gradient of its
    // own.
    let modernbert_untied = with_fields(
        "tiny-modernbert",
        "tiny-modernbert-untied.json",
        &[
            ("tie_word_embeddings", false.into()),
            ("vocab_size", 97.into()),
        ],
    );
    // ModernBERT with every bias on, ReLU in the MLP and the head, and mean pooling: the norms'
    // biases, the classifier's pooling over the mask (its count saved by the division).
    let modernbert_var = with_fields(
        "tiny-modernbert",
        "tiny-modernbert-var.json",
        &[
            ("classifier_pooling", "mean".into()),
            ("hidden_activation", "relu".into()),
            ("classifier_activation", "relu".into()),
            ("norm_bias", true.into()),
            ("attention_bias", true.into()),
            ("mlp_bias", true.into()),
            ("classifier_bias", true.into()),
        ],
    );
    let ckpt: &[&str] = &["--gradient-checkpointing", "on"];
    let sgd: &[&str] = &["--optimizer", "sgd"];
    let cases = [
        (
            (config.as_str(), "40", "f32", "sdpa", "train"),
            "1,3",
            &[][..],
        ),
        ((config.as_str(), "24", "bf16", "sdpa", "train"), "1,3", sgd),
        (
            (config.as_str(), "24", "amp-bf16", "sdpa", "train"),
            "1,3",
            &[],
        ),
        (
            (config.as_str(), "24", "amp-bf16", "sdpa", "train"),
            "1,3",
            ckpt,
        ),
        ((config.as_str(), "40", "f32", "sdpa", "train"), "2,3", ckpt),
        (
            (config.as_str(), "24", "bf16", "eager", "train"),
            "1,3",
            &[],
        ),
        (("bert-mini", "128", "f32", "sdpa", "train"), "8,16", &[]),
        ((distil.as_str(), "24", "f32", "sdpa", "train"), "1,3", &[]),
        (("tiny-llama", "24", "f32", "sdpa", "train"), "1,3", &[]),
        (
            ("tiny-llama", "24", "amp-bf16", "sdpa", "train"),
            "1,3",
            &[],
        ),
        (
            ("tiny-qwen3", "24", "amp-bf16", "sdpa", "train"),
            "1,3",
            ckpt,
        ),
        (("tiny-mistral", "12", "f32", "sdpa", "train"), "2,3", &[]),
        (
            ("tiny-mistral", "16", "amp-bf16", "sdpa", "train"),
            "1,2",
            ckpt,
        ),
        (("tiny-qwen2", "20", "bf16", "sdpa", "train"), "2,4", sgd),
        (("tiny-llama", "24", "f32", "sdpa", "train"), "2,3", ckpt),
        (("tiny-qwen3", "24", "f32", "sdpa", "train"), "1,3", &[]),
        (("tiny-roberta", "24", "f32", "sdpa", "train"), "1,3", &[]),
        // Eager decoders, the peak in the attention's backward; the bundled encoders, whose
        // dropouts are off: sdpa's flash kernel in training.
        (
            ("tiny-llama", "64", "amp-bf16", "eager", "train"),
            "2,3",
            ckpt,
        ),
        (("tiny-bert", "24", "f32", "sdpa", "train"), "1,3", &[]),
        // amp-f16: autocast to float16 and the GradScaler's scalars.
        (
            (config.as_str(), "24", "amp-f16", "sdpa", "train"),
            "1,3",
            &[],
        ),
        (
            ("tiny-qwen3", "24", "amp-f16", "sdpa", "train"),
            "2,3",
            ckpt,
        ),
        (
            (distil.as_str(), "24", "bf16", "eager", "train"),
            "1,3",
            &[],
        ),
        (
            ("tiny-distilbert", "24", "amp-bf16", "sdpa", "train"),
            "1,2",
            ckpt,
        ),
        // Peaks in the optimizer step: AdamW's divisor cast to the parameters' bf16, and
        // amp-f16's found-inf flag held through the step.
        (("bert-mini", "64", "bf16", "sdpa", "train"), "2,4", &[]),
        // The masked-LM head: its decoder tied to the word embeddings, its `LayerNorm` on a
        // bf16 input with f32 weights under autocast (the CPU's mixed-type kernel).
        (
            ("bert-mini", "64", "amp-bf16", "sdpa", "train"),
            "2,4",
            &["--task", "masked-lm"],
        ),
        (
            ("tiny-roberta", "24", "f32", "sdpa", "train"),
            "1,3",
            &["--task", "masked-lm"],
        ),
        (
            ("tiny-distilbert", "24", "amp-bf16", "sdpa", "train"),
            "1,3",
            &["--task", "masked-lm"],
        ),
        (
            ("tiny-mistral", "16", "amp-f16", "sdpa", "train"),
            "1,2",
            ckpt,
        ),
        // The decoders' classification head; Qwen3's embeddings are tied only to a causal-lm
        // head (this was three embedding-sized tensors short while the tie was assumed).
        (
            ("tiny-qwen3", "24", "f32", "sdpa", "train"),
            "1,3",
            &["--task", "sequence-classification"],
        ),
        (
            ("tiny-llama", "24", "amp-f16", "sdpa", "train"),
            "2,3",
            &[
                "--task",
                "sequence-classification",
                "--gradient-checkpointing",
                "on",
            ],
        ),
        // ModernBERT: `unbind`'s backward stacking q's, k's and v's gradients, the rotation's
        // tables saved, the decoder tied to the embeddings; checkpointed, each layer's
        // recomputation holding only its own type's tables (and a local layer the mask).
        (
            ("tiny-modernbert", "40", "f32", "sdpa", "train"),
            "1,3",
            &["--task", "masked-lm"],
        ),
        (
            (llama_labels.as_str(), "6", "f32", "sdpa", "train"),
            "1,3",
            &["--task", "sequence-classification"],
        ),
        (
            (bert_labels.as_str(), "6", "f32", "sdpa", "train"),
            "1,3",
            &["--task", "sequence-classification"],
        ),
        (
            ("tiny-modernbert", "40", "amp-bf16", "eager", "train"),
            "1,3",
            &["--task", "masked-lm", "--gradient-checkpointing", "on"],
        ),
        (
            (modernbert_untied.as_str(), "12", "f32", "sdpa", "train"),
            "1,3",
            &["--task", "masked-lm"],
        ),
        (
            (modernbert_var.as_str(), "40", "amp-bf16", "sdpa", "train"),
            "1,3",
            &[
                "--task",
                "sequence-classification",
                "--gradient-checkpointing",
                "on",
            ],
        ),
        // Phi-3: the split's backward concatenating both halves' gradients; at batch 1 the
        // peak is AdamW's update of gate_up_proj beside qkv_proj's (the constructor's order).
        (("tiny-phi3", "16", "f32", "sdpa", "train"), "1,3", &[]),
        (
            ("tiny-phi3", "16", "amp-bf16", "eager", "train"),
            "1,3",
            ckpt,
        ),
        (
            (phi3_mha.as_str(), "24", "f32", "eager", "train"),
            "2,3",
            ckpt,
        ),
        (
            (llama_v97.as_str(), "5", "f32", "sdpa", "train"),
            "1,2",
            &["--task", "sequence-classification"],
        ),
        (
            (qwen3_v97.as_str(), "5", "amp-bf16", "eager", "train"),
            "1,2",
            &["--task", "sequence-classification"],
        ),
        (
            (llama_bias_v97.as_str(), "5", "amp-bf16", "sdpa", "train"),
            "1,2",
            &["--task", "sequence-classification"],
        ),
        (
            (llama_attn_dropout.as_str(), "12", "f32", "eager", "train"),
            "2,3",
            &[],
        ),
        // Gemma 3: the optimizer walks its constructor's order; eager past the local window.
        (("tiny-gemma3", "24", "f32", "sdpa", "train"), "1,3", &[]),
        (("tiny-gemma3", "24", "bf16", "eager", "train"), "2,3", ckpt),
        (
            (gemma3_kv2.as_str(), "24", "bf16", "sdpa", "train"),
            "1,3",
            &[],
        ),
        (
            (gemma3_kv2.as_str(), "24", "amp-bf16", "eager", "train"),
            "2,3",
            ckpt,
        ),
        (
            ("tiny-gemma2", "12", "amp-bf16", "eager", "train"),
            "1,3",
            &[],
        ),
        (
            (relu_bert.as_str(), "24", "f32", "sdpa", "train"),
            "1,3",
            &["--task", "masked-lm"],
        ),
        (
            (relu_bert.as_str(), "24", "bf16", "eager", "grad"),
            "1,3",
            &["--task", "masked-lm"],
        ),
        (
            (relu_distil.as_str(), "24", "f32", "sdpa", "train"),
            "1,3",
            &["--task", "masked-lm"],
        ),
        (
            (relu_llama.as_str(), "24", "amp-bf16", "sdpa", "train"),
            "1,3",
            &[],
        ),
        (
            (relu_llama.as_str(), "24", "f32", "sdpa", "grad"),
            "1,3",
            &[],
        ),
        (
            (wide_llama.as_str(), "24", "f32", "sdpa", "train"),
            "1,3",
            &[],
        ),
        (
            (tied_mistral.as_str(), "24", "f32", "sdpa", "train"),
            "1,3",
            &["--optimizer", "sgd"],
        ),
        (
            (tied_mistral.as_str(), "24", "bf16", "sdpa", "infer"),
            "1,3",
            &[],
        ),
        (
            (bert_v97.as_str(), "7", "f32", "sdpa", "train"),
            "3,5",
            &["--task", "sequence-classification"],
        ),
        (
            (xlmr_v97.as_str(), "7", "f32", "sdpa", "train"),
            "3,5",
            &["--task", "masked-lm"],
        ),
        (
            (xlmr_v97.as_str(), "7", "f32", "sdpa", "train"),
            "3,5",
            &["--task", "sequence-classification"],
        ),
        (
            (narrow_llama.as_str(), "24", "f32", "sdpa", "infer"),
            "1,3",
            &["--task", "base"],
        ),
        (
            (attn_dropout.as_str(), "62", "amp-bf16", "sdpa", "train"),
            "1,2",
            &["--task", "sequence-classification", "--optimizer", "sgd"],
        ),
        // Autocast casts a linear's bias before its weight; the optimizer still walks the
        // weight first (here the classifier's, walked first of all).
        (
            (xlmr_v97.as_str(), "12", "amp-bf16", "sdpa", "train"),
            "1,2",
            &["--task", "sequence-classification"],
        ),
    ];
    for (case, batches, extra) in cases {
        let points = estimate_checked_with(&python, case, batches, extra);
        let [(e1, m1), (e2, m2)] = points[..] else {
            panic!("{case:?}: {points:?}")
        };
        assert_eq!(e2 - e1, m2 - m1, "{case:?}: slope");
        // The totals too: every modelled allocation, the scalars included (the issue asks
        // for 1%; what the estimator models it matches exactly).
        assert_eq!((e1, e2), (m1, m2), "{case:?}: totals");
    }
}

/// `auto` on the torch runtime starts from the PyTorch estimator's b* on top of the measured
/// baseline: two trials per curve (b* fits, b*+1 does not) when the estimate is right.
#[test]
fn auto_on_the_torch_runtime_finds_the_boundary_in_two_trials() {
    let Some(py) = torch_python() else { return };
    let d = TempDir::new("torch-auto");
    for (model, seq, capacity) in [("tiny-bert", "64", "3MiB"), ("tiny-llama", "32", "2MiB")] {
        let r = torch_sweep(
            &py,
            &d,
            model,
            &[
                "--model",
                model,
                "--seq",
                seq,
                "--batch",
                "1..256",
                "--capacity",
                capacity,
                "--threads",
                "2",
                "--confirm",
                "none",
            ],
        );
        let b = &r.boundaries[0];
        assert_eq!(b.status, BoundaryStatus::Exact, "{model}: {:?}", r.trials);
        assert_eq!(b.trials_used, 2, "{model}: {:?}", r.trials);
        assert!(b.max_batch.is_some_and(|m| m > 1), "{model}");
    }
}

/// A config as transformers 5 saves it (`to_dict`: `rope_parameters` for `rope_theta`,
/// Qwen3-MoE's `num_local_experts` for `num_experts`, `layer_types`, every default written out;
/// ModernBERT without `global_attn_every_n_layers` is `cli_errors`' case) reads as the bundled one:
/// the PyTorch estimate of each modelled family is the same to the byte, and the families it
/// does not model are refused as such, not for a field they lack; candle's estimate is the same
/// too.
#[test]
fn a_config_saved_by_transformers_5_estimates_as_the_original() {
    let Some(python) = torch_python() else { return };
    let d = TempDir::new("v5-configs");
    let script = "import json, sys, transformers\n\
        raw = json.load(open(sys.argv[1])); model_type = raw.pop('model_type')\n\
        json.dump(transformers.AutoConfig.for_model(model_type, **raw).to_dict(), open(sys.argv[2], 'w'))\n";
    let estimate_with = |model: &str, runtime: &[&str]| {
        let o = Command::new(bin())
            .args(["estimate", "--model", model])
            .args(["--seq", "12", "--batch", "2", "--json"])
            .args(runtime)
            .output()
            .unwrap();
        if o.status.success() {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
            Ok(v["total_bytes"].as_u64().unwrap())
        } else {
            Err(stderr(&o))
        }
    };
    let estimate =
        |model: &str| estimate_with(model, &["--runtime", "torch", "--workload", "train"]);
    for name in crate::common::TINY_MODELS {
        let original = std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join(format!("assets/models/{name}.json"));
        let saved = d.join(&format!("{name}.json"));
        let o = Command::new(&python)
            .arg("-c")
            .arg(script)
            .arg(&original)
            .arg(&saved)
            .output()
            .unwrap();
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let saved = saved.to_string_lossy().into_owned();
        match (estimate(name), estimate(&saved)) {
            (Ok(a), Ok(b)) => assert_eq!(a, b, "{name}"),
            (Err(a), Err(b)) => {
                assert!(a.contains("does not model"), "{name}: {a}");
                assert!(b.contains("does not model"), "{name} as saved: {b}");
            }
            (a, b) => panic!("{name}: {a:?} against {b:?}"),
        }
        // candle's config types read the fields transformers 4 wrote: the saved config's are
        // carried back to those names (`rope_theta` from `rope_parameters`, …).
        let (a, b) = (estimate_with(name, &[]), estimate_with(&saved, &[]));
        assert_eq!(
            a.clone().unwrap(),
            b.clone().unwrap(),
            "{name}: {a:?} {b:?}"
        );
    }
}
