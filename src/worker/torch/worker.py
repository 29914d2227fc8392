"""oomlab's PyTorch worker: builds a transformers model and measures one trial.

Embedded in the oomlab binary: the package oomlab_torch, its modules in this folder (protocol,
probe, measure, build, workload, cuda, then this one), run by loader.py as ``python -c <loader>
<modules> probe|worker|selftest DIR``; this module's ``main`` is the entry point. The
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

import gc
import json
import os
import sys
import time
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, TextIO

from oomlab_torch.build import (
    NUM_LABELS,
    build_model,
    import_model_code,
    install_scopes,
    quiet_transformers,
    text_config,
    weights_bytes,
)
from oomlab_torch.cuda import (
    CUDA_OOM_TEXT,
    host_memory_abort,
    nvml_process_bytes,
    open_cuda_context,
    requested_bytes,
    shrink_device,
)
from oomlab_torch.measure import (
    analyse_cpu,
    check_totals,
    read_trace,
    start_profiler,
    stop_profiler,
)
from oomlab_torch.probe import probe, versions
from oomlab_torch.protocol import (
    CpuDevice,
    CudaDevice,
    LoadRequest,
    ProtocolError,
    ReadyReply,
    Replies,
    ShutdownRequest,
    TrialRequest,
    check_response,
    error_reply,
    oom_reply,
    parse_request,
    protocol_stream,
    short_message,
)
from oomlab_torch.workload import Session, run_workload

if TYPE_CHECKING:
    import torch


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
    # (The loader has taken the current folder off sys.path before any import.)
    mode = argv[1] if len(argv) > 1 else ""
    if mode == "selftest" and len(argv) == 3:
        return selftest(Path(argv[2]))
    if mode not in ("probe", "worker"):
        print("usage: python -c <loader> <modules> probe | worker | selftest DIR", file=sys.stderr)
        return 2
    replies = Replies(protocol_stream())
    if mode == "probe":
        replies.send(probe())
        return 0
    try:
        return serve(replies, sys.stdin)
    except BrokenPipeError:
        return 0
