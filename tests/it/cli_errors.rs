//! Every bad input gets one clear sentence naming the file/field and the fix, exit code 2 for
//! usage errors, and never a panic message. Plus: SIGKILL to the CLI, then --resume.

use crate::common::{TempDir, bin, contradiction_setup, fixtures, folder_missing_a_shard};
use std::process::{Command, Output};

pub(crate) fn oomlab(args: &[&str]) -> Output {
    Command::new(bin()).args(args).output().unwrap()
}

pub(crate) fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).to_string()
}

/// Runs a sweep that must be refused with exit code 2 and a message containing every `needle`.
pub(crate) fn refused(args: &[&str], needles: &[&str]) {
    let mut full = vec!["sweep"];
    full.extend_from_slice(args);
    let o = oomlab(&full);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{args:?}: {err}");
    for n in needles {
        assert!(err.contains(n), "{args:?}: missing '{n}' in: {err}");
    }
    // A bug reaches the user through the panic hook as "internal error"; a refusal never does.
    assert!(
        !err.contains("internal error") && !err.contains("panicked"),
        "{err}"
    );
    // One sentence (clap adds its own "For more information, try '--help'." to parse errors).
    let lines: Vec<&str> = err
        .lines()
        .filter(|l| !l.trim().is_empty() && !l.starts_with("For more information"))
        .collect();
    assert_eq!(lines.len(), 1, "one sentence expected: {err}");
}

/// `oomlab estimate --runtime torch --model PATH --seq 8`, then `extra`.
fn torch_estimate(path: &str, extra: &[&str]) -> Output {
    let mut args = vec![
        "estimate",
        "--runtime",
        "torch",
        "--model",
        path,
        "--seq",
        "8",
    ];
    args.extend_from_slice(extra);
    oomlab(&args)
}

pub(crate) fn write_config(dir: &TempDir, name: &str, text: &str) -> String {
    let p = dir.join(name);
    std::fs::write(&p, text).unwrap();
    p.display().to_string()
}

#[test]
fn bad_configs_are_refused_with_the_file_and_the_fix() {
    let d = TempDir::new("badcfg");
    let empty = write_config(&d, "empty.json", "");
    refused(&["--model", &empty], &["empty.json is empty"]);
    let malformed = write_config(&d, "bad.json", "{\"model_type\": \"bert\", ");
    refused(&["--model", &malformed], &["bad.json is not valid JSON"]);
    let not_json = write_config(&d, "notjson.json", "hidden_size = 768");
    refused(&["--model", &not_json], &["notjson.json is not valid JSON"]);
    let unknown = write_config(
        &d,
        "gpt2.json",
        r#"{"architectures":["GPT2LMHeadModel"],"model_type":"gpt2"}"#,
    );
    refused(
        &["--model", &unknown],
        &[
            "gpt2.json",
            "GPT2LMHeadModel",
            "bert, distilbert, llama, qwen2",
        ],
    );
    let missing = write_config(
        &d,
        "missing.json",
        r#"{"model_type":"bert","hidden_size":32,"num_attention_heads":4,"intermediate_size":64,"vocab_size":10,"max_position_embeddings":16}"#,
    );
    refused(
        &["--model", &missing],
        &["missing.json", "num_hidden_layers"],
    );
    refused(
        &["--model", "no-such-model-anywhere"],
        &["unknown model", "oomlab models"],
    );
}

