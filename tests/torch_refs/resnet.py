"""PyTorch reference ResNet and ConvNet, used to verify the Flax models' structure.

Written for this project following torchvision's ResNet layout (BasicBlock / Bottleneck
with the stride on the 3x3 conv, ``downsample`` = 1x1 conv + BN) plus a ``stem`` switch:
'imagenet' is torchvision's 7x7/2 conv + 3x3/2 max-pool, 'cifar' the pytorch-cifar 3x3/1
conv without max-pool. Module names match the Flax models with '.' -> '_'.

Run ``python tests/torch_refs/resnet.py`` in an environment with torch to print the
parameter counts the tests state as constants. Only imported by tests (with
``pytest.importorskip('torch')``); the package never depends on torch.
"""

from __future__ import annotations

import torch
from torch import nn


class BasicBlock(nn.Module):
  """Two 3x3 conv-BN layers plus shortcut. ``[N, Cin, H, W] -> [N, planes, H/s, W/s]``."""

  expansion = 1

  def __init__(self, in_planes: int, planes: int, stride: int = 1):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = _downsample(in_planes, planes * self.expansion, stride)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Applies the block."""
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.bn2(self.conv2(y))
    shortcut = x if self.downsample is None else self.downsample(x)
    return self.relu(y + shortcut)


class Bottleneck(nn.Module):
  """1x1 -> 3x3 (strided) -> 1x1 (x4) plus shortcut. ``[N, Cin, H, W] -> [N, 4p, H/s, W/s]``."""

  expansion = 4

  def __init__(self, in_planes: int, planes: int, stride: int = 1):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = _downsample(in_planes, planes * self.expansion, stride)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Applies the block."""
    y = self.relu(self.bn1(self.conv1(x)))
    y = self.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    shortcut = x if self.downsample is None else self.downsample(x)
    return self.relu(y + shortcut)


def _downsample(in_planes: int, out_planes: int, stride: int) -> nn.Module | None:
  """Projection shortcut (``downsample.0`` conv, ``downsample.1`` BN) when shapes change."""
  if stride == 1 and in_planes == out_planes:
    return None
  return nn.Sequential(
    nn.Conv2d(in_planes, out_planes, 1, stride, bias=False), nn.BatchNorm2d(out_planes)
  )


class ResNet(nn.Module):
  """ResNet with a 'cifar' or 'imagenet' stem. ``[N, 3, H, W] -> [N, num_classes]``."""

  def __init__(
    self,
    block: type[nn.Module],
    stage_sizes: list[int],
    num_classes: int,
    stem: str = "cifar",
    base_width: int = 64,
  ):
    super().__init__()
    if stem not in ("cifar", "imagenet"):
      raise ValueError(f"Unknown stem {stem!r}.")
    if stem == "imagenet":
      self.conv1 = nn.Conv2d(3, base_width, 7, 2, 3, bias=False)
      self.maxpool = nn.MaxPool2d(3, 2, 1)
    else:
      self.conv1 = nn.Conv2d(3, base_width, 3, 1, 1, bias=False)
      self.maxpool = nn.Identity()
    self.bn1 = nn.BatchNorm2d(base_width)
    self.relu = nn.ReLU(inplace=True)
    in_planes = base_width
    for i, num_blocks in enumerate(stage_sizes):
      planes = base_width * 2**i
      blocks = []
      for j in range(num_blocks):
        stride = 2 if i > 0 and j == 0 else 1
        blocks.append(block(in_planes, planes, stride))
        in_planes = planes * block.expansion
      setattr(self, f"layer{i + 1}", nn.Sequential(*blocks))
    self.num_stages = len(stage_sizes)
    self.avgpool = nn.AdaptiveAvgPool2d(1)
    self.fc = nn.Linear(in_planes, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Classifies a batch."""
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    for i in range(self.num_stages):
      x = getattr(self, f"layer{i + 1}")(x)
    return self.fc(torch.flatten(self.avgpool(x), 1))


class ConvBlock(nn.Module):
  """3x3 conv (bias) -> BN -> ReLU -> 2x2 avg-pool. ``[N, Cin, H, W] -> [N, C, H/2, W/2]``."""

  def __init__(self, in_channels: int, channels: int):
    super().__init__()
    self.conv = nn.Conv2d(in_channels, channels, 3, 1, 1, bias=True)
    self.bn = nn.BatchNorm2d(channels)
    self.pool = nn.AvgPool2d(2, 2)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Applies the block."""
    return self.pool(torch.relu(self.bn(self.conv(x))))


class ConvNet(nn.Module):
  """Dataset-distillation ConvNet (BN variant). ``[N, C, H, W] -> [N, num_classes]``."""

  def __init__(
    self,
    num_classes: int,
    depth: int = 3,
    net_width: int = 128,
    in_channels: int = 3,
    image_size: int = 32,
  ):
    super().__init__()
    self.features = nn.ModuleList(
      ConvBlock(in_channels if i == 0 else net_width, net_width) for i in range(depth)
    )
    side = image_size // 2**depth
    self.fc = nn.Linear(net_width * side * side, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Classifies a batch."""
    for block in self.features:
      x = block(x)
    return self.fc(torch.flatten(x, 1))


ARCHS = {
  "resnet_tiny": (BasicBlock, [1, 1]),  # base width 8: the Flax test-sized ResNet
  "resnet18": (BasicBlock, [2, 2, 2, 2]),
  "resnet34": (BasicBlock, [3, 4, 6, 3]),
  "resnet50": (Bottleneck, [3, 4, 6, 3]),
  "resnet101": (Bottleneck, [3, 4, 23, 3]),
}


def build(name: str, num_classes: int, stem: str = "cifar", image_size: int = 32) -> nn.Module:
  """Reference model by registry name ('resnet18' ... 'resnet101', 'resnet_tiny',
  'convnet', 'convnet_tiny'); ``image_size`` sizes ConvNet's head."""
  if name == "convnet":
    return ConvNet(num_classes, image_size=image_size)
  if name == "convnet_tiny":
    return ConvNet(num_classes, depth=2, net_width=8, image_size=image_size)
  block, stages = ARCHS[name]
  return ResNet(block, stages, num_classes, stem, base_width=8 if name == "resnet_tiny" else 64)


def count_params(model: nn.Module) -> int:
  """Trainable parameters (BN weight/bias included, running statistics excluded)."""
  return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
  for arch in [a for a in ARCHS if not a.endswith("_tiny")]:
    for stem, classes in (("imagenet", 1000), ("cifar", 10), ("cifar", 100)):
      print(f"{arch:10s} {stem:9s} {classes:5d} {count_params(build(arch, classes, stem)):,}")
  print(f"{'convnet':10s} {'32x32':9s} {10:5d} {count_params(build('convnet', 10)):,}")
