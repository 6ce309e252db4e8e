#!/usr/bin/env bash
# A prepared ten-minute check of infer-jax on a machine with a GPU.
#
#   bash benchmarks/accelerator_check.sh              # on the GPU machine (under 10 minutes)
#   bash benchmarks/accelerator_check.sh --dry-run    # anywhere: the same steps on the CPU,
#                                                     # at tiny sizes, in a minute or two
#
# Steps (each under its own time limit; a failing step is reported and the next one runs):
#   1. jax[cuda12] at the installed jax version, unless JAX already sees a GPU
#      (--dry-run: printed, not run);
#   2. the fast tests (not marked slow) of the numeric core on the GPU;
#   3. benchmarks/recover.py at full width (ResNet-18 and MobileNetV2, C = 100, K = 8
#      subsets in one step) with the fraction of peak FLOP/s;
#   4. the student step (ResNet-18 full width, batch 64, MixUp + KL + AdamW, static labels)
#      with XLA's flop count and the fraction of peak;
#   5. the CIFAR-10 ipc 10 pipeline: the paper's recover (1000 iterations) and student
#      recipe (400 epochs), teachers trained for 2 epochs only, INFER alone, one seed.
# A short table of every step's outcome is printed last and kept in $OUT/summary.txt.
#
# Environment: PYTHON (python), OUT (/tmp/accelerator_check), PEAK_TFLOPS (the device's
# dense TF32 peak; by default looked up from the GPU's name: H100/H200 494.7, A100 156;
# JAX's default float32 matmul precision on these GPUs uses TF32), SHARED (../shared/data:
# holds prepare.py and CIFAR-10 for step 5).
set -uo pipefail
cd "$(dirname "$0")/.."
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
PY=${PYTHON:-python}
OUT=${OUT:-/tmp/accelerator_check}
SHARED=${SHARED:-../shared/data}
DRY=0
[ "${1:-}" = "--dry-run" ] && DRY=1
mkdir -p "$OUT"
SUMMARY="$OUT/summary.txt"
: >"$SUMMARY"
START=$(date +%s)

if [ $DRY = 1 ]; then
  export JAX_PLATFORMS=cpu
  PEAK=${PEAK_TFLOPS:-0}
else
  unset JAX_PLATFORMS
fi

# run NAME LIMIT_S CMD...: runs a step under a time limit, logs it, records its outcome.
run() {
  local name=$1 limit=$2
  shift 2
  echo "=== $name (limit ${limit}s): $*"
  local t0=$SECONDS
  timeout "$limit" "$@" 2>&1 | tee "$OUT/$name.log"
  local rc=${PIPESTATUS[0]}
  local status=ok
  [ "$rc" = 0 ] || status="FAILED rc=$rc"
  [ "$rc" = 124 ] && status="TIMED OUT"
  # The step's last RESULT line, else its last line (pytest's tally, a table row).
  local last
  last=$(grep -E '^RESULT' "$OUT/$name.log" | tail -1)
  [ -n "$last" ] || last=$(grep -v -e '^[[:space:]]*$' -e '^wrote ' "$OUT/$name.log" | tail -1)
  printf '%-10s %-14s %5ss  %s\n' "$name" "$status" "$((SECONDS - t0))" "${last:0:110}" >>"$SUMMARY"
}

# --------------------------------------------------------------------------- 1. jax[cuda12]
echo "=== install"
if [ $DRY = 1 ]; then
  echo "(dry run) would run, unless JAX already sees a GPU:"
  echo "  $PY -m pip install \"jax[cuda12]==\$($PY -c 'import jax; print(jax.__version__)')\""
  printf '%-10s %-14s %5ss  %s\n' install "dry-run" 0 "printed only" >>"$SUMMARY"
elif "$PY" -c "import jax, sys; sys.exit(jax.default_backend() != 'gpu')" 2>/dev/null; then
  printf '%-10s %-14s %5ss  %s\n' install ok 0 "JAX already sees a GPU" >>"$SUMMARY"
else
  version=$("$PY" -c 'import jax; print(jax.__version__)')
  run install 240 "$PY" -m pip install -q "jax[cuda12]==$version"
fi
if [ $DRY = 0 ]; then
  "$PY" -c "import jax; print(jax.devices())" || true
  if [ -z "${PEAK_TFLOPS:-}" ]; then
    gpu=$("$PY" -c "import jax; print(jax.devices()[0].device_kind)" 2>/dev/null)
    case "$gpu" in
      *H100* | *H200* | *GH200*) PEAK=494.7 ;;
      *A100*) PEAK=156 ;;
      *) PEAK=0 ;;
    esac
  else
    PEAK=$PEAK_TFLOPS
  fi
fi
echo "peak TFLOP/s used for fractions: $PEAK"