/// Qwen3's own refusals: candle 0.11 has no sliding window for it, its explicit `head_dim` must
/// be real; Qwen3-MoE (read as its own family, though its architecture name starts like the
/// dense one's) with dense layers candle does not read, or more experts per token than it has.
#[test]
fn qwen3_configs_candle_cannot_run_are_refused_naming_the_field() {
    let d = TempDir::new("qwen3cfg");
    let tiny = crate::common::bundled_config("tiny-qwen3");
    let moe = crate::common::bundled_config("tiny-qwen3-moe");
    let mut dense_layers = moe.clone();
    dense_layers["mlp_only_layers"] = serde_json::json!([0]);
    // Without model_type: read from the architecture name alone.
    dense_layers.as_object_mut().unwrap().remove("model_type");
    let dense_layers = write_config(&d, "dense.json", &dense_layers.to_string());
    refused(
        &["--model", &dense_layers],
        &["dense.json", "mlp_only_layers", "Qwen3-MoE"],
    );
    let mut too_many = moe;
    too_many["num_experts_per_tok"] = 5.into();
    let too_many = write_config(&d, "many.json", &too_many.to_string());
    refused(
        &["--model", &too_many],
        &["many.json", "num_experts_per_tok", "between 1 and"],
    );
    // A sliding window: candle has none; transformers windows the layers from
    // max_window_layers on, which PyTorch's estimator does not model (refused, naming the
    // field), and with none of the layers windowed estimates it.
    let mut window = tiny.clone();
    window["use_sliding_window"] = true.into();
    window["max_window_layers"] = 1.into();
    let path = write_config(&d, "window.json", &window.to_string());
    refused(
        &["--model", &path],
        &[
            "window",
            "use_sliding_window",
            "set it to false",
            "the torch runtime runs it",
        ],
    );
    let o = torch_estimate(&path, &[]);
    assert_eq!(o.status.code(), Some(2), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("use_sliding_window") && stderr(&o).contains("max_window_layers"),
        "{}",
        stderr(&o)
    );
    window["max_window_layers"] = 2.into();
    let path = write_config(&d, "window2.json", &window.to_string());
    let o = torch_estimate(&path, &[]);
    assert!(o.status.success(), "{}", stderr(&o));
    let mut zero = tiny.clone();
    zero["head_dim"] = 0.into();
    let zero = write_config(&d, "zero.json", &zero.to_string());
    refused(
        &["--model", &zero],
        &["zero.json", "head_dim", "at least 1"],
    );
    // A field only candle's own config requires: the candle runtime refuses it before any
    // worker starts; the PyTorch runtime reads the config as transformers does (its default).
    let mut no_eps = tiny.clone();
    no_eps.as_object_mut().unwrap().remove("rms_norm_eps");
    let no_eps = write_config(&d, "noeps.json", &no_eps.to_string());
    refused(
        &["--model", &no_eps],
        &[
            "noeps.json",
            "missing field `rms_norm_eps`",
            "add or correct",
            "the torch runtime runs it",
        ],
    );
    let torch = torch_estimate(&no_eps, &[]);
    assert!(torch.status.success(), "{}", stderr(&torch));
    let mut no_tie = tiny;
    no_tie
        .as_object_mut()
        .unwrap()
        .remove("tie_word_embeddings");
    let no_tie = write_config(&d, "notie.json", &no_tie.to_string());
    refused(
        &["--model", &no_tie],
        &["notie.json", "missing field \"tie_word_embeddings\""],
    );
}

/// A Llama (or Gemma 2) config with biases transformers would build and candle would not load: refused
/// naming the file and the field, never read without them (a smaller, wrong number); Llama's
/// only for candle, PyTorch's estimator modelling them. False passes, as in Llama 3's own
/// configs.
#[test]
fn llama_configs_with_biases_are_refused_naming_the_field() {
    let d = TempDir::new("llamabias");
    let tiny = crate::common::bundled_config("tiny-llama");
    for field in ["attention_bias", "mlp_bias"] {
        let mut biased = tiny.clone();
        biased[field] = true.into();
        let path = write_config(&d, &format!("{field}.json"), &biased.to_string());
        // candle's refusal, with the way on to the torch runtime, whose estimator models them.
        refused(
            &["--model", &path],
            &[&format!("\"{field}\" is true"), "the torch runtime runs it"],
        );
        let o = torch_estimate(&path, &["--batch", "1"]);
        assert!(o.status.success(), "{field}: {}", stderr(&o));
        biased[field] = false.into();
        let path = write_config(&d, &format!("{field}-off.json"), &biased.to_string());
        let o = oomlab(&["estimate", "--model", &path, "--batch", "1", "--seq", "8"]);
        assert!(o.status.success(), "{field}: {}", stderr(&o));
    }
    let mut gemma2 = crate::common::bundled_config("tiny-gemma2");
    gemma2["attention_bias"] = true.into();
    let path = write_config(&d, "gemma2-bias.json", &gemma2.to_string());
    refused(
        &["--model", &path],
        &["gemma2-bias.json", "\"attention_bias\" is true"],
    );
}

