//! The PyTorch runtime's interpreter: which Python runs the worker, and whether it can.
//!
//! The worker is the Python package `oomlab_torch`, its modules in `torch/`, embedded in the
//! binary and run by `torch/loader.py` as `python -c <loader> <modules> <command>`
//! ([`worker_command`]), so the oomlab binary alone is enough. Before any trial the interpreter is
//! probed (the same program, `probe`): its versions of Python, torch (with its CUDA build),
//! transformers and accelerate, or one sentence saying what is missing and the `pip install` that
//! fixes it.

use super::protocol::Versions;
use serde::Deserialize;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// The PyTorch worker's modules (see docs/torch-protocol.md), in the order the loader runs them:
/// each imports only those before it; the last is the entry point, with `main(argv)`.
const MODULES: [(&str, &str); 7] = [
    ("oomlab_torch.protocol", include_str!("torch/protocol.py")),
    ("oomlab_torch.probe", include_str!("torch/probe.py")),
    ("oomlab_torch.measure", include_str!("torch/measure.py")),
    ("oomlab_torch.build", include_str!("torch/build.py")),
    ("oomlab_torch.workload", include_str!("torch/workload.py")),
    ("oomlab_torch.cuda", include_str!("torch/cuda.py")),
    ("oomlab_torch.worker", include_str!("torch/worker.py")),
];

/// Runs [`MODULES`] given on its command line: `python -c LOADER N NAME SOURCE … COMMAND ARGS`.
const LOADER: &str = include_str!("torch/loader.py");

/// `python` running the PyTorch worker's `command` (`probe`, `worker` or `selftest`), the modules
/// on the command line; the caller adds the command's arguments, environment and pipes.
#[must_use]
pub fn worker_command(python: &Path, command: &str) -> Command {
    let mut cmd = Command::new(python);
    cmd.arg("-c").arg(LOADER).arg(MODULES.len().to_string());
    for (name, source) in MODULES {
        cmd.arg(name).arg(source);
    }
    cmd.arg(command);
    cmd
}

/// What to install where nothing usable is found (the versions oomlab is tested with).
pub const PIP_PACKAGES: &str = "torch transformers";

/// The oldest versions the worker runs with (the worker checks the same).
pub const MIN_TORCH: &str = "2.2";
pub const MIN_TRANSFORMERS: &str = "4.46";

/// How long importing torch and transformers may take before the probe gives up.
const PROBE_TIMEOUT: Duration = Duration::from_mins(2);

/// An interpreter, and how it was found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    pub path: PathBuf,
    /// `--python`, `beside oomlab`, `the active virtualenv`, `the active conda env`, `PATH`.
    pub how: &'static str,
}

/// What the probe learned: the interpreter's versions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    pub python: PathBuf,
    pub how: &'static str,
    pub versions: Versions,
    pub cuda_available: bool,
}

/// Why the PyTorch runtime cannot run; each is one sentence naming the interpreter and the fix.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PythonProblem {
    #[error(
        "{} does not exist or is not a file; give the path of a Python interpreter (for example a virtualenv's bin/python)",
        .0.display()
    )]
    GivenMissing(PathBuf),
    #[error(
        "no Python interpreter found (looked beside oomlab, in the active virtualenv or conda env, and for python3 on PATH); install Python 3 with PyTorch (`python3 -m pip install {PIP_PACKAGES}`) and name it"
    )]
    NotFound,
    #[error("{} cannot run the PyTorch worker: {detail}", python.display())]
    WontRun { python: PathBuf, detail: String },
    #[error(
        "{} has no PyTorch (torch); install it with `{} -m pip install {PIP_PACKAGES}`, or name an interpreter that has it",
        python.display(), python.display()
    )]
    NoTorch { python: PathBuf },
    #[error(
        "{} has PyTorch {version}, older than the {MIN_TORCH} oomlab needs; upgrade it with `{} -m pip install --upgrade {PIP_PACKAGES}`",
        python.display(), python.display()
    )]
    OldTorch { python: PathBuf, version: String },
    #[error(
        "{} has no transformers; install it with `{} -m pip install transformers`, or name an interpreter that has it",
        python.display(), python.display()
    )]
    NoTransformers { python: PathBuf },
    #[error(
        "{} has transformers {version}, older than the {MIN_TRANSFORMERS} oomlab needs; upgrade it with `{} -m pip install --upgrade transformers`",
        python.display(), python.display()
    )]
    OldTransformers { python: PathBuf, version: String },
    #[error(
        "{} has PyTorch {version} without a usable CUDA (a CPU build, or no GPU visible to it), so it cannot run on cuda:{index}; install a CUDA build (`{} -m pip install torch`) or choose cpu as the device",
        python.display(), python.display()
    )]
    NoCuda {
        python: PathBuf,
        version: String,
        index: usize,
    },
    #[error(
        "{} cannot import {package}: {detail}; reinstall it with `{} -m pip install --force-reinstall {package}`",
        python.display(), python.display()
    )]
    ImportFailed {
        python: PathBuf,
        package: &'static str,
        detail: String,
    },
}

