"""The table of scripts/gpu-check.sh, from the results it wrote into OUT.

usage: python3 scripts/gpu_check_table.py OUT
"""
import json
import os
import sys

out = sys.argv[1]
GIB = 1 << 30


def load(name):
    with open(os.path.join(out, name)) as f:
        return json.load(f)


def g(b):
    return "-" if b is None else f"{b / GIB:.3f}"


def seconds(name):
    try:
        return open(os.path.join(out, name + ".seconds")).read().strip()
    except OSError:
        return "?"


auto, binsearch = load("auto.json"), load("binsearch.json")
print(f"device {auto['device']}, capacity {g(auto['capacity_bytes'])} GiB, model {auto['model']}"
      f" ({auto['forward']})")
for d in sorted(auto.get("overhead_bytes", {})):
    print(f"  {d} worker: weights {g(auto['weights_bytes'].get(d))} GiB, pool baseline "
          f"{g(auto['baseline_bytes'].get(d))} GiB, overhead outside the pool "
          f"{g(auto['overhead_bytes'][d])} GiB, ballast {g(auto.get('ballast_bytes', {}).get(d))} GiB")
print()
cols = ["curve", "b*", "status", "auto", "binsearch", "total b*", "pool peak b*", "reserved",
        "b*+1", "NVML-ballast", "device used", "s"]
rows = []
problems = []
for b in auto["boundaries"]:
    curve = f"seq {b['seq']} {b['dtype']}"
    other = next((x for x in binsearch["boundaries"]
                  if x["seq"] == b["seq"] and x["dtype"] == b["dtype"]), None)
    mine = [t for t in auto["trials"] if t["seq"] == b["seq"] and t["dtype"] == b["dtype"]]
    star = b["max_batch"]

    def at(k):
        hits = [t for t in mine if t["batch"] == k and t["outcome"] in ("fit", "oom")]
        return hits[-1] if hits else None

    fit, over = (at(star), at(star + 1)) if star else (None, None)
    exact = bool(fit and fit["outcome"] == "fit" and over and over["outcome"] == "oom")
    if not exact:
        problems.append(f"{curve}: b* and b*+1 not both measured (status {b['status']})")
    if other is not None and other["max_batch"] != star:
        problems.append(f"{curve}: binsearch found {other and other['max_batch']}, auto {star}")
    ballast = auto.get("ballast_bytes", {}).get(b["dtype"]) or 0
    proc = fit and fit.get("process_bytes")
    rows.append([
        curve, str(star), b["status"], str(b["trials_used"]),
        str(other["trials_used"]) if other else "-",
        g(fit and fit["total_bytes"]),
        g(fit and (fit.get("pool_peak_bytes") or fit["total_bytes"])),
        g(fit and fit.get("pool_reserved_bytes")),
        over["outcome"] if over else "-",
        g(proc - ballast if proc is not None else None),
        g(fit and fit.get("device_used_bytes")),
        f"{sum(t['seconds'] for t in mine):.2f}",
    ])
widths = [max(len(c), *(len(r[i]) for r in rows)) for i, c in enumerate(cols)]
print("  ".join(c.rjust(w) if i else c.ljust(w) for i, (c, w) in enumerate(zip(cols, widths))))
for r in rows:
    print("  ".join(v.rjust(w) if i else v.ljust(w) for i, (v, w) in enumerate(zip(r, widths))))
print("(GiB.) total: what the GPU gave the trial's worker, compared with the capacity (the pool's")
print("reserved high-water mark + the overhead outside the pool: context, kernel modules, cuBLAS")
print("workspace); pool peak: the most bytes candle's tensors held in the CUDA memory pool;")
print("reserved: the pool's own high-water mark (its block rounding); NVML-ballast:")
print("the worker process as nvidia-smi shows it, less the ballast that stands in for the smaller")
print("card (pool + context, modules and cuBLAS workspace); device used: the whole card, every process")
print("and the ballast included (cuMemGetInfo).")
print(f"\ntrials in all: auto {sum(b['trials_used'] for b in auto['boundaries'])}, binsearch "
      f"{sum(b['trials_used'] for b in binsearch['boundaries'])}; wall time: auto {seconds('auto')} s, "
      f"binsearch {seconds('binsearch')} s; time in trials against the floor: auto "
      f"{auto.get('trial_seconds', 0):.1f} s / {auto.get('floor_seconds', 0):.1f} s")
peaks = []
for i in (1, 2, 3):
    try:
        t = load(f"repeat{i}.json")["trials"][0]
        peaks.append((t.get("pool_peak_bytes"), t["total_bytes"]))
    except (OSError, IndexError, KeyError):
        peaks.append(None)
same = len(set(peaks)) == 1 and peaks[0] is not None
print(f"one trial three times, (pool peak, total): {peaks} -> "
      + ("identical to the byte" if same else "NOT identical"))
if not same:
    problems.append("the repeated trial's figures differ")
print()
print(auto["recommendation"].get("rule", ""))
try:
    print(open(os.path.join(out, "refusals.txt")).read().rstrip())
except OSError:
    pass
print("\nPROBLEMS:\n  " + "\n  ".join(problems) if problems else "\nall boundaries exact; auto and binsearch agree")
