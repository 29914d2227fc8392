use super::*;

#[test]
fn ranges_include_both_ends_and_reject_nonsense() {
    assert_eq!(
        "1..256".parse::<BatchRange>().unwrap(),
        BatchRange { min: 1, max: 256 }
    );
    assert_eq!(
        "8".parse::<BatchRange>().unwrap(),
        BatchRange { min: 8, max: 8 }
    );
    assert!(
        "0..4"
            .parse::<BatchRange>()
            .unwrap_err()
            .to_string()
            .contains("start at 1")
    );
    assert!(
        "9..3"
            .parse::<BatchRange>()
            .unwrap_err()
            .to_string()
            .contains("reversed")
    );
    assert!(
        "1..x"
            .parse::<BatchRange>()
            .unwrap_err()
            .to_string()
            .contains("not a batch size")
    );
    assert!(
        "1..1000000"
            .parse::<BatchRange>()
            .unwrap_err()
            .to_string()
            .contains("limit")
    );
}

fn tiny_plan() -> SweepPlan {
    SweepPlan::defaults(ModelRef::Catalog("tiny-bert".into()), 64)
}

/// A plan names its GPU preset; plans written before it named one read it from their bytes
/// (only `--gpu` wrote a preset's exact bytes then), while a new plan's null stays null.
#[test]
fn a_plan_names_its_gpu_preset_and_old_plans_read_it_from_their_bytes() {
    let t4 = crate::presets::find("t4").unwrap();
    let mut p = tiny_plan();
    p.capacity_bytes = t4.total_bytes;
    p.gpu = Some(t4);
    let mut json = serde_json::to_value(&p).unwrap();
    assert_eq!(json["gpu"], "t4");
    assert_eq!(
        serde_json::from_value::<SweepPlan>(json.clone()).unwrap(),
        p
    );
    // Null: the capacity was given as a size that happens to be a T4's.
    json["gpu"] = serde_json::Value::Null;
    let sized: SweepPlan = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(sized.gpu, None);
    // Absent: written before plans named their preset.
    json.as_object_mut().unwrap().remove("gpu");
    let old: SweepPlan = serde_json::from_value(json.clone()).unwrap();
    assert_eq!(old.gpu, Some(t4));
    json["gpu"] = "t5".into();
    let e = serde_json::from_value::<SweepPlan>(json).unwrap_err();
    assert!(e.to_string().contains("unknown GPU 't5'"), "{e}");
    // A capacity given as a size drops the base's preset; a preset sets both.
    let given = PlanOverrides {
        capacity_bytes: Some(1 << 30),
        ..PlanOverrides::default()
    };
    assert_eq!(given.over(&p).gpu, None);
    let given = PlanOverrides {
        gpu: crate::presets::find("k80").ok(),
        ..PlanOverrides::default()
    };
    let k80 = given.over(&tiny_plan());
    assert_eq!(k80.capacity_bytes, 11_441 << 20);
    assert_eq!(k80.gpu.map(|g| g.id), Some("k80"));
}

#[test]
fn defaults_shorten_the_sequence_to_the_model() {
    let p = tiny_plan();
    assert_eq!(p.seqs, [64]);
    assert_eq!(p.capacity_bytes, defaults::CAPACITY_BYTES);
    assert_eq!(
        p.device,
        Device::Cpu {
            threads: defaults::threads()
        }
    );
}

#[test]
fn overrides_replace_only_what_was_given() {
    let base = tiny_plan();
    assert_eq!(PlanOverrides::default().over(&base), base);
    assert!(PlanOverrides::default().is_empty());
    let given = PlanOverrides {
        seqs: Some(vec![32, 16, 32]),
        threads: Some(3),
        ..PlanOverrides::default()
    };
    let p = given.over(&base);
    assert_eq!(p.seqs, [32, 16]);
    assert_eq!(p.device, Device::Cpu { threads: 3 });
    assert_eq!(
        base.differences(&p)
            .iter()
            .map(|d| d.field)
            .collect::<Vec<_>>(),
        [PlanField::Seq, PlanField::Threads]
    );
    let cuda = PlanOverrides {
        device: Some("cuda:1".parse().unwrap()),
        ..PlanOverrides::default()
    }
    .over(&base);
    assert_eq!(cuda.device, Device::Cuda { index: 1 });
    let d = base.differences(&cuda);
    assert_eq!(d[0].field, PlanField::Device);
    assert_eq!(
        (d[0].ours.as_str(), d[0].theirs.as_str()),
        ("cpu", "cuda:1")
    );
}

/// The cuda build's refusal of Qwen3-MoE (the plans of the default build never raise it).
#[test]
fn a_family_this_build_cannot_measure_is_named_with_its_reason() {
    let reason = "this build (the cuda feature) runs it through candle's fused expert kernel";
    let text = PlanProblem::FamilyNotInBuild {
        family: "qwen3_moe".into(),
        model: "Qwen3-30B-A3B".into(),
        reason,
    }
    .describe(PlanField::Model, &PlainWords);
    assert!(
        text.starts_with("Qwen3-30B-A3B is a qwen3_moe model: this build (the cuda feature)")
            && text.ends_with("choose another in the model"),
        "{text}"
    );
    assert_eq!(
        crate::catalog::Family::named("qwen3_moe")
            .unwrap()
            .not_in_this_build()
            .is_some(),
        cfg!(feature = "cuda")
    );
}

