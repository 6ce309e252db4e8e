r"""CIFAR-10 study: both protocols, converged students, DD-Ranking's scores, byte-matched rows.

    bash benchmarks/study.sh                      # ipc 10 then ipc 50; resumable
    python -m infer_jax.distill --config=configs/cifar10_study.py:ipc=10   # one setting

The run behind the question "does INFER work": every row of the comparison (Random with hard
and soft labels, INFER w/o UFC, SRe2L-style, INFER, INFER+Dyn, the INFER set with uint8
compensators and float16 labels, each set with hard labels for HLR, and the full training
set) under both protocols (``same_steps`` and ``same_epochs``, docs/protocol.md), 3 seeds,
final epoch, learning curves of INFER and Random, and the teachers' feature duplication.

Choices, to state wherever the results are reported:

* data: the JPEG (quality 75) copy of CIFAR-10, all 50,000 training images
  (``../shared/data/prepare.py cifar10 data``);
* teachers: the four families (ResNet-18, MobileNetV2, EfficientNet-B0, ShuffleNet v1 g=2)
  at channel width 0.5, 30 epochs of the standard SGD recipe (paper: full width, 200
  epochs); chosen for a CPU, aiming at ResNet-18 >= 80% test top-1: the summary records
  each teacher's own accuracy, which is the figure to check;
* recover: the paper's 1,000 iterations;
* student: ResNet-18 at width 0.5, the paper's AdamW / MixUp / KL(T=30) recipe, 400 epochs
  of the INFER set (ipc 10: 350 instances, 5 steps of batch 64 per epoch, 2,000 steps;
  ipc 50: 1,750 instances, 27 per epoch, 10,800 steps); the learning curves (test top-1
  every ``curve_every`` steps, first seed) show whether that budget has converged;
* full-data row: 30 epochs of the full training set with hard labels under both protocols
  (``evaluate.full_data_epochs``; 400 epochs of 50,000 images is out of reach on a CPU);
* evaluation: 3 seeds, final epoch.
"""

from infer_jax.runtime import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, ipc=10)
  c = config_lib.base_config()
  c.name = f"cifar10_study_ipc{args['ipc']}"
  c.data.source = "npz"
  c.data.path = "data/cifar10.npz"
  c.data.name = "cifar10-jpegq75"
  c.ipc = args["ipc"]
  # Teachers are shared by both ipc: one directory for the two runs.
  c.teachers_dir = "workdir/cifar10_study_teachers"
  c.teacher_width = 0.5
  c.squeeze.epochs = 30
  c.squeeze.checkpoint_every_steps = 500
  c.squeeze.log_every_steps = 200
  c.recover.iterations = 1000
  c.recover.checkpoint_every = 100
  c.recover.log_every = 100
  c.student.width = 0.5
  c.student.epochs = 400
  c.methods = ",".join(
    (
      "full_data",
      "random_hard",
      "random",
      "infer_wo_ufc_hard",
      "infer_wo_ufc",
      "sre2l_hard",
      "sre2l",
      "infer_hard",
      "infer",
      "infer_uint8",
      "infer_dyn",
    )
  )
  c.evaluate.seeds = 3
  c.evaluate.protocol = "both"
  # About 20 points on each curve: ipc 10 trains INFER 2,000 steps, ipc 50 10,800.
  c.evaluate.curve_every = 100 if args["ipc"] <= 10 else 500
  c.evaluate.curve_methods = "infer,random"
  c.evaluate.full_data_epochs = 30
  c.evaluate.feature_similarity = True
  return c
