"""PyTorch reference ShuffleNetG2 and ShuffleNetV2, used to verify the Flax models.

Written for this project from the architecture descriptions: ShuffleNetG2 follows the
pytorch-cifar layout (1x1 stem, three layers of 200/400/800 channels with 4/8/4 units,
average-pooled concatenated shortcut on downsampling units); ShuffleNetV2 follows
torchvision's ``shufflenet_v2_x1_0`` layout with a ``stem`` switch ('imagenet': 3x3/2 conv
+ 3x3/2 max-pool, 'cifar': 3x3/1 conv, no max-pool). Module names match the Flax models
with '.' -> '_' (``layer1.0.conv1`` -> ``layer1_0/conv1``, ``stage2.0.branch1.0`` ->
``stage2_0/branch1_0``).

Run ``python tests/torch_refs/shufflenet.py`` in an environment with torch to print the
parameter counts the tests state as constants. Only imported by tests (with
``pytest.importorskip('torch')``); the package never depends on torch.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import nn
from torch.nn import functional as F


def channel_shuffle(x: torch.Tensor, groups: int) -> torch.Tensor:
  """NCHW channel shuffle: ``[N, C, H, W]`` viewed as ``[N, g, C/g, H, W]``, transposed."""
  n, c, h, w = x.shape
  return x.view(n, groups, c // groups, h, w).transpose(1, 2).reshape(n, c, h, w)


class Bottleneck(nn.Module):
  """ShuffleNet v1 unit. ``[N, Cin, H, W] -> [N, Cin, H, W]`` or ``[N, out+Cin, H/2, W/2]``."""

  def __init__(self, in_planes: int, out_planes: int, stride: int, groups: int, first_block: bool):
    super().__init__()
    self.stride = stride
    self.g = 1 if first_block else groups
    mid = out_planes // 4
    self.conv1 = nn.Conv2d(in_planes, mid, 1, groups=self.g, bias=False)
    self.bn1 = nn.BatchNorm2d(mid)
    self.conv2 = nn.Conv2d(mid, mid, 3, stride, 1, groups=mid, bias=False)
    self.bn2 = nn.BatchNorm2d(mid)
    self.conv3 = nn.Conv2d(mid, out_planes, 1, groups=groups, bias=False)
    self.bn3 = nn.BatchNorm2d(out_planes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Applies the unit."""
    out = F.relu(self.bn1(self.conv1(x)))
    out = channel_shuffle(out, self.g)
    out = F.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    if self.stride == 2:
      shortcut = F.avg_pool2d(x, 3, stride=2, padding=1, count_include_pad=True)
      return F.relu(torch.cat([out, shortcut], 1))
    return F.relu(out + x)