/// Finds the interpreter, in this order: `given` (`--python`), a `python` beside the oomlab
/// executable (a virtualenv's `bin/`, where `pip install` would put oomlab), the active
/// virtualenv (`VIRTUAL_ENV`) or conda env (`CONDA_PREFIX`), `python3` on `PATH`.
pub fn find(given: Option<&Path>, exe: &Path) -> Result<Found, PythonProblem> {
    if let Some(p) = given {
        return if p.is_file() {
            Ok(Found {
                path: p.to_path_buf(),
                how: "--python",
            })
        } else {
            Err(PythonProblem::GivenMissing(p.to_path_buf()))
        };
    }
    let beside = exe.parent().map(|d| d.join("python"));
    let venv = std::env::var_os("VIRTUAL_ENV").map(|v| PathBuf::from(v).join("bin/python"));
    let conda = std::env::var_os("CONDA_PREFIX").map(|v| PathBuf::from(v).join("bin/python"));
    let candidates = [
        (beside, "beside oomlab"),
        (venv, "the active virtualenv"),
        (conda, "the active conda env"),
    ];
    for (path, how) in candidates {
        if let Some(path) = path.filter(|p| p.is_file()) {
            return Ok(Found { path, how });
        }
    }
    on_path("python3")
        .map(|path| Found { path, how: "PATH" })
        .ok_or(PythonProblem::NotFound)
}

fn on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// The probe's answer (see docs/torch-protocol.md).
#[derive(Debug, Deserialize)]
struct ProbeReply {
    python: String,
    torch: Option<String>,
    torch_cuda: Option<String>,
    #[serde(default)]
    cuda_available: bool,
    transformers: Option<String>,
    accelerate: Option<String>,
    problem: Option<ProbeProblem>,
}

#[derive(Debug, Deserialize)]
struct ProbeProblem {
    kind: String,
    #[serde(default)]
    detail: String,
}

/// Runs the probe with `found`'s interpreter: its versions, or why it cannot run the worker.
pub fn probe(found: &Found) -> Result<Probed, PythonProblem> {
    let python = found.path.clone();
    let wont = |detail: String| PythonProblem::WontRun {
        python: python.clone(),
        detail,
    };
    let mut child = worker_command(&python, "probe")
        .env("HF_HUB_OFFLINE", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| wont(format!("it does not start ({e})")))?;
    let deadline = Instant::now() + PROBE_TIMEOUT;
    let status = loop {
        match child.try_wait() {
            Ok(Some(s)) => break s,
            Ok(None) if Instant::now() > deadline => {
                let _ = child.kill();
                let _ = child.wait();
                return Err(wont(format!(
                    "importing torch and transformers took over {} s",
                    PROBE_TIMEOUT.as_secs()
                )));
            }
            Ok(None) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => return Err(wont(e.to_string())),
        }
    };
    let mut out = String::new();
    let mut err = String::new();
    if let Some(mut o) = child.stdout.take() {
        let _ = o.read_to_string(&mut out);
    }
    if let Some(mut e) = child.stderr.take() {
        let _ = e.read_to_string(&mut err);
    }
    let line = out.lines().rev().find(|l| l.trim_start().starts_with('{'));
    let Some(reply) = line.and_then(|l| serde_json::from_str::<ProbeReply>(l).ok()) else {
        let last = err
            .lines()
            .rev()
            .find(|l| !l.trim().is_empty())
            .unwrap_or("no answer");
        let detail = if status.success() {
            format!("it gave no answer ({last})")
        } else {
            format!("it exited with {status} ({last}); oomlab needs Python 3.10 or newer")
        };
        return Err(wont(detail));
    };
    interpret(found, reply)
}

