#!/usr/bin/env bash
# Builds Ferry, starts a local cluster with `ferry dev`, runs the iris pipeline on it
# end to end, prints each step's result, the chosen model and where its artifacts
# are, then stops the cluster. Everything lives under target/iris-demo/, so your own
# ~/.config/ferry is left alone.
set -euo pipefail
root=$(cd "$(dirname "$0")/../.." && pwd)
cd "$root"

echo "==> building Ferry (cargo build --workspace)"
cargo build --workspace --quiet
ferry="$root/target/debug/ferry"

demo="$root/target/iris-demo"
rm -rf "$demo"
mkdir -p "$demo/home" "$demo/artifacts"
export HOME="$demo/home"
unset XDG_CONFIG_HOME XDG_DATA_HOME FERRY_CONFIG FERRY_COORDINATOR FERRY_CA FERRY_CERT FERRY_KEY

echo "==> starting a local cluster (ferry dev)"
"$ferry" dev --data-dir "$demo/cluster" --listen 127.0.0.1:0 >"$demo/dev.out" 2>"$demo/dev.log" &
dev_pid=$!
trap 'kill "$dev_pid" 2>/dev/null; wait "$dev_pid" 2>/dev/null || true' EXIT
for _ in $(seq 1 100); do
  grep -q "client config written" "$demo/dev.out" 2>/dev/null && break
  kill -0 "$dev_pid" 2>/dev/null || { cat "$demo/dev.log"; exit 1; }
  sleep 0.1
done
cat "$demo/dev.out" | grep -v "Ctrl-C"

echo "==> running examples/iris/pipeline.yaml"
status=0
"$ferry" run examples/iris/pipeline.yaml --watch | tee "$demo/run.out" || status=$?
run=$(sed -n 's/^run \([0-9]*\) .*submitted.*/\1/p' "$demo/run.out" | head -n 1)

echo
echo "==> step results"
"$ferry" status "$run"
echo
echo "==> chosen model"
"$ferry" logs "$run" select | grep "best model" || true
for name in best.json best_model.json; do
  "$ferry" artifacts get "$run" select "$name" -o "$demo/artifacts/$name"
done
for k in k1 k5 k15; do
  "$ferry" artifacts get "$run" "eval-$k" metrics.json -o "$demo/artifacts/metrics-$k.json"
done
echo
echo "==> artifacts of run $run (content-addressed, BLAKE3)"
"$ferry" artifacts "$run"
echo
echo "downloaded to $demo/artifacts/; the cluster's blob store is $demo/cluster/coordinator/blobs"
exit "$status"
