"""oomlab's PyTorch worker: builds a transformers model and measures one trial.

Embedded in the oomlab binary and run as ``python -c <source> probe|worker|selftest DIR``. The
protocol is docs/torch-protocol.md: JSON lines, requests on stdin, answers on stdout. Nothing but
protocol lines reaches stdout (file descriptor 1 is pointed at stderr, the protocol keeps a private
copy of it), and an exception becomes an ``error`` reply with its traceback on stderr.

On the CPU the bytes are PyTorch's own count: the profiler's memory events (c10's CPU allocator
reports each allocation and each free of a block allocated while profiling), summed in time order.
One profiler session covers the build (its sum is the baseline), a second one, started at once
after it, covers the trial; c10 keeps its table of live blocks between them, so frees of blocks
allocated during the build are still reported in the trial. On CUDA the bytes are the caching
allocator's statistics plus what the process holds outside it, on a device shrunk to the capacity
by a ballast allocated outside the allocator.
"""

from __future__ import annotations

import contextlib
import ctypes
import gc
import json
import os
import re
import sys
import time
import traceback
from bisect import bisect_left, bisect_right
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import UnionType
from typing import (
    TYPE_CHECKING,
    Literal,
    TextIO,
    TypedDict,
    Union,
    cast,
    get_args,
    get_origin,
    get_type_hints,
    is_typeddict,
)

if TYPE_CHECKING:
    import torch
    from torch._C._profiler import _ProfilerEvent
    from torch.autograd.profiler import profile, record_function

MIN_TORCH = (2, 2)
MIN_TRANSFORMERS = (4, 46)
TIMELINE_POINTS = 400
MODEL_SEED = 0
INPUT_SEED = 1234
ADAMW_LR = 1e-5
SGD_LR = 1e-3
SGD_MOMENTUM = 0.9
NUM_LABELS = 2
MESSAGE_CHARS = 300
RANGE = "oomlab::"
MODULE_RANGE = "module::"
BACKWARD_WRAPPER = "autograd::engine::evaluate_function: "

DType = Literal["f32", "f16", "bf16", "amp-bf16", "amp-f16"]
Workload = Literal["infer", "grad", "train"]
Task = Literal["base", "sequence-classification", "causal-lm", "masked-lm"]
Attn = Literal["eager", "sdpa"]
OptimizerName = Literal["adamw", "sgd"]
MarkLabel = Literal["forward", "backward", "optimizer step", "step 2"]
ProblemKind = Literal[
    "no_torch",
    "torch_import_failed",
    "old_torch",
    "no_transformers",
    "transformers_import_failed",
    "old_transformers",
]

JsonObject = dict[str, object]


# ---------------------------------------------------------------------------------------------
# Messages


class ProtocolError(ValueError):
    """A request line this worker cannot read."""


@dataclass(frozen=True)
class CpuDevice:
    threads: int


@dataclass(frozen=True)
class CudaDevice:
    index: int


@dataclass(frozen=True)
class TorchSpec:
    config: JsonObject
    weights_dir: str | None
    workload: Workload
    task: Task
    attn: Attn
    optimizer: OptimizerName
    checkpointing: bool


@dataclass(frozen=True)
class LoadRequest:
    model: JsonObject
    dtype: DType
    capacity_bytes: int
    device: CpuDevice | CudaDevice
    torch: TorchSpec


@dataclass(frozen=True)
class TrialRequest:
    batch: int
    seq: int


@dataclass(frozen=True)
class ShutdownRequest:
    pass


Request = LoadRequest | TrialRequest | ShutdownRequest


class Problem(TypedDict):
    kind: ProblemKind
    detail: str


class ProbeLine(TypedDict):
    python: str
    executable: str
    torch: str | None
    torch_cuda: str | None
    cuda_available: bool
    transformers: str | None
    accelerate: str | None
    problem: Problem | None


class Versions(TypedDict):
    python: str
    torch: str
    torch_cuda: str | None
    transformers: str
    accelerate: str | None
    device_name: str


class ReadyReply(TypedDict):
    reply: Literal["ready"]
    weights_bytes: int
    baseline_bytes: int
    threads: int
    build_seconds: float
    from_checkpoint: bool
    pid: int
    host_ceiling_bytes: int | None
    overhead_bytes: int | None
    ballast_bytes: int | None
    pool_capacity_bytes: int | None
    versions: Versions


class StartedReply(TypedDict):
    reply: Literal["started"]


class Mark(TypedDict):
    at: int
    label: MarkLabel


class Timeline(TypedDict):
    events: int
    live_bytes: list[int]
    marks: list[Mark]
    peak_op: str | None
    peak_scope: str | None


class TrialReply(TypedDict):
    reply: Literal["trial"]
    peak_bytes: int
    total_bytes: int
    live_before_bytes: int
    baseline_bytes: int
    seconds: float
    pool_peak_bytes: int | None
    pool_reserved_bytes: int | None
    device_used_bytes: int | None
    process_bytes: int | None
    steps_bytes: tuple[int, int] | None
    timeline: Timeline | None


class OomReply(TypedDict):
    reply: Literal["oom"]
    message: str
    requested_bytes: int | None


class ErrorReply(TypedDict):
    reply: Literal["error"]
    message: str


Reply = ReadyReply | StartedReply | TrialReply | OomReply | ErrorReply
REPLY_TYPES: dict[str, type] = {
    "ready": ReadyReply,
    "started": StartedReply,
    "trial": TrialReply,
    "oom": OomReply,
    "error": ErrorReply,
}


def error_reply(message: str) -> ErrorReply:
    return {"reply": "error", "message": message}


def oom_reply(message: str, requested: int | None) -> OomReply:
    return {"reply": "oom", "message": message, "requested_bytes": requested}


# ---------------------------------------------------------------------------------------------
# Request parsing (the selftest runs the fixtures through these same functions)


def _int(obj: JsonObject, key: str, minimum: int) -> int:
    value = obj.get(key)
    if isinstance(value, bool) or not isinstance(value, int) or value < minimum:
        raise ProtocolError(f"`{key}` must be an integer of at least {minimum}, not {value!r}")
    return value


def _bool(obj: JsonObject, key: str) -> bool:
    value = obj.get(key)
    if not isinstance(value, bool):
        raise ProtocolError(f"`{key}` must be true or false, not {value!r}")
    return value


def _object(obj: JsonObject, key: str) -> JsonObject:
    value = obj.get(key)
    if not isinstance(value, dict):
        raise ProtocolError(f"`{key}` must be an object, not {value!r}")
    return cast(JsonObject, value)


