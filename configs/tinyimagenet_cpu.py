r"""Tiny-ImageNet-100pc INFER sized for a 2-core CPU: the real-data smoke benchmark.

    python ../shared/data/prepare.py tinyimagenet-100pc data   # -> data/tinyimagenet-100pc.npz
    python -m infer_jax.distill --config=configs/tinyimagenet_cpu.py

Tiny-ImageNet-200 at 64x64 with 100 training images per class (20,000 in all; the full
set has 500 per class) and the full labelled validation split as the test set.

Reductions from the paper's recipe (configs/tinyimagenet.py), all for CPU time, stated
wherever the results are reported:

* data: the 100-per-class training subset (paper: 500 per class);
* teachers: two families, ResNet-18 and ShuffleNet v1 (g=2), at channel width 0.25,
  trained 2 epochs (paper: four families, full width);
* recover: 40 iterations (paper: 2000), random resized crop + flip + roll as the paper; the
  SRe2L-style baseline synthesises its 2,000 images with the same 40 iterations;
* student: ResNet-18 at width 0.25 for one epoch of the INFER set (5,400 instances, 84
  steps of batch 64; paper: full width, 200 epochs), the paper's SGD / MixUp / KL(T=30)
  recipe; INFER+Dyn gets one epoch too (the minimum; 1/(M+1) of one epoch rounds up);
* evaluation: 3 seeds, final epoch.
"""

from infer_jax.runtime import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, ipc=10)
  c = config_lib.base_config()
  c.name = f"tinyimagenet_cpu_ipc{args['ipc']}"
  c.data.source = "npz"
  c.data.path = "data/tinyimagenet-100pc.npz"
  c.data.name = "tinyimagenet-100pc"
  c.stem = "cifar"
  c.ipc = args["ipc"]
  c.teachers = "resnet18,shufflenet_g2"
  c.teachers_dir = "workdir/tinyimagenet_cpu_teachers"
  c.teacher_width = 0.25
  c.squeeze.epochs = 2
  c.squeeze.augment = "rrc_flip"
  c.squeeze.checkpoint_every_steps = 100
  c.squeeze.log_every_steps = 50
  c.recover.lr = 0.1
  c.recover.iterations = 40
  c.recover.augment = "rrc_flip_roll"
  c.recover.checkpoint_every = 20
  c.recover.log_every = 20
  c.student.optimizer = "sgd"
  c.student.lr = 0.2
  c.student.weight_decay = 0.0
  c.student.augment = "rrc_flip"
  c.student.width = 0.25
  c.student.epochs = 1
  return c
