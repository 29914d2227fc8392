//! What a new user meets in the first ten minutes: every answer names what it sized, exports
//! that can be applied as they are, and one clear sentence for each bad input.

use crate::common::{TempDir, bin};
use std::process::{Command, Output};

fn oomlab(cache: &TempDir, args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .env("XDG_CACHE_HOME", &cache.0)
        .output()
        .unwrap()
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).to_string()
}

/// One refusal: exit 2, one sentence (clap adds its "For more information" line), every needle.
fn refused(cache: &TempDir, args: &[&str], needles: &[&str]) {
    let o = oomlab(cache, args);
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: missing '{n}' in: {err}");
    }
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
    let lines = err
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("For more information"))
        .count();
    assert_eq!(lines, 1, "{args:?}: one sentence expected: {err}");
}

#[test]
fn sizes_headrooms_batches_and_paths_are_refused_with_the_fix() {
    let cache = TempDir::new("papercut-refusals");
    let d = TempDir::new("papercut-out");
    let out = |name: &str| d.join(name).display().to_string();
    for cmd in ["sweep", "estimate"] {
        // A number without a unit: 16 bytes is never what was meant.
        refused(
            &cache,
            &[cmd, "-m", "tiny-bert", "--capacity", "16"],
            &["--capacity", "no unit", "16GiB", "16B"],
        );
        refused(
            &cache,
            &[cmd, "-m", "tiny-bert", "--capacity", "-1GiB"],
            &["--capacity", "cannot be negative"],
        );
        refused(
            &cache,
            &[cmd, "-m", "./no/such/config.json"],
            &["no such file", "./no/such/config.json"],
        );
    }
    refused(
        &cache,
        &["sweep", "-m", "tiny-bert", "--headroom", "10"],
        &["--headroom", "10%"],
    );
    refused(
        &cache,
        &["sweep", "-m", "tiny-bert", "--headroom", "-5%"],
        &["--headroom", "cannot be negative"],
    );
    refused(
        &cache,
        &["sweep", "-m", "tiny-bert", "--batch", "-4"],
        &["--batch", "cannot be negative"],
    );
    refused(
        &cache,
        &["estimate", "-m", "tiny-bert", "--batch", "1..x"],
        &["--batch", "not a batch size"],
    );
    // Bytes stated as bytes are taken.
    let o = oomlab(
        &cache,
        &["estimate", "-m", "tiny-bert", "--capacity", "67108864B"],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("under 64.0 MiB"),
        "{}",
        text(&o.stdout)
    );
    // The same file twice among the outputs would keep only the last.
    refused(
        &cache,
        &[
            "sweep",
            "-m",
            "tiny-bert",
            "--export",
            &out("a.toml"),
            "--export",
            &out("a.toml"),
        ],
        &["named twice"],
    );
}

