#!/usr/bin/env bash
# Starts the oomlab binary under Xvfb with a fixture results file (`oomlab open ...`), waits for
# its window, takes a screenshot, checks that it shows the plot (the curve colours and the red
# capacity line, not a blank or empty window), and closes the app with SIGTERM, which must end
# it cleanly (exit status 0).
# usage: scripts/gui-smoke.sh [BINARY] [SCREENSHOT.png]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/release/oomlab}
out=${2:-target/gui-smoke.png}
fixture=tests/fixtures/gui/tiny-llama-grid.jsonl
XDG_RUNTIME_DIR=$(mktemp -d)
chmod 700 "$XDG_RUNTIME_DIR"
export XDG_RUNTIME_DIR
# A private home so the check neither reads nor writes the user's settings.
HOME=$(mktemp -d)
export HOME

xvfb-run -a -s "-screen 0 1280x800x24" bash -s "$bin" "$fixture" "$out" <<'INNER'
set -u
bin=$1; fixture=$2; out=$3
"$bin" open "$fixture" >"$out.log" 2>&1 &
pid=$!
# The fraction of pixels within 8% of a colour.
share() { convert "$out" -alpha off -fuzz 8% -fill white -opaque "$1" -fill black +opaque white -format '%[fx:mean]' info:; }
ok=0
for _ in $(seq 1 60); do
  sleep 1
  kill -0 "$pid" 2>/dev/null || { echo "oomlab exited before showing a window:"; cat "$out.log"; exit 1; }
  xdotool search --name '^oomlab' >/dev/null 2>&1 || continue
  import -window root "$out" 2>/dev/null || continue
  blue=$(share 'rgb(31,119,180)')     # the seq 64 f32 curve
  red=$(share 'rgb(214,39,40)')       # capacity line and OOM markers
  spread=$(convert "$out" -colorspace gray -format '%[fx:standard_deviation]' info:)
  if awk -v b="$blue" -v r="$red" -v s="$spread" 'BEGIN { exit !(b > 0.0005 && r > 0.0003 && s > 0.05) }'; then
    ok=1
    echo "window shows the plot: curve pixels $blue, capacity/OOM pixels $red, grey spread $spread"
    break
  fi
done
kill -TERM "$pid" 2>/dev/null
status=0
wait "$pid" || status=$?
if [ "$ok" != 1 ]; then echo "the window never showed the plot; see $out"; cat "$out.log"; exit 1; fi
if [ "$status" != 0 ]; then echo "oomlab did not close cleanly on SIGTERM (status $status)"; cat "$out.log"; exit 1; fi
echo "closed cleanly on SIGTERM"
INNER
