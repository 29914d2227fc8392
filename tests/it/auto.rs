//! The estimator driving sweeps: `auto` starts at its b*, computed recommendations and their
//! confirmation.

use crate::common::{TempDir, plan, worker};
use oomlab::catalog::ModelRef;
use oomlab::plan::{Precision, Strategy};
use std::sync::atomic::AtomicBool;

/// Runs a sweep with `confirm`, to its end.
fn sweep_confirming(
    p: oomlab::plan::SweepPlan,
    journal: &std::path::Path,
    confirm: oomlab::plan::Confirm,
) -> oomlab::report::Results {
    let cancel = std::sync::Arc::new(AtomicBool::new(false));
    oomlab::sweep::Sweep::new(p, journal)
        .unwrap()
        .confirming(confirm)
        .run(&worker(), &cancel, &mut |_| {})
        .unwrap()
}

#[test]
fn the_estimator_starts_auto_at_b_star_on_every_family_and_binsearch_needs_more() {
    use oomlab::report::{Outcome, Purpose};
    use oomlab::search::BoundaryStatus;
    let dir = TempDir::new("guided");
    let mut table = Vec::new();
    for (model, seq, dtype, target) in [
        ("tiny-bert", 48, Precision::F32, 37),
        ("tiny-distilbert", 40, Precision::F32, 21),
        ("tiny-llama", 56, Precision::F16, 45),
        ("tiny-qwen2", 64, Precision::Bf16, 18),
        ("tiny-mistral", 48, Precision::F32, 29),
        ("tiny-phi3", 40, Precision::F16, 33),
        ("tiny-roberta", 56, Precision::F32, 26),
        ("tiny-gemma2", 48, Precision::Bf16, 22),
        ("tiny-mixtral", 48, Precision::F32, 20),
        ("tiny-modernbert", 56, Precision::F32, 24),
        ("tiny-qwen3", 48, Precision::F16, 27),
        ("tiny-qwen3-moe", 40, Precision::Bf16, 23),
    ] {
        let cap = crate::common::capacity_for(model, seq, dtype, target, &dir);
        let mut used = Vec::new();
        for s in [Strategy::Auto, Strategy::Binsearch] {
            let p = plan(
                ModelRef::Catalog(model.into()),
                &[seq],
                &[dtype],
                (1, 512),
                cap,
                s,
            );
            let r = sweep_confirming(
                p,
                &dir.join(&format!("{model}-{s}.jsonl")),
                oomlab::plan::Confirm::None,
            );
            let b = &r.boundaries[0];
            assert_eq!(b.status, BoundaryStatus::Exact, "{model} {s}: {b:?}");
            let star = b.max_batch.unwrap();
            // Exact: measured on both sides by this strategy's own trials.
            assert!(
                r.trials
                    .iter()
                    .any(|t| t.batch == star && t.outcome == Outcome::Fit)
            );
            assert!(
                r.trials
                    .iter()
                    .any(|t| t.batch == star + 1 && t.outcome == Outcome::Oom)
            );
            assert!(r.trials.iter().all(|t| t.purpose == Purpose::Search));
            used.push((star, b.trials_used));
        }
        table.push((model, dtype, used[0].0, used[0].1, used[1].1));
        assert_eq!(
            used[0].0, used[1].0,
            "{model}: both strategies find the same b*"
        );
        assert!(
            used[0].1 <= 3,
            "{model} {dtype}: auto took {} trials",
            used[0].1
        );
        assert!(
            used[1].1 > used[0].1,
            "{model}: binsearch {} vs auto {}",
            used[1].1,
            used[0].1
        );
    }
    eprintln!("model            dtype  b*   auto  binsearch");
    for (m, d, star, auto, bin) in &table {
        eprintln!("{m:<16} {d:<5} {star:>3}  {auto:>4}  {bin:>9}");
    }
    // With the estimator exact on these, the typical curve costs the two proving trials.
    assert!(table.iter().filter(|t| t.3 == 2).count() >= 3, "{table:?}");
}

