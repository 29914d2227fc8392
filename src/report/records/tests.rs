use super::*;

/// A `load_failed` line names its build; lines written before the PyTorch runtime (no
/// runtime, no checkpointing) read as candle's, and candle's are written as before.
#[test]
fn load_failed_lines_read_old_and_new() {
    let old = r#"{"type":"load_failed","dtype":"f16","reason":"no"}"#;
    let JournalLine::LoadFailed { build, reason } = serde_json::from_str(old).unwrap() else {
        panic!("not a load failure")
    };
    assert_eq!(
        build,
        Build {
            runtime: Runtime::Candle,
            dtype: Precision::F16,
            checkpointing: false
        }
    );
    assert_eq!(reason, "no");
    let line = JournalLine::LoadFailed { build, reason };
    assert_eq!(
        serde_json::to_string(&line).unwrap(),
        old.replace(r#""dtype""#, r#""runtime":"candle","dtype""#)
    );
    let torch = JournalLine::LoadFailed {
        build: Build {
            runtime: Runtime::Torch,
            dtype: Precision::AmpBf16,
            checkpointing: true,
        },
        reason: "x".into(),
    };
    let text = serde_json::to_string(&torch).unwrap();
    assert_eq!(serde_json::from_str::<JournalLine>(&text).unwrap(), torch);
}

/// A boundary stores why it stopped once; its JSON carries the words as `reason` (as results
/// files always have), and reads back to the same record, the words ignored.
#[test]
fn a_boundary_stores_its_stop_once_and_writes_its_reason() {
    let mut b = BoundaryRecord {
        runtime: Runtime::Candle,
        seq: 128,
        dtype: Precision::F32,
        checkpointing: false,
        strategy: crate::plan::Strategy::Binsearch,
        max_batch: Some(7),
        status: BoundaryStatus::HostLimited,
        trials_used: 4,
        contradiction: None,
        stop: None,
        host_limit: Some(HostLimit {
            batch: 8,
            ceiling_bytes: Some(1 << 30),
        }),
    };
    let json: serde_json::Value = serde_json::to_value(&b).unwrap();
    assert_eq!(json["host_limit"]["batch"], 8);
    assert!(
        json["reason"].as_str().unwrap().starts_with(
            "batch 8 would need more memory than this machine can give the worker (ceiling 1.0 GiB)"
        ),
        "{json}"
    );
    assert_eq!(serde_json::from_value::<BoundaryRecord>(json).unwrap(), b);
    // A stop's words come from the stop; words in the file do not override it.
    b.status = BoundaryStatus::Incomplete;
    b.host_limit = None;
    b.stop = Some(Stop::TrialCap { trials: 40 });
    let mut json = serde_json::to_value(&b).unwrap();
    assert_eq!(json["reason"], Stop::TrialCap { trials: 40 }.text());
    json["reason"] = "edited".into();
    let back: BoundaryRecord = serde_json::from_value(json).unwrap();
    assert_eq!(back.reason(), Some(Stop::TrialCap { trials: 40 }.text()));
    // A complete, exact curve has no reason, and writes null as before.
    b.status = BoundaryStatus::Exact;
    b.stop = None;
    assert!(serde_json::to_value(&b).unwrap()["reason"].is_null());
}
