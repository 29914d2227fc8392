#!/usr/bin/env bash
# Makes (once per machine) the virtualenv with the pinned torch and transformers that the PyTorch
# runtime's tests use, and prints its python. Reused while scripts/torch-requirements.txt is
# unchanged; pip's cache is used where present.
#   scripts/torch-venv.sh            -> ~/.cache/oomlab/torch-venv/bin/python
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${XDG_CACHE_HOME:-$HOME/.cache}/oomlab/torch-venv"
req="scripts/torch-requirements.txt"
stamp="$venv/oomlab-requirements.txt"
if [ -x "$venv/bin/python" ] && cmp -s "$req" "$stamp"; then
  echo "$venv/bin/python"
  exit 0
fi
start=$(date +%s)
echo "making the PyTorch venv in $venv (torch is about 5.6 GB; minutes)" >&2
mkdir -p "$(dirname "$venv")"
[ -x "$venv/bin/python" ] || python3 -m venv "$venv"
"$venv/bin/python" -m pip install --quiet --upgrade pip >&2
"$venv/bin/python" -m pip install --quiet -r "$req" >&2
cp "$req" "$stamp"
echo "PyTorch venv ready in $(( $(date +%s) - start )) s" >&2
echo "$venv/bin/python"
