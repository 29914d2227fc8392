"""A plain PyTorch loop beside `oomlab sweep --runtime torch` for scripts/gpu-check.sh: the
largest batch that fits, found as Lightning's batch-size finder does (double from 1 until an
out-of-memory, then bisect), each trial in a fresh process that leaves itself `capacity` bytes
of the GPU in all (context included) by holding the rest in a ballast tensor.

usage: python3 scripts/gpu_check_torch_loop.py CONFIG_JSON CAPACITY_BYTES WORKLOAD SEQ [MAX_BATCH]
       (WORKLOAD: infer or train; f32 weights, sdpa attention, AdamW for train)
prints: one line per trial, then `b* = N (T trials)`.
"""

from __future__ import annotations

import json
import subprocess
import sys


def trial(config_path: str, capacity: int, workload: str, seq: int, batch: int) -> bool:
    """One trial in this process: True when it fits."""
    import torch
    from transformers import (
        AutoConfig,
        AutoModel,
        AutoModelForSequenceClassification,
    )

    device = torch.device("cuda:0")
    torch.cuda.init()
    torch.empty(1, device=device)
    free, total = torch.cuda.mem_get_info(device)
    held = total - free  # this process's context (on a GPU no one else uses)
    ballast_bytes = max(0, free - max(0, capacity - held))
    ballast = torch.empty(ballast_bytes, dtype=torch.uint8, device=device)
    raw = json.load(open(config_path))
    model_type = raw.pop("model_type")
    raw.pop("torch_dtype", None)
    config = AutoConfig.for_model(model_type, **raw)
    try:
        torch.manual_seed(0)
        if workload == "train":
            config.num_labels = 2
            model = AutoModelForSequenceClassification.from_config(
                config, attn_implementation="sdpa"
            ).to(device)
            model.train()
        else:
            model = AutoModel.from_config(config, attn_implementation="sdpa").to(device)
            model.eval()
        ids = torch.randint(0, config.vocab_size, (batch, seq), device=device)
        mask = torch.ones(batch, seq, dtype=torch.int64, device=device)
        if workload == "train":
            labels = torch.randint(0, 2, (batch,), device=device)
            opt = torch.optim.AdamW(model.parameters(), lr=1e-5)
            for _ in range(2):
                loss = model(input_ids=ids, attention_mask=mask, labels=labels).loss
                loss.backward()
                opt.step()
                opt.zero_grad(set_to_none=True)
                del loss
        else:
            with torch.no_grad():
                out = model(input_ids=ids, attention_mask=mask)
                del out
        torch.cuda.synchronize()
        return True
    except torch.cuda.OutOfMemoryError:
        return False
    finally:
        del ballast


def fits(config_path: str, capacity: int, workload: str, seq: int, batch: int) -> bool:
    r = subprocess.run(
        [
            sys.executable,
            __file__,
            "--trial",
            config_path,
            str(capacity),
            workload,
            str(seq),
            str(batch),
        ],
        capture_output=True,
        text=True,
        check=False,
    )
    verdict = r.stdout.strip().splitlines()[-1] if r.stdout.strip() else ""
    if verdict not in ("fit", "oom"):
        raise SystemExit(f"trial at batch {batch} failed: {r.stderr.strip()[-400:]}")
    print(f"batch {batch}: {verdict}", flush=True)
    return verdict == "fit"


def main(argv: list[str]) -> int:
    if argv[:1] == ["--trial"]:
        config_path, capacity, workload, seq, batch = argv[1:6]
        ok = trial(config_path, int(capacity), workload, int(seq), int(batch))
        print("fit" if ok else "oom")
        return 0
    config_path, capacity, workload, seq = argv[0], int(argv[1]), argv[2], int(argv[3])
    max_batch = int(argv[4]) if len(argv) > 4 else 65536
    n = 0
    lo, hi = 0, None
    b = 1
    while b <= max_batch:
        n += 1
        if fits(config_path, capacity, workload, seq, b):
            lo, b = b, b * 2
        else:
            hi = b
            break
    if hi is None:
        print(f"b* >= {lo} (no out-of-memory up to {max_batch}; {n} trials)")
        return 0
    while hi - lo > 1:
        mid = (lo + hi) // 2
        n += 1
        if fits(config_path, capacity, workload, seq, mid):
            lo = mid
        else:
            hi = mid
    print(f"b* = {lo} ({n} trials)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv[1:]))