#[test]
fn gpu_problems_name_the_gpus_and_the_way_on() {
    let words = PlainWords;
    let none = PlanProblem::NoSuchGpu {
        index: 7,
        gpus: vec!["cuda:0 (NVIDIA H200)".into()],
    }
    .describe(PlanField::Device, &words);
    assert!(
        none.starts_with("there is no cuda:7: this machine has cuda:0 (NVIDIA H200)"),
        "{none}"
    );
    let no_driver = PlanProblem::NoSuchGpu {
        index: 0,
        gpus: Vec::new(),
    }
    .describe(PlanField::Device, &words);
    assert!(
        no_driver.contains("the NVIDIA driver sees no GPU here"),
        "{no_driver}"
    );
    let full = PlanProblem::CapacityAboveGpu {
        index: 0,
        capacity_bytes: 80 << 30,
        free_bytes: 60 << 30,
        total_bytes: 80 << 30,
    }
    .describe(PlanField::Capacity, &words);
    assert!(
        full.contains("60.0 GiB of 80.0 GiB") && full.contains("`oomlab devices`"),
        "{full}"
    );
}

#[test]
fn journals_from_before_the_typed_device_still_read() {
    let mut v = serde_json::to_value(tiny_plan()).unwrap();
    assert_eq!(v["device"]["kind"], "cpu");
    v["device"] = "cpu".into();
    v["threads"] = 3.into();
    let p: SweepPlan = serde_json::from_value(v.clone()).unwrap();
    assert_eq!(p.device, Device::Cpu { threads: 3 });
    v["device"] = "tpu".into();
    let e = serde_json::from_value::<SweepPlan>(v)
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown device 'tpu'"), "{e}");
}

#[test]
fn sizes_and_headroom_parse() {
    assert_eq!(parse_bytes("600MiB").unwrap(), 600 * 1024 * 1024);
    assert_eq!(parse_bytes("1GiB").unwrap(), 1 << 30);
    assert_eq!(parse_bytes("1234B").unwrap(), 1234);
    let bare = parse_bytes("16").unwrap_err().to_string();
    assert!(
        bare.contains("no unit") && bare.contains("16GiB") && bare.contains("16B"),
        "{bare}"
    );
    let big = parse_bytes("1073741824").unwrap_err().to_string();
    assert!(big.contains("1GiB") && big.contains("1073741824B"), "{big}");
    let neg = parse_bytes("-1GiB").unwrap_err().to_string();
    assert!(
        neg.contains("cannot be negative") && neg.contains("1GiB"),
        "{neg}"
    );
    let h = parse_headroom("10").unwrap_err().to_string();
    assert!(h.contains("10%"), "{h}");
    assert!(
        parse_headroom("-5%")
            .unwrap_err()
            .to_string()
            .contains("cannot be negative")
    );
    assert!((parse_headroom("0.1").unwrap() - 0.1).abs() < 1e-12);
    assert!(
        parse_headroom("1")
            .unwrap_err()
            .to_string()
            .contains("outside")
    );
    assert!(parse_bytes("lots").is_err());
    assert!((parse_headroom("10%").unwrap() - 0.1).abs() < 1e-12);
    assert!((parse_headroom("0.25").unwrap() - 0.25).abs() < 1e-12);
    assert!(parse_headroom("95%").is_err());
    assert!("f64".parse::<Precision>().is_err());
    assert_eq!("bfloat16".parse::<Precision>().unwrap(), Precision::Bf16);
}

/// The window stores its device as text, as it always did (`cpu`, `cuda:N`): settings saved
/// before the device was typed still load.
#[test]
fn a_device_kind_is_stored_as_its_name() {
    assert_eq!(
        serde_json::to_string(&DeviceKind::Cuda { index: 1 }).unwrap(),
        "\"cuda:1\""
    );
    assert_eq!(
        serde_json::from_str::<DeviceKind>("\"CPU\"").unwrap(),
        DeviceKind::Cpu
    );
    assert_eq!(
        serde_json::from_str::<DeviceKind>("\"gpu:2\"").unwrap(),
        DeviceKind::Cuda { index: 2 }
    );
    let e = serde_json::from_str::<DeviceKind>("\"tpu\"")
        .unwrap_err()
        .to_string();
    assert!(e.contains("unknown device 'tpu'"), "{e}");
}

/// Gemma 2's default attention is eager, as transformers runs it; sdpa asked of it is refused
/// naming the attention control, while other families keep sdpa; journals that wrote an
/// attention read it as asked.
#[test]
fn the_default_attention_follows_the_model_and_gemma_2_refuses_sdpa() {
    use crate::catalog::ModelSpec;
    let gemma2 = ModelSpec::resolve(&ModelRef::Catalog("tiny-gemma2".into())).unwrap();
    let bert = ModelSpec::resolve(&ModelRef::Catalog("tiny-bert".into())).unwrap();
    let mut plan = SweepPlan::defaults(ModelRef::Catalog("tiny-gemma2".into()), 64);
    plan.runtimes = vec![Runtime::Torch];
    assert_eq!(plan.torch.attn, None);
    assert_eq!(plan.torch_attn(gemma2.family), Attn::Eager);
    assert_eq!(plan.torch_attn(bert.family), Attn::Sdpa);
    assert!(super::checks::check(&plan, &gemma2).is_ok());
    plan.torch.attn = Some(Attn::Sdpa);
    let e = super::checks::check(&plan, &gemma2).unwrap_err();
    let text = e.describe(&Flags);
    assert!(
        text.contains("eager attention only") && text.contains("--attn"),
        "{text}"
    );
    assert!(super::checks::check(&plan, &bert).is_ok());
    plan.torch.attn = Some(Attn::Eager);
    assert!(super::checks::check(&plan, &gemma2).is_ok());
    // A journal's plan from before the attention was optional.
    let mut v = serde_json::to_value(&plan).unwrap();
    v["torch"]["attn"] = "sdpa".into();
    let old: SweepPlan = serde_json::from_value(v).unwrap();
    assert_eq!(old.torch.attn, Some(Attn::Sdpa));
}
