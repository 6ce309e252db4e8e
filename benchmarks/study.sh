#!/usr/bin/env bash
# The CIFAR-10 study (configs/cifar10_study.py): ipc 10 and 50, both protocols, 3 seeds.
#
#   bash benchmarks/study.sh                 # both settings; resumable: rerun after a kill
#   bash benchmarks/study.sh ipc=50          # one setting
#   EXTRA="--config.student.epochs=2" bash benchmarks/study.sh ipc=10   # extra flags
#
#   bash benchmarks/study.sh save            # keep the unfinished work in the repository
#
# Runs for days on a 2-core CPU. Needs ../shared/data beside the checkout (the CIFAR-10 JPEG
# copy), unpacked into ./data (git-ignored) with its prepare.py on first use. Each setting runs
# `python -m infer_jax.distill --config=configs/cifar10_study.py:<arg>`, which trains or
# reuses the teachers (shared by both settings), recovers or reuses the sets, and keeps the
# rows already in its summary.json (a killed run loses at most the row in progress, and a
# teacher in training its steps since the last checkpoint). Do not change the code while a
# row runs. The summaries are copied to docs/results/ and docs/results.md is regenerated
# from every summary there.
#
# Across machines: `save` (with the study stopped) copies workdir/cifar10_study_* -- finished
# teachers and sets, summaries, and the newest Orbax checkpoint of a teacher or recover in
# progress -- into benchmarks/study_state/ (tracked, to commit); a run on a checkout whose
# workdir lacks them starts from that copy.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python}
SHARED=${SHARED:-../shared/data}
STATE=benchmarks/study_state
mkdir -p data docs/results workdir
# tcmalloc keeps XLA's large per-step buffers where glibc's malloc zero-fills fresh pages every
# step: 36-74% faster teacher training here, bit-identical results (benchmarks/README.md).
TCMALLOC=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4
if [ -z "${LD_PRELOAD:-}" ] && [ -e "$TCMALLOC" ]; then
  export LD_PRELOAD=$TCMALLOC
fi

if [ "${1:-}" = save ]; then
  if ! compgen -G "workdir/cifar10_study_*/" > /dev/null; then
    echo "study.sh save: no workdir/cifar10_study_* here to save; $STATE is left as it is" >&2
    exit 1
  fi
  rm -rf "$STATE.tmp" && mkdir -p "$STATE.tmp"
  for d in workdir/cifar10_study_*/; do
    cp -r "$d" "$STATE.tmp/"
  done
  # Of every Orbax checkpoint directory keep the newest step (the one a resume reads); drop
  # the older steps and any save that was in flight.
  find "$STATE.tmp" -name _CHECKPOINT_METADATA -printf '%h\n' | xargs -r -n1 dirname | sort -u |
    while read -r parent; do
      newest=$(find "$parent" -mindepth 1 -maxdepth 1 -type d -regex '.*/[0-9]+' -printf '%f\n' |
        sort -n | tail -1)
      find "$parent" -mindepth 1 -maxdepth 1 -type d \( -regex '.*/[0-9]+' -o -name '*tmp*' \) \
        ! -name "$newest" -exec rm -rf {} +
    done
  # A run's lock names a process of this machine; on another machine that pid may be alive.
  find "$STATE.tmp" -name .infer_jax.lock -delete
  rm -rf "$STATE" && mv "$STATE.tmp" "$STATE"
  du -sh "$STATE"
  exit 0
fi
for d in "$STATE"/cifar10_study_*/; do
  [ -d "$d" ] || continue
  name=$(basename "$d")
  [ -e "workdir/$name" ] || { echo "=== restoring workdir/$name from $STATE"; cp -r "$d" "workdir/$name"; }
done

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