fn interpret(found: &Found, r: ProbeReply) -> Result<Probed, PythonProblem> {
    let python = found.path.clone();
    if let Some(p) = r.problem {
        return Err(match p.kind.as_str() {
            "no_torch" => PythonProblem::NoTorch { python },
            "old_torch" => PythonProblem::OldTorch {
                python,
                version: r.torch.unwrap_or_default(),
            },
            "no_transformers" => PythonProblem::NoTransformers { python },
            "old_transformers" => PythonProblem::OldTransformers {
                python,
                version: r.transformers.unwrap_or_default(),
            },
            "torch_import_failed" => PythonProblem::ImportFailed {
                python,
                package: "torch",
                detail: p.detail,
            },
            "transformers_import_failed" => PythonProblem::ImportFailed {
                python,
                package: "transformers",
                detail: p.detail,
            },
            other => PythonProblem::WontRun {
                python,
                detail: format!("{other}: {}", p.detail),
            },
        });
    }
    let (Some(torch), Some(transformers)) = (r.torch, r.transformers) else {
        return Err(PythonProblem::NoTorch { python });
    };
    Ok(Probed {
        python,
        how: found.how,
        versions: Versions {
            python: r.python,
            torch,
            torch_cuda: r.torch_cuda,
            transformers,
            accelerate: r.accelerate,
            device_name: "cpu".into(),
        },
        cuda_available: r.cuda_available,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found() -> Found {
        Found {
            path: PathBuf::from("/opt/py/bin/python"),
            how: "--python",
        }
    }

    fn reply(problem: Option<(&str, &str)>) -> ProbeReply {
        ProbeReply {
            python: "3.11.7".into(),
            torch: Some("2.1.0".into()),
            torch_cuda: None,
            cuda_available: false,
            transformers: Some("5.25.0".into()),
            accelerate: None,
            problem: problem.map(|(k, d)| ProbeProblem {
                kind: k.into(),
                detail: d.into(),
            }),
        }
    }

    #[test]
    fn each_problem_is_one_sentence_naming_the_interpreter_and_the_fix() {
        let old = interpret(&found(), reply(Some(("old_torch", "")))).unwrap_err();
        assert_eq!(
            old.to_string(),
            "/opt/py/bin/python has PyTorch 2.1.0, older than the 2.2 oomlab needs; upgrade it with `/opt/py/bin/python -m pip install --upgrade torch transformers`"
        );
        let none = interpret(&found(), reply(Some(("no_transformers", "")))).unwrap_err();
        assert!(
            none.to_string()
                .contains("has no transformers; install it with `/opt/py/bin/python -m pip install transformers`"),
            "{none}"
        );
        let ok = interpret(&found(), reply(None)).unwrap();
        assert_eq!(ok.versions.torch, "2.1.0");
        assert!(ok.versions.text().contains("(CPU build)"));
    }

    #[test]
    fn each_module_fits_in_one_command_line_argument() {
        // Linux refuses an argument over 128 KiB (MAX_ARG_STRLEN) with E2BIG.
        for (name, source) in MODULES.into_iter().chain([("loader", LOADER)]) {
            let bytes = source.len();
            assert!(bytes < 100 * 1024, "{name} is {bytes} bytes");
        }
    }

    #[test]
    fn a_given_interpreter_that_is_not_there_is_named() {
        let e = find(Some(Path::new("/no/such/python")), Path::new("/x/oomlab")).unwrap_err();
        assert_eq!(e, PythonProblem::GivenMissing("/no/such/python".into()));
        assert!(e.to_string().starts_with("/no/such/python does not exist"));
    }
}
