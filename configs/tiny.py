r"""Tiny default: the four INFER teacher families, as tiny variants, on scikit-learn's digits.

    python -m infer_jax.squeeze --config=configs/tiny.py --config.workdir=/tmp/tiny

Needs no download (the digits ship with scikit-learn). The teachers are the `*_tiny`
registry variants: the same code paths as ResNet-18 / MobileNetV2 / EfficientNet-B0 /
ShuffleNet v1 (g=2) with a block or two per stage and a few channels, because XLA
compilation of the full-depth networks alone would take minutes on a 2-core CPU. They
train in about a minute there and reach roughly 80-95% test top-1 (chance: 10%). This
config is the smoke test of the pipeline, not a benchmark.
"""

from infer_jax import config_lib


def get_config():
  c = config_lib.base_config()
  c.name = "tiny"
  c.data.source = "digits"  # 8x8 grayscale digits, replicated to 3 channels
  c.teachers = "resnet_tiny,mobilenetv2_tiny,efficientnet_tiny,shufflenet_g2_tiny"
  c.squeeze.epochs = 20
  c.squeeze.batch_size = 64
  c.squeeze.lr = 0.1
  c.squeeze.crop_padding = 1  # 4 pixels of padding would crop away half of an 8x8 digit
  c.squeeze.checkpoint_every_steps = 100
  c.squeeze.log_every_steps = 100
  return c
