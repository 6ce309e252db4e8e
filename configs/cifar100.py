r"""CIFAR-100 teachers: ResNet-18, MobileNetV2, EfficientNet-B0, ShuffleNet v1 (g=2), full width.

    python -m infer_jax.squeeze --config=configs/cifar100.py \
        --config.data.path=/data/cifar-100-python.tar.gz

Recipe (ALGORITHM.md): SGD lr 0.1, momentum 0.9, weight decay 5e-4, cosine, batch 128,
random crop (pad 4) + flip, 200 epochs, CIFAR stems. Full-width teachers are for GPUs
(ResNet-18: ~11M parameters). An npz in the layout of ../shared/data/prepare.py works too:
``--config.data.source=npz --config.data.path=cifar100.npz``.
"""

from infer_jax import config_lib


def get_config():
  c = config_lib.base_config()  # teachers and the SGD recipe of ALGORITHM.md
  c.name = "cifar100"
  c.data.source = "cifar100"  # the official python archive (directory or .tar.gz)
  c.data.path = "data/cifar-100-python.tar.gz"
  c.data.name = "cifar100"
  c.squeeze.checkpoint_every_steps = 1000
  c.squeeze.log_every_steps = 100
  return c
