r"""Tiny-ImageNet-200 teachers (64x64, 200 classes), CIFAR-style stems, full width.

    python -m infer_jax.squeeze --config=configs/tinyimagenet.py \
        --config.data.path=/data/tiny-imagenet-200

Reads the official folder layout (wnids.txt, train/<wnid>/images, val/ with
val_annotations.txt; the labelled val split is the test split). Recipe: SGD lr 0.1,
momentum 0.9, weight decay 5e-4, cosine, batch 128, random resized crop + flip,
200 epochs. At 64x64 the teachers keep the CIFAR stems (stride-1, no max-pool), as the
paper's Tiny-ImageNet teachers do.
"""

from infer_jax import config_lib


def get_config():
  c = config_lib.base_config()  # teachers and the SGD recipe of ALGORITHM.md
  c.name = "tinyimagenet"
  c.data.source = "tinyimagenet"
  c.data.path = "data/tiny-imagenet-200"
  c.data.name = "tinyimagenet"
  c.stem = "cifar"
  c.squeeze.augment = "rrc_flip"
  c.squeeze.checkpoint_every_steps = 1000
  c.squeeze.log_every_steps = 100
  return c
