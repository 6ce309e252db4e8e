r"""CIFAR-10 INFER sized for a 2-core CPU: the real-data smoke benchmark.

    python ../shared/data/prepare.py cifar10 data      # -> data/cifar10.npz (JPEG q75 copy)
    python -m infer_jax.distill --config=configs/cifar10_cpu.py:ipc=10

Reductions from the paper's recipe (configs/cifar10.py), all for CPU time, stated wherever
the results are reported:

* data: the JPEG (quality 75) copy of CIFAR-10 in ../shared/data, not the original pixels;
* teachers: the four families (ResNet-18, MobileNetV2, EfficientNet-B0, ShuffleNet v1 g=2)
  at channel width 0.25, trained 2 epochs (paper: full width, 200 epochs);
* recover: 200 iterations (paper: 1000), everything else as the paper;
* student: ResNet-18 at width 0.25 for about 300 optimisation steps of batch 64 at ipc 10
  (60 epochs of the INFER set) and about 200 at ipc 50 (7 epochs; the larger set's rows
  cost more than this machine's time allows; paper: full width, 400 epochs), the paper's
  AdamW / MixUp / KL(T=30) recipe; INFER+Dyn gets 1/(M+1) of the epochs;
* evaluation: 3 seeds, final epoch.
"""

from infer_jax.runtime import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, ipc=10)
  c = config_lib.base_config()
  c.name = f"cifar10_cpu_ipc{args['ipc']}"
  c.data.source = "npz"
  c.data.path = "data/cifar10.npz"
  c.data.name = "cifar10-jpegq75"
  c.ipc = args["ipc"]
  # Teachers are shared by every ipc: one directory for all runs of this config.
  c.teachers_dir = "workdir/cifar10_cpu_teachers"
  c.teacher_width = 0.25
  c.squeeze.epochs = 2
  c.squeeze.checkpoint_every_steps = 200
  c.squeeze.log_every_steps = 100
  c.recover.iterations = 200
  c.recover.checkpoint_every = 50
  c.recover.log_every = 50
  c.student.width = 0.25
  # About 300 steps of batch 64 up to ipc 10, 200 above (CPU time); the INFER set has
  # K*C*(M+1) instances (K = ipc*C // (C+M); 350 at ipc 10, 1,750 at ipc 50).
  k = args["ipc"] * 10 // 14
  steps = 300 if args["ipc"] <= 10 else 200
  c.student.epochs = max(1, round(steps / max(1, k * 10 * 5 // 64)))
  return c
