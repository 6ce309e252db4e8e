"""PyTorch reference MobileNetV2 and EfficientNet-B0, used to verify the Flax models.

Written for this project from the architecture descriptions of the two layouts each
Flax model mirrors (module names identical, so a state_dict converts by renaming):

* 'cifar': the pytorch-cifar (kuangliu) CIFAR MobileNetV2 and EfficientNetB0 -- 3x3/1
  stems; MobileNetV2 blocks always carry the 1x1 expansion conv and a stride-1 shortcut;
  the EfficientNet expansion-1 block builds conv1/bn1 but does not run them.
* 'imagenet': torchvision's mobilenet_v2 and efficientnet_b0 layouts (``features.i``
  Sequentials, ``classifier = [Dropout, Linear]``).

Run ``python tests/torch_refs/mobile.py`` in an environment with torch to print the
parameter counts the tests state as constants. Only imported by tests (with
``pytest.importorskip('torch')``); the package never depends on torch.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

MBV2_CIFAR = (
  (1, 16, 1, 1),
  (6, 24, 2, 1),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)
MBV2_IMAGENET = (
  (1, 16, 1, 1),
  (6, 24, 2, 2),
  (6, 32, 3, 2),
  (6, 64, 4, 2),
  (6, 96, 3, 1),
  (6, 160, 3, 2),
  (6, 320, 1, 1),
)
MBV2_TINY = ((1, 8, 1, 1), (2, 16, 2, 1), (2, 24, 1, 2))
# (expansion, out, repeats, kernel, stride)
B0 = (
  (1, 16, 1, 3, 1),
  (6, 24, 2, 3, 2),
  (6, 40, 2, 5, 2),
  (6, 80, 3, 3, 2),
  (6, 112, 3, 5, 1),
  (6, 192, 4, 5, 2),
  (6, 320, 1, 3, 1),
)
EFF_TINY = ((1, 8, 1, 3, 1), (2, 16, 2, 5, 2))


def _conv_bn(
  cin: int,
  cout: int,
  kernel: int,
  stride: int = 1,
  groups: int = 1,
  act: type[nn.Module] | None = None,
) -> nn.Sequential:
  """[Conv, BN, act] as torchvision's Conv2dNormActivation (children 0, 1, 2)."""
  layers = [
    nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
    nn.BatchNorm2d(cout),
  ]
  if act is not None:
    layers.append(act())
  return nn.Sequential(*layers)


# ----------------------------------------------------------------------------- MobileNetV2


