r"""CIFAR-10 teachers: ResNet-18, MobileNetV2, EfficientNet-B0, ShuffleNet v1 (g=2), full width.

    python prepare.py cifar10 DATA  # (../shared/data/prepare.py, or any npz in that layout)
    python -m infer_jax.squeeze --config=configs/cifar10.py --config.data.path=DATA/cifar10.npz

Recipe (ALGORITHM.md): SGD lr 0.1, momentum 0.9, weight decay 5e-4, cosine, batch 128,
random crop (pad 4) + flip, 200 epochs, CIFAR stems. Full-width teachers are for GPUs
(ResNet-18: ~11M parameters). The official python archive works too:
``--config.data.source=cifar10 --config.data.path=cifar-10-python.tar.gz``.
"""

from infer_jax import config_lib


def get_config():
  c = config_lib.base_config()  # teachers and the SGD recipe of ALGORITHM.md
  c.name = "cifar10"
  c.data.source = "npz"
  c.data.path = "data/cifar10.npz"
  c.data.name = "cifar10"
  c.squeeze.checkpoint_every_steps = 1000
  c.squeeze.log_every_steps = 100
  return c
