#!/usr/bin/env bash
# The CIFAR-10 study (configs/cifar10_study.py): ipc 10 and 50, both protocols, 3 seeds.
#
#   bash benchmarks/study.sh                 # both settings; resumable: rerun after a kill
#   bash benchmarks/study.sh ipc=50          # one setting
#   EXTRA="--config.student.epochs=2" bash benchmarks/study.sh ipc=10   # extra flags
#
# Runs for days on a 2-core CPU. Needs ../shared/data beside the checkout (the CIFAR-10 JPEG
# copy), unpacked into ./data (git-ignored) with its prepare.py on first use. Each setting runs
# `python -m infer_jax.distill --config=configs/cifar10_study.py:<arg>`, which trains or
# reuses the teachers (shared by both settings), recovers or reuses the sets, and keeps the
# rows already in its summary.json (a killed run loses at most the row in progress). Do not
# change the code while a row runs. The summaries are copied to docs/results/ and
# docs/results.md is regenerated from every summary there.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
SHARED=${SHARED:-../shared/data}
mkdir -p data docs/results workdir

[ -f data/cifar10.npz ] || "$PY" "$SHARED/prepare.py" cifar10 data

settings=("$@")
[ ${#settings[@]} -gt 0 ] || settings=(ipc=10 ipc=50)

for arg in "${settings[@]}"; do
  name="cifar10_study_${arg//=/}"          # the config's run name, e.g. cifar10_study_ipc10
  echo "=== $arg -> workdir/$name ($(date -u +%H:%M:%S))"
  # shellcheck disable=SC2086  # EXTRA holds several flags
  "$PY" -u -m infer_jax.distill "--config=configs/cifar10_study.py:$arg" ${EXTRA:-} 2>&1 \
    | tee -a "workdir/$name.log"
  cp "workdir/$name/summary.json" "docs/results/$name.json"
done

"$PY" -m infer_jax.report docs/results/*.json --out docs/results.md --preamble docs/results_preamble.md