/// Configs candle 0.11 cannot run: a Gemma 3 with more than one key/value head (gemma-3-4b and
/// larger), and a Llama, Qwen2 or Phi-3 whose explicit `head_dim` is not hidden / heads (candle's
/// models derive it; transformers reads it). Their sweeps and estimates are refused naming the
/// field and the runtime; PyTorch's estimate takes them.
#[test]
fn a_config_only_pytorch_runs_is_refused_for_candle_and_estimated_for_pytorch() {
    let d = TempDir::new("torchonly");
    let mut cases = Vec::new();
    let mut kv2 = crate::common::bundled_config("tiny-gemma3");
    kv2["num_key_value_heads"] = 2.into();
    cases.push(("kv2.json", kv2, "num_key_value_heads"));
    for model in ["tiny-llama", "tiny-qwen2", "tiny-phi3"] {
        let mut wide = crate::common::bundled_config(model);
        wide["head_dim"] = 16.into();
        cases.push((model, wide, "\"head_dim\" = 16 differs"));
    }
    for (name, config, field) in cases {
        let path = write_config(&d, &format!("{name}.json"), &config.to_string());
        let needles = ["cannot run on the candle runtime", field, "--runtime"];
        refused(&["--model", &path], &needles);
        let o = oomlab(&["estimate", "--model", &path, "--seq", "8"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{err}");
        for n in needles {
            assert!(err.contains(n), "missing '{n}' in {err}");
        }
        let o = torch_estimate(&path, &["--json"]);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        let point: serde_json::Value =
            serde_json::from_str(String::from_utf8_lossy(&o.stdout).lines().next().unwrap())
                .unwrap();
        assert!(point["total_bytes"].as_u64().unwrap() > 0, "{point}");
        // explain on a PyTorch message answers with PyTorch's figures alone.
        let o = oomlab(&[
            "explain",
            "--model",
            &path,
            "CUDA out of memory. Tried to allocate 2.00 MiB (GPU 0; 15.00 MiB total capacity; 9.00 MiB already allocated; 1.00 MiB free; 10.00 MiB reserved in total by PyTorch)",
        ]);
        let said = String::from_utf8_lossy(&o.stdout);
        assert!(o.status.success(), "{name}: {}", stderr(&o));
        assert!(said.contains("by oomlab's PyTorch estimate"), "{said}");
    }
}

/// Attention dropout in a decoder's training step: modelled under eager attention, refused
/// under sdpa (PyTorch's math kernel then) naming the field and the way on; inference and a
/// forward without `no_grad` run in eval mode, dropout off, and are estimated.
#[test]
fn decoder_attention_dropout_under_sdpa_is_refused_for_training_naming_the_field() {
    let d = TempDir::new("attndrop");
    for model in ["tiny-llama", "tiny-gemma3"] {
        let mut config = crate::common::bundled_config(model);
        config["attention_dropout"] = 0.1.into();
        let path = write_config(&d, &format!("{model}.json"), &config.to_string());
        let estimate = |extra: &[&str]| torch_estimate(&path, &[&["--workload"], extra].concat());
        let o = estimate(&["train", "--attn", "sdpa"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{model}: {err}");
        for n in ["\"attention_dropout\" above 0", "sdpa", "--attn eager"] {
            assert!(err.contains(n), "{model}: missing '{n}' in {err}");
        }
        assert!(
            !err.contains("panicked") && !err.contains("internal error"),
            "{err}"
        );
        for ok in [&["train", "--attn", "eager"][..], &["infer"], &["grad"]] {
            let o = estimate(ok);
            assert!(o.status.success(), "{model} {ok:?}: {}", stderr(&o));
        }
    }
}

/// ModernBERT's fields the PyTorch estimator does not follow in training (a dropout,
/// `sparse_prediction`) are refused there naming them, as are those candle's model does not
/// follow (its biases, an activation other than gelu), which the PyTorch estimator models.
#[test]
fn modernbert_fields_are_refused_by_the_runtime_that_does_not_follow_them() {
    let d = TempDir::new("modernbert-fields");
    let with = |name: &str, field: &str, value: serde_json::Value| {
        let mut config = crate::common::bundled_config("tiny-modernbert");
        config[field] = value;
        write_config(&d, name, &config.to_string())
    };
    let clean = |err: &str| !err.contains("panicked") && !err.contains("internal error");
    // Refused in training, where they act; inference runs in eval mode without labels.
    for (file, field, value) in [
        ("dropout.json", "mlp_dropout", 0.1.into()),
        ("sparse.json", "sparse_prediction", true.into()),
    ] {
        let path = with(file, field, value);
        let o = torch_estimate(&path, &["--workload", "train", "--task", "masked-lm"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{field}: {err}");
        assert!(err.contains(&format!("\"{field}\"")), "{field}: {err}");
        assert!(clean(&err), "{err}");
        let o = torch_estimate(&path, &["--task", "masked-lm"]);
        assert!(o.status.success(), "{field}: {}", stderr(&o));
    }
    // transformers 5 saves `layer_types`, not `global_attn_every_n_layers`: the PyTorch
    // estimate reads the pattern from it (the same as the bundled config's), candle's config
    // requires the field.
    let mut v5 = crate::common::bundled_config("tiny-modernbert");
    let every = v5["global_attn_every_n_layers"].as_u64().unwrap();
    let layers = v5["num_hidden_layers"].as_u64().unwrap();
    v5.as_object_mut()
        .unwrap()
        .remove("global_attn_every_n_layers");
    v5["layer_types"] = (0..layers)
        .map(|i| {
            if i % every == 0 {
                "full_attention"
            } else {
                "sliding_attention"
            }
        })
        .collect::<Vec<_>>()
        .into();
    let v5 = write_config(&d, "v5.json", &v5.to_string());
    let total = |model: &str| {
        let o = torch_estimate(model, &["--workload", "train", "--json"]);
        assert!(o.status.success(), "{model}: {}", stderr(&o));
        let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
        v["total_bytes"].as_u64().unwrap()
    };
    assert_eq!(total(&v5), total("tiny-modernbert"));
    let o = oomlab(&["estimate", "--model", &v5, "--seq", "8"]);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(2), "{err}");
    assert!(
        err.contains("global_attn_every_n_layers") && err.contains("--runtime"),
        "{err}"
    );
    let zero = with("zero.json", "global_attn_every_n_layers", 0.into());
    let err = stderr(&torch_estimate(&zero, &[]));
    assert!(
        err.contains("\"global_attn_every_n_layers\" must be at least 1"),
        "{err}"
    );
    for (file, field, value, says) in [
        (
            "norm-bias.json",
            "norm_bias",
            true.into(),
            "\"norm_bias\" is true",
        ),
        (
            "silu.json",
            "hidden_activation",
            "silu".into(),
            "\"hidden_activation\" is \"silu\"",
        ),
    ] {
        let path = with(file, field, value);
        let o = oomlab(&["estimate", "--model", &path, "--seq", "8"]);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{field}: {err}");
        assert!(
            err.contains(says) && err.contains("candle"),
            "{field}: {err}"
        );
        assert!(clean(&err), "{err}");
        let o = torch_estimate(&path, &["--workload", "train", "--task", "masked-lm"]);
        assert!(o.status.success(), "{field}: {}", stderr(&o));
    }
}

/// A classification head's labels come from the config: a regression (one label) or a
/// multi-label head's training loss is refused naming the field (its inference is estimated);
/// a malformed `id2label` or no labels at all are the config's errors.
#[test]
fn a_classifiers_labels_come_from_its_config_and_other_losses_are_refused_in_training() {
    let d = TempDir::new("labels");
    let with = |name: &str, fields: &[(&str, serde_json::Value)]| {
        let mut config = crate::common::bundled_config("tiny-bert");
        for (field, value) in fields {
            config[*field] = value.clone();
        }
        write_config(&d, name, &config.to_string())
    };
    let cls = ["--task", "sequence-classification"];
    for (file, fields, says) in [
        (
            "one.json",
            vec![("num_labels", 1.into())],
            "\"num_labels\" 1",
        ),
        (
            "multi.json",
            vec![
                ("num_labels", 4.into()),
                ("problem_type", "multi_label_classification".into()),
            ],
            "\"problem_type\" is \"multi_label_classification\"",
        ),
    ] {
        let path = with(file, &fields);
        let o = torch_estimate(&path, &[&["--workload", "train"], &cls[..]].concat());
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{file}: {err}");
        assert!(err.contains(says), "{file}: {err}");
        let o = torch_estimate(&path, &cls);
        assert!(o.status.success(), "{file}: {}", stderr(&o));
    }
    for (file, fields, says) in [
        (
            "none.json",
            vec![("num_labels", 0.into())],
            "at least 1 label",
        ),
        (
            "list.json",
            vec![("id2label", serde_json::json!(["a", "b"]))],
            "\"id2label\" must be an object",
        ),
    ] {
        let path = with(file, &fields);
        let o = torch_estimate(&path, &cls);
        let err = stderr(&o);
        assert_eq!(o.status.code(), Some(2), "{file}: {err}");
        assert!(err.contains(says) && err.contains(file), "{file}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

/// A model candle refuses after oomlab has read its config (here the worker's test hook): the
/// sweep says no trial ran and why, exits 1, and does not claim that nothing fits.
#[test]
fn a_model_that_cannot_be_built_ends_the_sweep_with_exit_1_and_its_reason() {
    let d = TempDir::new("buildfails");
    let journal = d.join("j.jsonl");
    let o = oomlab(&[
        "sweep",
        "--model",
        "tiny-qwen3",
        "--seq",
        "8",
        "--batch",
        "1..4",
        "--capacity",
        "64MiB",
        "--threads",
        "1",
        "--journal",
        journal.to_str().unwrap(),
        "--json",
        d.join("r.json").to_str().unwrap(),
        "--export",
        d.join("pick.toml").to_str().unwrap(),
        "--worker-build-fails",
        "candle refused it",
    ]);
    // The results say what happened; there is no recommendation to export.
    assert!(d.join("r.json").is_file());
    assert!(!d.join("pick.toml").exists());
    let out = String::from_utf8_lossy(&o.stdout);
    let err = stderr(&o);
    assert_eq!(o.status.code(), Some(1), "{out}\n{err}");
    assert!(out.contains("no recommendation: no trial ran"), "{out}");
    assert!(!out.contains("no configuration fits"), "{out}");
    assert!(
        err.lines().last().is_some_and(
            |l| l.contains("no trial ran: building the qwen3 model failed: candle refused it")
        ),
        "{err}"
    );
    assert!(
        !err.contains("panicked") && !err.contains("internal error"),
        "{err}"
    );
}

#[test]
fn a_folder_missing_a_shard_is_refused_naming_the_shard() {
    let d = TempDir::new("noshard");
    let folder = folder_missing_a_shard(&d, "ck");
    refused(
        &["--model", &folder.display().to_string()],
        &["model-00002-of-00002.safetensors"],
    );
}

#[test]
fn a_cuda_device_in_this_build_is_refused_with_the_cpu_as_the_way_on() {
    refused(
        &["--model", "tiny-bert", "--device", "cuda:0"],
        &[
            "cuda:0 needs CUDA",
            "does not include",
            "choose cpu in --device",
        ],
    );
    refused(
        &["--model", "tiny-bert", "--device", "tpu"],
        &["unknown device 'tpu'", "cuda:N"],
    );
}

#[test]
fn a_folder_whose_weights_do_not_match_its_config_is_refused() {
    let d = TempDir::new("badck");
    let src = fixtures().join("checkpoints/tiny-bert");
    std::fs::copy(src.join("model.safetensors"), d.join("model.safetensors")).unwrap();
    let cfg = std::fs::read_to_string(src.join("config.json")).unwrap();
    std::fs::write(
        d.join("config.json"),
        cfg.replace("\"hidden_size\": 32", "\"hidden_size\": 16"),
    )
    .unwrap();
    refused(
        &["--model", &d.0.display().to_string()],
        &[
            "model.safetensors",
            "do not match",
            "[128, 16]",
            "[128, 32]",
        ],
    );
}

#[test]
fn absurd_plans_are_refused_before_any_trial() {
    refused(
        &["--model", "tiny-bert", "--batch", "0..4"],
        &["start at 1"],
    );
    refused(&["--model", "tiny-bert", "--batch", "9..3"], &["reversed"]);
    refused(
        &["--model", "tiny-bert", "--seq", "65"],
        &[
            "sequence length 65",
            "maximum of 64",
            "max_position_embeddings",
            "64 or less in --seq",
        ],
    );
    refused(
        &["--model", "tiny-bert", "--capacity", "50KiB"],
        &["weights", "alone need", "raise --capacity", "from --dtype"],
    );
    refused(
        &["--model", "tiny-bert", "--capacity", "lots"],
        &["not a size"],
    );
    refused(
        &["--model", "tiny-bert", "--dtype", "f64"],
        &["use f32, f16, bf16, amp-bf16 or amp-f16"],
    );
    refused(
        &["--model", "tiny-bert", "--headroom", "95%"],
        &["headroom"],
    );
    refused(
        &["--model", "tiny-distilbert", "--dtype", "f16"],
        &["only in f32", "remove f16 from --dtype"],
    );
    refused(&[], &["no model given", "--model", "`oomlab models`"]);
    refused(
        &["--model", "tiny-bert", "--threads", "0"],
        &["--threads must be at least 1"],
    );
}

#[test]
fn an_unwritable_export_path_is_refused_up_front() {
    refused(
        &[
            "--model",
            "tiny-bert",
            "--export",
            "/proc/oomlab-cannot-write/rec.toml",
        ],
        &["cannot write", "rec.toml", "--export"],
    );
    refused(
        &["--model", "tiny-bert", "--export", "/tmp/rec.yaml"],
        &[".toml, .json or .csv"],
    );
    let d = TempDir::new("exists");
    std::fs::write(d.join("rec.toml"), "x").unwrap();
    refused(
        &[
            "--model",
            "tiny-bert",
            "--export",
            &d.join("rec.toml").display().to_string(),
        ],
        &["already exists", "--force"],
    );
}

#[test]
fn a_sweep_writes_results_and_a_recommendation_a_training_script_can_use() {
    let d = TempDir::new("export");
    let j = d.join("j.jsonl");
    let json = d.join("results.json");
    let toml_path = d.join("rec.toml");
    let o = oomlab(&[
        "sweep",
        "--model",
        "tiny-llama",
        "--seq",
        "16,32",
        "--dtype",
        "f32,f16",
        "--batch",
        "1..6",
        "--capacity",
        "64MiB",
        "--threads",
        "1",
        "--journal",
        &j.display().to_string(),
        "--json",
        &json.display().to_string(),
        "--export",
        &toml_path.display().to_string(),
    ]);
    assert!(o.status.success(), "{}", stderr(&o));
    let stdout = String::from_utf8_lossy(&o.stdout);
    assert!(stdout.contains("recommended: batch 6 × seq 32"), "{stdout}");
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    for k in [
        "model",
        "device",
        "threads",
        "capacity_bytes",
        "weights_bytes",
        "trials",
        "boundaries",
        "recommendation",
    ] {
        assert!(r.get(k).is_some(), "results lack {k}");
    }
    let t0 = &r["trials"][0];
    for k in [
        "batch",
        "seq",
        "dtype",
        "strategy",
        "outcome",
        "peak_bytes",
        "total_bytes",
        "requested_bytes",
        "reason",
        "seconds",
    ] {
        assert!(t0.get(k).is_some(), "trial lacks {k}");
    }
    assert!(
        t0["requested_bytes"].is_null(),
        "unknown numbers are null, never 0"
    );
    let rec: toml::Value = toml::from_str(&std::fs::read_to_string(&toml_path).unwrap()).unwrap();
    assert_eq!(
        rec["huggingface"]["per_device_eval_batch_size"].as_integer(),
        Some(6)
    );
    assert_eq!(rec["huggingface"]["max_length"].as_integer(), Some(32));
    assert_eq!(rec["huggingface"]["torch_dtype"].as_str(), Some("float32"));
    assert_eq!(rec["oomlab"]["device"].as_str(), Some("cpu"));
    assert!(
        rec["oomlab"]["forward"]
            .as_str()
            .unwrap()
            .contains("last position")
    );
    // A second run refuses to overwrite without --force.
    let o = oomlab(&[
        "sweep",
        "--model",
        "tiny-llama",
        "--export",
        &toml_path.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2));
}

#[test]
fn sigkill_to_the_cli_then_resume_repeats_no_finished_trial() {
    let d = TempDir::new("clikill");
    let j = d.join("j.jsonl");
    let mut child = Command::new(bin())
        .args([
            "sweep",
            "--model",
            "tiny-bert",
            "--seq",
            "16",
            "--batch",
            "1..8",
            "--strategy",
            "grid",
            "--capacity",
            "1GiB",
            "--threads",
            "1",
            "--journal",
            &j.display().to_string(),
        ])
        .arg("--worker-stall-ms=150")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    // Wait (bounded by lines, not time) until the journal holds two finished trials.
    let mut trials = 0;
    for _ in 0..2000 {
        trials = std::fs::read_to_string(&j).map_or(0, |t| t.matches("\"type\":\"trial\"").count());
        if trials >= 2 {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(10));
    }
    assert!(trials >= 2, "journal did not grow");
    child.kill().unwrap();
    child.wait().unwrap();
    let before = oomlab::report::read_journal(&j).unwrap();
    let done: Vec<usize> = before.trials.iter().map(|t| t.batch).collect();
    assert!(done.len() >= 2 && done.len() < 8, "{done:?}");
    let o = oomlab(&["sweep", "--resume", &j.display().to_string()]);
    assert!(o.status.success(), "{}", stderr(&o));
    // Trial numbers continue from the journal's.
    let first = stderr(&o).lines().find_map(|l| {
        l.strip_prefix("trial ")?
            .split_whitespace()
            .next()?
            .parse::<usize>()
            .ok()
    });
    assert_eq!(first, Some(done.len() + 1), "{}", stderr(&o));
    let after = oomlab::report::read_journal(&j).unwrap();
    let mut batches: Vec<usize> = after
        .trials
        .iter()
        .filter(|t| t.outcome != oomlab::report::Outcome::Failed)
        .map(|t| t.batch)
        .collect();
    assert_eq!(batches.len(), 8);
    batches.dedup();
    assert_eq!(
        batches,
        (1..=8).collect::<Vec<_>>(),
        "no finished trial repeated"
    );
    let last = std::fs::read_to_string(&j).unwrap();
    assert!(
        last.trim_end()
            .ends_with(r#"{"type":"end","cancelled":false}"#),
        "{last}"
    );
    // Contradicting arguments are refused, naming the flag and both values.
    let jp = j.display().to_string();
    refused(
        &["--resume", &jp, "--seq", "32"],
        &["--seq contradicts the journal", "16 in", "32 given"],
    );
    refused(
        &["--resume", &jp, "--device", "cuda:0"],
        &["--device contradicts the journal", "cpu in", "cuda:0 given"],
    );
    // The journal names its runtime: resuming on another is refused.
    refused(
        &["--resume", &jp, "--runtime", "torch"],
        &[
            "--runtime contradicts the journal",
            "candle in",
            "torch given",
        ],
    );
}

#[test]
fn an_injected_oom_below_b_star_ends_non_monotone_with_exit_0() {
    let dir = TempDir::new("cli-nonmono");
    let (plan, star, confirmed) = contradiction_setup(&dir);
    let json = dir.join("r.json");
    let out_of = oomlab(&[
        "sweep",
        "--model",
        "tiny-bert",
        "--seq",
        "64",
        "--batch",
        "1..256",
        "--capacity",
        &format!("{}B", plan.capacity_bytes),
        "--threads",
        "1",
        "--journal",
        &dir.join("j.jsonl").display().to_string(),
        "--json",
        &json.display().to_string(),
        &format!("--worker-oom-at={confirmed}"),
    ]);
    let out = String::from_utf8_lossy(&out_of.stdout);
    assert_eq!(out_of.status.code(), Some(0), "{}", stderr(&out_of));
    assert!(out.contains("non_monotone"), "{out}");
    assert!(
        out.contains(&format!(
            "batch {star} fitted but batch {confirmed} ran out of memory"
        )),
        "{out}"
    );
    let r: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&json).unwrap()).unwrap();
    let b = &r["boundaries"][0];
    assert_eq!(b["status"], "non_monotone");
    assert_eq!(b["contradiction"]["fit_batch"], star);
    assert_eq!(b["contradiction"]["oom_batch"], confirmed);
    assert!(r["recommendation"]["pick"]["batch"].as_u64().unwrap() < confirmed as u64);
}
