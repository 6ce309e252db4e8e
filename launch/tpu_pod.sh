#!/usr/bin/env bash
# INFER on a Cloud TPU pod slice: the same command on every worker (host) of the slice.
#
#   bash launch/tpu_pod.sh TPU_NAME ZONE CONFIG [overrides...]
#   bash launch/tpu_pod.sh my-v4-32 us-central2-b configs/imagenet1k.py:ipc=10 \
#       --config.workdir=/mnt/shared/runs/in1k_ipc10 --config.data.source=tfds \
#       --config.data.tfds_name=imagenet2012 --config.data.data_dir=/mnt/shared/tfds
#
# Run it from your workstation (or Cloud Shell): it uses
# `gcloud compute tpus tpu-vm ssh --worker=all`, so every worker starts the job at once;
# jax.distributed.initialize() (forced with --config.distributed.mode=on) reads the
# worker id, worker count and coordinator from the TPU VM metadata.
#
# Needs:
#   * gcloud, authenticated, with access to the TPU VM slice TPU_NAME in ZONE;
#   * on every worker, the project checked out at REPO (default ~/infer-jax) and
#     installed with `pip install -e '.[tpu]'` (SETUP=1 below does the install on all
#     workers first);
#   * --config.workdir and the dataset on storage every worker mounts at the same path
#     (Filestore NFS, or a bucket mounted with gcsfuse): Orbax writes each process's
#     checkpoint shards there, and process 0 writes the synthetic set and summary.
#
# Environment:
#   REPO     checkout on the workers (default: ~/infer-jax)
#   MODULE   job to run (default infer_jax.distill)
#   SETUP=1  first run `pip install -e '.[tpu]'` in REPO on every worker
#   LOG      log file on each worker (default: ~/infer-<date>.log); the job runs under
#            nohup, so it survives this ssh session ending; follow it with
#            gcloud compute tpus tpu-vm ssh TPU_NAME --zone ZONE --worker=0 \
#              --command "tail -f LOG"
#
# Preemption (spot / preemptible slices): recreate the slice and run the same command;
# the job resumes from its last checkpoint in --config.workdir.
set -euo pipefail

if [[ $# -lt 3 ]]; then
  sed -n '2,6p' "$0" >&2
  exit 2
fi
TPU_NAME=$1
ZONE=$2
CONFIG=$3
shift 3
REPO=${REPO:-'~/infer-jax'}
MODULE=${MODULE:-infer_jax.distill}
LOG=${LOG:-"~/infer-$(date +%Y%m%d-%H%M%S).log"}

quoted=$(printf ' %q' "$@")
if [[ "${SETUP:-0}" == 1 ]]; then
  gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
    --command="cd $REPO && pip install -e '.[tpu]'"
fi
gcloud compute tpus tpu-vm ssh "$TPU_NAME" --zone="$ZONE" --worker=all \
  --command="cd $REPO && nohup python -u -m $MODULE --config=$(printf '%q' "$CONFIG")$quoted \
--config.distributed.mode=on > $LOG 2>&1 &"
echo "[tpu] started $MODULE on every worker of $TPU_NAME; logs: $LOG on each worker"
