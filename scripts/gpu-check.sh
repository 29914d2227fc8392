#!/usr/bin/env bash
# The GPU check: on a machine with an NVIDIA GPU, runs oomlab's cuda build on the classic report
# ("Tried to allocate … 11.17 GiB total capacity"): bert-large-uncased at seq 128 and 512 in f32,
# f16 and bf16 with an 11 GiB capacity, strategy auto and once binsearch, one trial three times,
# the refusals a GPU machine can show, and prints one table; where PyTorch and transformers are
# installed, the same forwards in PyTorch beside it. Meant to finish within 8 minutes on an
# H100-class GPU.
#
# usage: scripts/gpu-check.sh [--bin PATH] [--out DIR] [--device DEV] [--model M] [--capacity C]
#                             [--batch LO..HI] [--seq S,S] [--binsearch-seq S] [--no-torch]
#   --bin PATH   a cuda build of oomlab (default: target/cuda/release/oomlab, built with
#                scripts/build-cuda.sh first when cargo is here). A GPU box may have no Rust: build
#                it elsewhere (scripts/build-cuda.sh 90) and carry the stripped binary (gzip
#                shrinks it about 3.5 times).
#   --out DIR    where journals, results and the table go (default: a new temporary folder)
#   --device, --model, --capacity, --batch, --seq
#                default cuda:0, bert-large-uncased, 11GiB, 1..4096, 128,512. A dry run of the script
#                itself on a machine without a GPU:
#                scripts/gpu-check.sh --bin target/release/oomlab --device cpu --model tiny-bert \
#                  --capacity 64MiB --batch 1..512 --seq 16,64 --no-torch
#   --binsearch-seq S  the binsearch comparison on these sequence lengths only (a shorter check)
#   --no-torch   skip the PyTorch comparison
set -euo pipefail
cd "$(dirname "$0")/.."
bin=target/cuda/release/oomlab
out=""
device=cuda:0
model=bert-large-uncased
capacity=11GiB
batch=1..4096
seqs=128,512
binsearch_seqs=""
torch=1
while [ $# -gt 0 ]; do
  case "$1" in
    --bin) bin=$2; shift 2;;
    --out) out=$2; shift 2;;
    --device) device=$2; shift 2;;
    --model) model=$2; shift 2;;
    --capacity) capacity=$2; shift 2;;
    --batch) batch=$2; shift 2;;
    --seq) seqs=$2; shift 2;;
    --binsearch-seq) binsearch_seqs=$2; shift 2;;
    --no-torch) torch=0; shift;;
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
# folders of a Python environment's CUDA wheels (PyTorch brings them); the driver's own folder.
libdirs=()
for d in /usr/local/nvidia/lib64 /usr/local/nvidia/lib /usr/local/cuda/lib64 \
         /usr/local/cuda/targets/x86_64-linux/lib "${CUDA_HOME:-/nonexistent}/lib64" \
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
# Journals and results go to $out; nothing of this check lands in the user's data folder.
export XDG_DATA_HOME=$out/data XDG_CACHE_HOME=$out/cache

echo "== oomlab devices"
"$bin" devices 2>&1 | tee "$out/devices.txt"

