#!/usr/bin/env bash
# Shows that a change to the code left behaviour alone. It runs two oomlab binaries on the same
# inputs and compares what they print:
#   - `oomlab models`;
#   - every bundled model's estimate (JSON: batch 1 and 8, seq 128 and 512 — 16 and 64 for the
#     tiny ones — f32 and bf16, on the A10G preset);
#   - the JSON of fixed sweeps (tiny BERT, Llama, Mixtral and Qwen3-MoE; two sequence lengths; f32
#     and bf16 where candle runs it). Clock readings, paths, process ids and the machine's free
#     memory are removed first.
# Prints one line per comparison and a summary; exits 1 when anything differs.
#   scripts/compare-behaviour.sh BEFORE_BINARY AFTER_BINARY
set -euo pipefail
cd "$(dirname "$0")/.."
[ $# -eq 2 ] || { echo "usage: $0 BEFORE_BINARY AFTER_BINARY" >&2; exit 2; }
before=$(realpath "$1") after=$(realpath "$2")
out=$(mktemp -d)
models=$(ls assets/models | sed 's/\.json$//')

run() { # NAME BINARY
  local dir="$out/$1" bin="$2"
  mkdir -p "$dir"
  # The machine's free memory moves between any two runs.
  { "$bin" models 2>&1 || echo "exit $?"; } | grep -v '^this machine:' > "$dir/models.txt"
  for m in $models; do
    seq=128,512
    case $m in tiny-*) seq=16,64 ;; esac
    "$bin" estimate --model "$m" --batch 1,8 --seq "$seq" --dtype f32,bf16 --gpu a10g --json \
      > "$dir/estimate-$m.json" 2>&1 || echo "exit $?" >> "$dir/estimate-$m.json"
  done
  for md in tiny-bert:f32,bf16 tiny-llama:f32,bf16 tiny-mixtral:f32 tiny-qwen3-moe:f32,bf16; do
    m=${md%%:*}
    "$bin" sweep --model "$m" --seq 16,32 --dtype "${md#*:}" --capacity 12MiB --threads 1 \
      --json "$dir/sweep-$m.json" --journal "$dir/sweep-$m.jsonl" > "$dir/sweep-$m.txt" 2>&1 \
      || echo "exit $?" >> "$dir/sweep-$m.txt"
    # Clock readings, paths and process ids differ between any two runs.
    python3 - "$dir/sweep-$m.json" <<'EOF'
import json, re, sys
path = sys.argv[1]
volatile = re.compile(r"(_ms|_s|seconds|elapsed|time|date|started|finished|pid|path|journal|host|version|available_bytes)$")
def clean(v):
    if isinstance(v, dict):
        return {k: clean(x) for k, x in v.items() if not volatile.search(k)}
    if isinstance(v, list):
        return [clean(x) for x in v]
    return v
with open(path) as f:
    data = clean(json.load(f))
with open(path, "w") as f:
    json.dump(data, f, indent=1, sort_keys=True)
EOF
  done
}

run before "$before"
run after "$after"
same=0 differ=0
for f in $(cd "$out/before" && ls | grep -v -e '\.jsonl$' -e '^sweep-.*\.txt$'); do
  if cmp -s "$out/before/$f" "$out/after/$f"; then
    same=$((same + 1))
    echo "same     $f"
  else
    differ=$((differ + 1))
    echo "DIFFERS  $f"
    diff "$out/before/$f" "$out/after/$f" | head -20 || true
  fi
done
echo "$same identical, $differ different (outputs in $out)"
[ "$differ" -eq 0 ]
