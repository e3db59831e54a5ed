#!/bin/bash
# Runs every configuration twice, alternating mechanisms; prints markdown rows.
set -e
cd "$(dirname "$0")"
B=./target/release/walbench
echo "| mech | case | run | batch shape | batches | batches/s | MB/s payload | mean ms | p50 ms | p99 ms | max ms | wall s(ms) | VmHWM | notes |"
echo "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|"
for run in 1 2; do
  if [ $run = 1 ]; then order="plain plainpre raftengine sled"; border="prealloc-zero prealloc-fallocate grow"
  else order="raftengine plainpre plain sled"; border="grow prealloc-fallocate prealloc-zero"; fi
  for c in a b c d; do
    for m in $order; do nice -n 10 $B $m $c $run; sync; sleep 1; done
  done
  for c in $border; do nice -n 10 $B bare $c $run; sync; sleep 1; done
done