#[test]
fn estimate_takes_ranges_merges_dtype_aliases_and_keeps_the_cache_line_for_when_it_matters() {
    let cache = TempDir::new("papercut-estimate");
    let args = [
        "estimate",
        "-m",
        "tiny-bert",
        "--seq",
        "32,32",
        "--batch",
        "1..3,8,2",
        "--dtype",
        "float16,half,fp16",
        "--capacity",
        "64MiB",
    ];
    let first = oomlab(&cache, &args);
    assert!(first.status.success(), "{}", text(&first.stderr));
    // The runtime was measured now: that is worth a line.
    assert!(
        text(&first.stderr).contains("measured now"),
        "{}",
        text(&first.stderr)
    );
    let rows: Vec<(String, String)> = text(&first.stdout)
        .lines()
        .filter(|l| l.starts_with("tiny-bert"))
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f[2].to_string(), f[3].to_string())
        })
        .collect();
    let want: Vec<(String, String)> = ["1", "2", "3", "8"]
        .iter()
        .map(|b| ("f16".to_string(), (*b).to_string()))
        .collect();
    assert_eq!(rows, want, "{}", text(&first.stdout));
    // The answer says what it sized, and that training needs its own measurement.
    let stdout = text(&first.stdout);
    assert!(
        stdout.contains("what was sized: candle · one inference forward")
            && stdout.contains("estimated")
            && stdout.contains("largest inference batch under 64.0 MiB")
            && stdout.contains("--workload train"),
        "{stdout}"
    );
    // From the cache: nothing on stderr, unless asked.
    let second = oomlab(&cache, &args);
    assert!(second.status.success());
    assert_eq!(text(&second.stderr), "", "a cached figure is not news");
    assert_eq!(first.stdout, second.stdout);
    let mut verbose = args.to_vec();
    verbose.push("--verbose");
    let third = oomlab(&cache, &verbose);
    assert!(
        text(&third.stderr).contains("cached in"),
        "{}",
        text(&third.stderr)
    );
    // A wide range: the powers of two and both ends.
    let o = oomlab(
        &cache,
        &["estimate", "-m", "tiny-bert", "--batch", "3..100", "--json"],
    );
    let batches: Vec<u64> = text(&o.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["batch"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(batches, [3, 4, 8, 16, 32, 64, 100]);
    let p: serde_json::Value =
        serde_json::from_str(text(&o.stdout).lines().next().unwrap()).unwrap();
    assert_eq!(
        (p["runtime"].as_str(), p["workload"].as_str()),
        (Some("candle"), Some("infer"))
    );
}

/// Reads an export written as TOML and the same as JSON into one JSON value each.
fn exports(dir: &TempDir) -> (String, serde_json::Value, serde_json::Value) {
    let toml_text = std::fs::read_to_string(dir.join("rec.toml")).unwrap();
    let toml_doc: toml::Value = toml::from_str(&toml_text).unwrap();
    let toml_json = serde_json::to_value(&toml_doc).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(dir.join("rec.json")).unwrap()).unwrap();
    (toml_text, toml_json, json)
}