class ShuffleNetV1(nn.Module):
  """ShuffleNetG2 for CIFAR inputs. ``[N, 3, H, W] -> [N, num_classes]``."""

  def __init__(
    self,
    num_classes: int,
    out_planes: Sequence[int] = (200, 400, 800),
    num_blocks: Sequence[int] = (4, 8, 4),
    groups: int = 2,
    stem_channels: int = 24,
  ):
    super().__init__()
    self.conv1 = nn.Conv2d(3, stem_channels, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(stem_channels)
    in_planes = stem_channels
    for li, (planes, blocks) in enumerate(zip(out_planes, num_blocks, strict=True)):
      units = []
      for bi in range(blocks):
        branch = planes - in_planes if bi == 0 else planes
        units.append(
          Bottleneck(
            in_planes, branch, 2 if bi == 0 else 1, groups, first_block=li == 0 and bi == 0
          )
        )
        in_planes = planes
      setattr(self, f"layer{li + 1}", nn.Sequential(*units))
    self.num_layers = len(out_planes)
    self.linear = nn.Linear(in_planes, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Logits."""
    x = F.relu(self.bn1(self.conv1(x)))
    for li in range(self.num_layers):
      x = getattr(self, f"layer{li + 1}")(x)
    return self.linear(x.mean((2, 3)))


class InvertedResidual(nn.Module):
  """ShuffleNetV2 unit. ``[N, inp, H, W] -> [N, oup, H/stride, W/stride]``."""

  def __init__(self, inp: int, oup: int, stride: int):
    super().__init__()
    self.stride = stride
    bf = oup // 2
    if stride > 1:
      self.branch1 = nn.Sequential(
        nn.Conv2d(inp, inp, 3, stride, 1, groups=inp, bias=False),
        nn.BatchNorm2d(inp),
        nn.Conv2d(inp, bf, 1, bias=False),
        nn.BatchNorm2d(bf),
        nn.ReLU(inplace=True),
      )
    else:
      self.branch1 = nn.Sequential()
    self.branch2 = nn.Sequential(
      nn.Conv2d(inp if stride > 1 else bf, bf, 1, bias=False),
      nn.BatchNorm2d(bf),
      nn.ReLU(inplace=True),
      nn.Conv2d(bf, bf, 3, stride, 1, groups=bf, bias=False),
      nn.BatchNorm2d(bf),
      nn.Conv2d(bf, bf, 1, bias=False),
      nn.BatchNorm2d(bf),
      nn.ReLU(inplace=True),
    )

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Applies the unit."""
    if self.stride == 1:
      x1, x2 = x.chunk(2, dim=1)
      out = torch.cat([x1, self.branch2(x2)], 1)
    else:
      out = torch.cat([self.branch1(x), self.branch2(x)], 1)
    return channel_shuffle(out, 2)


class ShuffleNetV2(nn.Module):
  """ShuffleNetV2 (1.0x by default). ``[N, 3, H, W] -> [N, num_classes]``."""

  def __init__(
    self,
    num_classes: int,
    stem: str = "imagenet",
    stage_channels: Sequence[int] = (24, 116, 232, 464),
    stage_repeats: Sequence[int] = (4, 8, 4),
    conv5_channels: int = 1024,
  ):
    super().__init__()
    stride = 2 if stem == "imagenet" else 1
    self.conv1 = nn.Sequential(
      nn.Conv2d(3, stage_channels[0], 3, stride, 1, bias=False),
      nn.BatchNorm2d(stage_channels[0]),
      nn.ReLU(inplace=True),
    )
    self.maxpool = nn.MaxPool2d(3, 2, 1) if stem == "imagenet" else nn.Identity()
    inp = stage_channels[0]
    for si, (oup, repeats) in enumerate(zip(stage_channels[1:], stage_repeats, strict=True)):
      units = [InvertedResidual(inp, oup, 2)]
      units += [InvertedResidual(oup, oup, 1) for _ in range(repeats - 1)]
      setattr(self, f"stage{si + 2}", nn.Sequential(*units))
      inp = oup
    self.num_stages = len(stage_repeats)
    self.conv5 = nn.Sequential(
      nn.Conv2d(inp, conv5_channels, 1, bias=False),
      nn.BatchNorm2d(conv5_channels),
      nn.ReLU(inplace=True),
    )
    self.fc = nn.Linear(conv5_channels, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Logits."""
    x = self.maxpool(self.conv1(x))
    for si in range(self.num_stages):
      x = getattr(self, f"stage{si + 2}")(x)
    return self.fc(self.conv5(x).mean((2, 3)))


def shufflenet_g2(num_classes: int) -> ShuffleNetV1:
  """Reference ShuffleNetG2."""
  return ShuffleNetV1(num_classes)


def shufflenet_g2_tiny(num_classes: int) -> ShuffleNetV1:
  """Reference of the Flax test-sized ShuffleNetG2."""
  return ShuffleNetV1(num_classes, out_planes=(32, 64, 96), num_blocks=(2, 1, 1), stem_channels=16)


def shufflenetv2(num_classes: int, stem: str = "imagenet") -> ShuffleNetV2:
  """Reference ShuffleNetV2 1.0x."""
  return ShuffleNetV2(num_classes, stem=stem)


def shufflenetv2_tiny(num_classes: int, stem: str = "imagenet") -> ShuffleNetV2:
  """Reference of the Flax test-sized ShuffleNetV2."""
  return ShuffleNetV2(
    num_classes,
    stem=stem,
    stage_channels=(8, 16, 24, 32),
    stage_repeats=(2, 1, 1),
    conv5_channels=32,
  )


def count_params(model: nn.Module) -> int:
  """Number of trainable parameters (BN running statistics excluded)."""
  return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
  for name, m in [
    ("shufflenet_g2, 10 classes", shufflenet_g2(10)),
    ("shufflenet_g2, 100 classes", shufflenet_g2(100)),
    ("shufflenet_g2_tiny, 10 classes", shufflenet_g2_tiny(10)),
    ("shufflenetv2, 1000 classes", shufflenetv2(1000)),
    ("shufflenetv2, 10 classes", shufflenetv2(10, stem="cifar")),
    ("shufflenetv2, 100 classes", shufflenetv2(100, stem="cifar")),
    ("shufflenetv2_tiny, 10 classes", shufflenetv2_tiny(10, stem="cifar")),
  ]:
    print(f"{name}: {count_params(m):,}")
