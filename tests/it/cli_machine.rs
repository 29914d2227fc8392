//! The command line and this machine: help, capacities it cannot hold (plain and in a memory
//! cgroup), devices, explain, weights too big for it.

use crate::cli_errors::{oomlab, refused, stderr, write_config};
use crate::common::{TempDir, bin};
use std::path::Path;
use std::process::{Command, Output};

#[test]
fn help_teaches_and_the_worker_is_hidden() {
    let o = oomlab(&["--help"]);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.contains("sweep") && s.contains("models") && !s.contains("worker"),
        "{s}"
    );
    let o = oomlab(&["sweep", "--help"]);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(
        s.contains("tokens per step") && s.contains("wider dtype") && s.contains("non_monotone"),
        "{s}"
    );
    // Test hooks are options a user never sees.
    assert!(
        !s.contains("worker-stall") && !s.contains("worker-oom"),
        "{s}"
    );
    let o = oomlab(&["models"]);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("109,482,240") && s.contains("Qwen2-0.5B"), "{s}");
}

#[test]
fn a_capacity_this_machine_cannot_hold_is_refused_then_overcommit_stops_at_the_machine() {
    let dir = TempDir::new("host");
    // A machine with 64 MiB available: it can simulate (64 − 8) / 1.25 = 44.8 MiB.
    let fake = "--worker-host-available-bytes=64MiB";
    let args = [
        "--model",
        "tiny-bert",
        "--seq",
        "64",
        "--batch",
        "1..1024",
        "--capacity",
        "1GiB",
        "--threads",
        "1",
        fake,
    ];
    refused(
        &args,
        &[
            "a capacity of 1.0 GiB cannot be simulated on this machine",
            "64.0 MiB available",
            "the largest it can simulate is 44.8 MiB",
            "lower --capacity to 44.8 MiB or less, or pass --allow-overcommit",
        ],
    );
    let json = dir.join("r.json");
    let mut full = vec!["sweep"];
    full.extend_from_slice(&args);
    let journal = dir.join("j.jsonl").display().to_string();
    let js = json.display().to_string();
    full.extend_from_slice(&["--allow-overcommit", "--journal", &journal, "--json", &js]);
    let run = oomlab(&full);
    let out = String::from_utf8_lossy(&run.stdout);
    assert_eq!(run.status.code(), Some(0), "{}", stderr(&run));
    assert!(out.contains("host_limited"), "{out}");
    assert!(
        out.contains("this machine's boundary, not the simulated device's"),
        "{out}"
    );
    assert!(
        out.contains("(a lower bound: this machine's memory"),
        "{out}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["host_available_bytes"], 64 << 20);
    let trials = r["trials"].as_array().unwrap();
    // The machine, never the kernel's OOM killer, ended the trials that could not fit.
    assert!(trials.iter().any(|t| t["outcome"] == "host_memory"));
    assert!(trials.iter().all(|t| t["failure"].is_null()), "{trials:?}");
    let b = &r["boundaries"][0];
    assert_eq!(b["status"], "host_limited");
    let star = b["max_batch"].as_u64().unwrap();
    let above = trials
        .iter()
        .find(|t| t["batch"] == star + 1)
        .expect("b*+1 measured");
    assert_eq!(above["outcome"], "host_memory");
}

/// A fresh memory cgroup limited to `limit_bytes` (v1, or v2 where writable), removed on drop.
struct MemoryCgroup(std::path::PathBuf);

impl MemoryCgroup {
    fn create(limit_bytes: u64) -> Result<Self, String> {
        let name = format!("oomlab-test-{}", std::process::id());
        let (dir, limit_file) = if Path::new("/sys/fs/cgroup/memory/memory.limit_in_bytes").exists()
        {
            (
                Path::new("/sys/fs/cgroup/memory").join(&name),
                "memory.limit_in_bytes",
            )
        } else {
            (Path::new("/sys/fs/cgroup").join(&name), "memory.max")
        };
        std::fs::create_dir(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
        let cg = Self(dir);
        std::fs::write(cg.0.join(limit_file), limit_bytes.to_string())
            .map_err(|e| format!("cannot limit {}: {e}", cg.0.display()))?;
        Ok(cg)
    }

    /// Runs oomlab with `args` inside the cgroup.
    fn oomlab(&self, args: &[&str]) -> Output {
        let procs = self.0.join("cgroup.procs");
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "echo $$ > '{}' && exec \"$0\" \"$@\"",
                procs.display()
            ))
            .arg(bin())
            .args(args)
            .output()
            .unwrap()
    }
}

impl Drop for MemoryCgroup {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// The same, inside a real memory cgroup where this machine lets the test create one (the
/// override test above covers machines where it cannot).
#[test]
fn inside_a_memory_cgroup_the_capacity_is_refused_and_overcommit_ends_at_the_machine() {
    let cg = match MemoryCgroup::create(160 << 20) {
        Ok(cg) => cg,
        Err(why) => {
            eprintln!("no memory cgroup for this test ({why}); the override test covers this");
            return;
        }
    };
    let d = TempDir::new("cgroup");
    let args = [
        "sweep",
        "--model",
        "tiny-bert",
        "--seq",
        "64",
        "--batch",
        "1..4096",
        "--capacity",
        "1GiB",
        "--threads",
        "1",
    ];
    let o = cg.oomlab(&args);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("cgroup limit 160.0 MiB") && err.contains("the largest it can simulate is"),
        "{err}"
    );
    let json = d.join("r.json").display().to_string();
    let journal = d.join("j.jsonl").display().to_string();
    let mut over = args.to_vec();
    over.extend_from_slice(&["--allow-overcommit", "--json", &json, "--journal", &journal]);
    let o = cg.oomlab(&over);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    assert_eq!(r["host_cgroup_limit_bytes"], 160 << 20);
    assert_eq!(r["boundaries"][0]["status"], "host_limited");
    let trials = r["trials"].as_array().unwrap();
    assert!(trials.iter().all(|t| t["failure"].is_null()), "{trials:?}");
}