#[test]
fn exports_carry_b_star_status_and_safe_batch_and_flag_a_pick_at_the_top_of_the_range() {
    let cache = TempDir::new("papercut-export-cache");
    let d = TempDir::new("papercut-export");
    let p = |n: &str| d.join(n).display().to_string();
    // Batches 5 and 6 run out of memory (the worker's hook): b* = 4 on both curves.
    let o = oomlab(
        &cache,
        &[
            "sweep",
            "-m",
            "tiny-bert",
            "--seq",
            "16,32",
            "--batch",
            "1..6",
            "--capacity",
            "1GiB",
            "--headroom",
            "0%",
            "--export",
            &p("rec.toml"),
            "--export",
            &p("rec.json"),
            "--export",
            &p("trials.csv"),
            "--worker-oom-at=5,6",
        ],
    );
    let stdout = text(&o.stdout);
    assert!(o.status.success(), "{}", text(&o.stderr));
    assert!(
        stdout.contains(
            "what was sized: candle · one inference forward (no_grad) · measured on this CPU"
        ),
        "{stdout}"
    );
    assert!(
        stdout.contains("training step also holds gradients"),
        "{stdout}"
    );
    assert!(
        std::fs::read_to_string(d.join("trials.csv"))
            .unwrap()
            .starts_with("batch,seq")
    );
    let (toml_text, from_toml, json) = exports(&d);
    assert_eq!(from_toml, json, "TOML and JSON say the same");
    let curves = json["curves"].as_array().unwrap();
    let curve = |seq: u64| curves.iter().find(|c| c["seq_len"] == seq).unwrap();
    let exact = curve(16);
    assert_eq!(exact["status"], "exact");
    assert_eq!(exact["b_star"], 4);
    assert_eq!(exact["safe_batch_size"], 4);
    assert!(exact.get("note").is_none());
    assert_eq!(curve(32)["b_star"], 4);
    assert_eq!(
        json["oomlab"]["sized"]
            .as_str()
            .unwrap()
            .split(" · ")
            .next(),
        Some("candle")
    );
    assert!(
        json["oomlab"]["training"]
            .as_str()
            .unwrap()
            .contains("--workload train")
    );
    assert!(
        json["oomlab"]["huggingface_keys"]
            .as_str()
            .unwrap()
            .contains("TrainingArguments")
    );
    assert!(json.get("warnings").is_none(), "nothing to warn of: {json}");
    assert!(
        toml_text.starts_with("# oomlab recommendation\n# [huggingface] values:"),
        "{toml_text}"
    );

    // Every batch of the range fits: above_range, never a b*.
    for f in ["rec.toml", "rec.json"] {
        std::fs::remove_file(d.join(f)).unwrap();
    }
    let o = oomlab(
        &cache,
        &[
            "sweep",
            "-m",
            "tiny-bert",
            "--seq",
            "16",
            "--batch",
            "1..6",
            "--capacity",
            "1GiB",
            "--export",
            &p("rec.toml"),
            "--export",
            &p("rec.json"),
        ],
    );
    assert!(o.status.success(), "{}", text(&o.stderr));
    let (toml_text, from_toml, json) = exports(&d);
    assert_eq!(from_toml, json);
    let c = &json["curves"][0];
    assert_eq!(c["status"], "above_range");
    assert!(
        c.get("b_star").is_none(),
        "the top of the range is no boundary: {c}"
    );
    assert_eq!(c["largest_tried"], 6);
    assert!(c["note"].as_str().unwrap().contains("widen --batch"), "{c}");
    assert_eq!(json["oomlab"]["status"], "above_range");
    assert!(json["oomlab"].get("b_star").is_none());
    let warning = json["warnings"][0].as_str().unwrap();
    assert!(
        warning.starts_with("ABOVE RANGE") && warning.contains("not the boundary"),
        "{warning}"
    );
    assert!(
        toml_text
            .lines()
            .nth(1)
            .unwrap()
            .starts_with("# ABOVE RANGE"),
        "{toml_text}"
    );
}

