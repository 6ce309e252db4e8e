#!/usr/bin/env bash
# Runs one job as N processes on this machine, over loopback, with CPU devices.
#
#   bash launch/local_multiprocess.sh N CONFIG [overrides...]
#   bash launch/local_multiprocess.sh 2 configs/tiny.py --config.workdir=/tmp/tiny2
#
# What it is for: trying and testing the multi-host code paths (jax.distributed, global
# arrays, multi-host Orbax checkpoints, primary-only writes) without a cluster. Each of
# the N processes gets CPU_DEVICES CPU devices (JAX's XLA:CPU "devices"), so the run
# sees N x CPU_DEVICES devices, as a cluster of N hosts would.
#
# Needs: bash >= 5.1 (wait -n -p), the project installed (python -m infer_jax... works), a free TCP port on
# 127.0.0.1 (picked automatically). No accelerator: JAX_PLATFORMS=cpu is forced.
#
# Environment:
#   PYTHON       interpreter (default: python)
#   MODULE       job module (default: infer_jax.distill; also infer_jax.squeeze, ...)
#   CPU_DEVICES  CPU devices per process (default: 2)
#   LOG_DIR      per-process logs process_<i>.log (default: <workdir>/logs, or
#                ./multiprocess_logs without --config.workdir)
#   TIMEOUT      seconds each process waits for the others at start-up (default: 120)
#
# Behaviour: starts process 0 (the coordinator) and processes 1..N-1, waits for all of
# them; if one fails, the others are stopped and the script exits with the failing
# process's status after printing the end of its log. Ctrl-C stops them all. Killed and
# run again with the same arguments, the job resumes from its last checkpoint.
set -euo pipefail

if [[ $# -lt 2 || ! "$1" =~ ^[1-9][0-9]*$ ]]; then
  sed -n '2,7p' "$0" >&2
  echo "usage: $0 N CONFIG [overrides...]  (N >= 1 processes)" >&2
  exit 2
fi
N=$1
CONFIG=$2
shift 2
PYTHON=${PYTHON:-python}
MODULE=${MODULE:-infer_jax.distill}
CPU_DEVICES=${CPU_DEVICES:-2}
TIMEOUT=${TIMEOUT:-120}

workdir=""
for arg in "$@"; do
  case "$arg" in --config.workdir=*) workdir=${arg#--config.workdir=} ;; esac
done
LOG_DIR=${LOG_DIR:-${workdir:+$workdir/logs}}
LOG_DIR=${LOG_DIR:-multiprocess_logs}
mkdir -p "$LOG_DIR"

PORT=$("$PYTHON" -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
export JAX_PLATFORMS=cpu

pids=()
stop_all() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
}
trap 'stop_all; exit 130' INT TERM

echo "[launch] $N processes x $CPU_DEVICES CPU devices, coordinator 127.0.0.1:$PORT, logs in $LOG_DIR"
for ((i = 0; i < N; i++)); do
  "$PYTHON" -u -m "$MODULE" --config="$CONFIG" "$@" \
    --config.distributed.mode=on \
    --config.distributed.coordinator_address="127.0.0.1:$PORT" \
    --config.distributed.num_processes="$N" \
    --config.distributed.process_id="$i" \
    --config.distributed.cpu_devices="$CPU_DEVICES" \
    --config.distributed.initialization_timeout="$TIMEOUT" \
    >"$LOG_DIR/process_$i.log" 2>&1 &
  pids+=($!)
  if ((i == 0)); then sleep 1; fi # let the coordinator open its port first
done

status=0
running=("${pids[@]}")
while ((${#running[@]} > 0)); do
  set +e
  wait -n -p done_pid "${running[@]}"
  rc=$?
  set -e
  still=()
  for p in "${running[@]}"; do [[ "$p" == "$done_pid" ]] || still+=("$p"); done
  running=("${still[@]}")
  if ((rc != 0)); then
    failed=0
    for ((i = 0; i < N; i++)); do
      if [[ "${pids[$i]}" == "$done_pid" ]]; then failed=$i; fi
    done
    echo "[launch] process $failed exited with status $rc; stopping the others" >&2
    echo "----- end of $LOG_DIR/process_$failed.log -----" >&2
    tail -n 20 "$LOG_DIR/process_$failed.log" >&2 || true
    stop_all
    wait || true
    status=$rc
    break
  fi
done
if ((status == 0)); then
  echo "[launch] all $N processes finished; process 0's output:"
  tail -n 15 "$LOG_DIR/process_0.log"
fi
exit "$status"
