#!/usr/bin/env bash
# Trials per exact boundary: `auto` (from the estimator's b*) beside Lightning's `binsearch`, on the
# same curves of several bundled models. Usage: scripts/compare-strategies.sh [path/to/oomlab]
# Needs python3 (to read the results). Each model's curves run at a capacity that puts b* in the
# tens; a few minutes on two cores.
set -euo pipefail
bin=${1:-target/release/oomlab}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
# model | seqs | dtype | capacity
cases=(
  "bert-base-uncased|64,128|f32|600MiB"
  "distilbert-base-uncased|128|f32|400MiB"
  "TinyLlama-1.1B|64|f16|2300MiB"
  "Qwen2-0.5B|64,128|f16|1200MiB"
)
printf '%-24s %-5s %5s %5s %6s %10s\n' model dtype seq 'b*' auto binsearch
for c in "${cases[@]}"; do
  IFS='|' read -r model seqs dtype cap <<<"$c"
  for s in auto binsearch; do
    "$bin" sweep --model "$model" --seq "$seqs" --dtype "$dtype" --capacity "$cap" \
      --strategy "$s" --confirm none --journal "$dir/$model-$s.jsonl" --json "$dir/$model-$s.json" \
      >/dev/null 2>&1
  done
  python3 - "$dir/$model-auto.json" "$dir/$model-binsearch.json" <<'PY'
import json, sys
a, b = (json.load(open(p)) for p in sys.argv[1:3])
for x, y in zip(a["boundaries"], b["boundaries"]):
    assert x["max_batch"] == y["max_batch"], (x, y)
    print(f'{a["model"]:<24} {x["dtype"]:<5} {x["seq"]:>5} {x["max_batch"]!s:>5} {x["trials_used"]:>6} {y["trials_used"]:>10}  {x["status"]}')
PY
done