# --------------------------------------------------------------------------- 2. fast tests
# JAX_PLATFORMS set here wins over the suite's CPU default (tests/conftest.py).
TESTS=(tests/test_conv.py tests/test_bn_stats.py tests/test_recover.py tests/test_student.py)
if [ $DRY = 1 ]; then
  run tests 300 "$PY" -m pytest -x -q -p no:cacheprovider -m "not slow" tests/test_conv.py -k "dense3_s1 or dw3_s2_7_bias"
else
  JAX_PLATFORMS=cuda run tests 180 "$PY" -m pytest -x -q -p no:cacheprovider -m "not slow" "${TESTS[@]}"
fi

# --------------------------------------------------------------------------- 3. recover
if [ $DRY = 1 ]; then
  run recover 300 "$PY" benchmarks/recover.py --archs resnet18 --classes 10 --subsets 1 \
    --width 0.125 --repeats 1 --iters 1 --peak-tflops "$PEAK" --out "$OUT/recover.json"
else
  run recover 150 "$PY" benchmarks/recover.py --archs resnet18,mobilenetv2 --classes 100 \
    --subsets 8 --repeats 3 --iters 10 --peak-tflops "$PEAK" --out "$OUT/recover.json"
fi

# --------------------------------------------------------------------------- 4. student step
if [ $DRY = 1 ]; then W=0.125 B=8 N=2; else W=1.0 B=64 N=50; fi
run student 120 "$PY" - "$W" "$B" "$N" "$PEAK" <<'EOF'
import sys, time
import jax, numpy as np
from infer_jax import models, student
from infer_jax.runtime import train

width, batch, steps, peak = float(sys.argv[1]), int(sys.argv[2]), int(sys.argv[3]), float(sys.argv[4])
cfg = student.StudentConfig(width=width, batch_size=batch)
model = models.create_model("resnet18", 100, stem="cifar", width=width)
tx = student.make_optimizer(cfg, 10_000)
mean, std = (0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)
step = student.make_student_step(model, tx, cfg, mean=mean, std=std, num_classes=100,
                                 label_mode="static")
mesh = train.data_mesh()
state = train.create_train_state(model, tx, jax.random.key(0, impl="rbg"), (32, 32, 3), mesh)
rng = np.random.default_rng(0)
batch_ = jax.device_put({"image": rng.normal(size=(batch, 32, 32, 3)).astype(np.float32),
                         "label": np.zeros(batch, np.int32),
                         "soft_label": rng.normal(size=(batch, 100)).astype(np.float32)},
                        train.batch_sharding(mesh))
key = student.data_key(0)
compiled = step.lower(state, batch_, key).compile()
cost = compiled.cost_analysis()
cost = cost[0] if isinstance(cost, (list, tuple)) else cost
flops = float(cost.get("flops", 0.0)) if cost else 0.0
state, _ = step(state, batch_, key)
jax.block_until_ready(state)
t0 = time.perf_counter()
for _ in range(steps):
  state, m = step(state, batch_, key)
jax.block_until_ready(state)
sec = (time.perf_counter() - t0) / steps
frac = f", {flops / sec / (peak * 1e12):.1%} of {peak} TFLOP/s" if peak and flops else ""
print(f"RESULT student step resnet18 w{width} b{batch}: {batch / sec:.0f} img/s, "
      f"{flops / sec / 1e12:.2f} TFLOP/s (XLA count){frac}")
EOF

# --------------------------------------------------------------------------- 5. pipeline
if [ $DRY = 1 ]; then
  run pipeline 300 "$PY" -m infer_jax.distill --config=configs/tiny.py \
    --config.workdir="$OUT/pipeline" --config.methods=infer --config.evaluate.seeds=1 \
    --config.teachers=resnet_tiny --config.squeeze.epochs=1 \
    --config.recover.iterations=4 --config.recover.checkpoint_every=0 --config.student.epochs=1
else
  if [ ! -f data/cifar10.npz ] && [ -f "$SHARED/prepare.py" ]; then
    "$PY" "$SHARED/prepare.py" cifar10 data
  fi
  run pipeline 300 "$PY" -m infer_jax.distill --config=configs/cifar10.py:ipc=10 \
    --config.workdir="$OUT/pipeline" --config.methods=infer --config.evaluate.seeds=1 \
    --config.squeeze.epochs=2
fi
# The INFER row of the pipeline's table and its wall times.
grep -E "^ +INFER |stage wall time" "$OUT/pipeline.log" 2>/dev/null | sed 's/^ */  /' >>"$SUMMARY"

echo
echo "=== accelerator check: $(( $(date +%s) - START )) s in all$([ $DRY = 1 ] && echo ' (dry run on CPU)')"
printf '%-10s %-14s %6s  %s\n' step outcome time "last result line"
cat "$SUMMARY"