class CifarMBV2Block(nn.Module):
  """expand 1x1 -> depthwise 3x3 -> project 1x1 (+ shortcut at stride 1). NCHW."""

  def __init__(self, cin: int, cout: int, expansion: int, stride: int):
    super().__init__()
    planes = expansion * cin
    self.stride = stride
    self.conv1 = nn.Conv2d(cin, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, groups=planes, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, cout, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(cout)
    self.shortcut = nn.Sequential()
    if stride == 1 and cin != cout:
      self.shortcut = nn.Sequential(nn.Conv2d(cin, cout, 1, bias=False), nn.BatchNorm2d(cout))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Applies the block."""
    y = F.relu(self.bn1(self.conv1(x)))
    y = F.relu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(y))
    return y + self.shortcut(x) if self.stride == 1 else y


class CifarMobileNetV2(nn.Module):
  """pytorch-cifar MobileNetV2. ``[N, 3, H, W] -> [N, num_classes]``."""

  def __init__(self, num_classes: int, blocks=MBV2_CIFAR, stem_ch: int = 32, last: int = 1280):
    super().__init__()
    self.conv1 = nn.Conv2d(3, stem_ch, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(stem_ch)
    layers, cin = [], stem_ch
    for t, c, n, s in blocks:
      for i in range(n):
        layers.append(CifarMBV2Block(cin, c, t, s if i == 0 else 1))
        cin = c
    self.layers = nn.Sequential(*layers)
    self.conv2 = nn.Conv2d(cin, last, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(last)
    self.linear = nn.Linear(last, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Logits."""
    y = F.relu(self.bn1(self.conv1(x)))
    y = self.layers(y)
    y = F.relu(self.bn2(self.conv2(y)))
    return self.linear(F.adaptive_avg_pool2d(y, 1).flatten(1))


class InvertedResidual(nn.Module):
  """torchvision-layout inverted residual (``conv`` Sequential). NCHW."""

  def __init__(self, cin: int, cout: int, expansion: int, stride: int):
    super().__init__()
    hidden = int(round(cin * expansion))
    self.use_res = stride == 1 and cin == cout
    layers: list[nn.Module] = []
    if expansion != 1:
      layers.append(_conv_bn(cin, hidden, 1, act=nn.ReLU6))
    layers += [
      _conv_bn(hidden, hidden, 3, stride, groups=hidden, act=nn.ReLU6),
      nn.Conv2d(hidden, cout, 1, bias=False),
      nn.BatchNorm2d(cout),
    ]
    self.conv = nn.Sequential(*layers)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Applies the block."""
    return x + self.conv(x) if self.use_res else self.conv(x)


class TorchvisionMobileNetV2(nn.Module):
  """torchvision-layout MobileNetV2 (width 1). ``[N, 3, H, W] -> [N, num_classes]``."""

  def __init__(self, num_classes: int, blocks=MBV2_IMAGENET, stem_ch: int = 32, last: int = 1280):
    super().__init__()
    feats: list[nn.Module] = [_conv_bn(3, stem_ch, 3, 2, act=nn.ReLU6)]
    cin = stem_ch
    for t, c, n, s in blocks:
      for i in range(n):
        feats.append(InvertedResidual(cin, c, t, s if i == 0 else 1))
        cin = c
    feats.append(_conv_bn(cin, last, 1, act=nn.ReLU6))
    self.features = nn.Sequential(*feats)
    self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(last, num_classes))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Logits."""
    return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


# ---------------------------------------------------------------------------- EfficientNet


def _drop_rows(x: torch.Tensor, rate: float, training: bool) -> torch.Tensor:
  """Per-sample stochastic depth (identity outside training or at rate 0)."""
  if not training or rate <= 0:
    return x
  keep = 1.0 - rate
  mask = torch.empty(x.shape[0], 1, 1, 1, dtype=x.dtype, device=x.device).bernoulli_(keep)
  return x * mask / keep


class SE(nn.Module):
  """Squeeze-excitation with swish and a sigmoid gate (``se1``, ``se2``). NCHW."""

  def __init__(self, channels: int, squeeze: int):
    super().__init__()
    self.se1 = nn.Conv2d(channels, squeeze, 1)
    self.se2 = nn.Conv2d(squeeze, channels, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Gates the channels of x."""
    w = F.silu(self.se1(F.adaptive_avg_pool2d(x, 1)))
    return x * torch.sigmoid(self.se2(w))


class CifarEffBlock(nn.Module):
  """pytorch-cifar MBConv; conv1/bn1 are built but skipped at expansion 1. NCHW."""

  def __init__(
    self, cin: int, cout: int, kernel: int, stride: int, expansion: int, drop_rate: float = 0.0
  ):
    super().__init__()
    channels = expansion * cin
    self.expansion, self.drop_rate = expansion, drop_rate
    self.conv1 = nn.Conv2d(cin, channels, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(channels)
    self.conv2 = nn.Conv2d(
      channels, channels, kernel, stride, kernel // 2, groups=channels, bias=False
    )
    self.bn2 = nn.BatchNorm2d(channels)
    self.se = SE(channels, max(1, int(cin * 0.25)))
    self.conv3 = nn.Conv2d(channels, cout, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(cout)
    self.has_skip = stride == 1 and cin == cout

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Applies the block."""
    y = x if self.expansion == 1 else F.silu(self.bn1(self.conv1(x)))
    y = F.silu(self.bn2(self.conv2(y)))
    y = self.bn3(self.conv3(self.se(y)))
    if self.has_skip:
      y = _drop_rows(y, self.drop_rate, self.training) + x
    return y


class CifarEfficientNetB0(nn.Module):
  """pytorch-cifar EfficientNetB0. ``[N, 3, H, W] -> [N, num_classes]``."""

  def __init__(self, num_classes: int, blocks=B0, stem_ch: int = 32):
    super().__init__()
    self.conv1 = nn.Conv2d(3, stem_ch, 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(stem_ch)
    layers, cin = [], stem_ch
    for t, c, n, k, s in blocks:
      for i in range(n):
        # The reference's drop-connect rate is 0 for every block (see the Flax module).
        layers.append(CifarEffBlock(cin, c, k, s if i == 0 else 1, t))
        cin = c
    self.layers = nn.Sequential(*layers)
    self.linear = nn.Linear(cin, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Logits."""
    y = self.layers(F.silu(self.bn1(self.conv1(x))))
    y = F.adaptive_avg_pool2d(y, 1).flatten(1)
    return self.linear(F.dropout(y, 0.2, self.training))


class SqueezeExcitation(nn.Module):
  """torchvision-layout SE (``fc1``, ``fc2``) with SiLU and a sigmoid gate. NCHW."""

  def __init__(self, channels: int, squeeze: int):
    super().__init__()
    self.fc1 = nn.Conv2d(channels, squeeze, 1)
    self.fc2 = nn.Conv2d(squeeze, channels, 1)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Gates the channels of x."""
    return x * torch.sigmoid(self.fc2(F.silu(self.fc1(F.adaptive_avg_pool2d(x, 1)))))


def _round8(v: float) -> int:
  """torchvision's _make_divisible(v, 8) (identity on the multiples of 8 used at width 1)."""
  r = max(8, int(v + 4) // 8 * 8)
  return r + 8 if r < 0.9 * v else r


class MBConv(nn.Module):
  """torchvision-layout MBConv (``block`` Sequential, stochastic depth). NCHW."""

  def __init__(self, cin: int, cout: int, kernel: int, stride: int, expansion: int, sd_prob: float):
    super().__init__()
    hidden = _round8(cin * expansion)
    self.use_res, self.sd_prob = stride == 1 and cin == cout, sd_prob
    layers: list[nn.Module] = []
    if hidden != cin:
      layers.append(_conv_bn(cin, hidden, 1, act=nn.SiLU))
    layers += [
      _conv_bn(hidden, hidden, kernel, stride, groups=hidden, act=nn.SiLU),
      SqueezeExcitation(hidden, max(1, cin // 4)),
      _conv_bn(hidden, cout, 1),
    ]
    self.block = nn.Sequential(*layers)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Applies the block."""
    y = self.block(x)
    return _drop_rows(y, self.sd_prob, self.training) + x if self.use_res else y


class TorchvisionEfficientNetB0(nn.Module):
  """torchvision-layout EfficientNet-B0 (width 1). ``[N, 3, H, W] -> [N, num_classes]``."""

  def __init__(self, num_classes: int, blocks=B0, stem_ch: int = 32):
    super().__init__()
    feats: list[nn.Module] = [_conv_bn(3, stem_ch, 3, 2, act=nn.SiLU)]
    total, b, cin = sum(s[2] for s in blocks), 0, stem_ch
    for t, c, n, k, s in blocks:
      stage = []
      for i in range(n):
        stage.append(MBConv(cin, c, k, s if i == 0 else 1, t, 0.2 * b / total))
        cin, b = c, b + 1
      feats.append(nn.Sequential(*stage))
    feats.append(_conv_bn(cin, 4 * cin, 1, act=nn.SiLU))
    self.features = nn.Sequential(*feats)
    self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(4 * cin, num_classes))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    """Logits."""
    return self.classifier(F.adaptive_avg_pool2d(self.features(x), 1).flatten(1))


# ----------------------------------------------------------------------------------- API


def build(name: str, num_classes: int, stem: str = "cifar") -> nn.Module:
  """Reference model by registry name: 'mobilenetv2', 'efficientnet_b0' or their '_tiny'."""
  tiny = name.endswith("_tiny")
  if name.startswith("mobilenetv2"):
    kw = dict(blocks=MBV2_TINY, stem_ch=8, last=32) if tiny else {}
    cls = CifarMobileNetV2 if stem == "cifar" else TorchvisionMobileNetV2
  elif name.startswith("efficientnet"):
    kw = dict(blocks=EFF_TINY, stem_ch=8) if tiny else {}
    cls = CifarEfficientNetB0 if stem == "cifar" else TorchvisionEfficientNetB0
  else:
    raise ValueError(f"unknown reference model {name!r}")
  return cls(num_classes, **kw)


def count_params(model: nn.Module) -> int:
  """Trainable parameters (BN weight/bias included, running statistics excluded)."""
  return sum(p.numel() for p in model.parameters())


if __name__ == "__main__":
  for arch in ("mobilenetv2", "efficientnet_b0"):
    for stem, classes in (("cifar", 10), ("cifar", 100), ("imagenet", 1000)):
      print(f"{arch:16s} {stem:9s} {classes:5d} {count_params(build(arch, classes, stem)):,}")
  unused = build("efficientnet_b0", 10).layers[0]
  n_unused = sum(p.numel() for m in (unused.conv1, unused.bn1) for p in m.parameters())
  print(f"efficientnet_b0 cifar: unused expansion-1 conv1/bn1 parameters: {n_unused:,}")
