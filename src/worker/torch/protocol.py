"""The protocol's messages (docs/torch-protocol.md): requests parsed into dataclasses, replies as
TypedDicts, the checks the selftest runs on fixture lines, and the stream protocol lines go to."""

from __future__ import annotations

import json
import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass
from types import UnionType
from typing import (
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

MESSAGE_CHARS = 300

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
    # PyTorch's live bytes just before the phase's first memory event (exact, not sampled).
    live_bytes: int


class Timeline(TypedDict):
    events: int
    live_bytes: list[int]
    marks: list[Mark]
    layers: list[int]
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
