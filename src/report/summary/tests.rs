use super::*;
use crate::catalog::ModelRef;
use crate::plan::{BatchRange, Device, Precision, Strategy};
use crate::report::records::Header;

fn plan(strategy: Strategy, range: (usize, usize), capacity_bytes: u64) -> SweepPlan {
    SweepPlan {
        gpu: None,
        model: ModelRef::Catalog("tiny-bert".into()),
        seqs: vec![16],
        dtypes: vec![Precision::F32],
        batch: BatchRange::new(range.0, range.1).unwrap(),
        capacity_bytes,
        headroom: 0.1,
        strategy,
        device: Device::Cpu { threads: 1 },
        runtimes: vec![crate::plan::Runtime::Candle],
        workload: crate::plan::Workload::default(),
        torch: crate::plan::TorchPlan::default(),
    }
}

fn record(
    plan: &SweepPlan,
    batch: usize,
    purpose: Purpose,
    outcome: Outcome,
    total: Option<u64>,
    failure: Option<Failure>,
) -> TrialRecord {
    TrialRecord {
        runtime: crate::plan::Runtime::Candle,
        batch,
        seq: 16,
        dtype: Precision::F32,
        checkpointing: false,
        strategy: plan.strategy,
        purpose,
        outcome,
        peak_bytes: total.map(|t| t - 100),
        total_bytes: total,
        requested_bytes: None,
        live_before_bytes: None,
        baseline_bytes: Some(100),
        failure,
        reason: failure.map(|f| f.name().to_string()),
        seconds: 0.0,
        worker_pid: None,
        pool_peak_bytes: None,
        pool_reserved_bytes: None,
        device_used_bytes: None,
        process_bytes: None,
        timeline: None,
        steps_bytes: None,
    }
}

const CURVE: Curve = Curve {
    runtime: crate::plan::Runtime::Candle,
    seq: 16,
    dtype: Precision::F32,
    checkpointing: false,
};

/// Drives `curve_phase` as the sweep does, against `total(b) = 100 + 10·b` under `capacity`,
/// killing trials where `kill(i)` says so (the i-th request). Returns the final phase and the
/// records.
fn drive(plan: &SweepPlan, kill: &mut dyn FnMut(usize) -> bool) -> (CurvePhase, Vec<TrialRecord>) {
    let mut trials = Vec::new();
    for i in 0..10_000 {
        let (batch, purpose) = match curve_phase(plan, CURVE, &trials, &[], None, None) {
            CurvePhase::Search(b) => (b, Purpose::Search),
            CurvePhase::Recommend { batch, .. } => (batch, Purpose::Recommend),
            done => return (done, trials),
        };
        // No finished trial is ever asked for again.
        assert!(
            !trials
                .iter()
                .any(|t: &TrialRecord| t.batch == batch && t.outcome != Outcome::Failed),
            "batch {batch} repeated: {trials:?}"
        );
        let total = 100 + 10 * batch as u64;
        trials.push(if kill(i) {
            record(
                plan,
                batch,
                purpose,
                Outcome::Failed,
                None,
                Some(Failure::Killed),
            )
        } else if total <= plan.capacity_bytes {
            record(plan, batch, purpose, Outcome::Fit, Some(total), None)
        } else {
            record(plan, batch, purpose, Outcome::Oom, None, None)
        });
    }
    panic!("the curve never ended");
}

#[test]
fn random_kills_are_retried_once_and_a_second_kill_at_a_batch_stops_the_curve() {
    let mut seed = 0x0123_4567_89AB_CDEF_u64;
    let mut next = move || {
        seed ^= seed << 13;
        seed ^= seed >> 7;
        seed ^= seed << 17;
        seed
    };
    let mut finished = 0;
    let mut stopped = 0;
    for round in 0..3000 {
        let strategy = Strategy::ALL[round % 3];
        let hi = 1 + (next() % 300) as usize;
        let cap = 100 + (next() % 3500);
        let p = plan(strategy, (1, hi), cap);
        let percent = next() % 60;
        let (phase, trials) = drive(&p, &mut |_| next() % 100 < percent);
        match phase {
            CurvePhase::Done { found, .. } => {
                finished += 1;
                // The same answer as without kills.
                let (clean, _) = drive(&p, &mut |_| false);
                let CurvePhase::Done { found: want, .. } = clean else {
                    panic!()
                };
                assert_eq!(found, want, "{strategy} 1..{hi} cap {cap}");
            }
            CurvePhase::Incomplete {
                stop: Stop::KilledTwice { batch, .. },
                ..
            } => {
                stopped += 1;
                let kills = trials
                    .iter()
                    .filter(|t| t.batch == batch && t.failure == Some(Failure::Killed))
                    .count();
                assert_eq!(kills, 2);
            }
            other => panic!("{strategy}: unexpected end {other:?}"),
        }
        assert!(trials.len() <= trial_cap(&p), "{}", trials.len());
    }
    eprintln!("kills: {finished} curves finished, {stopped} stopped by a second kill");
    assert!(finished > 500 && stopped > 500);
}

#[test]
fn more_trials_than_the_search_may_take_stop_the_curve() {
    let p = plan(Strategy::Auto, (1, 256), 1 << 30);
    // A journal that could not come from `auto` (a hundred fits, no OOM): the next trial would
    // be the 101st, beyond the cap, so the curve stops instead of going on for ever.
    let trials: Vec<TrialRecord> = (1..=100)
        .map(|b| {
            record(
                &p,
                b,
                Purpose::Search,
                Outcome::Fit,
                Some(100 + b as u64),
                None,
            )
        })
        .collect();
    let phase = curve_phase(&p, CURVE, &trials, &[], None, None);
    assert_eq!(
        phase,
        CurvePhase::Incomplete {
            found: None,
            stop: Stop::TrialCap { trials: 100 }
        }
    );
}