def _choice(obj: JsonObject, key: str, choices: tuple[str, ...]) -> str:
    value = obj.get(key)
    if value not in choices:
        raise ProtocolError(f"`{key}` must be one of {', '.join(choices)}, not {value!r}")
    return cast(str, value)


def _optional_str(obj: JsonObject, key: str) -> str | None:
    value = obj.get(key)
    if value is not None and not isinstance(value, str):
        raise ProtocolError(f"`{key}` must be a string or null, not {value!r}")
    return value


def parse_model_ref(value: object) -> JsonObject:
    """ModelRef as serde writes it: {"catalog": id}, {"config": path}, {"folder": path} or
    {"hub": {"repo": id, "revision": rev|null}}."""
    if not isinstance(value, dict) or len(value) != 1:
        raise ProtocolError(f"`model` must be an object with one key, not {value!r}")
    ref = cast(JsonObject, value)
    ((kind, inner),) = ref.items()
    if kind in ("catalog", "config", "folder"):
        if not isinstance(inner, str) or not inner:
            raise ProtocolError(f"`model.{kind}` must be a non-empty string")
    elif kind == "hub":
        if not isinstance(inner, dict) or not isinstance(inner.get("repo"), str):
            raise ProtocolError("`model.hub` must be an object with a `repo` string")
        _optional_str(cast(JsonObject, inner), "revision")
    else:
        raise ProtocolError(f"`model` must be catalog, config, folder or hub, not {kind!r}")
    return ref


def parse_device(obj: JsonObject) -> CpuDevice | CudaDevice:
    if _choice(obj, "kind", ("cpu", "cuda")) == "cpu":
        return CpuDevice(threads=_int(obj, "threads", 1))
    return CudaDevice(index=_int(obj, "index", 0))


def parse_torch_spec(obj: JsonObject) -> TorchSpec:
    config = _object(obj, "config")
    if not isinstance(config.get("model_type"), str):
        raise ProtocolError("`torch.config` needs a `model_type` string")
    return TorchSpec(
        config=config,
        weights_dir=_optional_str(obj, "weights_dir"),
        workload=cast(Workload, _choice(obj, "workload", get_args(Workload))),
        task=cast(Task, _choice(obj, "task", get_args(Task))),
        attn=cast(Attn, _choice(obj, "attn", get_args(Attn))),
        optimizer=cast(OptimizerName, _choice(obj, "optimizer", get_args(OptimizerName))),
        checkpointing=_bool(obj, "checkpointing"),
    )


def parse_request(line: str) -> Request:
    try:
        obj = json.loads(line)
    except json.JSONDecodeError as e:
        raise ProtocolError(f"not a JSON line: {e}") from None
    if not isinstance(obj, dict):
        raise ProtocolError("a request must be a JSON object")
    request = cast(JsonObject, obj)
    op = _choice(request, "op", ("load", "trial", "shutdown"))
    if op == "load":
        return LoadRequest(
            model=parse_model_ref(request.get("model")),
            dtype=cast(DType, _choice(request, "dtype", get_args(DType))),
            capacity_bytes=_int(request, "capacity_bytes", 1),
            device=parse_device(_object(request, "device")),
            torch=parse_torch_spec(_object(request, "torch")),
        )
    if op == "trial":
        return TrialRequest(batch=_int(request, "batch", 1), seq=_int(request, "seq", 1))
    return ShutdownRequest()


# ---------------------------------------------------------------------------------------------
# Reply checking (the selftest checks fixture lines against the TypedDicts the worker emits)


def _type_name(hint: object) -> str:
    return getattr(hint, "__name__", None) or str(hint)


def check_value(value: object, hint: object, where: str) -> list[str]:
    """Mismatches between a JSON value and a type hint of the reply TypedDicts."""
    origin = get_origin(hint)
    if origin in (Union, UnionType):
        options = get_args(hint)
        if any(not check_value(value, option, where) for option in options):
            return []
        return [f"{where}: {value!r} is none of {', '.join(_type_name(o) for o in options)}"]
    if origin is Literal:
        return [] if value in get_args(hint) else [f"{where}: {value!r} not in {get_args(hint)}"]
    if hint is type(None):
        return [] if value is None else [f"{where}: expected null"]
    if hint is bool:
        return [] if isinstance(value, bool) else [f"{where}: expected a boolean"]
    if hint is int:
        ok = isinstance(value, int) and not isinstance(value, bool) and value >= 0
        return [] if ok else [f"{where}: expected an integer of at least 0, got {value!r}"]
    if hint is float:
        ok = isinstance(value, int | float) and not isinstance(value, bool)
        return [] if ok else [f"{where}: expected a number"]
    if hint is str:
        return [] if isinstance(value, str) else [f"{where}: expected a string"]
    if origin in (list, tuple):
        return _check_sequence(value, hint, where)
    if isinstance(hint, type) and is_typeddict(hint):
        return check_object(value, hint, where)
    return [f"{where}: no check for {hint!r}"]


def _check_sequence(value: object, hint: object, where: str) -> list[str]:
    if not isinstance(value, list):
        return [f"{where}: expected an array"]
    items = get_args(hint)
    if get_origin(hint) is tuple and len(value) != len(items):
        return [f"{where}: expected {len(items)} items, got {len(value)}"]
    hints = items if get_origin(hint) is tuple else items * len(value)
    problems: list[str] = []
    for i, (item, item_hint) in enumerate(zip(value, hints, strict=False)):
        problems += check_value(item, item_hint, f"{where}[{i}]")
    return problems


def check_object(value: object, schema: type, where: str) -> list[str]:
    if not isinstance(value, dict):
        return [f"{where}: expected an object"]
    hints = get_type_hints(schema)
    keys = set(cast(JsonObject, value))
    problems = [f"{where}: missing `{k}`" for k in sorted(set(hints) - keys)]
    problems += [f"{where}: unexpected `{k}`" for k in sorted(keys - set(hints))]
    for key in sorted(keys & set(hints)):
        problems += check_value(cast(JsonObject, value)[key], hints[key], f"{where}.{key}")
    return problems


def check_response(value: object) -> list[str]:
    """A reply line, or a probe line (no `reply` key), against what the worker writes."""
    if isinstance(value, dict) and "reply" not in value:
        return check_object(value, ProbeLine, "probe")
    kind = value.get("reply") if isinstance(value, dict) else None
    schema = REPLY_TYPES.get(kind) if isinstance(kind, str) else None
    if schema is None:
        return [f"unknown reply {kind!r}"]
    return check_object(value, schema, str(kind))


