//! `oomlab explain` on the command line, and `oomlab models --gpu` that it points to.

use crate::common::{TempDir, bin};
use std::io::{Read, Write};
use std::process::{Command, Output, Stdio};

/// A T4 whose memory is simply full (42.21 MiB cached but unused of 14.56 GiB).
const T4_FULL: &str = "torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 20.00 MiB. GPU 0 has a total capacity of 14.56 GiB of which 3.81 MiB is free. Process 1234 has 14.55 GiB memory in use. Of the allocated memory 14.40 GiB is allocated by PyTorch, and 42.21 MiB is reserved by PyTorch but unallocated.";

const CLASSIC: &str = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 11.17 GiB total capacity; 9.00 GiB already allocated; 1.50 GiB free; 9.50 GiB reserved in total by PyTorch)";

/// Runs oomlab with its runtime cache under `cache`.
fn oomlab(cache: &TempDir, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("XDG_CACHE_HOME", &cache.0)
        .output()
        .unwrap()
}

fn stdout(o: &Output) -> String {
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    String::from_utf8_lossy(&o.stdout).to_string()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

#[test]
fn explain_with_a_model_says_it_sized_one_inference_forward_and_how_to_measure_training() {
    let cache = TempDir::new("explain-cli-model");
    let args = [
        "explain",
        T4_FULL,
        "--model",
        "bert-large-uncased",
        "--seq",
        "512",
        "--runtime",
        "candle",
    ];
    let text = stdout(&oomlab(&cache, &args));
    // The memory is full, not fragmented: a smaller batch first, fp16 on a T4.
    assert!(text.contains("\n1. use a smaller batch"), "{text}");
    let batch_line = text
        .lines()
        .find(|l| l.starts_with("1. "))
        .unwrap()
        .to_string();
    assert!(
        batch_line.contains("`per_device_eval_batch_size=")
            && batch_line.contains("candle's estimate of one inference forward")
            && batch_line.contains("not measured"),
        "{batch_line}"
    );
    assert!(
        text.contains("`oomlab sweep --runtime torch --workload train --model bert-large-uncased --seq 512 --capacity 14.56GiB`"),
        "{text}"
    );
    assert!(
        text.contains("the Tesla T4, compute capability 7.5, has no bf16"),
        "{text}"
    );
    assert!(text.contains("held elsewhere 0.01 GiB:"), "{text}");
    // The same, for scripts.
    let mut with_json = args.to_vec();
    with_json.push("--json");
    let e: serde_json::Value = serde_json::from_str(&stdout(&oomlab(&cache, &with_json))).unwrap();
    let lb = &e["largest_batch"];
    let batch = lb["batch"].as_u64().unwrap();
    assert!(batch_line.contains(&format!("`per_device_eval_batch_size={batch}`")));
    assert!(!text.contains(&format!("per_device_train_batch_size={batch}")));
    assert_eq!(
        (&lb["runtime"], &lb["workload"], &lb["estimated"], &e["gpu"]),
        (
            &"candle".into(),
            &"infer".into(),
            &true.into(),
            &"t4".into()
        )
    );
    for key in ["model", "seq", "dtype", "capacity_bytes", "batch"] {
        assert!(!lb[key].is_null(), "{key}");
    }
}

#[test]
fn the_runtime_cache_is_mentioned_only_when_it_was_just_measured() {
    let cache = TempDir::new("explain-cli-cache");
    let args = ["explain", CLASSIC, "--model", "tiny-bert", "--seq", "64"];
    let first = oomlab(&cache, &args);
    assert!(first.status.success(), "{}", stderr(&first));
    assert!(
        stderr(&first).contains("measured candle's own memory"),
        "{}",
        stderr(&first)
    );
    // From the cache: nothing on stderr at all.
    let again = oomlab(&cache, &args);
    assert!(again.status.success());
    assert_eq!(stderr(&again), "");
}

#[test]
fn explain_takes_gpu_without_a_model_and_it_wins_over_the_messages_figure() {
    let cache = TempDir::new("explain-cli-gpu");
    let e = |args: &[&str]| -> serde_json::Value {
        serde_json::from_str(&stdout(&oomlab(&cache, args))).unwrap()
    };
    let bare = e(&[
        "explain",
        "CUDA error: out of memory",
        "--gpu",
        "t4",
        "--json",
    ]);
    assert_eq!(bare["gpu"], "t4");
    assert!(bare["largest_batch"].is_null());
    let advice = bare["advice"].to_string();
    assert!(
        advice.contains("fp16=True") && !advice.contains("bf16=True"),
        "{advice}"
    );
    // The message's 14.56 GiB is a T4's; --gpu a10g says otherwise, and wins.
    let named = e(&["explain", T4_FULL, "--gpu", "a10g", "--json"]);
    assert_eq!(named["gpu"], "a10g");
    assert!(named["advice"].to_string().contains("bf16=True"));
    // Unknown GPU: null, and the rule.
    let unknown = e(&["explain", "CUDA error: out of memory", "--json"]);
    assert!(unknown["gpu"].is_null());
    assert!(
        unknown["advice"]
            .to_string()
            .contains("torch.cuda.is_bf16_supported()")
    );
    // A name that is no preset: refused, naming the choices.
    let o = oomlab(&cache, &["explain", T4_FULL, "--gpu", "t5"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("unknown GPU 't5'"), "{}", stderr(&o));
}

#[test]
fn the_bare_cuda_error_reads_as_a_sentence() {
    let cache = TempDir::new("explain-cli-bare");
    let text = stdout(&oomlab(&cache, &["explain", "CUDA error: out of memory"]));
    assert!(
        text.starts_with(
            "A CUDA out-of-memory error with no figures (\"CUDA error: out of memory\")"
        ),
        "{text}"
    );
    assert!(!text.contains("without figures out-of-memory"), "{text}");
}

/// `--model` with a message that gives no capacity (TensorFlow's, here) keeps the explanation
/// and says the batches need `--gpu`; a model that cannot be read is still an error. An MPS
/// message's batches are sized under its `max allowed`, PyTorch's own limit there.
#[test]
fn a_model_without_a_capacity_keeps_the_explanation_and_mps_sizes_under_its_limit() {
    let cache = TempDir::new("explain-cli-nocap");
    let tf = "tensorflow.python.framework.errors_impl.ResourceExhaustedError: OOM when allocating tensor of shape [4096] and type float";
    let o = oomlab(&cache, &["explain", "--model", "tiny-bert", tf]);
    let text = stdout(&o);
    assert!(
        text.starts_with("A TensorFlow out-of-memory message"),
        "{text}"
    );
    assert!(text.contains("What to do"), "{text}");
    let err = stderr(&o);
    assert!(
        err.contains("no capacity") && err.contains("--gpu"),
        "{err}"
    );
    let o = oomlab(&cache, &["explain", "--model", "no-such-model", tf]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(stderr(&o).contains("no-such-model"), "{}", stderr(&o));
    let mps = "MPS backend out of memory (MPS allocated: 1.68 MB, other allocations: 3.95 MB, max allowed: 20.00 MB). Tried to allocate 1024.00 KB on private pool.";
    let o = oomlab(
        &cache,
        &[
            "explain",
            "--json",
            "--model",
            "tiny-bert",
            "--seq",
            "32",
            mps,
        ],
    );
    let v: serde_json::Value = serde_json::from_str(&stdout(&o)).unwrap();
    assert_eq!(v["form"], "pytorch_mps");
    assert_eq!(v["largest_batch"]["capacity_bytes"], 20u64 << 20, "{v}");
    assert!(
        v["advice"][0]
            .as_str()
            .unwrap()
            .starts_with("if this is inference, wrap it in `torch.no_grad()`"),
        "{v}"
    );
}

/// With stdin a terminal, `explain` says how to paste the message; piped, it stays silent.
/// The terminal is a pseudo-terminal from util-linux's `script`.
#[test]
fn explain_at_a_terminal_says_how_to_paste_and_piped_input_gets_no_prompt() {
    let prompt = "Paste the out-of-memory message, then press Ctrl-D on an empty line (or pass it quoted, or --file PATH):";
    // Piped: the explanation and nothing on stderr.
    let mut child = Command::new(bin())
        .arg("explain")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(CLASSIC.as_bytes())
        .unwrap();
    let o = child.wait_with_output().unwrap();
    assert!(stdout(&o).contains("1. use a smaller batch"));
    assert_eq!(stderr(&o), "");
    // At a terminal.
    if Command::new("script").arg("--version").output().is_err() {
        eprintln!("no `script` (util-linux) here: the terminal case is not run");
        return;
    }
    let dir = TempDir::new("explain-cli-tty");
    let err = dir.join("stderr.txt");
    let quote =
        |p: &std::path::Path| format!("'{}'", p.display().to_string().replace('\'', r"'\''"));
    let mut script = Command::new("script")
        .args([
            "-qec",
            &format!("{} explain 2>{}", quote(&bin()), quote(&err)),
            "/dev/null",
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    // The message, then Ctrl-D on an empty line.
    script
        .stdin
        .take()
        .unwrap()
        .write_all(format!("{CLASSIC}\n\u{4}").as_bytes())
        .unwrap();
    let mut screen = String::new();
    script
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut screen)
        .unwrap();
    assert!(script.wait().unwrap().success());
    assert!(screen.contains("1. use a smaller batch"), "{screen}");
    assert_eq!(std::fs::read_to_string(&err).unwrap().trim_end(), prompt);
}

#[test]
fn models_on_a_gpu_reads_cleanly_and_says_what_its_batches_are() {
    let cache = TempDir::new("models-gpu");
    let text = stdout(&oomlab(&cache, &["models", "--gpu", "t4"]));
    let first = text.lines().next().unwrap();
    assert_eq!(
        first,
        "Tesla T4: 14.56 GiB as CUDA reports it (PyTorch's \"total capacity\"), compute capability 7.5 (no bf16)"
    );
    assert!(!text.contains("github.com"), "{text}");
    assert!(!text.contains("CPU measurement"), "{text}");
    assert!(text.contains("max batch (est., infer)"), "{text}");
    assert!(
        text.contains("candle's inference forward")
            && text.contains("no gradients, no optimizer state")
            && text.contains("`oomlab sweep --runtime torch --workload train --gpu t4"),
        "{text}"
    );
    let h100 = stdout(&oomlab(&cache, &["models", "--gpu", "h100"]));
    assert!(
        h100.lines()
            .next()
            .unwrap()
            .ends_with("compute capability 9.0"),
        "{h100}"
    );
    assert!(!h100.contains("no bf16"), "{h100}");
    // A reader that has gone (`| head` after its lines): no error, exit 0. The pipe is closed
    // before the first line is written, so every write meets it closed.
    let mut child = Command::new(bin())
        .args(["models", "--gpu", "t4"])
        .env("XDG_CACHE_HOME", &cache.0)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert_eq!(stderr(&o), "");
}
