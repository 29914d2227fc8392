#!/usr/bin/env bash
# The PyTorch estimator's CUDA arm against the torch runtime on a GPU: for each point below,
# `oomlab estimate --runtime torch --device cuda --check` estimates it and measures it in a fresh
# torch worker on cuda:0, then prints, per point, the estimate's total against the measured one,
# and the pool's allocated and reserved high-water marks and the memory outside the pool beside
# the estimate's parts. What it prints says which of the CUDA arm's parts (CUDA's kernels, the
# caching allocator, the context) is off, and the context to give `--cuda-context` (and to
# record per GPU). Meant to finish within 5 minutes on an H100-class GPU.
#
# usage: scripts/gpu-check-torch-estimate.sh [--bin PATH] [--out DIR] [--capacity C] [--dry-run]
#   --bin PATH    a cuda build of oomlab (default target/cuda/release/oomlab; see gpu-check.sh)
#   --out DIR     where the JSON lines and the table go (default: a new temporary folder)
#   --capacity C  the capacity each trial runs under, at most the GPU's free memory (default 60GiB)
#   --dry-run     the script itself on a machine without a GPU: tiny models, the CPU arm against
#                 the CPU torch runtime (--bin target/release/oomlab)
set -euo pipefail
cd "$(dirname "$0")/.."
bin=""
out=""
capacity=60GiB
dry=0
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=${2:?--bin needs a path}; shift 2;;
    --out) out=${2:?--out needs a folder}; shift 2;;
    --capacity) capacity=${2:?--capacity needs a size}; shift 2;;
    --dry-run) dry=1; shift;;
    *) echo "gpu-check-torch-estimate: unknown argument $1 (see the header of this script)" >&2; exit 2;;
  esac
done
out=${out:-$(mktemp -d)}
mkdir -p "$out"
if [ -z "$bin" ]; then
  if [ "$dry" = 1 ]; then bin=target/release/oomlab; else bin=target/cuda/release/oomlab; fi
fi
python=${PYTHON:-$(command -v python3 || true)}
[ -n "$python" ] || { echo "gpu-check-torch-estimate: no python3 (set PYTHON)" >&2; exit 2; }
[ -x "$bin" ] || { echo "gpu-check-torch-estimate: no oomlab at $bin (--bin)" >&2; exit 2; }
export XDG_DATA_HOME=$out/data XDG_CACHE_HOME=$out/cache

# model seq batch dtype workload [extra options]
if [ "$dry" = 1 ]; then
  device=cpu
  points=(
    "bert-mini 64 4 f32 infer"
    "bert-mini 64 2 bf16 train"
    "tiny-llama 32 2 amp-bf16 train --gradient-checkpointing on"
  )
else
  device=cuda
  # cuBLAS's workspace as PyTorch sizes it for this GPU (32 MiB from Hopper on).
  major=$("$python" -c "import torch; print(torch.cuda.get_device_capability()[0])")
  if [ "$major" -ge 9 ]; then workspace=32MiB; else workspace=8519680B; fi
  points=(
    "bert-base-uncased 128 32 f32 infer"
    "bert-base-uncased 512 8 bf16 infer"
    "bert-base-uncased 512 8 bf16 grad"
    "bert-base-uncased 128 16 f32 train"
    "bert-base-uncased 512 8 amp-bf16 train"
    "SmolLM2-135M 512 4 bf16 train"
    "SmolLM2-135M 512 4 amp-bf16 train --gradient-checkpointing on"
    "Qwen2-0.5B 1024 2 bf16 infer"
    "tiny-mistral 16 2 bf16 grad"
  )
fi

: > "$out/points.jsonl"
for p in "${points[@]}"; do
  read -r model seq batch dtype workload extra <<<"$p"
  echo "== $p"
  # shellcheck disable=SC2086
  ws=()
  [ "$device" = cuda ] && ws=(--cuda-workspace "$workspace")
  if "$bin" estimate --runtime torch --device "$device" "${ws[@]}" --check --python "$python" \
      --capacity "$capacity" --model "$model" --seq "$seq" --batch "$batch" --dtype "$dtype" \
      --workload "$workload" $extra --json >>"$out/points.jsonl" 2>"$out/last.err"; then
    tail -n 1 "$out/points.jsonl"
  else
    echo "failed: $(tail -n 5 "$out/last.err" | tr '\n' ' ')" | tee -a "$out/failures.txt"
  fi
done

"$python" - "$out/points.jsonl" <<'PY' | tee "$out/table.txt"
import json, sys

def pct(e, m):
    return f"{(e - m) / m * 100:+.2f}%" if e is not None and m else "-"

rows = [json.loads(line) for line in open(sys.argv[1]) if line.strip()]
print(f"{'point':<44} {'total est':>12} {'measured':>12} {'error':>8} {'alloc err':>9} {'resv err':>9} {'outside pool':>12}")
for r in rows:
    name = f"{r['model']} s{r['seq']} b{r['batch']} {r['dtype']} {r['workload']}"
    alloc = reserved = None
    if r.get("device") == "cuda":
        alloc = r["weights_bytes"] + r["input_bytes"] + r["activation_bytes"] + (r["workspace_bytes"] or 0)
        reserved = r["total_bytes"] - (r["context_bytes"] or 0)
    outside = r.get("measured_context_bytes")
    print(f"{name:<44} {r['total_bytes']:>12} {r['measured_total_bytes'] or 0:>12} "
          f"{pct(r['total_bytes'], r['measured_total_bytes']):>8} "
          f"{pct(alloc, r.get('measured_pool_peak_bytes')):>9} "
          f"{pct(reserved, r.get('measured_pool_reserved_bytes')):>9} "
          f"{outside if outside is not None else '-':>12}")
PY
echo "gpu-check-torch-estimate: everything is in $out (points.jsonl, table.txt)"
