r"""ImageNet-1k INFER: teachers ResNet-18, MobileNetV2, EfficientNet-B0 (M=3), ImageNet stems.

    python -m infer_jax.distill --config=configs/imagenet1k.py:ipc=10 \
        --config.data.source=tfds --config.data.tfds_name=imagenet2012 \
        --config.data.data_dir=/data/tfds --config.workdir=runs/in1k_ipc10

Distillation recipe (paper Table 5): recover Adam lr 0.25, 2000 iterations, r_bn 0.01,
random resized crop + flip then roll, M = 3 (ipc 10 -> K = 9, ipc 50 -> K = 49); student
ResNet-18, AdamW lr 1e-3, weight decay 0.01, cosine, batch 32, 300 epochs. The paper
reports 28.7% (ipc 10) and 51.8% (ipc 50) top-1.

The paper uses torchvision's pretrained ImageNet teachers; training them here follows
torchvision's classic recipe (SGD lr 0.1 at batch 256, momentum 0.9, weight decay 1e-4,
90 epochs, random resized crop 224 + flip; cosine instead of step decay). Data: an
image folder (``--config.data.source=imagefolder --config.data.path=/data/imagenet``
with train/ and val/ class folders, resized to 224) or TFDS array_record files.
Multi-GPU / TPU scale is required.
"""

from infer_jax.runtime import config_lib


def get_config(arg=None):
  args = config_lib.parse_arg(arg, ipc=10)
  c = config_lib.base_config()
  c.name = "imagenet1k"
  c.data.source = "imagefolder"
  c.data.path = "data/imagenet"
  c.data.name = "imagenet1k"
  c.data.image_size = 224
  c.teachers = "resnet18,mobilenetv2,efficientnet_b0"
  c.stem = "imagenet"
  c.ipc = args["ipc"]
  c.recover.iterations = 2000
  c.recover.r_bn = 0.01
  c.recover.augment = "rrc_flip_roll"
  c.student.epochs = 300
  c.student.batch_size = 32
  c.student.augment = "rrc_flip"
  c.squeeze.epochs = 90
  c.squeeze.batch_size = 256
  c.squeeze.lr = 0.1
  c.squeeze.weight_decay = 1e-4
  c.squeeze.augment = "rrc_flip"
  c.squeeze.eval_batch_size = 250
  c.squeeze.checkpoint_every_steps = 2000
  c.squeeze.log_every_steps = 200
  c.squeeze.worker_count = 8
  return c