#[test]
fn only_the_pick_is_confirmed_by_default_the_rest_is_computed_from_the_line() {
    use oomlab::plan::Confirm;
    use oomlab::report::{Outcome, Purpose};
    let dir = TempDir::new("confirm");
    let cap = crate::common::capacity_for("tiny-bert", 64, Precision::F32, 30, &dir);
    let p = plan(
        ModelRef::Catalog("tiny-bert".into()),
        &[16, 32, 64],
        &[Precision::F32],
        (1, 512),
        cap,
        Strategy::Auto,
    );
    let limit = p.headroom_limit_bytes();
    let confirmations = |r: &oomlab::report::Results| {
        r.trials
            .iter()
            .filter(|t| t.purpose == Purpose::Recommend)
            .map(|t| (t.seq, t.batch))
            .collect::<Vec<_>>()
    };
    // Default: one confirming trial, at the pick; the other curves computed, marked so, with
    // the bytes the line predicts.
    let r = sweep_confirming(p.clone(), &dir.join("pick.jsonl"), Confirm::Pick);
    let pick = r.recommendation.pick.clone().unwrap();
    assert_eq!(confirmations(&r), vec![(pick.seq, pick.batch)]);
    assert!(
        !pick.computed && pick.total_bytes.unwrap() <= limit,
        "{pick:?}"
    );
    let computed: Vec<_> = r
        .recommendation
        .curves
        .iter()
        .filter(|c| c.computed)
        .collect();
    assert_eq!(computed.len(), 2, "{:?}", r.recommendation.curves);
    for c in &computed {
        assert!(
            c.total_bytes.is_none() && c.predicted_bytes.unwrap() <= limit,
            "{c:?}"
        );
    }
    assert!(r.trial_seconds >= r.floor_seconds && r.floor_seconds > 0.0);
    // All: every curve measured at the batch the line computed, within a few bytes of it.
    let all = sweep_confirming(p.clone(), &dir.join("all.jsonl"), Confirm::All);
    assert_eq!(confirmations(&all).len(), 3);
    for (c, was) in all
        .recommendation
        .curves
        .iter()
        .zip(&r.recommendation.curves)
    {
        assert!(!c.computed, "{c:?}");
        assert_eq!(c.batch, was.batch, "the line's batch held when measured");
        let measured = c.total_bytes.unwrap();
        assert!(measured <= limit);
        if let Some(predicted) = was.predicted_bytes {
            let err = (predicted as f64 - measured as f64).abs() / measured as f64;
            assert!(err < 0.001, "predicted {predicted}, measured {measured}");
        }
    }
    // None: nothing confirmed, the pick is marked computed.
    let none = sweep_confirming(p, &dir.join("none.jsonl"), Confirm::None);
    assert!(confirmations(&none).is_empty());
    assert!(none.recommendation.pick.unwrap().computed);
    assert!(none.trials.iter().all(|t| t.outcome != Outcome::Failed));
}

#[test]
fn a_confirmation_over_the_limit_sends_the_curve_to_a_measured_search() {
    use oomlab::plan::Confirm;
    use oomlab::report::{Outcome, Purpose};
    let dir = TempDir::new("confirm-miss");
    let cap = crate::common::capacity_for("tiny-bert", 64, Precision::F32, 30, &dir);
    let p = plan(
        ModelRef::Catalog("tiny-bert".into()),
        &[64],
        &[Precision::F32],
        (1, 512),
        cap,
        Strategy::Auto,
    );
    let clean = sweep_confirming(p.clone(), &dir.join("clean.jsonl"), Confirm::Pick);
    let pick = clean.recommendation.pick.unwrap().batch;
    // On a "device" where the computed batch runs out of memory, the confirmation fails and
    // the curve measures its way down: the pick ends measured, below that batch.
    let cancel = std::sync::Arc::new(AtomicBool::new(false));
    let r = oomlab::sweep::Sweep::new(p, &dir.join("miss.jsonl"))
        .unwrap()
        .run(
            &crate::common::faulty_worker(0, &[pick]),
            &cancel,
            &mut |_| {},
        )
        .unwrap();
    let miss = r.trials.iter().find(|t| t.batch == pick).unwrap();
    assert_eq!(
        (miss.purpose, miss.outcome),
        (Purpose::Recommend, Outcome::Oom)
    );
    let now = r.recommendation.pick.unwrap();
    assert!(
        now.batch < pick && !now.computed && now.total_bytes.is_some(),
        "{now:?}"
    );
    assert!(!r.incomplete);
}
