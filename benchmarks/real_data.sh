#!/usr/bin/env bash
# A smoke benchmark of the whole pipeline on real images, sized for a 2-core CPU (about two
# hours): CIFAR-10 at ipc 10 and 50 and Tiny-ImageNet-100pc at ipc 10, with teachers of 2
# epochs at width 0.25 and students of a few hundred steps. At that budget every method ties,
# so its results are not published: docs/results.md comes from the study (benchmarks/study.sh).
#
#   bash benchmarks/real_data.sh            # every setting; resumable: rerun after a kill
#   bash benchmarks/real_data.sh cifar10_cpu:ipc=10   # one setting (config[:arg])
#
# Needs ../shared/data beside the checkout (CIFAR-10 JPEG copy, Tiny-ImageNet-100pc); it is
# unpacked into ./data (git-ignored) with its prepare.py on first use. Each setting runs
# `python -m infer_jax.distill --config=configs/<config>.py:<arg>`, which trains or reuses
# the teachers, recovers or reuses the sets, and evaluates every method with 3 seeds,
# keeping the rows already in its summary.json (rows are never recomputed). The summaries
# are copied to workdir/real_data/ and workdir/real_data/results.md is generated from them.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
SHARED=${SHARED:-../shared/data}
OUT=workdir/real_data
mkdir -p data "$OUT"

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
  cp "workdir/$name/summary.json" "$OUT/$name.json"
done

"$PY" -m infer_jax.report "$OUT"/*.json --out "$OUT/results.md"
