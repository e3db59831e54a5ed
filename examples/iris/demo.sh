#!/usr/bin/env bash
# Builds Ferry, starts a local cluster with `ferry dev`, runs the iris pipeline on it
# end to end, prints each step's result, the metrics table and the chosen model,
# then stops the cluster. Everything lives under target/iris-demo/, so your own
# ~/.config/ferry is left alone.
#
# The cluster's data (target/iris-demo/cluster) is kept between runs, so running
# the script a second time shows split and standardize taken from the cache.
# Start from scratch with: rm -rf target/iris-demo
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

echo "==> building Ferry (cargo build --workspace)"
cargo build --workspace --quiet
ferry="$root/target/debug/ferry"

demo="$root/target/iris-demo"
# Only this run's downloads and output are cleared; the cluster state stays.
rm -rf "$demo/artifacts" "$demo/run.out" "$demo/status.json" "$demo/dev.out" "$demo/dev.log"
mkdir -p "$demo/home" "$demo/artifacts"
export HOME="$demo/home"
unset XDG_CONFIG_HOME XDG_DATA_HOME FERRY_CONFIG FERRY_COORDINATOR FERRY_CA FERRY_CERT FERRY_KEY

if [ -d "$demo/cluster" ]; then
  echo "==> starting the local cluster again (ferry dev; its data is kept in $demo/cluster)"
else
  echo "==> starting a local cluster (ferry dev)"
fi
"$ferry" dev --data-dir "$demo/cluster" --listen 127.0.0.1:0 >"$demo/dev.out" 2>"$demo/dev.log" &
dev_pid=$!
trap 'kill "$dev_pid" 2>/dev/null; wait "$dev_pid" 2>/dev/null || true' EXIT
started=no
for _ in $(seq 1 300); do
  if grep -q "client config written" "$demo/dev.out" 2>/dev/null; then
    started=yes
    break
  fi
  kill -0 "$dev_pid" 2>/dev/null || break
  sleep 0.1
done
if [ "$started" != yes ]; then
  echo "error: the local cluster did not start; ferry dev said:" >&2
  cat "$demo/dev.log" >&2
  echo >&2
  echo "If $demo/cluster was made by an older version of Ferry, start afresh with:" >&2
  echo "  rm -rf $demo" >&2
  exit 1
fi
grep -v "Ctrl-C" "$demo/dev.out"

earlier=$("$ferry" runs --limit 0 --output json | python3 -c \
  'import json, sys; print(sum(r["pipeline"] == "iris" for r in json.load(sys.stdin)))')

echo
echo "==> running examples/iris/pipeline.yaml"
status=0
"$ferry" run examples/iris/pipeline.yaml --watch | tee "$demo/run.out" || status=$?
run=$(sed -n 's/^run \([0-9]*\) .*submitted.*/\1/p' "$demo/run.out" | head -n 1)
if [ -z "$run" ]; then
  echo "error: the run was not submitted" >&2
  exit 1
fi

echo
echo "==> step results (ferry status $run)"
"$ferry" status "$run"
if [ "$earlier" -eq 0 ]; then
  echo "(run this script again: split and standardize will be taken from the cache)"
fi

echo
echo "==> chosen model"
for name in best.json best_model.json; do
  "$ferry" artifacts get "$run" select "$name" -o "$demo/artifacts/$name" >/dev/null
done
# A cached select did not run in this run: its log is in the run that ran it.
"$ferry" status "$run" --output json >"$demo/status.json"
python3 - "$demo/artifacts/best.json" "$demo/status.json" "$run" <<'EOF'
import json, sys
best = json.load(open(sys.argv[1]))
select = next(s for s in json.load(open(sys.argv[2]))["steps"] if s["name"] == "select")
ran_in = select.get("reused_run") or sys.argv[3]
print(f"best model: {best['step']} (k={best['k']}, weights={best['weights']}), "
      f"accuracy {best['accuracy']:.4f}, macro F1 {best['macro_f1']:.4f}")
print(f"every trial, ranked: ferry logs {ran_in} select")
EOF
"$ferry" artifacts "$run" | awk 'NR == 1 || $1 == "select"'
echo "downloaded to $demo/artifacts/ (every artifact of the run: ferry artifacts $run);"
echo "the cluster's blob store is $demo/cluster/coordinator/blobs"

echo
echo "==> metrics (ferry metrics $run)"
"$ferry" metrics "$run"
exit "$status"
