#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, runs oomlab's cuda build on the classic report
# ("Tried to allocate … 11.17 GiB total capacity"): bert-large-uncased at seq 128 and 512 in f32,
# f16 and bf16 with an 11 GiB capacity, strategy auto and once binsearch, one trial three times,
# and prints one table; where PyTorch and transformers are installed, the same forwards in
# PyTorch beside it. Meant to finish within 8 minutes on an H100-class GPU.
#
# usage: scripts/gpu-check.sh [--bin PATH] [--out DIR]
#   --bin PATH  a cuda build of oomlab (default: target/cuda/release/oomlab, built with
#               scripts/build-cuda.sh first when cargo is here). A GPU box may have no Rust: build
#               it elsewhere (scripts/build-cuda.sh 90) and carry the stripped binary.
#   --out DIR   where journals, results and the table go (default: a new temporary folder)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/cuda/release/oomlab
out=""
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2;;
    --out) out=$2; shift 2;;
    *) echo "gpu-check: unknown argument $1 (see the header of this script)" >&2; exit 2;;
  esac
done
out=${out:-$(mktemp -d)}
mkdir -p "$out"

if [ ! -x "$bin" ]; then
  if command -v cargo >/dev/null 2>&1; then
    scripts/build-cuda.sh
  else
    echo "gpu-check: no cuda build at $bin and no cargo here; build it elsewhere with scripts/build-cuda.sh and pass --bin" >&2
    exit 2
  fi
fi

# The CUDA 13 runtime libraries: a system toolkit, the caller's LD_LIBRARY_PATH, or the nvidia/*/lib
# folders of a Python environment's CUDA wheels (PyTorch brings them).
libdirs=()
for d in /usr/local/cuda/lib64 /usr/local/cuda/targets/x86_64-linux/lib "${CUDA_HOME:-/nonexistent}/lib64" \
         "${CUDA_HOME:-/nonexistent}/lib" target/cuda-toolkit/nvidia/cu13/lib; do
  [ -d "$d" ] && libdirs+=("$d")
