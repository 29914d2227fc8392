//! Real forward passes from real checkpoints, compared with an independent `NumPy` reference
//! (`tests/fixtures/make_reference.py`) to 1e-4.

use crate::common::fixtures;
use oomlab::catalog::{ModelRef, ModelSpec};
use oomlab::models;

fn check(name: &str) {
    let refs: serde_json::Value = serde_json::from_str(
        &std::fs::read_to_string(fixtures().join("reference_outputs.json")).unwrap(),
    )
    .unwrap();
    let r = &refs[name];
    let batch = r["batch"].as_u64().unwrap() as usize;
    let seq = r["seq"].as_u64().unwrap() as usize;
    let want: Vec<f64> = r["values"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_f64().unwrap())
        .collect();
    let spec =
        ModelSpec::resolve(&ModelRef::Folder(fixtures().join("checkpoints").join(name))).unwrap();
    assert!(spec.checkpoint.is_some(), "{name}: checkpoint not found");
    let dev = candle_core::Device::Cpu;
    let mut m = models::build(&spec, candle_core::DType::F32, &dev).unwrap();
    assert!(m.from_checkpoint);
    let ids = models::token_ids(batch, seq, spec.dims.vocab);
    let inputs = m.inputs_from_ids(&ids, batch, seq, &dev).unwrap();
    let out = m.forward(inputs).unwrap();
    let got: Vec<f32> = out.flatten_all().unwrap().to_vec1().unwrap();
    assert_eq!(got.len(), want.len(), "{name}: output size");
    let mut worst = 0f64;
    for (g, w) in got.iter().zip(&want) {
        worst = worst.max((f64::from(*g) - w).abs());
    }
    assert!(worst < 1e-4, "{name}: max abs difference {worst}");
    // The reference is not trivial (a zero model would also match zeros).
    assert!(
        want.iter().any(|v| v.abs() > 0.1),
        "{name}: degenerate reference"
    );
}

#[test]
fn bert_forward_matches_numpy_reference() {
    check("tiny-bert");
}

#[test]
fn llama_sharded_checkpoint_forward_matches_numpy_reference() {
    check("tiny-llama");
}

#[test]
fn qwen2_tied_checkpoint_forward_matches_numpy_reference() {
    check("tiny-qwen2");
}
