#!/usr/bin/env bash
# The real-data benchmark of docs/results.md, on this machine (2-core CPU sized).
#
#   bash benchmarks/real_data.sh            # every setting; resumable: rerun after a kill
#   bash benchmarks/real_data.sh cifar10_cpu:ipc=10   # one setting (config[:arg])
#
# Needs ../shared/data beside the checkout (CIFAR-10 JPEG copy, Tiny-ImageNet-100pc); it is
# unpacked into ./data (git-ignored) with its prepare.py on first use. Each setting runs
# `python -m infer_jax.distill --config=configs/<config>.py:<arg>`, which trains or reuses
# the teachers, recovers or reuses the sets, and evaluates every method with 3 seeds,
# keeping the rows already in its summary.json (rows are never recomputed). The summaries
# are copied to docs/results/ and docs/results.md is regenerated from them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
SHARED=${SHARED:-../shared/data}
mkdir -p data docs/results workdir

[ -f data/cifar10.npz ] || "$PY" "$SHARED/prepare.py" cifar10 data
[ -f data/tinyimagenet-100pc.npz ] || "$PY" "$SHARED/prepare.py" tinyimagenet-100pc data

settings=("$@")
[ ${#settings[@]} -gt 0 ] || settings=(cifar10_cpu:ipc=10 tinyimagenet_cpu:ipc=10 cifar10_cpu:ipc=50)

for setting in "${settings[@]}"; do
  config=${setting%%:*}
  arg=${setting#*:}
  name="${config}_${arg//=/}"            # e.g. cifar10_cpu_ipc10 (the config's run name)
  echo "=== $setting -> workdir/$name ($(date -u +%H:%M:%S))"
  "$PY" -u -m infer_jax.distill "--config=configs/$config.py:$arg" 2>&1 | tee -a "workdir/$name.log"
  cp "workdir/$name/summary.json" "docs/results/$name.json"
done

"$PY" -m infer_jax.report docs/results/*.json --out docs/results.md --preamble docs/results_preamble.md
