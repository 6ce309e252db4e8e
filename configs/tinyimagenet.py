r"""Tiny-ImageNet-200 INFER (64x64, 200 classes), CIFAR-style stems, full width.

    python -m infer_jax.distill --config=configs/tinyimagenet.py:ipc=10 \
        --config.data.path=/data/tiny-imagenet-200 --config.workdir=runs/tiny_ipc10

Distillation recipe (paper Table 5): recover Adam lr 0.1, 2000 iterations, random
resized crop + flip then roll, M = 4 (ipc 10 -> K = 9); student ResNet-18, SGD lr 0.2,
momentum 0.9, cosine, batch 64, 200 epochs. The paper reports 32.0% (ipc 10) and 52.9%
(ipc 50) top-1.

Reads the official folder layout (wnids.txt, train/<wnid>/images, val/ with
val_annotations.txt; the labelled val split is the test split). Recipe: SGD lr 0.1,
momentum 0.9, weight decay 5e-4, cosine, batch 128, random resized crop + flip,
200 epochs. At 64x64 the teachers keep the CIFAR stems (stride-1, no max-pool), as the
paper's Tiny-ImageNet teachers do.
"""

from infer_jax.runtime import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, ipc=10)
  c = config_lib.base_config()  # teachers and the SGD recipe of docs/algorithm.md
  c.name = "tinyimagenet"
  c.data.source = "tinyimagenet"
  c.data.path = "data/tiny-imagenet-200"
  c.data.name = "tinyimagenet"
  c.stem = "cifar"
  c.squeeze.augment = "rrc_flip"
  c.ipc = args["ipc"]
  c.recover.lr = 0.1
  c.recover.iterations = 2000
  c.recover.augment = "rrc_flip_roll"
  c.student.optimizer = "sgd"
  c.student.lr = 0.2
  c.student.weight_decay = 0.0
  c.student.epochs = 200
  c.student.augment = "rrc_flip"
  c.squeeze.checkpoint_every_steps = 1000
  c.squeeze.log_every_steps = 100
  return c
