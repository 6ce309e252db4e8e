r"""CIFAR-10 INFER: teachers ResNet-18, MobileNetV2, EfficientNet-B0, ShuffleNet v1 (g=2).

    python prepare.py cifar10 DATA  # (../shared/data/prepare.py, or any npz in that layout)
    python -m infer_jax.distill --config=configs/cifar10.py:ipc=10 \
        --config.data.path=DATA/cifar10.npz --config.workdir=runs/cifar10_ipc10
    python -m infer_jax.squeeze --config=configs/cifar10.py ...   # teachers only

Distillation recipe (paper Table 5): recover Adam lr 0.25, 1000 iterations, r_bn 1, roll
jitter 4, M = 4 (ipc 10 -> K = 7, ipc 50 -> K = 35); student ResNet-18, AdamW lr 1e-3,
weight decay 0.01, cosine, batch 64, 400 epochs, MixUp, KL with T = 30. The paper
reports 32.0% (ipc 10) and 60.4% (ipc 50) top-1. Full width needs a GPU.

Recipe (docs/algorithm.md): SGD lr 0.1, momentum 0.9, weight decay 5e-4, cosine, batch 128,
random crop (pad 4) + flip, 200 epochs, CIFAR stems. Full-width teachers are for GPUs
(ResNet-18: ~11M parameters). The official python archive works too:
``--config.data.source=cifar10 --config.data.path=cifar-10-python.tar.gz``.
"""

from infer_jax.runtime import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, ipc=10)
  c = config_lib.base_config()  # teachers and the SGD recipe of docs/algorithm.md
  c.name = "cifar10"
  c.data.source = "npz"
  c.data.path = "data/cifar10.npz"
  c.data.name = "cifar10"
  c.ipc = args["ipc"]
  c.squeeze.checkpoint_every_steps = 1000
  c.squeeze.log_every_steps = 100
  return c
