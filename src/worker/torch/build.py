"""The model: a transformers Auto class built from the request's config (random weights) or a
checkpoint folder, with a profiler range around each module's forward."""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import TYPE_CHECKING, cast

from oomlab_torch.measure import MODULE_RANGE
from oomlab_torch.probe import version_tuple
from oomlab_torch.protocol import DType, LoadRequest, Task, TorchSpec

if TYPE_CHECKING:
    import torch
    from torch.autograd.profiler import record_function

MODEL_SEED = 0
NUM_LABELS = 2


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


def quiet_transformers() -> None:
    """transformers' logging and progress bars go to stderr (they do by default; made sure)."""
    import logging

    import transformers

    transformers.utils.logging.set_verbosity_warning()
    for handler in logging.getLogger("transformers").handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(sys.stderr)
