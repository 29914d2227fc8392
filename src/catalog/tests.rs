use super::*;

/// An architecture is read by the family's whole name and then its task: `Qwen3NextFor…` or
/// `Qwen2MoeFor…` are not the dense models their names start like.
#[test]
fn architecture_names_are_read_whole() {
    let arch = |a: &str| {
        let v = serde_json::json!({ "architectures": [a] });
        Family::detect(v.as_object().unwrap())
    };
    for (a, f) in [
        ("Qwen3ForCausalLM", Family::named("qwen3").unwrap()),
        ("Qwen3MoeForCausalLM", Family::named("qwen3_moe").unwrap()),
        ("Qwen2ForCausalLM", Family::named("qwen2").unwrap()),
        ("BertModel", Family::named("bert").unwrap()),
        (
            "DistilBertForMaskedLM",
            Family::named("distilbert").unwrap(),
        ),
        ("XLMRobertaForMaskedLM", Family::named("roberta").unwrap()),
        (
            "ModernBertForMaskedLM",
            Family::named("modernbert").unwrap(),
        ),
        ("MixtralForCausalLM", Family::named("mixtral").unwrap()),
    ] {
        assert_eq!(arch(a), Ok(f), "{a}");
    }
    for a in [
        "Qwen3NextForCausalLM",
        "Qwen2MoeForCausalLM",
        "Phi3SmallForCausalLM",
        "Gemma3nForCausalLM",
    ] {
        assert!(arch(a).is_err(), "{a}");
    }
    // A model_type oomlab does not know does not stop the architecture being read.
    let v = serde_json::json!({ "model_type": "custom", "architectures": ["LlamaForCausalLM"] });
    assert_eq!(
        Family::detect(v.as_object().unwrap()),
        Ok(Family::named("llama").unwrap())
    );
}

#[test]
fn a_missing_path_says_no_such_file_and_ids_stay_ids() {
    for path in [
        "./models/my-config.json",
        "/no/such/folder",
        "my-config.json",
        "~/m/config.json",
    ] {
        let e = ModelRef::parse(path).unwrap_err().to_string();
        assert!(e.starts_with("no such file or folder"), "{path}: {e}");
    }
    assert!(matches!(
        ModelRef::parse("org/name@main"),
        Ok(ModelRef::Hub { .. })
    ));
    assert!(matches!(
        ModelRef::parse("no-such-model"),
        Err(CatalogError::Unknown { .. })
    ));
}

#[test]
fn bundled_parameter_counts_match_published_models() {
    let expected: &[(&str, u64)] = &[
        ("bert-base-uncased", 109_482_240),
        ("bert-large-uncased", 335_141_888),
        ("distilbert-base-uncased", 66_362_880),
        ("TinyLlama-1.1B", 1_100_048_384),
        ("Llama-3.2-1B", 1_235_814_400),
        ("Qwen2-0.5B", 494_032_768),
        // The small published checkpoints for live demos ("4.39M", "11.2M", "28.8M",
        // "41.4M", "135M" on their model cards; BERT with its pooler, SmolLM2 tied).
        ("bert-tiny", 4_385_920),
        ("bert-mini", 11_170_560),
        ("bert-small", 28_763_648),
        ("bert-medium", 41_373_184),
        ("SmolLM2-135M", 134_515_008),
        // "7.24B" on its model card.
        ("Mistral-7B-v0.1", 7_241_732_096),
        // "3.82B" on its model card.
        ("Phi-3-mini-4k", 3_821_079_552),
        // "125M" and "278M" on their model cards (with the pooler).
        ("roberta-base", 124_645_632),
        ("xlm-roberta-base", 278_043_648),
        // "2.61B" on its model card.
        ("gemma-2-2b", 2_614_341_888),
        // "1B" on its model card (999,885,952 in its safetensors index); the head is tied.
        ("gemma-3-1b", 999_885_952),
        // "46.7B" on its model card: all eight experts of every layer.
        ("Mixtral-8x7B-v0.1", 46_702_792_704),
        // "149M" on its model card (the encoder; its masked-LM head adds 0.6M).
        ("ModernBERT-base", 149_014_272),
        // "0.6B" on its model card, "0.44B" without the embeddings (440,467,456 here);
        // the head is tied to the embeddings.
        ("Qwen3-0.6B", 596_049_920),
        // "30.5B in total and 3.3B activated" on its card: all 128 experts of each of the 48
        // layers resident, 8 per token.
        ("Qwen3-30B-A3B", 30_532_122_624),
    ];
    for (id, params) in expected {
        let spec = ModelSpec::resolve(&ModelRef::Catalog((*id).into())).unwrap();
        assert_eq!(spec.dims.published_parameters(spec.family), *params, "{id}");
    }
    let bert = ModelSpec::resolve(&ModelRef::Catalog("bert-base-uncased".into())).unwrap();
    assert_eq!(bert.candle_parameters(), 108_891_648);
}

#[test]
fn every_bundled_config_parses() {
    for b in BUNDLED {
        let spec = ModelSpec::resolve(&ModelRef::Catalog(b.id.into())).unwrap();
        assert!(spec.candle_parameters() > 0);
    }
}

#[test]
fn bad_configs_name_the_problem() {
    let e = parse_config("x.json", "").unwrap_err().to_string();
    assert!(e.contains("x.json is empty"), "{e}");
    let e = parse_config("x.json", "{nope").unwrap_err().to_string();
    assert!(e.contains("not valid JSON"), "{e}");
    let e = parse_config("x.json", "[1]").unwrap_err().to_string();
    assert!(e.contains("not a JSON object"), "{e}");
    let e = parse_config(
        "x.json",
        r#"{"model_type":"gpt2","architectures":["GPT2LMHeadModel"]}"#,
    )
    .unwrap_err()
    .to_string();
    assert!(
        e.contains("GPT2LMHeadModel") && e.contains("bert, distilbert, llama, qwen2"),
        "{e}"
    );
    // Every family is named, with the model_type its configs carry (Gemma 3's is gemma3_text).
    for f in crate::families::Family::all() {
        assert!(
            e.contains(f.room().model_type()),
            "{} missing: {e}",
            f.name()
        );
    }
    assert!(e.contains("roberta (and xlm-roberta)"), "{e}");
    let e = parse_config("x.json", r#"{"model_type":"bert","hidden_size":32}"#)
        .unwrap_err()
        .to_string();
    assert!(
        e.contains("x.json") && e.contains("num_hidden_layers"),
        "{e}"
    );
    let e = ModelRef::parse("no-such-model").unwrap_err().to_string();
    assert!(e.contains("neither a bundled model id"), "{e}");
}

#[test]
fn config_hash_is_stable_and_content_based() {
    let a = ModelSpec::resolve(&ModelRef::Catalog("tiny-bert".into())).unwrap();
    let b = ModelSpec::resolve(&ModelRef::Catalog("tiny-llama".into())).unwrap();
    assert_eq!(a.config_hash().len(), 64);
    assert_eq!(a.config_hash(), a.clone().config_hash());
    assert_ne!(a.config_hash(), b.config_hash());
}