#[test]
fn devices_without_a_driver_is_one_line_and_exit_0() {
    let o = oomlab(&["devices"]);
    assert_eq!(o.status.code(), Some(0));
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(out.trim(), oomlab::measure::nvml::NO_DRIVER, "{out}");
    let o = oomlab(&["devices", "--json"]);
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["gpus"].as_array().map(Vec::len), Some(0));
    assert_eq!(v["note"], oomlab::measure::nvml::NO_DRIVER);
    assert!(v["driver_version"].is_null());
}

#[test]
fn explain_reads_a_pasted_message_and_refuses_other_text() {
    let msg = "RuntimeError: CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 11.17 GiB total capacity; 9.00 GiB already allocated; 1.50 GiB free; 9.50 GiB reserved in total by PyTorch)";
    let o = oomlab(&["explain", msg]);
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let out = String::from_utf8_lossy(&o.stdout);
    assert!(out.contains("total capacity 11.17 GiB"), "{out}");
    assert!(out.contains("1. use a smaller batch"), "{out}");
    // From stdin, as JSON with the documented field names.
    let mut child = Command::new(bin())
        .args(["explain", "--json"])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    {
        use std::io::Write;
        child
            .stdin
            .take()
            .unwrap()
            .write_all(msg.as_bytes())
            .unwrap();
    }
    let o = child.wait_with_output().unwrap();
    assert_eq!(o.status.code(), Some(0));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["gpu_index"], 0);
    assert_eq!(v["tried_to_allocate_bytes"], 2u64 << 30);
    assert_eq!(v["reserved_by_pytorch_bytes"], 19u64 << 29);
    for k in [
        "total_capacity_bytes",
        "free_bytes",
        "allocated_by_pytorch_bytes",
        "reserved_unallocated_bytes",
    ] {
        assert!(v[k].is_u64(), "{k}");
    }
    assert!(
        v["process_in_use_bytes"].is_null(),
        "unknown is null, never 0"
    );
    assert!(v["advice"].as_array().is_some_and(|a| !a.is_empty()));
    // From a file; and a text that is no OOM message: one sentence, exit 1.
    let d = TempDir::new("explain");
    let f = d.join("msg.txt");
    std::fs::write(
        &f,
        "RuntimeError: CUDA error: an illegal memory access was encountered",
    )
    .unwrap();
    let o = oomlab(&["explain", "--file", &f.display().to_string()]);
    assert_eq!(o.status.code(), Some(1));
    let err = stderr(&o);
    assert!(
        err.contains("not an out-of-memory message I recognise") && err.contains("expected"),
        "{err}"
    );
    let o = oomlab(&["explain", "--file", "/no/such/file.txt"]);
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("/no/such/file.txt"));
}

/// A 7B model in f32 is 25 GiB of weights: on a 24 GiB machine the sweep says so before
/// allocating anything, with --allow-overcommit too, and names the precision that fits; a 70B
/// one fits in none.
#[test]
fn weights_that_cannot_fit_this_machine_are_refused_before_allocating() {
    let d = TempDir::new("bigweights");
    let llama = |name: &str, hidden: u32, layers: u32, inter: u32, heads: u32, kv: u32| {
        write_config(
            &d,
            name,
            &format!(
                r#"{{"architectures":["LlamaForCausalLM"],"model_type":"llama","hidden_size":{hidden},"intermediate_size":{inter},"num_hidden_layers":{layers},"num_attention_heads":{heads},"num_key_value_heads":{kv},"vocab_size":32000,"max_position_embeddings":4096,"rms_norm_eps":1e-5,"rope_theta":10000.0,"tie_word_embeddings":false}}"#
            ),
        )
    };
    let seven = llama("llama-7b.json", 4096, 32, 11008, 32, 32);
    let host = "--worker-host-available-bytes=24GiB";
    for extra in [&[][..], &["--allow-overcommit"][..]] {
        let mut args = vec![
            "--model",
            &seven,
            "--dtype",
            "f32",
            "--capacity",
            "30GiB",
            host,
        ];
        args.extend_from_slice(extra);
        refused(
            &args,
            &[
                "the f32 weights of llama-7b alone take 25.",
                "in bf16 they take 12.",
                "choose bf16 in --dtype",
            ],
        );
    }
    let seventy = llama("llama-70b.json", 8192, 80, 28672, 64, 8);
    refused(
        &[
            "--model",
            &seventy,
            "--dtype",
            "bf16",
            "--capacity",
            "200GiB",
            host,
            "--allow-overcommit",
        ],
        &[
            "the bf16 weights of llama-70b alone take",
            "no precision makes them fit",
        ],
    );
}