# ---------------------------------------------------------------------------------------------
# Output


class Replies:
    """Protocol lines to the supervisor: compact JSON, one a line, flushed at once."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream

    def send(self, reply: Mapping[str, object]) -> None:
        text = json.dumps(reply, separators=(",", ":"), allow_nan=False)
        self.stream.write(text + "\n")
        self.stream.flush()


def protocol_stream() -> TextIO:
    """A private copy of stdout for protocol lines; fd 1 (and sys.stdout) then point at stderr, so
    that nothing else (native libraries' prints included) reaches the supervisor's pipe."""
    sys.stdout.flush()
    private = os.dup(1)
    os.dup2(2, 1)
    sys.stdout = sys.stderr
    return open(private, "w", encoding="utf-8", closefd=True)


def short_message(error: BaseException) -> str:
    """The error's first line (and the next one where the first only introduces it), from the
    innermost cause."""
    while error.__cause__ is not None:
        error = error.__cause__
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    text = lines[0] if lines else type(error).__name__
    if text.endswith(":") and len(lines) > 1:
        text = f"{text} {lines[1]}"
    return text if len(text) <= MESSAGE_CHARS else text[: MESSAGE_CHARS - 1] + "…"


def log(text: str) -> None:
    print(f"oomlab torch worker: {text}", file=sys.stderr, flush=True)


# ---------------------------------------------------------------------------------------------
# probe


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


# ---------------------------------------------------------------------------------------------
# The model


def weights_dtype(dtype: DType) -> torch.dtype:
    import torch

    return {"f16": torch.float16, "bf16": torch.bfloat16}.get(dtype, torch.float32)


def autocast_dtype(dtype: DType) -> torch.dtype | None:
    import torch

    return {"amp-bf16": torch.bfloat16, "amp-f16": torch.float16}.get(dtype)


def make_config(spec: TorchSpec) -> object:
    from transformers import AutoConfig

    raw = dict(spec.config)
    model_type = cast(str, raw.pop("model_type"))
    if spec.task == "sequence-classification" and "id2label" not in raw and "num_labels" not in raw:
        # A config that names no labels gets two; a fine-tuned classifier keeps its own.
        raw["num_labels"] = NUM_LABELS
    return AutoConfig.for_model(model_type, **raw)


def auto_class(task: Task) -> type:
    import transformers

    return {
        "base": transformers.AutoModel,
        "sequence-classification": transformers.AutoModelForSequenceClassification,
        "causal-lm": transformers.AutoModelForCausalLM,
        "masked-lm": transformers.AutoModelForMaskedLM,
    }[task]


def text_config(config: object) -> object:
    getter = getattr(config, "get_text_config", None)
    return getter() if callable(getter) else config


def tensors_of(model: torch.nn.Module) -> Iterator[torch.Tensor]:
    yield from model.parameters()
    yield from model.buffers()


def weights_bytes(model: torch.nn.Module) -> int:
    """Bytes of parameters and buffers, each storage once (tied weights once)."""
    storages: dict[tuple[str, int], int] = {}
    for tensor in tensors_of(model):
        storage = tensor.untyped_storage()
        storages[(str(storage.device), storage.data_ptr())] = storage.nbytes()
    return sum(storages.values())


def materialise(model: torch.nn.Module) -> None:
    """Copies every parameter and buffer into storage from PyTorch's allocator, each storage once.

    from_pretrained may leave tensors in memory-mapped safetensors files, which c10's allocator (and
    so the profiler) never sees; a copy made while profiling is counted, and freeing an original
    the allocator made while profiling is counted too, so the copy is right in every case."""
    import torch

    copies: dict[int, torch.UntypedStorage] = {}
    for tensor in tensors_of(model):
        storage = tensor.untyped_storage()
        copy = copies.get(storage.data_ptr())
        if copy is None:
            copy = storage.clone()
            copies[storage.data_ptr()] = copy
        view = torch.empty(0, dtype=tensor.dtype, device=tensor.device)
        view.set_(copy, tensor.storage_offset(), tensor.size(), tensor.stride())
        tensor.data = view


def enable_checkpointing(model: torch.nn.Module) -> None:
    """transformers' activation checkpointing with its defaults (the newer name when it has it)."""
    name = "activation_checkpointing_enable"
    if not hasattr(model, name):
        name = "gradient_checkpointing_enable"
    getattr(model, name)()


def scope_hooks(label: str) -> tuple[Callable[..., None], Callable[..., None]]:
    """A forward pre-hook that opens a profiler range named `label` and a forward hook that
    closes it (a stack, for a module that runs again inside itself)."""
    from torch.autograd.profiler import record_function

    open_ranges: list[record_function] = []

    def enter(_module: object, _args: object) -> None:
        scope = record_function(label)
        scope.__enter__()
        open_ranges.append(scope)

    def leave(_module: object, _args: object, _output: object) -> None:
        if open_ranges:
            open_ranges.pop().__exit__(None, None, None)

    return enter, leave


def install_scopes(model: torch.nn.Module) -> None:
    """A `module::<qualified name>` profiler range around every module's forward (the root's
    is named after its class)."""
    for name, module in model.named_modules():
        enter, leave = scope_hooks(MODULE_RANGE + (name or type(module).__name__))
        module.register_forward_pre_hook(enter)
        module.register_forward_hook(leave, always_call=True)


def dtype_keyword() -> str:
    """transformers renamed `torch_dtype` to `dtype` in 4.56."""
    import transformers

    return "dtype" if version_tuple(transformers.__version__) >= (4, 56) else "torch_dtype"


def import_model_code(spec: TorchSpec) -> None:
    """Imports the model's modeling module ahead (seconds of imports, before the profiler
    starts). Best effort: the build imports whatever is left."""
    with contextlib.suppress(Exception):
        _ = auto_class(spec.task)._model_mapping[type(make_config(spec))]  # type: ignore[attr-defined]


def build_model(request: LoadRequest, device: torch.device) -> torch.nn.Module:
    import torch

    spec = request.torch
    torch.manual_seed(MODEL_SEED)
    config = make_config(spec)
    cls = auto_class(spec.task)
    kwargs = {dtype_keyword(): weights_dtype(request.dtype), "attn_implementation": spec.attn}
    if spec.weights_dir is not None:
        if not Path(spec.weights_dir).is_dir():
            raise FileNotFoundError(f"no folder {spec.weights_dir}")
        model = cls.from_pretrained(spec.weights_dir, config=config, **kwargs)  # type: ignore[attr-defined]
        if device.type == "cpu":
            materialise(model)
        else:
            model.to(device)
    else:
        with torch.device(device):
            model = cls.from_config(config, **kwargs)  # type: ignore[attr-defined]
    text = text_config(model.config)
    if spec.task == "sequence-classification" and getattr(text, "pad_token_id", None) is None:
        # What a fine-tuning script does for a decoder without a pad token (batches > 1 need one).
        eos = getattr(text, "eos_token_id", None)
        text.pad_token_id = (eos[0] if isinstance(eos, list) and eos else eos) or 0  # type: ignore[attr-defined]
    model.train(spec.workload == "train")
    if spec.checkpointing:
        enable_checkpointing(model)
    return model


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


