"""INFER's algorithm in PyTorch, written from the specification (docs/ALGORITHM.md).

The reference the JAX implementation is checked against, step for step. It is our own code,
written as the method is run in PyTorch: the teacher in eval mode with forward pre-hooks
recording every BatchNorm input, ``torch.optim.Adam`` / ``AdamW`` with the cosine learning
rate written into ``param_groups`` before every step, torchvision-style augmentations on
NCHW tensors. Every function takes its random draws EXPLICITLY (roll offsets, crop boxes,
flips, MixUp's lambda and permutation, noise): nothing here draws a random number, so a
test can give both implementations the same draws.

Conventions:
  * Tensors are NCHW (``[N, 3, H, W]``); the JAX side is NHWC.
  * Images are in the dataset's normalised space (``(pixel - mean) / std``) except where a
    function says it takes ``[0, 1]`` pixels (the student's crop pads the pixel image with
    zeros before normalising, as ``RandomCrop(padding=4)`` before ``Normalize`` does).
  * The compute dtype is the dtype of the inputs and the modules: call ``.double()`` on the
    networks and pass float64 tensors for float64 runs.
  * Learning rates follow the cosine of the recipe: before optimiser step ``t`` (0-based)
    of ``T`` the rate is ``lr * 0.5 * (1 + cos(pi * t / T))``: ``lr`` at the first step,
    ``lr * 0.5 * (1 + cos(pi * (T - 1) / T)) > 0`` at the last, 0 only at ``t = T`` (never
    used). No warm-up.

Only imported by tests (after ``pytest.importorskip('torch')``).
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
import torch.nn.functional as F
from torch import nn

# --------------------------------------------------------------------------- schedules


def cosine_lr(base_lr: float, step: int, total_steps: int) -> float:
  """The learning rate of optimiser step ``step`` (0-based) of ``total_steps``.

  ``base_lr * 0.5 * (1 + cos(pi * step / total_steps))``: decays from ``base_lr`` towards 0
  with no warm-up.
  """
  return base_lr * 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def set_lr(optimizer: torch.optim.Optimizer, lr: float) -> None:
  """Writes ``lr`` into every parameter group (how the recipe applies its schedule)."""
  for group in optimizer.param_groups:
    group["lr"] = lr


# --------------------------------------------------------------------------- BN statistics


class BNInputRecorder:
  """Forward pre-hooks on every ``nn.BatchNorm2d``: the moments of each BN input.

  After a forward pass, ``stats[name] = (mean [C_l], var [C_l])``, the per-channel mean and
  BIASED variance of the input of the layer ``name`` (its ``named_modules`` name) over the
  batch and all spatial positions, and ``order`` lists the layers in the order they first
  ran. Layers that did not run are absent; a layer that runs twice keeps its last call.
  Call :meth:`clear` before each forward pass and :meth:`remove` when done.
  """

  def __init__(self, model: nn.Module):
    self.stats: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}
    self.order: list[str] = []
    self.modules: dict[str, nn.BatchNorm2d] = {}
    self._handles = []
    for name, module in model.named_modules():
      if isinstance(module, nn.BatchNorm2d):
        self.modules[name] = module
        self._handles.append(module.register_forward_pre_hook(self._hook(name)))

  def _hook(self, name: str):
    def hook(module, inputs):
      x = inputs[0]
      mean = x.mean(dim=(0, 2, 3))
      var = ((x - mean[None, :, None, None]) ** 2).mean(dim=(0, 2, 3))
      if name not in self.stats:
        self.order.append(name)
      self.stats[name] = (mean, var)

    return hook

  def clear(self) -> None:
    """Forgets the statistics of the previous forward pass."""
    self.stats.clear()
    self.order.clear()

  def remove(self) -> None:
    """Removes the hooks."""
    for handle in self._handles:
      handle.remove()
    self._handles = []


def bn_matching(recorder: BNInputRecorder, first_bn_multiplier: float) -> torch.Tensor:
  """``sum_l w_l (||mu_l - running_mean_l||_2 + ||var_l - running_var_l||_2)`` over the layers
  that ran in the last forward pass; ``w`` = ``first_bn_multiplier`` for the first of them
  and 1 for the others. A scalar tensor (differentiable through the recorded moments)."""
  total = 0.0
  for i, name in enumerate(recorder.order):
    module = recorder.modules[name]
    mean, var = recorder.stats[name]
    term = torch.linalg.vector_norm(mean - module.running_mean) + torch.linalg.vector_norm(
      var - module.running_var
    )
    total = total + (first_bn_multiplier if i == 0 else 1.0) * term
  return total


def recover_loss(
  teacher: nn.Module,
  recorder: BNInputRecorder,
  inputs: torch.Tensor,
  labels: torch.Tensor,
  r_bn: float,
  first_bn_multiplier: float = 10.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
  """INFER's recover objective on one (already augmented) batch.

  Args:
    teacher: the teacher, in eval mode, with ``recorder`` attached.
    recorder: the teacher's :class:`BNInputRecorder`.
    inputs: ``[C, 3, H, W]`` normalised images.
    labels: int64 ``[C]``.
    r_bn: weight of the BN-matching term.
    first_bn_multiplier: weight of the first BN layer that runs.

  Returns:
    ``(loss, ce, bn)`` scalar tensors: ``loss = ce + r_bn * bn``, ``ce`` the batch-mean
    cross-entropy.
  """
  recorder.clear()
  logits = teacher(inputs)
  ce = F.cross_entropy(logits, labels)
  bn = bn_matching(recorder, first_bn_multiplier)
  return ce + r_bn * bn, ce, bn


# --------------------------------------------------------------------------- augmentation


def roll(x: torch.Tensor, dy: int, dx: int) -> torch.Tensor:
  """Cyclic shift of ``[N, 3, H, W]`` by ``dy`` rows and ``dx`` columns (``torch.roll``:
  the pixel at ``(i, j)`` moves to ``((i + dy) % H, (j + dx) % W)``, as ``jnp.roll`` /
  ``np.roll`` do)."""
  return torch.roll(x, shifts=(int(dy), int(dx)), dims=(2, 3))


def resized_crop_flip(
  x: torch.Tensor, top: int, left: int, height: int, width: int, flip: bool
) -> torch.Tensor:
  """torchvision's ``resized_crop`` on a tensor, then an optional horizontal flip.

  The integer window ``x[..., top:top + height, left:left + width]`` is resized to the
  input's ``H x W`` with bilinear interpolation (``align_corners=False``; the window is never
  larger than the image, so antialiasing, which only acts when shrinking, changes nothing),
  then mirrored left-right when ``flip``. Differentiable with respect to ``x``.

  Args:
    x: ``[N, 3, H, W]``.
    top, left, height, width: the window (the draws of ``RandomResizedCrop.get_params``).
    flip: mirror the result.

  Returns:
    ``[N, 3, H, W]``.
  """
  h, w = x.shape[-2:]
  window = x[..., top : top + height, left : left + width]
  out = F.interpolate(window, size=(h, w), mode="bilinear", align_corners=False)
  return torch.flip(out, dims=(3,)) if flip else out


def clip_bounds(mean: Sequence[float], std: Sequence[float], like: torch.Tensor):
  """``(lo, hi)`` ``[1, 3, 1, 1]``: the normalised images of pixel values 0 and 1."""
  m = torch.tensor(mean, dtype=like.dtype).reshape(1, 3, 1, 1)
  s = torch.tensor(std, dtype=like.dtype).reshape(1, 3, 1, 1)
  return (0.0 - m) / s, (1.0 - m) / s


def clip_to_image(x: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
  """Clamps normalised ``[N, 3, H, W]`` per channel to ``[-mean/std, (1 - mean)/std]``."""
  lo, hi = clip_bounds(mean, std, x)
  return torch.minimum(torch.maximum(x, lo), hi)


# --------------------------------------------------------------------------- recover


def recover(
  teacher: nn.Module,
  images: torch.Tensor,
  labels: torch.Tensor,
  offsets: Sequence[tuple[int, int]],
  *,
  lr: float,
  r_bn: float,
  first_bn_multiplier: float = 10.0,
  parameterisation: str = "compensator",
  init: torch.Tensor | None = None,
  crops: Sequence[tuple[int, int, int, int, bool]] | None = None,
  clamp: tuple[Sequence[float], Sequence[float]] | None = None,
  save_at: Iterable[int] = (),
) -> dict:
  """Optimises one subset's synthetic parameters against one teacher, as the method does.

  ``compensator`` (INFER): one shared ``u [1, 3, H, W]``, zero-initialised; the teacher sees
  ``A_t(images + u)``. ``class_specific`` (SRe2L-style): free images ``[C, 3, H, W]``
  initialised to ``init`` (the noise draw); the teacher sees ``A_t(params)`` and ``images`` is
  unused except for its shape. ``A_t`` is the step's augmentation: optionally the resized
  crop and flip ``crops[t]``, then the roll by ``offsets[t]``. Each step: loss
  (:func:`recover_loss`), backward, the cosine rate written into Adam(betas (0.5, 0.9),
  eps 1e-8), Adam step; then, with ``clamp = (mean, std)``, the parameters are clamped to
  the valid normalised range under ``torch.no_grad`` (SRe2L's per-step clamp; INFER's
  compensators are never clamped during optimisation).

  Args:
    teacher: the teacher (put in eval mode here; its weights get no gradient).
    images: ``[C, 3, H, W]`` normalised real images of the subset.
    labels: int64 ``[C]``.
    offsets: ``T`` roll draws ``(dy, dx)``; ``T`` is the number of iterations.
    lr: peak learning rate of the cosine.
    r_bn: weight of the BN-matching term.
    first_bn_multiplier: weight of the first BN layer.
    parameterisation: 'compensator' or 'class_specific'.
    init: ``[C, 3, H, W]`` initial images for 'class_specific'.
    crops: ``T`` draws ``(top, left, height, width, flip)`` of the resized crop, or None.
    clamp: ``(mean, std)`` to clamp the parameters after every step, or None.
    save_at: iteration counts after which to keep a copy of the parameters.

  Returns:
    ``{'loss', 'ce', 'bn', 'lr'}`` lists of floats (one per iteration, evaluated before that
    iteration's update), ``'params'`` the final parameters and ``'saved'``
    ``{count: parameters}`` for every count in ``save_at``.
  """
  teacher.eval()
  for p in teacher.parameters():
    p.requires_grad_(False)
  if parameterisation == "compensator":
    params = torch.zeros((1, *images.shape[1:]), dtype=images.dtype)
    base = images
  elif parameterisation == "class_specific":
    if init is None:
      raise ValueError("class_specific needs init (the noise draw).")
    params = init.detach().clone()
    base = torch.zeros_like(images)
  else:
    raise ValueError(f"unknown parameterisation {parameterisation!r}")
  params.requires_grad_(True)
  optimizer = torch.optim.Adam([params], lr=lr, betas=(0.5, 0.9), eps=1e-8)
  recorder = BNInputRecorder(teacher)
  total = len(offsets)
  save_at = set(save_at)
  out = {"loss": [], "ce": [], "bn": [], "lr": [], "saved": {}}
  try:
    for t in range(total):
      x = base + params
      if crops is not None:
        x = resized_crop_flip(x, *crops[t])
      x = roll(x, *offsets[t])
      loss, ce, bn = recover_loss(teacher, recorder, x, labels, r_bn, first_bn_multiplier)
      optimizer.zero_grad()
      loss.backward()
      rate = cosine_lr(lr, t, total)
      set_lr(optimizer, rate)
      optimizer.step()
      if clamp is not None:
        with torch.no_grad():
          params.copy_(clip_to_image(params, *clamp))
      for key, value in (("loss", loss), ("ce", ce), ("bn", bn)):
        out[key].append(float(value.detach()))
      out["lr"].append(rate)
      if t + 1 in save_at:
        out["saved"][t + 1] = params.detach().clone()
  finally:
    recorder.remove()
  out["params"] = params.detach().clone()
  return out


def instances(
  images: torch.Tensor, compensator: torch.Tensor, mean: Sequence[float], std: Sequence[float]
) -> torch.Tensor:
  """The stored instances ``clip(x + u)`` of one subset and compensator.

  Args:
    images: ``[C, 3, H, W]`` normalised.
    compensator: ``[1, 3, H, W]``.

  Returns:
    ``[C, 3, H, W]`` clipped to the normalised image of ``[0, 1]``.
  """
  return clip_to_image(images + compensator, mean, std)


# --------------------------------------------------------------------------- relabel


@torch.no_grad()
def static_labels(teachers: Sequence[nn.Module], instances: torch.Tensor) -> torch.Tensor:
  """INFER's static labels: the mean of the teachers' logits (eval mode) on un-augmented
  instances ``[N, 3, H, W]``. Returns ``[N, num_classes]``."""
  total = 0.0
  for teacher in teachers:
    teacher.eval()
    total = total + teacher(instances)
  return total / len(teachers)


# --------------------------------------------------------------------------- student


def crop_flip(
  pixels: torch.Tensor,
  tops: Sequence[int],
  lefts: Sequence[int],
  flips: Sequence[bool],
  padding: int,
  mean: Sequence[float],
  std: Sequence[float],
) -> torch.Tensor:
  """``RandomCrop(H, padding)`` + ``RandomHorizontalFlip`` + ``Normalize``, per image.

  Each ``[0, 1]`` pixel image is padded with ``padding`` zeros (black) per side, the window
  at ``(tops[i], lefts[i])`` (each in ``[0, 2 * padding]``) of the original size is taken,
  mirrored when ``flips[i]``, and normalised.

  Args:
    pixels: ``[B, 3, H, W]`` in ``[0, 1]``.
    tops, lefts, flips: ``B`` draws each.
    padding: pixels per side.
    mean, std: per-channel normalisation.

  Returns:
    ``[B, 3, H, W]`` normalised.
  """
  h, w = pixels.shape[-2:]
  padded = F.pad(pixels, (padding, padding, padding, padding), value=0.0)
  out = []
  for i in range(pixels.shape[0]):
    window = padded[i, :, tops[i] : tops[i] + h, lefts[i] : lefts[i] + w]
    out.append(torch.flip(window, dims=(2,)) if flips[i] else window)
  m = torch.tensor(mean, dtype=pixels.dtype).reshape(1, 3, 1, 1)
  s = torch.tensor(std, dtype=pixels.dtype).reshape(1, 3, 1, 1)
  return (torch.stack(out) - m) / s


def mixup(x: torch.Tensor, lam: float, perm: Sequence[int]) -> torch.Tensor:
  """``lam * x + (1 - lam) * x[perm]`` along the batch axis (images or label logits)."""
  perm = torch.as_tensor(perm, dtype=torch.long)
  return lam * x + (1.0 - lam) * x[perm]


def kl_with_temperature(
  student_logits: torch.Tensor, target_logits: torch.Tensor, temperature: float
) -> torch.Tensor:
  """``KL(softmax(y / T) || softmax(z / T))`` summed over classes, batch mean, no ``T**2``.

  Args:
    student_logits: ``[B, K]`` ``z``.
    target_logits: ``[B, K]`` ``y``.
    temperature: ``T``.

  Returns:
    Scalar tensor.
  """
  return F.kl_div(
    F.log_softmax(student_logits / temperature, dim=1),
    F.log_softmax(target_logits / temperature, dim=1),
    reduction="batchmean",
    log_target=True,
  )


class BiasedRunningVar:
  """Makes every ``nn.BatchNorm2d`` of a module update ``running_var`` with the BIASED batch
  variance, as Flax's ``nn.BatchNorm`` does, instead of PyTorch's unbiased one.

  A forward hook undoes PyTorch's update of ``running_var`` and redoes it with the biased
  variance of the layer's input: ``running_var += momentum * (var_biased - var_unbiased)``.
  Used to separate that one documented difference from everything else in a comparison.
  """

  def __init__(self, model: nn.Module):
    self._handles = []
    for module in model.modules():
      if isinstance(module, nn.BatchNorm2d):
        self._handles.append(module.register_forward_hook(self._hook))

  @staticmethod
  def _hook(module, inputs, output):
    if not module.training:
      return
    x = inputs[0].detach()
    n = x.numel() // x.shape[1]
    var = x.var(dim=(0, 2, 3), unbiased=False)
    # A new tensor rather than an in-place update: autograd saved the old one for backward.
    module.running_var = module.running_var + module.momentum * (var - var * n / (n - 1))

  def remove(self) -> None:
    """Removes the hooks."""
    for handle in self._handles:
      handle.remove()
    self._handles = []


def student_step(
  student: nn.Module,
  optimizer: torch.optim.Optimizer,
  pixels: torch.Tensor,
  soft_labels: torch.Tensor | None,
  *,
  tops: Sequence[int],
  lefts: Sequence[int],
  flips: Sequence[bool],
  lam: float,
  perm: Sequence[int],
  lr: float,
  mean: Sequence[float],
  std: Sequence[float],
  padding: int = 4,
  temperature: float = 30.0,
  teachers: Sequence[nn.Module] | None = None,
) -> float:
  """One step of student training on a synthetic batch, with explicit draws.

  Augment every image (:func:`crop_flip`), MixUp the batch with ``lam`` and ``perm``; the
  targets are the stored static labels mixed with the same ``lam`` and ``perm`` (INFER) or,
  with ``teachers`` (INFER+Dyn), the teachers' mean logits in eval mode on the augmented,
  mixed batch. Loss :func:`kl_with_temperature`; the student runs in train mode (batch
  statistics normalise, running statistics update); ``lr`` is written into the optimiser
  before its step.

  Args:
    student: the network being trained.
    optimizer: its optimiser (e.g. ``AdamW(lr, weight_decay=0.01)``).
    pixels: ``[B, 3, H, W]`` synthetic instances as ``[0, 1]`` pixels.
    soft_labels: ``[B, K]`` static labels (teacher logits), or None with ``teachers``.
    tops, lefts, flips: per-image crop and flip draws.
    lam: MixUp's lambda.
    perm: MixUp's partner permutation, ``B`` ints.
    lr: this step's learning rate.
    mean, std: per-channel normalisation.
    padding: crop padding per side.
    temperature: KL temperature.
    teachers: the teacher ensemble for dynamic labels.

  Returns:
    The loss (before the update).
  """
  x = mixup(crop_flip(pixels, tops, lefts, flips, padding, mean, std), lam, perm)
  # INFER+Dyn labels what the student sees; INFER mixes the stored labels like the images.
  targets = static_labels(teachers, x) if teachers is not None else mixup(soft_labels, lam, perm)
  student.train()
  loss = kl_with_temperature(student(x), targets, temperature)
  optimizer.zero_grad()
  loss.backward()
  set_lr(optimizer, lr)
  optimizer.step()
  return float(loss.detach())


def calibrate_batchnorm(net: nn.Module, image_size: int, seed: int) -> None:
  """Random BN affine parameters and running statistics measured on a calibration batch, then
  perturbed by a few percent: non-trivial statistics that keep the network well conditioned.

  Test scaffolding shared by the reference and parity tests (``net`` takes ``[16, 3, S, S]``
  inputs with ``S = image_size``); leaves ``net`` in eval mode."""
  gen = torch.Generator().manual_seed(seed)
  bns = [m for m in net.modules() if isinstance(m, nn.BatchNorm2d)]
  with torch.no_grad():
    for m in bns:
      c = m.num_features
      m.weight.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
      m.bias.copy_(0.1 * torch.randn(c, generator=gen))
      m.reset_running_stats()
      m.momentum = None  # cumulative average: the calibration batch's own statistics
    net.train()
    net(torch.randn(16, 3, image_size, image_size, generator=gen))
    for m in bns:
      m.momentum = 0.1
      m.running_mean.add_(0.1 * torch.randn(m.num_features, generator=gen) * m.running_var.sqrt())
      m.running_var.mul_(torch.exp(0.1 * torch.randn(m.num_features, generator=gen)))
  net.eval()
