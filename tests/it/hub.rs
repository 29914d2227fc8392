//! Hugging Face ids: a real cache layout built here from the test checkpoints (blobs, symlinked
//! snapshots, refs), resolved with no network; the Hub's refusals, served by a local stand-in
//! for it (`HF_ENDPOINT`), each one sentence and exit 2; a download into the cache.

use crate::common::{TempDir, bin, fixtures};
use sha2::{Digest, Sha256};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::Path;
use std::process::{Command, Output};

const COMMIT: &str = "0123456789abcdef0123456789abcdef01234567";

fn hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    Sha256::digest(bytes)
        .iter()
        .fold(String::new(), |mut s, b| {
            let _ = write!(s, "{b:02x}");
            s
        })
}

/// `models--org--name` under `cache` as `huggingface_hub` writes it: each file of `folder` a blob
/// named by its hash, the snapshot's entries relative symlinks to them, refs naming the commit.
pub fn cache_model(cache: &Path, repo: &str, folder: &Path, refs: &[&str]) {
    let root = cache.join(format!("models--{}", repo.replace('/', "--")));
    let snap = root.join("snapshots").join(COMMIT);
    std::fs::create_dir_all(root.join("blobs")).unwrap();
    std::fs::create_dir_all(&snap).unwrap();
    std::fs::create_dir_all(root.join("refs")).unwrap();
    for entry in std::fs::read_dir(folder).unwrap() {
        let path = entry.unwrap().path();
        let bytes = std::fs::read(&path).unwrap();
        let blob = hex(&bytes);
        std::fs::write(root.join("blobs").join(&blob), &bytes).unwrap();
        std::os::unix::fs::symlink(
            Path::new("../../blobs").join(&blob),
            snap.join(path.file_name().unwrap()),
        )
        .unwrap();
    }
    for r in refs {
        std::fs::write(root.join("refs").join(r), COMMIT).unwrap();
    }
}

