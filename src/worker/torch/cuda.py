"""CUDA: the caching allocator's statistics on a device shrunk to the capacity by a ballast taken
outside it (through the CUDA runtime torch loaded), NVML's view of the process, and the size an
out-of-memory asked for."""

from __future__ import annotations

import ctypes
import os
import re
import sys
from pathlib import Path
from typing import TYPE_CHECKING

from oomlab_torch.protocol import log

if TYPE_CHECKING:
    import torch


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
