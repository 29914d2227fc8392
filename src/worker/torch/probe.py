"""What the interpreter has: the versions of Python, torch, transformers and accelerate, and the
first problem that keeps the worker from running (the `probe` command's line)."""

from __future__ import annotations

import re
import sys

from oomlab_torch.protocol import ProbeLine, Problem, Versions, short_message

MIN_TORCH = (2, 2)
MIN_TRANSFORMERS = (4, 46)


def version_tuple(text: str) -> tuple[int, ...]:
    """Leading numeric release of a version: `2.15.0+cu132` -> (2, 15, 0), `4.46.0.dev0` ->
    (4, 46, 0)."""
    match = re.match(r"\s*v?(\d+(?:\.\d+)*)", text.split("+", 1)[0])
    return tuple(int(part) for part in match.group(1).split(".")) if match else ()


def dist_version(name: str) -> str | None:
    from importlib import metadata

    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def _probe_torch(line: ProbeLine) -> Problem | None:
    import importlib.util

    if importlib.util.find_spec("torch") is None:
        return {"kind": "no_torch", "detail": "torch is not installed for this Python"}
    try:
        import torch
    except Exception as e:
        line["torch"] = dist_version("torch")
        return {"kind": "torch_import_failed", "detail": short_message(e)}
    line["torch"] = torch.__version__
    line["torch_cuda"] = torch.version.cuda
    line["cuda_available"] = bool(torch.cuda.is_available())
    if version_tuple(torch.__version__) < MIN_TORCH:
        wanted = ".".join(map(str, MIN_TORCH))
        return {"kind": "old_torch", "detail": f"torch {torch.__version__}, needs {wanted}"}
    return None


def _probe_transformers(line: ProbeLine) -> Problem | None:
    import importlib.util

    if importlib.util.find_spec("transformers") is None:
        return {"kind": "no_transformers", "detail": "transformers is not installed"}
    try:
        import transformers
    except Exception as e:
        line["transformers"] = dist_version("transformers")
        return {"kind": "transformers_import_failed", "detail": short_message(e)}
    version = transformers.__version__
    line["transformers"] = version
    if version_tuple(version) < MIN_TRANSFORMERS:
        wanted = ".".join(map(str, MIN_TRANSFORMERS))
        return {"kind": "old_transformers", "detail": f"transformers {version}, needs {wanted}"}
    return None


def probe() -> ProbeLine:
    import platform

    line: ProbeLine = {
        "python": platform.python_version(),
        "executable": sys.executable,
        "torch": None,
        "torch_cuda": None,
        "cuda_available": False,
        "transformers": None,
        "accelerate": dist_version("accelerate"),
        "problem": None,
    }
    problem = _probe_torch(line)
    if problem is None or problem["kind"] == "old_torch":
        # transformers is looked at even beside an old torch (its version is still worth
        # showing), but the first problem is the one reported.
        problem = problem or _probe_transformers(line)
    line["problem"] = problem
    return line


def versions(device_name: str) -> Versions:
    import platform

    import torch
    import transformers

    return {
        "python": platform.python_version(),
        "torch": torch.__version__,
        "torch_cuda": torch.version.cuda,
        "transformers": transformers.__version__,
        "accelerate": dist_version("accelerate"),
        "device_name": device_name,
    }