fn oomlab(env: &[(&str, &str)], args: &[&str]) -> Output {
    let mut c = Command::new(bin());
    c.args(args)
        .env_remove("HF_HUB_OFFLINE")
        .env_remove("HF_TOKEN")
        .env_remove("HF_ENDPOINT")
        .env_remove("HF_HOME");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn sweep_json(env: &[(&str, &str)], model: &str, out: &Path, extra: &[&str]) -> serde_json::Value {
    let mut args = vec![
        "sweep",
        "--model",
        model,
        "--seq",
        "16",
        "--dtype",
        "f32",
        "--batch",
        "1..2",
        "--strategy",
        "grid",
        "--capacity",
        "1GiB",
        "--threads",
        "1",
        "--json",
        out.to_str().unwrap(),
        "--journal",
    ];
    let journal = out.with_extension("jsonl");
    args.push(journal.to_str().unwrap());
    args.extend_from_slice(extra);
    let o = oomlab(env, &args);
    assert_eq!(
        o.status.code(),
        Some(0),
        "{model}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_str(&std::fs::read_to_string(out).unwrap()).unwrap()
}

fn peaks(r: &serde_json::Value) -> Vec<(u64, u64)> {
    r["trials"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            (
                t["batch"].as_u64().unwrap(),
                t["total_bytes"].as_u64().unwrap(),
            )
        })
        .collect()
}

fn refused(env: &[(&str, &str)], model: &str, needles: &[&str]) -> String {
    let o = oomlab(
        env,
        &[
            "sweep",
            "--model",
            model,
            "--seq",
            "16",
            "--batch",
            "1..2",
            "--capacity",
            "1GiB",
        ],
    );
    let err = String::from_utf8_lossy(&o.stderr).to_string();
    assert_eq!(o.status.code(), Some(2), "{model}: {err}");
    for n in needles {
        assert!(err.contains(n), "{model}: missing '{n}' in: {err}");
    }
    assert_eq!(err.trim().lines().count(), 1, "one sentence: {err}");
    assert!(!err.contains("panicked"), "{err}");
    err
}

#[test]
fn a_cache_layout_resolves_by_hub_id_offline_and_peaks_like_the_folder() {
    let dir = TempDir::new("hub-cache");
    let cache = dir.join("hub");
    let folder = fixtures().join("checkpoints/tiny-llama");
    cache_model(&cache, "acme/tiny-llama", &folder, &["main", "v1"]);
    let cache_s = cache.to_str().unwrap();
    let env = [("HF_HUB_CACHE", cache_s), ("HF_HUB_OFFLINE", "1")];
    let by_folder = sweep_json(&[], folder.to_str().unwrap(), &dir.join("folder.json"), &[]);
    let by_id = sweep_json(&env, "acme/tiny-llama", &dir.join("id.json"), &[]);
    assert_eq!(peaks(&by_folder).len(), 2);
    assert_eq!(peaks(&by_id), peaks(&by_folder));
    assert_eq!(by_id["model"], "acme/tiny-llama");
    assert_eq!(by_id["model_ref"]["hub"]["repo"], "acme/tiny-llama");
    // The sharded checkpoint in the cache was loaded, as the folder's was.
    let journal = std::fs::read_to_string(dir.join("id.jsonl")).unwrap();
    assert!(journal.contains("\"from_checkpoint\":true"), "{journal}");
    // A tag and a commit hash name the same snapshot; HF_HOME/hub is the cache without
    // HF_HUB_CACHE.
    let tagged = sweep_json(&env, "acme/tiny-llama@v1", &dir.join("tag.json"), &[]);
    assert_eq!(peaks(&tagged), peaks(&by_folder));
    let home = [
        ("HF_HOME", dir.0.to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let pinned = sweep_json(
        &home,
        &format!("acme/tiny-llama@{COMMIT}"),
        &dir.join("commit.json"),
        &[],
    );
    assert_eq!(peaks(&pinned), peaks(&by_folder));
    // A revision the cache lacks, offline: the ones it has.
    refused(
        &env,
        "acme/tiny-llama@v2",
        &["but not its revision", "'v2'", "main, v1", "HF_HUB_OFFLINE"],
    );
}

#[test]
fn bundled_models_answer_to_their_hub_ids_with_no_network() {
    let dir = TempDir::new("hub-bundled");
    let env = [
        ("HF_HUB_CACHE", dir.0.to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    let msg = "CUDA out of memory. Tried to allocate 2.00 GiB (GPU 0; 11.17 GiB total capacity; 9.00 GiB already allocated)";
    let explain = |model: &str| {
        let o = oomlab(&env, &["explain", msg, "--model", model, "--json"]);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).to_string()
    };
    let by_id = explain("google-bert/bert-base-uncased");
    assert_eq!(by_id, explain("bert-base-uncased"));
    assert!(by_id.contains("largest_batch"), "{by_id}");
}

#[test]
fn not_cached_and_offline_is_one_sentence() {
    let dir = TempDir::new("hub-offline");
    let cache = dir.join("hub");
    let err = refused(
        &[
            ("HF_HUB_CACHE", cache.to_str().unwrap()),
            ("HF_HUB_OFFLINE", "1"),
        ],
        "example-org/uncached-model",
        &[
            "not in the Hugging Face cache",
            "HF_HUB_OFFLINE",
            "hf download",
        ],
    );
    assert!(err.contains(cache.to_str().unwrap()), "{err}");
    // And a Hub that cannot be reached (nothing listens on port 1).
    refused(
        &[
            ("HF_HUB_CACHE", cache.to_str().unwrap()),
            ("HF_ENDPOINT", "http://127.0.0.1:1"),
        ],
        "example-org/uncached-model",
        &["cannot be reached", "HF_HUB_CACHE"],
    );
}

/// A stand-in for the Hub on a local port: the answers huggingface.co gives, by repository.
fn fake_hub(files: Vec<(String, Vec<u8>)>) -> (String, std::thread::JoinHandle<()>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let handle = std::thread::Builder::new()
        .name("hub-stand-in".into())
        .spawn(move || {
            listener.set_nonblocking(false).unwrap();
            for stream in listener.incoming() {
                let Ok(mut stream) = stream else { break };
                let mut reader = BufReader::new(stream.try_clone().unwrap());
                let mut first = String::new();
                if reader.read_line(&mut first).unwrap_or(0) == 0 {
                    continue;
                }
                let mut range = None;
                loop {
                    let mut line = String::new();
                    if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
                        break;
                    }
                    if let Some(v) = line.to_ascii_lowercase().strip_prefix("range: bytes=") {
                        range = Some(v.trim().to_string());
                    }
                }
                let path = first.split_whitespace().nth(1).unwrap_or("").to_string();
                if path == "/quit" {
                    break;
                }
                let reply = |status: &str, headers: &[(&str, String)], body: &[u8]| {
                    let mut head = format!(
                        "HTTP/1.1 {status}\r\nContent-Length: {}\r\nConnection: close\r\n",
                        body.len()
                    );
                    for (k, v) in headers {
                        use std::fmt::Write as _;
                        let _ = write!(head, "{k}: {v}\r\n");
                    }
                    head.push_str("\r\n");
                    let mut out = head.into_bytes();
                    out.extend_from_slice(body);
                    out
                };
                let out = if path.starts_with("/acme/gated/") {
                    reply(
                        "401 Unauthorized",
                        &[("X-Error-Code", "GatedRepo".into())],
                        b"",
                    )
                } else if path.starts_with("/acme/served/resolve/nope/") {
                    reply(
                        "404 Not Found",
                        &[("X-Error-Code", "RevisionNotFound".into())],
                        b"",
                    )
                } else if let Some(file) = path.strip_prefix("/acme/served/resolve/main/") {
                    match files.iter().find(|(n, _)| n == file) {
                        None => reply(
                            "404 Not Found",
                            &[("X-Error-Code", "EntryNotFound".into())],
                            b"",
                        ),
                        Some((_, bytes)) => {
                            let etag = hex(bytes);
                            let total = bytes.len();
                            let (start, end) = match range.as_deref() {
                                Some("0-0") => (0, 0),
                                Some(r) => {
                                    (r.trim_end_matches('-').parse().unwrap_or(0), total - 1)
                                }
                                None => (0, total - 1),
                            };
                            reply(
                                "206 Partial Content",
                                &[
                                    ("ETag", format!("\"{etag}\"")),
                                    ("X-Repo-Commit", COMMIT.into()),
                                    ("Content-Range", format!("bytes {start}-{end}/{total}")),
                                ],
                                &bytes[start..=end],
                            )
                        }
                    }
                } else {
                    reply(
                        "404 Not Found",
                        &[("X-Error-Code", "RepoNotFound".into())],
                        b"",
                    )
                };
                let _ = stream.write_all(&out);
                let _ = stream.flush();
                let mut rest = Vec::new();
                let _ = reader.read_to_end(&mut rest);
            }
        })
        .unwrap();
    (addr, handle)
}

#[test]
fn the_hubs_refusals_are_one_sentence_each_and_a_download_lands_in_the_cache() {
    let dir = TempDir::new("hub-fake");
    let cache = dir.join("hub");
    let folder = fixtures().join("checkpoints/tiny-bert");
    let files = ["config.json", "model.safetensors"]
        .iter()
        .map(|n| ((*n).to_string(), std::fs::read(folder.join(n)).unwrap()))
        .collect();
    let (endpoint, server) = fake_hub(files);
    let env = [
        ("HF_HUB_CACHE", cache.to_str().unwrap()),
        ("HF_ENDPOINT", endpoint.as_str()),
    ];
    refused(
        &env,
        "acme/gated",
        &["is gated", "HF_TOKEN", "huggingface.co/acme/gated"],
    );
    refused(
        &env,
        "acme/no-such-model",
        &["there is no model acme/no-such-model"],
    );
    refused(&env, "acme/served@nope", &["has no revision 'nope'"]);
    // config.json only by default: zeros of the right shapes.
    let r = sweep_json(&env, "acme/served", &dir.join("config-only.json"), &[]);
    let snap = cache.join("models--acme--served/snapshots").join(COMMIT);
    assert!(snap.join("config.json").is_file());
    assert!(!snap.join("model.safetensors").exists());
    let journal = std::fs::read_to_string(dir.join("config-only.jsonl")).unwrap();
    assert!(journal.contains("\"from_checkpoint\":false"), "{journal}");
    // --weights fetches the safetensors; then it resolves offline from the cache alone.
    let w = sweep_json(
        &env,
        "acme/served",
        &dir.join("weights.json"),
        &["--weights"],
    );
    assert!(snap.join("model.safetensors").is_file());
    assert_eq!(peaks(&w), peaks(&r));
    let offline = [
        ("HF_HUB_CACHE", cache.to_str().unwrap()),
        ("HF_HUB_OFFLINE", "1"),
    ];
    sweep_json(&offline, "acme/served", &dir.join("offline.json"), &[]);
    let journal = std::fs::read_to_string(dir.join("offline.jsonl")).unwrap();
    assert!(journal.contains("\"from_checkpoint\":true"), "{journal}");
    let _ = std::net::TcpStream::connect(endpoint.trim_start_matches("http://"))
        .and_then(|mut s| s.write_all(b"GET /quit HTTP/1.1\r\n\r\n"));
    server.join().unwrap();
}