def quiet_transformers() -> None:
    """transformers' logging and progress bars go to stderr (they do by default; made sure)."""
    import logging

    import transformers

    transformers.utils.logging.set_verbosity_warning()
    for handler in logging.getLogger("transformers").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)


# ---------------------------------------------------------------------------------------------
# The trial's workload


@dataclass
class Session:
    request: LoadRequest
    model: torch.nn.Module
    device: torch.device
    baseline_bytes: int
    vocab_size: int
    num_labels: int
    profiler: profile | None = None
    overhead_bytes: int = 0
    ballast_bytes: int | None = None
    others_bytes: int = 0
    ledger_bytes: int = 0
    trial_done: bool = False


def amp_context(session: Session) -> contextlib.AbstractContextManager[object]:
    import torch

    dtype = autocast_dtype(session.request.dtype)
    if dtype is None:
        return contextlib.nullcontext()
    return torch.autocast(device_type=session.device.type, dtype=dtype)


def make_inputs(session: Session, batch: int, seq: int) -> dict[str, torch.Tensor]:
    """What a tokenizer hands the model: input ids and an all-ones attention mask."""
    import torch

    generator = torch.Generator(device=session.device).manual_seed(INPUT_SEED)
    ids = torch.randint(
        0, session.vocab_size, (batch, seq), generator=generator, device=session.device
    )
    mask = torch.ones((batch, seq), dtype=torch.int64, device=session.device)
    return {"input_ids": ids, "attention_mask": mask}