done
for py in python3 /opt/torch/.venv/bin/python3; do
  command -v "$py" >/dev/null 2>&1 || continue
  while IFS= read -r d; do [ -n "$d" ] && libdirs+=("$d"); done < <("$py" - <<'PY' 2>/dev/null || true
import glob, os
try:
    import nvidia
except ImportError:
    raise SystemExit
for base in nvidia.__path__:
    for d in sorted(glob.glob(os.path.join(base, "*", "lib"))):
        print(d)
PY
)
done
if [ ${#libdirs[@]} -gt 0 ]; then
  LD_LIBRARY_PATH=$(IFS=:; echo "${libdirs[*]}")${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
  export LD_LIBRARY_PATH
fi
missing=$(ldd "$bin" 2>/dev/null | awk '/not found/ { print $1 }' | tr '\n' ' ')
if [ -n "$missing" ]; then
  echo "gpu-check: the cuda build cannot start: missing $missing (looked in: ${libdirs[*]:-nothing}); install the CUDA 13 runtime or set LD_LIBRARY_PATH" >&2
  exit 1
fi

echo "== oomlab devices"
"$bin" devices | tee "$out/devices.txt"

common=(--model bert-large-uncased --seq 128,512 --dtype f32,f16,bf16 --batch 1..1024
        --capacity 11GiB --device cuda:0 --force)
t0=$(date +%s)
for strategy in auto binsearch; do
  echo "== sweep, strategy $strategy"
  start=$(date +%s)
  "$bin" sweep "${common[@]}" --strategy "$strategy" \
    --journal "$out/$strategy.jsonl" --json "$out/$strategy.json" >"$out/$strategy.txt" 2>"$out/$strategy.err" \
    || { echo "gpu-check: the $strategy sweep failed:"; tail -n 20 "$out/$strategy.err"; exit 1; }
  echo "$(( $(date +%s) - start ))" > "$out/$strategy.seconds"
done
echo "== one trial three times (bert-large, seq 512, f16, batch 16)"
for i in 1 2 3; do
  "$bin" sweep --model bert-large-uncased --seq 512 --dtype f16 --batch 16..16 --strategy grid \
    --capacity 11GiB --device cuda:0 --journal "$out/repeat$i.jsonl" --json "$out/repeat$i.json" \
    >/dev/null 2>"$out/repeat$i.err" || { tail -n 20 "$out/repeat$i.err"; exit 1; }
done

python3 - "$out" <<'PY' | tee "$out/table.txt"
import json, os, sys
out = sys.argv[1]
def load(name):
    with open(os.path.join(out, name)) as f:
        return json.load(f)
gib = 1 << 30
def g(b):
    return "-" if b is None else f"{b / gib:.3f} GiB"
auto, binsearch = load("auto.json"), load("binsearch.json")
secs = {s: open(os.path.join(out, s + ".seconds")).read().strip() for s in ("auto", "binsearch")}
print(f"device {auto['device']}, capacity {g(auto['capacity_bytes'])}, model {auto['model']}")
for d, o in auto.get("overhead_bytes", {}).items():
    print(f"  {d}: overhead outside the pool {g(o)}, ballast {g(auto.get('ballast_bytes', {}).get(d))}")
print()
hdr = f"{'curve':<14} {'b*':>5} {'status':<13} {'auto':>5} {'binsearch':>9} {'pool peak b*':>14} {'pool peak b*+1':>15} {'reserved':>12} {'device used':>12} {'nvidia-smi':>12} {'s':>7}"
print(hdr)
for b in auto["boundaries"]:
    curve = f"seq {b['seq']} {b['dtype']}"
    other = next(x for x in binsearch["boundaries"] if x["seq"] == b["seq"] and x["dtype"] == b["dtype"])
    mine = [t for t in auto["trials"] if t["seq"] == b["seq"] and t["dtype"] == b["dtype"]]
    star = b["max_batch"]
    at = lambda k: next((t for t in mine if t["batch"] == k), None)
    fit, over = at(star) if star else None, at(star + 1) if star else None
    exact = fit and fit["outcome"] == "fit" and over and over["outcome"] == "oom"
    seconds = sum(t["seconds"] for t in mine)
    print(f"{curve:<14} {str(star):>5} {b['status']:<13} {b['trials_used']:>5} {other['trials_used']:>9} "
          f"{g(fit and fit['total_bytes']):>14} {(over['outcome'] if over else '-'):>15} "
          f"{g(fit and fit.get('pool_reserved_bytes')):>12} {g(fit and fit.get('device_used_bytes')):>12} "
          f"{g(fit and fit.get('process_bytes')):>12} {seconds:>7.2f}"
          + ("" if exact else "  <- b* and b*+1 not both measured")
          + ("" if other["max_batch"] == star else f"  <- binsearch found {other['max_batch']}"))
print(f"\nwall time: auto {secs['auto']} s, binsearch {secs['binsearch']} s")
peaks = []
for i in (1, 2, 3):
    t = load(f"repeat{i}.json")["trials"][0]
    peaks.append(t["total_bytes"])
print(f"one trial three times (seq 512 f16 batch 16): pool peaks {peaks} -> "
      + ("identical to the byte" if len(set(peaks)) == 1 else "NOT identical"))
print()
print(auto["recommendation"]["rule"])
PY

# PyTorch beside oomlab, where it is installed: the same model from the same config, random
# weights, no_grad, the peak at oomlab's b*, and PyTorch's own largest batch at the capacity.
python3 - "$out" <<'PY' || echo "(PyTorch comparison skipped: $?)"
import json, os, sys
out = sys.argv[1]
try:
    import torch
    from transformers import BertConfig, BertModel
except ImportError as e:
    print(f"PyTorch comparison skipped: {e}")
    raise SystemExit(0)
if not torch.cuda.is_available():
    print("PyTorch comparison skipped: torch sees no GPU")
    raise SystemExit(0)
auto = json.load(open(os.path.join(out, "auto.json")))
cap = auto["capacity_bytes"]
total = torch.cuda.get_device_properties(0).total_memory
torch.cuda.set_per_process_memory_fraction(min(1.0, cap / total), 0)
cfg = BertConfig(vocab_size=30522, hidden_size=1024, num_hidden_layers=24, num_attention_heads=16,
                 intermediate_size=4096, max_position_embeddings=512)
dtypes = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}
gib = 1 << 30
print(f"\n{'curve':<14} {'oomlab b*':>9} {'torch b*':>9} {'oomlab pool peak':>17} {'torch max_allocated':>20}")
for dname in ("f32", "f16", "bf16"):
    model = BertModel(cfg, add_pooling_layer=False).to("cuda", dtype=dtypes[dname]).eval()
    def peak(batch, seq):
        torch.cuda.empty_cache(); torch.cuda.reset_peak_memory_stats()
        ids = torch.randint(0, cfg.vocab_size, (batch, seq), device="cuda")
        with torch.no_grad():
            model(input_ids=ids, attention_mask=torch.ones_like(ids))
        torch.cuda.synchronize()
        return torch.cuda.max_memory_allocated()
    def fits(batch, seq):
        try:
            peak(batch, seq); return True
        except torch.cuda.OutOfMemoryError:
            return False
    for seq in (128, 512):
        b = next(x for x in auto["boundaries"] if x["seq"] == seq and x["dtype"] == dname)
        star = b["max_batch"]
        trial = next((t for t in auto["trials"] if t["seq"] == seq and t["dtype"] == dname
                      and t["batch"] == star and t["outcome"] == "fit"), None)
        lo, hi = 0, 1
        while fits(hi, seq):
            lo, hi = hi, hi * 2
            if hi > 4096: break
        while hi - lo > 1:
            mid = (lo + hi) // 2
            lo, hi = (mid, hi) if fits(mid, seq) else (lo, mid)
        tpeak = peak(star, seq) if star and fits(star, seq) else None
        f = lambda v: "-" if v is None else f"{v / gib:.3f} GiB"
        print(f"seq {seq} {dname:<8} {str(star):>9} {lo:>9} {f(trial and trial['total_bytes']):>17} {f(tpeak):>20}")
    del model; torch.cuda.empty_cache()
print("torch b*: the largest batch PyTorch ran under set_per_process_memory_fraction(capacity / total)")
PY
echo "gpu-check: everything is in $out (table.txt, *.json, *.jsonl)"
