"""The trial's workload: inputs as a tokenizer makes them, then a forward (infer, grad) or two
training steps as transformers' Trainer takes them, inside `oomlab::` profiler ranges."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

from oomlab_torch.build import autocast_dtype
from oomlab_torch.measure import RANGE
from oomlab_torch.protocol import LoadRequest

if TYPE_CHECKING:
    import torch
    from torch.autograd.profiler import profile

INPUT_SEED = 1234
ADAMW_LR = 1e-5
SGD_LR = 1e-3
SGD_MOMENTUM = 0.9


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
        if scaler is not None and not optimizer.state:
            # float16 overflowed at the scaler's initial scale and the first step was skipped:
            # the optimizer's state (most of a training step's memory) was not made, so the
            # second step's forward and backward would run without it, unlike every later step.
            raise RuntimeError(
                "the GradScaler skipped the first training step (inf or NaN gradients in float16 "
                "at its initial scale), so the optimizer's state was not there for the second "
                "and this trial would under-count training memory; measure amp-bf16 instead "
                "(or f32)"
            )


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