#[test]
fn a_cancelled_sweeps_export_says_at_the_top_that_it_is_incomplete_and_names_the_missing_curve() {
    let cache = TempDir::new("papercut-cancel-cache");
    let d = TempDir::new("papercut-cancel");
    let j = d.join("j.jsonl");
    let toml_path = d.join("rec.toml");
    let child = Command::new(bin())
        .args([
            "sweep",
            "-m",
            "tiny-bert",
            "--seq",
            "16,32",
            "--batch",
            "1..8",
            "--strategy",
            "grid",
            "--capacity",
            "1GiB",
            "--threads",
            "1",
            "--worker-oom-at=3,4,5,6,7,8",
            "--worker-stall-ms=300",
        ])
        .arg(format!("--journal={}", j.display()))
        .arg(format!("--export={}", toml_path.display()))
        .env("XDG_CACHE_HOME", &cache.0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    // seq 16 ends at its first OOM (batch 3): wait for that and one trial of seq 32.
    let mut trials = 0;
    for _ in 0..3000 {
        trials = std::fs::read_to_string(&j).map_or(0, |t| t.matches("\"type\":\"trial\"").count());
        if trials >= 4 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(trials >= 4, "journal did not grow");
    let pid = child.id().to_string();
    assert!(
        Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .unwrap()
            .success()
    );
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(130), "{}", text(&o.stderr));
    assert!(
        text(&o.stdout).contains("incomplete: 1 not finished (seq 32 f32)"),
        "{}",
        text(&o.stdout)
    );
    let t = std::fs::read_to_string(&toml_path).unwrap();
    let second = t.lines().nth(1).unwrap();
    assert!(
        second.starts_with("# INCOMPLETE SWEEP: 1 curve not finished (seq 32 f32)"),
        "{t}"
    );
    let doc: toml::Value = toml::from_str(&t).unwrap();
    assert!(doc["warnings"][0].as_str().unwrap().contains("--resume"));
    let curves = doc["curves"].as_array().unwrap();
    let missing = curves
        .iter()
        .find(|c| c["seq_len"].as_integer() == Some(32))
        .unwrap();
    assert_eq!(missing["status"].as_str(), Some("incomplete"));
    assert_eq!(doc["oomlab"]["seq_len"].as_integer(), Some(16));
}

#[test]
fn a_sweep_says_up_front_how_many_trials_and_after_one_sweep_about_how_long() {
    let cache = TempDir::new("papercut-forecast");
    let args = [
        "sweep",
        "-m",
        // bert-tiny's trials at these sizes take long enough to time (tens of milliseconds).
        "bert-tiny",
        "--seq",
        "128,256",
        "--batch",
        "1..256",
        "--capacity",
        "44MiB",
        "--confirm",
        "none",
    ];
    let first = oomlab(&cache, &args);
    let err = text(&first.stderr);
    assert!(first.status.success(), "{err}");
    // Two curves, b* and b*+1 each when the estimator is right (auto), then the time.
    assert!(
        err.contains("forecast: 2 curves, 4 trials if the estimator is right; the time follows the first trial"),
        "{err}"
    );
    assert!(
        err.contains("at this trial's pace the forecast trials take about"),
        "{err}"
    );
    let searched = text(&first.stdout)
        .lines()
        .filter(|l| l.contains(" auto ") && l.contains(" search "))
        .count();
    assert_eq!(searched, 4, "the forecast count is what auto took");
    // The pace of that sweep sizes the next forecast.
    let second = oomlab(&cache, &args);
    let err = text(&second.stderr);
    assert!(
        err.contains("4 trials if the estimator is right, about ")
            && err.contains("at this machine's pace in earlier sweeps"),
        "{err}"
    );
    assert!(!err.contains("at this trial's pace"), "{err}");
}

/// A reader that has gone (`| head`) ends the output quietly, never the command: exit 0, nothing
/// on stderr, and a sweep still writes its results.
#[test]
fn output_piped_into_head_ends_quietly_and_the_work_still_finishes() {
    use std::io::{BufRead, BufReader};
    let cache = TempDir::new("papercut-pipe");
    // About a megabyte of JSON lines: far more than a pipe holds, so writes meet the closed end.
    let mut child = Command::new(bin())
        .args([
            "estimate",
            "--model",
            "tiny-bert",
            "--seq",
            "16",
            "--batch",
            "1..4096",
            "--json",
        ])
        .env("XDG_CACHE_HOME", &cache.0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut first = String::new();
    BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut first)
        .unwrap();
    assert!(first.starts_with('{'), "{first}");
    // The reader is dropped here: the pipe's read end closes, as when `head -1` exits.
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0), "{}", text(&o.stderr));
    assert_eq!(text(&o.stderr), "");
    // A sweep whose reader has gone before its first line still measures and writes results.
    let json = cache.join("r.json");
    let mut child = Command::new(bin())
        .args([
            "sweep",
            "--model",
            "tiny-bert",
            "--seq",
            "16",
            "--batch",
            "1..8",
            "--capacity",
            "4MiB",
            "--threads",
            "1",
            "--journal",
        ])
        .arg(cache.join("j.jsonl"))
        .arg("--json")
        .arg(&json)
        .env("XDG_CACHE_HOME", &cache.0)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    drop(child.stdout.take());
    let o = child.wait_with_output().unwrap();
    let err = text(&o.stderr);
    assert_eq!(o.status.code(), Some(0), "{err}");
    assert!(
        !err.contains("internal error") && !err.contains("panicked"),
        "{err}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert!(!r["trials"].as_array().unwrap().is_empty());
}