# One trial three times first: it is also the smoke test (the worker starts, loads, measures).
repeat_seq=${seqs##*,}
echo "== one trial three times ($model, seq $repeat_seq, f16, batch 16)"
for i in 1 2 3; do
  "$bin" sweep --model "$model" --seq "$repeat_seq" --dtype f16 --batch 16..16 --strategy grid \
    --capacity "$capacity" --device "$device" --force --journal "$out/repeat$i.jsonl" \
    --json "$out/repeat$i.json" >/dev/null 2>"$out/repeat$i.err" \
    || { echo "gpu-check: the repeated trial failed:"; tail -n 20 "$out/repeat$i.err"; exit 1; }
done

common=(--model "$model" --dtype f32,f16,bf16 --batch "$batch"
        --capacity "$capacity" --device "$device" --force)
for strategy in auto binsearch; do
  echo "== sweep, strategy $strategy"
  start=$(date +%s.%N)
  these=$seqs
  [ "$strategy" = binsearch ] && [ -n "$binsearch_seqs" ] && these=$binsearch_seqs
  "$bin" sweep "${common[@]}" --seq "$these" --strategy "$strategy" \
    --journal "$out/$strategy.jsonl" --json "$out/$strategy.json" >"$out/$strategy.txt" 2>"$out/$strategy.err" \
    || { echo "gpu-check: the $strategy sweep exited $? (the table shows what it measured):"; tail -n 20 "$out/$strategy.err"; }
  [ -s "$out/$strategy.json" ] || { echo "gpu-check: the $strategy sweep wrote no results" >&2; exit 1; }
  python3 -c "import sys; print(f'{float(sys.argv[2]) - float(sys.argv[1]):.1f}')" "$start" "$(date +%s.%N)" \
    > "$out/$strategy.seconds"
done

echo "== refusals (each must exit 2 with one sentence)"
refuse() {
  local what=$1; shift
  set +e
  "$bin" sweep --model "$model" --seq "${seqs%%,*}" --dtype f16 --batch 1..2 --force \
    --journal "$out/refused.jsonl" "$@" >/dev/null 2>"$out/refused.err"
  local rc=$?
  set -e
  echo "$what: exit $rc: $(head -c 400 "$out/refused.err" | tr '\n' ' ')" | tee -a "$out/refusals.txt"
}
refuse "a GPU this machine does not have (cuda:7)" --device cuda:7 --capacity "$capacity"
refuse "a capacity above the GPU's free memory (1000GiB)" --device "$device" --capacity 1000GiB

python3 scripts/gpu_check_table.py "$out" | tee "$out/table.txt"

# PyTorch beside oomlab, where it is installed: the same model from the same config, random
# weights, no_grad, the peak at oomlab's b*, and PyTorch's own largest batch at the capacity.
if [ "$torch" = 1 ]; then
  python3 scripts/gpu_check_torch.py "$out" "assets/models/$model.json" 2>&1 | tee "$out/torch.txt" \
    || echo "(PyTorch comparison failed: see $out/torch.txt)"
fi
# oomlab's PyTorch runtime on the same GPU (bert-large at the capacity, infer and train, f32,
# the first --seq), beside a plain PyTorch loop (double, then bisect; a fresh process per trial
# holding the rest of the GPU in a ballast) under the same capacity: the same b* is expected.
if [ "$torch" = 1 ] && python3 -c "import torch, transformers; assert torch.cuda.is_available()" 2>/dev/null; then
  tseq=${seqs%%,*}
  for workload in infer train; do
    echo "== PyTorch runtime, $workload, seq $tseq"
    "$bin" sweep --runtime torch --python "$(command -v python3)" --model "$model" --seq "$tseq" \
      --dtype f32 --batch "$batch" --capacity "$capacity" --device "$device" --workload "$workload" \
      --confirm none --force --journal "$out/torch-$workload.jsonl" --json "$out/torch-$workload.json" \
      >"$out/torch-$workload.txt" 2>"$out/torch-$workload.err" \
      || { echo "gpu-check: the PyTorch-runtime $workload sweep exited $?:"; tail -n 20 "$out/torch-$workload.err"; }
    grep -E "^ *torch +[0-9]+ " "$out/torch-$workload.txt" | tail -n 1 | sed "s/^/oomlab --runtime torch: /" \
      | tee -a "$out/torch-runtime.txt"
    cap_bytes=$(python3 -c "import json,sys; print(json.load(open(sys.argv[1]))['capacity_bytes'])" "$out/torch-$workload.json")
    python3 scripts/gpu_check_torch_loop.py "assets/models/$model.json" "$cap_bytes" "$workload" "$tseq" \
      2>&1 | tail -n 1 | sed "s/^/plain PyTorch loop ($workload): /" | tee -a "$out/torch-runtime.txt"
  done
fi
echo "gpu-check: everything is in $out (table.txt, torch.txt, torch-runtime.txt, *.json, *.jsonl)"