def make_labels(session: Session, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
    import torch

    ids = inputs["input_ids"]
    if session.request.torch.task == "sequence-classification":
        generator = torch.Generator(device=session.device).manual_seed(INPUT_SEED + 1)
        shape = (ids.shape[0],)
        return torch.randint(
            0, session.num_labels, shape, generator=generator, device=session.device
        )
    return ids.clone()


def make_optimizer(session: Session) -> torch.optim.Optimizer:
    """PyTorch's default implementation for the device (no foreach/fused chosen here)."""
    import torch

    params = session.model.parameters()
    if session.request.torch.optimizer == "sgd":
        return torch.optim.SGD(params, lr=SGD_LR, momentum=SGD_MOMENTUM)
    return torch.optim.AdamW(params, lr=ADAMW_LR)


def make_grad_scaler(device: torch.device) -> torch.amp.GradScaler:
    """torch.amp.GradScaler(device type); torch before 2.3 has only torch.cuda.amp's."""
    import torch

    if hasattr(torch.amp, "GradScaler"):
        return torch.amp.GradScaler(device.type)
    if device.type != "cuda":
        raise RuntimeError(f"torch {torch.__version__} has no gradient scaler for the CPU")
    return torch.cuda.amp.GradScaler()


def train_steps(
    session: Session,
    inputs: dict[str, torch.Tensor],
    labels: torch.Tensor,
    step_done: Callable[[int], None],
) -> None:
    """Two steps as transformers' Trainer takes them: forward with labels (only the loss is kept),
    backward, optimizer step, zero_grad(set_to_none=True)."""
    from torch.autograd.profiler import record_function

    optimizer = make_optimizer(session)
    scaler = None
    if session.request.dtype == "amp-f16":
        scaler = make_grad_scaler(session.device)
    for step in (1, 2):
        with record_function(f"{RANGE}step{step}"):
            with record_function(RANGE + "forward"), amp_context(session):
                loss = session.model(**inputs, labels=labels).loss
            if loss is None:
                raise RuntimeError("the model computed no loss from the labels")
            with record_function(RANGE + "backward"):
                (loss if scaler is None else scaler.scale(loss)).backward()
            del loss
            with record_function(RANGE + "optimizer_step"):
                if scaler is None:
                    optimizer.step()
                else:
                    scaler.step(optimizer)
                    scaler.update()
                optimizer.zero_grad(set_to_none=True)
        step_done(step)


def run_workload(session: Session, batch: int, seq: int, step_done: Callable[[int], None]) -> float:
    """The trial inside an `oomlab::trial` range; returns the workload's wall seconds."""
    import torch
    from torch.autograd.profiler import record_function

    workload = session.request.torch.workload
    with record_function(RANGE + "trial"):
        inputs = make_inputs(session, batch, seq)
        labels = make_labels(session, inputs) if workload == "train" else None
        start = time.perf_counter()
        if workload == "infer":
            with record_function(RANGE + "forward"), torch.no_grad(), amp_context(session):
                out = session.model(**inputs)
            del out
        elif workload == "grad":
            with record_function(RANGE + "forward"), amp_context(session):
                out = session.model(**inputs)
            del out
        else:
            assert labels is not None
            train_steps(session, inputs, labels, step_done)
        if session.device.type == "cuda":
            torch.cuda.synchronize(session.device)
        seconds = time.perf_counter() - start
        del inputs, labels
    return seconds


# ---------------------------------------------------------------------------------------------
# CPU: the profiler's memory events


def start_profiler() -> profile:
    """PyTorch's profiler with CPU memory events. torch.autograd.profiler.profile is the class
    torch.profiler.profile drives; the latter's start imports torch._inductor (seconds)."""
    from torch.autograd.profiler import profile

    profiler = profile(
        use_kineto=True,
        use_cpu=True,
        profile_memory=True,
        record_shapes=False,
        with_stack=False,
    )
    profiler.__enter__()
    return profiler


def stop_profiler(profiler: profile) -> None:
    profiler.__exit__(None, None, None)


@dataclass
class Allocation:
    time_ns: int
    nbytes: int
    total_allocated: int
    node: _ProfilerEvent


@dataclass
class Trace:
    """What a trial's profiler session recorded: CPU allocations in time order, the start and
    end of each `oomlab::` range, and the module each forward op (by autograd sequence number)
    ran in."""

    allocations: list[Allocation] = field(default_factory=list)
    ranges: dict[str, list[tuple[int, int]]] = field(default_factory=dict)
    seq_scopes: dict[int, str] = field(default_factory=dict)


def read_trace(profiler: profile) -> Trace:
    """One walk over the profiler's event tree (its allocation events carry c10's running total;
    each event knows its parent op)."""
    result = profiler.kineto_results
    assert result is not None
    trace = Trace()
    order: list[tuple[int, int, Allocation]] = []
    roots = result.experimental_event_tree()
    stack: list[tuple[_ProfilerEvent, str | None]] = [(r, None) for r in reversed(roots)]
    while stack:
        node, scope = stack.pop()
        scope = visit(node, scope, trace, order)
        stack.extend((child, scope) for child in reversed(node.children))
    order.sort(key=lambda item: (item[0], item[1]))
    trace.allocations = [item[2] for item in order]
    return trace


def visit(
    node: _ProfilerEvent, scope: str | None, trace: Trace, order: list[tuple[int, int, Allocation]]
) -> str | None:
    """Records one event; returns the module scope its children run in."""
    from torch._C._profiler import RecordScope, _ExtraFields_Allocation, _ExtraFields_TorchOp

    fields = node.typed[1]
    name = node.name
    if isinstance(fields, _ExtraFields_Allocation):
        if fields.device.type == "cpu":
            alloc = Allocation(node.start_time_ns, fields.alloc_size, fields.total_allocated, node)
            order.append((alloc.time_ns, len(order), alloc))
    elif isinstance(fields, _ExtraFields_TorchOp):
        if name.startswith(MODULE_RANGE):
            return name[len(MODULE_RANGE) :]
        if name.startswith(RANGE):
            span = (node.start_time_ns, node.end_time_ns)
            trace.ranges.setdefault(name[len(RANGE) :], []).append(span)
        elif scope is not None and fields.scope == RecordScope.FUNCTION:
            if fields.sequence_number >= 0:
                trace.seq_scopes.setdefault(fields.sequence_number, scope)
    return scope


def peak_labels(node: _ProfilerEvent, trace: Trace) -> tuple[str | None, str | None]:
    """The op around the peak allocation (the outermost op below any named range: what the model's
    code, autograd or the optimizer called, e.g. aten::softmax, MmBackward0) and the innermost
    module whose forward contains it (for a backward op, the module whose forward made its node)."""
    from torch._C._profiler import RecordScope, _ExtraFields_TorchOp

    op: str | None = None
    backward_seq: int | None = None
    below_ranges = True
    parent = node.parent
    while parent is not None:
        fields = parent.typed[1]
        name = parent.name
        if isinstance(fields, _ExtraFields_TorchOp):
            if name.startswith(MODULE_RANGE):
                return op, name[len(MODULE_RANGE) :]
            if fields.scope == RecordScope.USER_SCOPE or name.startswith(BACKWARD_WRAPPER):
                below_ranges = False
            elif below_ranges:
                op = name
                if fields.scope == RecordScope.BACKWARD_FUNCTION and fields.sequence_number >= 0:
                    backward_seq = fields.sequence_number
        parent = parent.parent
    scope = trace.seq_scopes.get(backward_seq) if backward_seq is not None else None
    return op, scope


def reduce_max(values: list[int], points: int) -> tuple[list[int], list[int]]:
    """At most `points` samples, each the largest of its stretch; also each stretch's first
    index (for placing marks)."""
    n = len(values)
    k = min(n, points)
    starts = [i * n // k for i in range(k)]
    ends = [*starts[1:], n]
    return [max(values[a:b]) for a, b in zip(starts, ends, strict=True)], starts


@dataclass
class CpuFigures:
    live_before: int
    total: int
    steps: tuple[int, int] | None
    over_capacity: int | None
    timeline: Timeline


def analyse_cpu(trace: Trace, baseline: int, capacity: int, train: bool) -> CpuFigures:
    """Live bytes over the trial from the memory events: the running sum, starting from the
    baseline counted in the build's session."""
    times = [a.time_ns for a in trace.allocations]
    trial_start, trial_end = trace.ranges["trial"][0]
    lo = bisect_left(times, trial_start)
    hi = bisect_right(times, trial_end)
    live = baseline + sum(a.nbytes for a in trace.allocations[:lo])
    live_before = live
    series: list[int] = []
    for alloc in trace.allocations[lo:hi]:
        live += alloc.nbytes
        series.append(live)
    total = max(series, default=live_before)
    over = next((i for i, v in enumerate(series) if v > capacity), None)
    # The allocation that crossed (a free can be the first event over it when the bytes live
    # before the trial already exceed the capacity): the first positive one from there.
    over_capacity = None
    if over is not None:
        over_capacity = next(
            (a.nbytes for a in trace.allocations[lo + over : hi] if a.nbytes > 0), None
        )
    steps = None
    if train:
        split = bisect_left(times, trace.ranges["step2"][0][0], lo, hi) - lo
        steps = (max(series[:split], default=live_before), max(series[split:], default=live))
    return CpuFigures(live_before, total, steps, over_capacity, timeline(trace, series, lo, hi))


def check_totals(trace: Trace, ledger: int) -> int:
    """Checks the events against c10's own running total ("Total Allocated"), from `ledger`,
    c10's total when the session began; returns its total at the end. An event outside c10's
    CPU allocator (a memory-mapped file: its events carry a total of 0) counts in the live bytes
    but not in c10's total; anything else that disagrees is said on stderr."""
    outside = mismatches = 0
    for alloc in trace.allocations:
        if ledger + alloc.nbytes == alloc.total_allocated:
            ledger += alloc.nbytes
        elif alloc.total_allocated == 0:
            outside += 1
        else:
            mismatches += 1
            ledger = alloc.total_allocated
    if mismatches:
        log(f"{mismatches} of {len(trace.allocations)} memory events disagree with c10's total")
    if outside:
        log(f"{outside} memory events came from outside c10's CPU allocator (mapped files)")
    return ledger


def timeline(trace: Trace, series: list[int], lo: int, hi: int) -> Timeline:
    times = [a.time_ns for a in trace.allocations]
    samples, starts = reduce_max(series, TIMELINE_POINTS) if series else ([], [])
    phases: list[tuple[int, MarkLabel]] = []
    labels: list[tuple[str, MarkLabel]] = [
        ("forward", "forward"),
        ("backward", "backward"),
        ("optimizer_step", "optimizer step"),
    ]
    for phase, label in labels:
        for i, (start, _end) in enumerate(trace.ranges.get(phase, [])):
            # Step 2 begins with its forward.
            phases.append((start, "step 2" if phase == "forward" and i == 1 else label))
    phases.sort(key=lambda p: p[0])
    marks: list[Mark] = [
        {"at": _sample_at(times, start, lo, hi, starts), "label": label} for start, label in phases
    ]
    peak_op = peak_scope = None
    if series:
        peak = lo + series.index(max(series))
        peak_op, peak_scope = peak_labels(trace.allocations[peak].node, trace)
    return {
        "events": len(series),
        "live_bytes": samples,
        "marks": marks,
        "peak_op": peak_op,
        "peak_scope": peak_scope,
    }


def _sample_at(times: list[int], t: int, lo: int, hi: int, starts: list[int]) -> int:
    """The sample holding the first event at or after time `t`."""
    if not starts:
        return 0
    index = bisect_left(times, t, lo, hi) - lo
    return max(0, bisect_right(starts, index) - 1)


# ---------------------------------------------------------------------------------------------
# CUDA: the caching allocator's statistics on a device shrunk to the capacity


_BALLAST: list[ctypes.c_void_p] = []
_OOM_REQUESTS: list[int] = []


class _NvmlMemory(ctypes.Structure):
    _fields_ = [
        ("total", ctypes.c_ulonglong),
        ("free", ctypes.c_ulonglong),
        ("used", ctypes.c_ulonglong),
    ]


class _NvmlProcess(ctypes.Structure):
    _fields_ = [
        ("pid", ctypes.c_uint),
        ("used_gpu_memory", ctypes.c_ulonglong),
        ("gpu_instance_id", ctypes.c_uint),
        ("compute_instance_id", ctypes.c_uint),
    ]


def nvml_handle(index: int) -> tuple[ctypes.CDLL, ctypes.c_void_p] | None:
    """NVML (the driver's library, no Python package needed) and the device's handle."""
    import torch

    try:
        nvml = ctypes.CDLL("libnvidia-ml.so.1")
        if nvml.nvmlInit_v2() != 0:
            return None
        try:
            nvml_index = torch.cuda._get_nvml_device_index(index)
        except Exception:
            nvml_index = index
        handle = ctypes.c_void_p()
        if nvml.nvmlDeviceGetHandleByIndex_v2(ctypes.c_uint(nvml_index), ctypes.byref(handle)):
            return None
    except (OSError, AttributeError):
        return None
    return nvml, handle


def nvml_used(index: int) -> int | None:
    found = nvml_handle(index)
    if found is None:
        return None
    nvml, handle = found
    memory = _NvmlMemory()
    if nvml.nvmlDeviceGetMemoryInfo(handle, ctypes.byref(memory)) != 0:
        return None
    return int(memory.used)


def nvml_process_bytes(index: int) -> int | None:
    """What NVML shows for this process (None when it does not list it, as in a container whose
    process ids differ from the host's)."""
    found = nvml_handle(index)
    if found is None:
        return None
    nvml, handle = found
    count = ctypes.c_uint(256)
    processes = (_NvmlProcess * 256)()
    try:
        call = nvml.nvmlDeviceGetComputeRunningProcesses_v3
    except AttributeError:
        return None
    if call(handle, ctypes.byref(count), processes) != 0:
        return None
    pid = os.getpid()
    return next((int(p.used_gpu_memory) for p in processes[: count.value] if p.pid == pid), None)


def loaded_cudart() -> ctypes.CDLL | None:
    """The CUDA runtime torch has loaded (so the ballast lands in torch's context)."""
    try:
        maps = Path("/proc/self/maps").read_text().splitlines()
    except OSError:
        return None
    for line in maps:
        path = line.split()[-1] if line.split() else ""
        if os.path.basename(path).startswith("libcudart.so"):
            try:
                return ctypes.CDLL(path)
            except OSError:
                return None
    return None


def allocate_ballast(device: torch.device, nbytes: int) -> int | None:
    """Device memory taken outside the caching allocator and held for the process's life; its
    measured footprint, or None when the runtime cannot be reached."""
    import torch

    if nbytes <= 0:
        return 0
    cudart = loaded_cudart()
    if cudart is None:
        return None
    cudart.cudaMalloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t]
    cudart.cudaMalloc.restype = ctypes.c_int
    free_before, _ = torch.cuda.mem_get_info(device)
    pointer = ctypes.c_void_p()
    code = cudart.cudaMalloc(ctypes.byref(pointer), ctypes.c_size_t(nbytes))
    if code != 0:
        raise RuntimeError(f"cudaMalloc of a {nbytes}-byte ballast failed (error {code})")
    _BALLAST.append(pointer)
    free_after, _ = torch.cuda.mem_get_info(device)
    return free_before - free_after


def open_cuda_context(device: torch.device) -> tuple[int, int]:
    """Creates the context (a tiny tensor) and attaches the OOM observer. Returns the device
    bytes this process now holds (context and the pool's first block) and those others hold, in
    cudaMemGetInfo's terms; NVML, before and after, tells them apart (without it, all are ours)."""
    import torch

    nvml_before = nvml_used(device.index or 0)
    torch.cuda.set_device(device)
    torch.empty(1, device=device)
    if hasattr(torch._C, "_cuda_attach_out_of_memory_observer"):
        torch._C._cuda_attach_out_of_memory_observer(observe_oom)
    free, total = torch.cuda.mem_get_info(device)
    used = total - free
    nvml_after = nvml_used(device.index or 0)
    held = used
    if nvml_before is not None and nvml_after is not None:
        held = min(used, max(0, nvml_after - nvml_before))
    return held, used - held


def shrink_device(device: torch.device, capacity: int, held: int) -> int | None:
    """Leaves this process `capacity` bytes of the device in all (`held` of them already taken):
    a ballast outside the caching allocator, or, when the CUDA runtime cannot be reached, a
    memory fraction on the pool (then None)."""
    import torch

    free, total = torch.cuda.mem_get_info(device)
    if capacity - held > free:
        index = device.index or 0
        raise RuntimeError(
            f"a capacity of {capacity} bytes is more than cuda:{index} can give this worker: "
            f"{free} bytes free, {held} held by it already; lower the capacity"
        )
    ballast = allocate_ballast(device, free - max(0, capacity - held))
    if ballast is None:
        log("no libcudart in this process; the pool is limited by a memory fraction instead")
        pool = max(0, capacity - (held - torch.cuda.memory_reserved(device)))
        torch.cuda.set_per_process_memory_fraction(min(1.0, pool / total), device)
    return ballast


CUDA_OOM_TEXT = re.compile(r"out of memory|ALLOC_FAILED|ALLOCATION_FAILED", re.IGNORECASE)


def host_memory_abort(message: str) -> None:
    """The machine refused memory on the CPU: says so the way oomlab's own allocator does (a
    marker line on stderr, then an abort), so the supervisor records `host_memory`, never a
    boundary of the simulated capacity."""
    match = re.search(r"allocate (\d+) bytes", message)
    size = match.group(1) if match else "0"
    sys.stderr.write(f"OOMLAB_HOST_MEMORY requested_bytes={size}\n")
    sys.stderr.flush()
    os.abort()


def observe_oom(_device: int, alloc: int, _allocated: int, _free: int) -> None:
    _OOM_REQUESTS.append(int(alloc))


UNITS = {"B": 1, "bytes": 1, "KiB": 1 << 10, "MiB": 1 << 20, "GiB": 1 << 30, "TiB": 1 << 40}


def requested_bytes(message: str) -> int | None:
    """The request's size: from the allocator's OOM observer, else from the message."""
    if _OOM_REQUESTS:
        return _OOM_REQUESTS[-1]
    match = re.search(r"Tried to allocate ([\d.]+) (B|bytes|KiB|MiB|GiB|TiB)", message)
    return round(float(match.group(1)) * UNITS[match.group(2)]) if match else None


# ---------------------------------------------------------------------------------------------
# The worker


class Worker:
    """One model, one trial. `handle` returns True when the process must end (after an OOM)."""

    def __init__(self, replies: Replies) -> None:
        self.replies = replies
        self.session: Session | None = None

    def handle(self, request: LoadRequest | TrialRequest) -> bool:
        import torch

        try:
            if isinstance(request, LoadRequest):
                return self.load(request)
            return self.trial(request)
        except torch.cuda.OutOfMemoryError as e:
            # (torch.OutOfMemoryError in newer torch; the CPU allocator raises RuntimeError.)
            traceback.print_exc(file=sys.stderr)
            if self.on_cuda(request):
                self.replies.send(oom_reply(short_message(e), requested_bytes(str(e))))
            else:
                host_memory_abort(str(e))
            return True
        except RuntimeError as e:
            text = str(e)
            if self.on_cuda(request) and CUDA_OOM_TEXT.search(text):
                # cuBLAS/cuDNN's allocation failures and the driver's bare out-of-memory come as
                # RuntimeError: the device's out-of-memory all the same.
                traceback.print_exc(file=sys.stderr)
                self.replies.send(oom_reply(short_message(e), requested_bytes(text)))
                return True
            if not self.on_cuda(request) and "can't allocate memory" in text:
                # The host refused (not the simulated capacity): the supervisor's host_memory.
                host_memory_abort(text)
            raise

    def on_cuda(self, request: LoadRequest | TrialRequest) -> bool:
        if isinstance(request, LoadRequest):
            return isinstance(request.device, CudaDevice)
        return self.session is not None and self.session.device.type == "cuda"

    # -- load

    def load(self, request: LoadRequest) -> bool:
        if self.session is not None:
            self.replies.send(error_reply("this worker has a model already"))
            return False
        if request.torch.workload == "train" and request.torch.task == "base":
            self.replies.send(error_reply("training needs a head with a loss"))
            return False
        quiet_transformers()
        if isinstance(request.device, CpuDevice):
            ready = self.load_cpu(request, request.device)
        else:
            ready = self.load_cuda(request, request.device)
        if ready is not None:
            self.replies.send(ready)
        return False

    def ready(self, session: Session, build_seconds: float, device_name: str) -> ReadyReply:
        import torch

        cuda = session.device.type == "cuda"
        capacity = session.request.capacity_bytes
        return {
            "reply": "ready",
            "weights_bytes": weights_bytes(session.model),
            "baseline_bytes": session.baseline_bytes,
            "threads": torch.get_num_threads(),
            "build_seconds": build_seconds,
            "from_checkpoint": session.request.torch.weights_dir is not None,
            "pid": os.getpid(),
            "host_ceiling_bytes": None,
            "overhead_bytes": session.overhead_bytes if cuda else None,
            "ballast_bytes": session.ballast_bytes if cuda else None,
            "pool_capacity_bytes": max(0, capacity - session.overhead_bytes) if cuda else None,
            "versions": versions(device_name),
        }

    def new_session(
        self, request: LoadRequest, model: torch.nn.Module, device: torch.device
    ) -> Session:
        text = text_config(model.config)
        return Session(
            request=request,
            model=model,
            device=device,
            baseline_bytes=0,
            vocab_size=int(text.vocab_size),  # type: ignore[attr-defined]
            num_labels=int(getattr(model.config, "num_labels", NUM_LABELS)),
        )

    def load_cpu(self, request: LoadRequest, device: CpuDevice) -> ReadyReply | None:
        import torch

        torch.set_num_threads(device.threads)
        start = time.perf_counter()
        import_model_code(request.torch)
        build_profiler = start_profiler()
        try:
            model = build_model(request, torch.device("cpu"))
        except Exception as e:
            stop_profiler(build_profiler)
            traceback.print_exc(file=sys.stderr)
            self.replies.send(error_reply(short_message(e)))
            return None
        install_scopes(model)
        session = self.new_session(request, model, torch.device("cpu"))
        # Nothing may be freed between the sessions (c10 would not report it in either).
        gc.collect()
        gc.disable()
        try:
            stop_profiler(build_profiler)
            session.profiler = start_profiler()
        finally:
            gc.enable()
        build_seconds = time.perf_counter() - start
        build = read_trace(build_profiler)
        session.ledger_bytes = check_totals(build, 0)
        session.baseline_bytes = sum(a.nbytes for a in build.allocations)
        self.session = session
        return self.ready(session, build_seconds, "cpu")

    def load_cuda(self, request: LoadRequest, cuda: CudaDevice) -> ReadyReply | None:
        import torch

        device = torch.device("cuda", cuda.index)
        start = time.perf_counter()
        held, others = open_cuda_context(device)
        ballast = shrink_device(device, request.capacity_bytes, held)
        try:
            model = build_model(request, device)
        except torch.cuda.OutOfMemoryError:
            raise
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            self.replies.send(error_reply(short_message(e)))
            return None
        torch.cuda.synchronize(device)
        session = self.new_session(request, model, device)
        session.others_bytes = others
        session.ballast_bytes = ballast
        session.overhead_bytes = self.cuda_overhead(session)
        session.baseline_bytes = torch.cuda.memory_reserved(device) + session.overhead_bytes
        self.session = session
        name = torch.cuda.get_device_name(device)
        return self.ready(session, time.perf_counter() - start, name)

    @staticmethod
    def cuda_overhead(session: Session) -> int:
        """Device bytes this process holds outside the caching allocator and the ballast."""
        import torch

        free, total = torch.cuda.mem_get_info(session.device)
        outside = total - free - session.others_bytes - (session.ballast_bytes or 0)
        return max(0, outside - torch.cuda.memory_reserved(session.device))

    # -- trial

    def trial(self, request: TrialRequest) -> bool:
        session = self.session
        if session is None:
            self.replies.send(error_reply("no model is loaded"))
            return False
        if session.trial_done:
            self.replies.send(error_reply("this worker has run its trial (one trial a worker)"))
            return False
        session.trial_done = True
        self.replies.send({"reply": "started"})
        if session.device.type == "cpu":
            return self.trial_cpu(session, request)
        return self.trial_cuda(session, request)

    def trial_cpu(self, session: Session, request: TrialRequest) -> bool:
        profiler = session.profiler
        assert profiler is not None
        try:
            seconds = run_workload(session, request.batch, request.seq, lambda _step: None)
        finally:
            stop_profiler(profiler)
        train = session.request.torch.workload == "train"
        capacity = session.request.capacity_bytes
        trace = read_trace(profiler)
        check_totals(trace, session.ledger_bytes)
        figures = analyse_cpu(trace, session.baseline_bytes, capacity, train)
        if figures.total > capacity:
            self.replies.send(
                oom_reply(
                    f"PyTorch's peak on the CPU was {figures.total} bytes, over the capacity of "
                    f"{capacity} (the trial ran to its end and was then compared)",
                    figures.over_capacity,
                )
            )
            return True
        self.replies.send(
            {
                "reply": "trial",
                "peak_bytes": figures.total - figures.live_before,
                "total_bytes": figures.total,
                "live_before_bytes": figures.live_before,
                "baseline_bytes": session.baseline_bytes,
                "seconds": seconds,
                "pool_peak_bytes": None,
                "pool_reserved_bytes": None,
                "device_used_bytes": None,
                "process_bytes": None,
                "steps_bytes": figures.steps,
                "timeline": figures.timeline,
            }
        )
        return False

    def trial_cuda(self, session: Session, request: TrialRequest) -> bool:
        import torch

        device = session.device
        torch.cuda.reset_peak_memory_stats(device)
        live_before = torch.cuda.memory_reserved(device) + session.overhead_bytes
        peaks: list[tuple[int, int]] = []

        def step_done(_step: int) -> None:
            torch.cuda.synchronize(device)
            peaks.append(
                (torch.cuda.max_memory_allocated(device), torch.cuda.max_memory_reserved(device))
            )
            torch.cuda.reset_peak_memory_stats(device)

        seconds = run_workload(session, request.batch, request.seq, step_done)
        torch.cuda.synchronize(device)
        if not peaks:
            step_done(1)
        overhead = self.cuda_overhead(session)
        free, total_memory = torch.cuda.mem_get_info(device)
        pool_peak = max(p[0] for p in peaks)
        pool_reserved = max(p[1] for p in peaks)
        steps = None
        if len(peaks) == 2:
            steps = (peaks[0][1] + overhead, peaks[1][1] + overhead)
        total = pool_reserved + overhead
        self.replies.send(
            {
                "reply": "trial",
                "peak_bytes": max(0, total - live_before),
                "total_bytes": total,
                "live_before_bytes": live_before,
                "baseline_bytes": session.baseline_bytes,
                "seconds": seconds,
                "pool_peak_bytes": pool_peak,
                "pool_reserved_bytes": pool_reserved,
                "device_used_bytes": total_memory - free,
                "process_bytes": nvml_process_bytes(device.index or 0),
                "steps_bytes": steps,
                "timeline": None,
            }
        )
        return False


def serve(replies: Replies, lines: TextIO) -> int:
    worker = Worker(replies)
    for line in lines:
        if not line.strip():
            continue
        try:
            request = parse_request(line)
        except ProtocolError as e:
            replies.send(error_reply(f"bad request: {e}"))
            continue
        if isinstance(request, ShutdownRequest):
            return 0
        try:
            if worker.handle(request):
                # After an out-of-memory the worker ends at once (its `oom` line is flushed):
                # interpreter shutdown with torch loaded takes seconds the supervisor waits for.
                sys.stderr.flush()
                os._exit(0)
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            replies.send(error_reply(short_message(e)))
    return 0


# ---------------------------------------------------------------------------------------------
# selftest


def selftest(directory: Path) -> int:
    """Runs the protocol fixtures through the worker's own parsing and reply checks."""
    passed = failed = 0
    checks: list[tuple[str, Callable[[str], list[str]]]] = [
        ("requests.jsonl", _check_request_line),
        ("responses.jsonl", _check_response_line),
        ("probe.jsonl", _check_response_line),
    ]
    for name, check in checks:
        path = directory / name
        if not path.exists():
            if name != "probe.jsonl":
                print(f"FAIL {path}: missing")
                failed += 1
            continue
        for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
            if not line.strip():
                continue
            problems = check(line)
            for problem in problems:
                print(f"FAIL {name}:{number}: {problem}")
            failed += bool(problems)
            passed += not problems
    print(f"{passed} passed, {failed} failed")
    return 1 if failed or not passed else 0


def _check_request_line(line: str) -> list[str]:
    try:
        parse_request(line)
    except ProtocolError as e:
        return [str(e)]
    return []


def _check_response_line(line: str) -> list[str]:
    try:
        value = json.loads(line)
    except json.JSONDecodeError as e:
        return [f"not JSON: {e}"]
    return check_response(value)


# ---------------------------------------------------------------------------------------------


def main(argv: list[str]) -> int:
    # Never a download: the config travels in the request, the weights are local or random.
    os.environ["HF_HUB_OFFLINE"] = "1"
    os.environ["TRANSFORMERS_OFFLINE"] = "1"
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    # `python -c` puts the current folder first on the path: a torch.py or types.py there must
    # not stand in for the real modules.
    sys.path[:] = [p for p in sys.path if p not in ("", os.getcwd())]
    mode = argv[1] if len(argv) > 1 else ""
    if mode == "selftest" and len(argv) == 3:
        return selftest(Path(argv[2]))
    if mode not in ("probe", "worker"):
        print("usage: python -c <source> probe | worker | selftest FIXTURE_DIR", file=sys.stderr)
        return 2
    replies = Replies(protocol_stream())
    if mode == "probe":
        replies.send(probe())
        return 0
    try:
        return serve(replies, sys.stdin)
    except BrokenPipeError:
        return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