#[test]
fn a_confirmation_oom_below_the_boundary_makes_the_curve_non_monotone() {
    let p = plan(Strategy::Auto, (1, 64), 1000);
    let fit = |b, t, purpose| record(&p, b, purpose, Outcome::Fit, Some(t), None);
    let oom = |b, purpose| record(&p, b, purpose, Outcome::Oom, None, None);
    let mut trials = vec![
        fit(1, 130, Purpose::Search),
        fit(26, 960, Purpose::Search),
        oom(27, Purpose::Search),
    ];
    // The recommendation is computed below b* from the line; its confirmation runs out of
    // memory on this device.
    let CurvePhase::Done {
        found,
        recommended: Some(r),
        predicted_bytes: Some(predicted),
    } = curve_phase(&p, CURVE, &trials, &[], None, None)
    else {
        panic!("expected a computed recommendation")
    };
    assert_eq!(found.status, BoundaryStatus::Exact);
    assert!(r < 26 && predicted <= p.headroom_limit_bytes());
    trials.push(oom(r, Purpose::Recommend));
    let CurvePhase::Recommend { batch: r2, found } =
        curve_phase(&p, CURVE, &trials, &[], None, None)
    else {
        panic!("expected a trial below the OOM")
    };
    assert_eq!(found.status, BoundaryStatus::NonMonotone);
    assert!(r2 < r);
    trials.push(fit(r2, 130 + 10 * r2 as u64, Purpose::Recommend));
    let header = Header {
        oomlab_version: "test".into(),
        plan: p.clone(),
        model_name: "tiny-bert".into(),
        family: crate::catalog::Family::named("bert").unwrap(),
        config_hash: String::new(),
        forward: String::new(),
        started_unix: 0,
    };
    let results = summarize(&JournalContents {
        header,
        workers: Vec::new(),
        trials,
        load_failures: Vec::new(),
        host: None,
        torn_tail: false,
    });
    let b = &results.boundaries[0];
    assert_eq!(b.status, BoundaryStatus::NonMonotone);
    let c = b.contradiction.unwrap();
    assert_eq!((c.fit_batch, c.oom_batch), (26, r));
    assert!(
        b.reason()
            .unwrap()
            .contains(&format!("batch 26 fitted but batch {r}")),
        "{b:?}"
    );
    // The safe answer and the pick stay below the OOM.
    assert!(b.max_batch.unwrap() < r);
    assert!(results.recommendation.pick.unwrap().batch < r);
    assert!(!results.incomplete);
}

/// The estimator models the CPU forward to the byte: `auto` starts at its b* there. On a GPU it
/// only sizes the first probe, kept below it, and a fit there is not taken for b* (no b*+1).
#[test]
fn on_a_gpu_the_estimator_only_sizes_the_first_probe() {
    let spec = crate::catalog::ModelSpec::resolve(&ModelRef::Catalog("tiny-bert".into())).unwrap();
    let worker = WorkerInfo {
        runtime: crate::plan::Runtime::Candle,
        dtype: Precision::F32,
        checkpointing: false,
        built: crate::report::Built {
            weights_bytes: 1 << 20,
            baseline_bytes: 2 << 20,
            threads: 1,
            from_checkpoint: false,
            build_seconds: 0.0,
            host_ceiling_bytes: None,
            overhead_bytes: None,
            ballast_bytes: None,
            pool_capacity_bytes: None,
            versions: None,
        },
    };
    let first = |device: Device, trials: &[TrialRecord]| {
        let p = SweepPlan {
            device,
            ..plan(Strategy::Auto, (1, 4096), 64 << 20)
        };
        curve_phase(
            &p,
            CURVE,
            trials,
            std::slice::from_ref(&worker),
            None,
            Some(&spec),
        )
    };
    let CurvePhase::Search(cpu) = first(Device::Cpu { threads: 1 }, &[]) else {
        panic!("the CPU sweep starts with a trial")
    };
    let CurvePhase::Search(gpu) = first(Device::Cuda { index: 0 }, &[]) else {
        panic!("the GPU sweep starts with a trial")
    };
    assert!(cpu > 40, "tiny-bert at 64 MiB: b* {cpu}");
    assert_eq!(gpu, cpu * 3 / 4);
    // A fit at the CPU's b* is proved with b*+1; a fit at the GPU's probe is followed by the
    // measured line's prediction instead.
    let p = plan(Strategy::Auto, (1, 4096), 64 << 20);
    let fit = |b: usize| {
        let mut r = record(&p, b, Purpose::Search, Outcome::Fit, Some(50 << 20), None);
        r.baseline_bytes = Some(2 << 20);
        r
    };
    assert_eq!(
        first(Device::Cpu { threads: 1 }, &[fit(cpu)]),
        CurvePhase::Search(cpu + 1)
    );
    let CurvePhase::Search(next) = first(Device::Cuda { index: 0 }, &[fit(gpu)]) else {
        panic!("the GPU sweep goes on")
    };
    assert_ne!(next, gpu + 1);
    assert!(
        next > gpu,
        "the line from the baseline through the probe: {next}"
    );
}
