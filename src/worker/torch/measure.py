"""CPU figures from PyTorch's profiler: its memory events summed in time order, the `oomlab::`
ranges that mark the trial's phases, and the op and module around the peak (the timeline)."""

from __future__ import annotations

import re
from bisect import bisect_left, bisect_right
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from oomlab_torch.protocol import Mark, MarkLabel, Timeline, log

if TYPE_CHECKING:
    from torch._C._profiler import _ProfilerEvent
    from torch.autograd.profiler import profile

TIMELINE_POINTS = 400
# Profiler ranges: the trial's phases (`oomlab::forward`, ...) and each module's forward.
RANGE = "oomlab::"
MODULE_RANGE = "module::"
BACKWARD_WRAPPER = "autograd::engine::evaluate_function: "
# A model's layer among its modules: `bert.encoder.layer.3`, `model.layers.3`, `transformer.h.3`.
LAYER_MODULE = re.compile(r"(?:^|\.)(?:layer|layers|h|block|blocks)\.(\d+)$")


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
    # When each of the model's layers (a module named like `encoder.layer.3` or `layers.3`)
    # began, every time it ran.
    layer_starts: dict[int, list[int]] = field(default_factory=dict)


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
            module = name[len(MODULE_RANGE) :]
            layer = LAYER_MODULE.search(module)
            if layer is not None:
                trace.layer_starts.setdefault(int(layer.group(1)), []).append(node.start_time_ns)
            return module
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
    figures = timeline(trace, series, lo, hi, live_before)
    return CpuFigures(live_before, total, steps, over_capacity, figures)


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


def timeline(trace: Trace, series: list[int], lo: int, hi: int, live_before: int) -> Timeline:
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
        {
            "at": _sample_at(times, start, lo, hi, starts),
            "label": label,
            "live_bytes": _live_before(times, start, lo, hi, series, live_before),
        }
        for start, label in phases
    ]
    # Each layer's first start in the trial: the first forward's layer boundaries.
    trial_start = trace.ranges["trial"][0][0] if "trial" in trace.ranges else 0
    firsts = [
        min((t for t in runs if t >= trial_start), default=None)
        for _index, runs in sorted(trace.layer_starts.items())
    ]
    layers = [_sample_at(times, t, lo, hi, starts) for t in firsts if t is not None]
    peak_op = peak_scope = None
    if series:
        peak = lo + series.index(max(series))
        peak_op, peak_scope = peak_labels(trace.allocations[peak].node, trace)
    return {
        "events": len(series),
        "live_bytes": samples,
        "marks": marks,
        "layers": layers,
        "peak_op": peak_op,
        "peak_scope": peak_scope,
    }


def _live_before(
    times: list[int], t: int, lo: int, hi: int, series: list[int], live_before: int
) -> int:
    """The live bytes just before the first event at or after time `t`."""
    index = bisect_left(times, t, lo, hi) - lo
    return series[index - 1] if index > 0 else live_before


def _sample_at(times: list[int], t: int, lo: int, hi: int, starts: list[int]) -> int:
    """The sample holding the first event at or after time `t`."""
    if not starts:
        return 0
    index = bisect_left(times, t, lo, hi) - lo
    return max(0, bisect_right(starts, index) - 1)
