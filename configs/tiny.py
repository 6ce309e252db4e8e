r"""Tiny default: INFER end to end on scikit-learn's digits, with tiny teachers and student.

    python -m infer_jax.distill --config=configs/tiny.py --config.workdir=/tmp/tiny
    python -m infer_jax.squeeze --config=configs/tiny.py --config.workdir=/tmp/tiny  # teachers

Needs no download (the digits ship with scikit-learn: 1438 train / 359 test 8x8 images,
10 classes). The teachers are the `*_tiny` registry variants: the same code paths as
ResNet-18 / MobileNetV2 / EfficientNet-B0 / ShuffleNet v1 (g=2) with a block or two per
stage and a few channels, because XLA compilation of the full-depth networks alone would
take minutes on a 2-core CPU; they reach roughly 75-95% test top-1 (chance: 10%). With
ipc 10 and M = 4 teachers, K = 7 subsets. The job then runs the six-row comparison (one
evaluation seed each). On an idle 2-core CPU it took 2 min 6 s from an empty workdir on
2026-12-07 (teachers 36 s, recover 15 s, the six students about 66 s; 1 min 28 s on an
earlier machine of the same kind); with the cores loaded by other
jobs it took 7 min 50 s. This config is the smoke test of
the pipeline, not a benchmark: iterations, widths and epochs are cut to the bone (+Dyn
gets 20 epochs, too few to learn at this size), so its accuracies say nothing about the
method.
"""

from infer_jax.runtime import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, ipc=10)
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

  c.ipc = args["ipc"]
  c.recover.iterations = 100
  c.recover.jitter = 1
  c.recover.checkpoint_every = 25
  c.recover.log_every = 50

  c.student.arch = "resnet_tiny"
  c.student.epochs = 100
  c.student.lr = 3e-3  # a 5k-parameter student on 8x8 digits needs a larger step
  c.student.batch_size = 32
  c.student.crop_padding = 1
  # One evaluation seed keeps the smoke test short; results to report use >= 3
  # (docs/protocol.md), e.g. --config.evaluate.seeds=3.
  c.evaluate.seeds = 1
  return c
