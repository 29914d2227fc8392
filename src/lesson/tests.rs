use super::caption::{NOT_MEASURED, Template, render};
use super::runner::RunResult;
use super::{BUNDLED, Lesson, Show};
use crate::plan::Runtime;

fn parse(text: &str) -> Result<Lesson, super::LessonError> {
    Lesson::parse(text, "t", "t.lesson")
}

const GOOD: &str = "\
# a comment
lesson Two runs
about A sentence.
defaults --model bert-tiny --seq 64 --capacity 64MiB

step First
run a \"no grad\" --runtime torch --workload infer --batch 2..2
run b \"candle\" --batch 1..4
show timeline a@2
caption A held {a.act@2}; b's largest batch is {b.bstar}; {a.total / b.total} as much.
question Why?
";

#[test]
fn every_bundled_lesson_parses() {
    for (name, text) in BUNDLED {
        let l = Lesson::parse(text, name, name).unwrap_or_else(|e| panic!("{e}"));
        assert!(!l.steps.is_empty(), "{name}");
        for s in &l.steps {
            assert!(
                s.question.is_some(),
                "{name}: step {} has no question",
                s.title
            );
        }
    }
}

#[test]
fn a_lesson_reads_its_runs_defaults_and_figures() {
    let l = parse(GOOD).unwrap();
    assert_eq!(l.title, "Two runs");
    let s = &l.steps[0];
    assert_eq!(s.runs.len(), 2);
    assert!(s.needs_torch());
    assert!(s.runs[0].torch && !s.runs[1].torch);
    assert_eq!(s.runs[0].label, "no grad");
    // The defaults' flags, and the line's over them.
    assert_eq!(s.runs[1].overrides.seqs, Some(vec![64]));
    assert_eq!(s.runs[1].overrides.capacity_bytes, Some(64 << 20));
    assert_eq!(s.runs[0].overrides.runtimes, Some(vec![Runtime::Torch]));
    assert_eq!(
        s.show,
        Show::Timeline {
            run: "a".into(),
            batch: Some(2)
        }
    );
    assert_eq!(s.caption.runs(), vec!["a", "b"]);
}

/// Each bad file is one error that names its line and what to write instead.
#[test]
fn a_bad_lesson_file_names_the_line() {
    let cases: &[(&str, usize, &str)] = &[
        ("step x\n", 1, "starts with `lesson TITLE`"),
        (
            "lesson L\nstep s\nrun a \"x\" --modle bert-tiny\n",
            3,
            "--modle",
        ),
        (
            "lesson L\nstep s\nrun a \"x\" --model bert-tiny --seq many\n",
            3,
            "many",
        ),
        ("lesson L\nstep s\nrun a \"x\"\n", 3, "names no model"),
        (
            "lesson L\nstep s\nrun 1a \"x\" --model bert-tiny\n",
            3,
            "needs a name",
        ),
        ("lesson L\nstep s\nrun a --model bert-tiny\n", 3, "legend"),
        (
            "lesson L\nstep s\nrun a \"x\" --model bert-tiny\nrun a \"y\" --model bert-tiny\n",
            4,
            "already exists",
        ),
        (
            "lesson L\nrun a \"x\" --model bert-tiny\n",
            2,
            "belongs to a step",
        ),
        (
            "lesson L\nstep s\nrun a \"x\" --model bert-tiny\n\ncaption it held {b.act}\n",
            5,
            "no run named `b`",
        ),
        (
            "lesson L\nstep s\nrun a \"x\" --model bert-tiny\ncaption ok\ncaption {a.size}\n",
            5,
            "unknown field `size`",
        ),
        (
            "lesson L\nstep s\nrun a \"x\" --model bert-tiny\ncaption {a.bstar / a.total}\n",
            4,
            "two byte figures",
        ),
        (
            "lesson L\nstep s\nrun a \"x\" --model bert-tiny\ncaption {a.act@x}\n",
            4,
            "not a batch size",
        ),
        (
            "lesson L\nstep s\nrun a \"x\" --model bert-tiny\nshow timeline z\n",
            4,
            "no run named `z`",
        ),
        (
            "lesson L\nstep s\nrun a \"x --model bert-tiny\n",
            3,
            "not closed",
        ),
        (
            "lesson L\nstep s\nrun a \"x\" --model bert-tiny\nsay hi\n",
            4,
            "unknown keyword",
        ),
        ("lesson L\nstep s\n", 2, "neither a run nor a caption"),
        ("lesson L\n", 0, "no step"),
    ];
    for (text, line, words) in cases {
        let e = parse(text).expect_err(text);
        assert_eq!(e.line, *line, "{text}: {e}");
        assert!(e.to_string().contains(words), "{text}: {e}");
        assert!(e.to_string().starts_with("t.lesson"), "{e}");
    }
}

#[test]
fn a_missing_lesson_lists_the_bundled_ones() {
    let e = Lesson::find("no-such-lesson").unwrap_err();
    assert!(e.to_string().contains("classic-oom"), "{e}");
}

/// A run as a sweep records it, from a journal fixture.
fn run_from(journal: &str, name: &str) -> RunResult {
    let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(journal);
    let contents = crate::report::read_journal(&path).unwrap();
    let results = crate::report::summarize(&contents);
    RunResult {
        name: name.into(),
        label: name.into(),
        journal: path,
        results,
        spec: None,
    }
}

#[test]
fn a_caption_carries_the_runs_numbers_and_says_what_was_not_measured() {
    let names = vec!["b".to_string(), "gone".to_string()];
    let t = Template::parse(
        "b* {b.bstar}, slope {b.slope}, at 4 {b.total@4}, {b.total@4 / b.total@2}; {gone.act}",
        &names,
    )
    .unwrap();
    let b = run_from("tests/fixtures/lessons/classic-oom/step2-batch.jsonl", "b");
    let text = render(&t, &|n| {
        (n == "b").then_some(&b as &dyn super::caption::Measured)
    });
    let fits = b.fits();
    let at = |batch: usize| {
        fits.iter()
            .find(|t| t.batch == batch)
            .and_then(|t| t.total_bytes)
            .unwrap()
    };
    let expected = format!(
        "b* {}, slope {}, at 4 {}, {:.1}; {NOT_MEASURED}",
        b.b_star().unwrap(),
        crate::plan::human_bytes(
            (fits[1].total_bytes.unwrap() - fits[0].total_bytes.unwrap())
                / (fits[1].batch - fits[0].batch) as u64
        ),
        crate::plan::human_bytes(at(4)),
        at(4) as f64 / at(2) as f64
    );
    assert_eq!(text, expected);
}
