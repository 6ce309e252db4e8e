r"""CIFAR-100 INFER: teachers ResNet-18, MobileNetV2, EfficientNet-B0, ShuffleNet v1 (g=2).

    python -m infer_jax.distill --config=configs/cifar100.py:ipc=50 \
        --config.data.path=/data/cifar-100-python.tar.gz --config.workdir=runs/c100_ipc50

Distillation recipe (paper Table 5): recover Adam lr 0.25, 1000 iterations, r_bn 1, roll
jitter 4, M = 4 (ipc 10 -> K = 9, ipc 50 -> K = 48); student ResNet-18, AdamW lr 1e-3,
weight decay 0.01, cosine, batch 64, 400 epochs. The paper reports 45.2% (ipc 10) and
62.8% (ipc 50) top-1. Full width needs a GPU.

Recipe (docs/algorithm.md): SGD lr 0.1, momentum 0.9, weight decay 5e-4, cosine, batch 128,
random crop (pad 4) + flip, 200 epochs, CIFAR stems. Full-width teachers are for GPUs
(ResNet-18: ~11M parameters). An npz in the layout of ../shared/data/prepare.py works too:
``--config.data.source=npz --config.data.path=cifar100.npz``.
"""

from infer_jax.runtime import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, ipc=10)
  c = config_lib.base_config()  # teachers and the SGD recipe of docs/algorithm.md
  c.name = "cifar100"
  c.data.source = "cifar100"  # the official python archive (directory or .tar.gz)
  c.data.path = "data/cifar-100-python.tar.gz"
  c.data.name = "cifar100"
  c.ipc = args["ipc"]
  c.squeeze.checkpoint_every_steps = 1000
  c.squeeze.log_every_steps = 100
  return c
