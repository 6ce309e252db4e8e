"""Convert a PyTorch checkpoint into a teacher checkpoint (the format squeeze writes).

    python -m infer_jax.convert --arch resnet18 --num-classes 1000 --dataset imagenet1k \
        --torch resnet18.pth --out runs/in1k/teachers/resnet18

reads a PyTorch ``state_dict`` -- bare, or inside a dict under ``state_dict``, ``model``
or ``net``, with or without the ``module.`` prefix of ``nn.DataParallel``; a ``.pth``/
``.pt`` file or a safetensors file -- and writes ``OUT/final/0`` exactly as
``python -m infer_jax.squeeze`` does, so ``distill`` picks the teacher up from
``<workdir>/teachers/<arch>/`` instead of training it.

Loading never runs code: PyTorch files are read with ``torch.load(weights_only=True)``
(tensors and plain containers only; a pickle that would import or call anything is
refused) and safetensors files hold nothing but tensors. torch is needed for ``.pth``
files only: ``pip install 'infer-jax[torch]'``.

The conversion is a renaming plus layout changes, because every zoo model names its
submodules after the PyTorch reference layouts ('.' -> '_'):

* convolutions ``[O, I/groups, kh, kw]`` (OIHW; depthwise and grouped convolutions
  included) -> ``[kh, kw, I/groups, O]`` (HWIO);
* linear ``[out, in]`` -> ``[in, out]``; ConvNet's head also has its rows permuted,
  because PyTorch flattens the last feature map as (C, H, W) and Flax as (H, W, C);
* BatchNorm ``weight``/``bias`` -> ``scale``/``bias``, ``running_mean``/``running_var``
  -> ``batch_stats`` ``mean``/``var`` (``num_batches_tracked`` is dropped). PyTorch's
  BatchNorm2d computes ``(x - running_mean) / sqrt(running_var + eps)`` in eval mode, as
  Flax does, and every covered layout uses its defaults: eps 1e-5 and momentum 0.1, i.e.
  Flax momentum 0.9 (``models.common.BN_EPSILON``/``BN_MOMENTUM``). That holds for
  torchvision's ResNets, mobilenet_v2, efficientnet_b0 and shufflenet_v2_x1_0 and for the
  CIFAR layouts; torchvision's EfficientNet-B5..B7 (eps 1e-3, momentum 0.01) and
  EfficientNet-V2 (eps 1e-3) differ and are not zoo architectures.

Every tensor must land on a variable of the right shape and every variable must be
covered: missing, unexpected and mis-shaped keys are listed in one error, a wrong class
count or a checkpoint of another architecture is named as such, and nothing is written
unless the whole conversion succeeded.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import pickle
import struct
import sys
import zipfile
from collections.abc import Mapping
from typing import Any

import jax
import numpy as np
from flax import traverse_util

from infer_jax import models
from infer_jax.data import types
from infer_jax.models.common import BN_EPSILON, BN_MOMENTUM, STEMS
from infer_jax.models.convnet import ConvNet
from infer_jax.runtime import checkpoint
from infer_jax.runtime.errors import InputError

PyTree = Any

TORCH_EXTRA = "pip install 'infer-jax[torch]'"
# Keys under which training scripts commonly nest the state_dict in a checkpoint dict.
CONTAINER_KEYS = ("state_dict", "model", "net")
PARALLEL_PREFIX = "module."
# Native image sizes of the datasets with standard statistics (types.KNOWN_STATS).
KNOWN_IMAGE_SIZES = {
  "cifar10": 32,
  "cifar100": 32,
  "tinyimagenet": 64,
  "imagenet1k": 224,
  "imagenet2012": 224,
}
# PyTorch parameter / buffer name -> (Flax collection, leaf). 'weight' is resolved per
# module: a kernel for convolutions and linear layers, a scale for BatchNorm.
_BUFFERS = {
  "bias": ("params", "bias"),
  "running_mean": ("batch_stats", "mean"),
  "running_var": ("batch_stats", "var"),
}
_LIST_LIMIT = 12  # Keys named per category in an error message.


class ClassCountError(InputError):
  """The checkpoint's classifier has another number of outputs than the model."""


# --------------------------------------------------------------------------- loading


def sha256_file(path: str) -> str:
  """Hex sha256 of a file's bytes (read in 1 MiB chunks)."""
  h = hashlib.sha256()
  with open(path, "rb") as f:
    for chunk in iter(lambda: f.read(1 << 20), b""):
      h.update(chunk)
  return h.hexdigest()


def detect_format(path: str) -> str:
  """'safetensors', 'pytorch-zip' or 'pytorch-legacy', from the file's first bytes.

  Raises:
    InputError: a missing, empty or unrecognised file.
  """
  if not os.path.isfile(path):
    raise InputError(f"Checkpoint {path!r} does not exist (or is not a file).")
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    head = f.read(9)
  if len(head) >= 9:
    # safetensors: an 8-byte little-endian header length, then a JSON header.
    (header_len,) = struct.unpack("<Q", head[:8])
    if head[8:9] == b"{" and 8 + header_len <= size:
      return "safetensors"
  if head.startswith(b"PK\x03\x04"):
    return "pytorch-zip"  # torch.save's default (zip) format since PyTorch 1.6
  if head[:1] == b"\x80":
    return "pytorch-legacy"  # a bare pickle stream (the pre-1.6 torch.save format)
  raise InputError(
    f"{path} is not a PyTorch or safetensors checkpoint ({size} bytes; it starts with "
    f"{head[:8]!r}). Pass the file written by torch.save(model.state_dict(), PATH) or by "
    "safetensors."
  )


def import_torch(needed_for: str, otherwise: str):
  """The ``torch`` module, or an InputError saying how to install it.

  Args:
    needed_for: what needs torch, e.g. "Reading PyTorch .pth/.pt checkpoints".
    otherwise: what the user can do without it, appended to the message.
  """
  try:
    import torch
  except ImportError as e:
    raise InputError(
      f"{needed_for} needs torch, which is not installed: {TORCH_EXTRA}{otherwise}"
    ) from e
  return torch


def _load_pytorch(path: str) -> Any:
  torch = import_torch(
    "Reading PyTorch .pth/.pt checkpoints", " (or convert the file to safetensors elsewhere)."
  )
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as e:
    if "weights_only" in str(e) or "Weights only load failed" in str(e):
      raise InputError(
        f"Refusing to load {path}: it holds objects other than tensors and plain containers "
        "(a pickled model class, or code that would run on loading), and loading it would "
        "execute that code. Only state_dicts are accepted: where you trust the file, re-save "
        "it with torch.save(model.state_dict(), PATH). Detail: "
        + str(e).strip().splitlines()[-1][:300]
      ) from e
    raise InputError(
      f"{path} is not a readable PyTorch checkpoint ({e}); the file is damaged or is not a "
      "checkpoint."
    ) from e
  except (RuntimeError, EOFError, OSError, ValueError, zipfile.BadZipFile) as e:
    raise InputError(
      f"{path} could not be read as a PyTorch checkpoint ({str(e).strip()[:300]}); the "
      "file is truncated or damaged. Download or copy it again."
    ) from e


def _load_safetensors(path: str) -> dict[str, np.ndarray]:
  try:
    from safetensors import SafetensorError
    from safetensors.numpy import load_file
  except ImportError as e:
    raise InputError(
      f"Reading safetensors checkpoints needs the safetensors package: {TORCH_EXTRA}."
    ) from e
  try:
    return load_file(path)
  except (SafetensorError, OSError, ValueError, TypeError) as e:
    raise InputError(
      f"{path} could not be read as a safetensors file ({e}); the file is truncated or "
      "damaged, or holds a dtype NumPy cannot represent (e.g. bfloat16: save float32)."
    ) from e


def _is_tensor(v: Any) -> bool:
  return isinstance(v, np.ndarray) or type(v).__name__ in ("Tensor", "Parameter")


def _find_state_dict(obj: Any, path: str) -> tuple[Mapping[str, Any], str | None]:
  """The state_dict inside a loaded checkpoint and the container key it was under."""
  if isinstance(obj, Mapping) and obj and all(_is_tensor(v) for v in obj.values()):
    return obj, None
  if isinstance(obj, Mapping):
    for key in CONTAINER_KEYS:
      inner = obj.get(key)
      if isinstance(inner, Mapping) and inner and all(_is_tensor(v) for v in inner.values()):
        return inner, key
    described = ", ".join(f"{k!r}: {type(v).__name__}" for k, v in list(obj.items())[:10])
    raise InputError(
      f"{path} holds a dict without a state_dict in it (top-level entries: {described}). "
      f"Expected a dict of tensors, or one under one of the keys {list(CONTAINER_KEYS)}."
    )
  raise InputError(
    f"{path} holds a {type(obj).__name__}, not a state_dict. Save one with "
    "torch.save(model.state_dict(), PATH)."
  )


def _to_numpy(value: Any) -> np.ndarray:
  if isinstance(value, np.ndarray):
    return value
  value = value.detach().cpu()
  if value.is_floating_point() and value.element_size() < 4:
    value = value.float()  # half / bfloat16 checkpoints: NumPy has no bfloat16
  return value.numpy()


def load_torch_state(path: str) -> tuple[dict[str, np.ndarray], dict[str, Any]]:
  """Reads a PyTorch state_dict without running code.

  Args:
    path: a ``.pth``/``.pt`` file (``torch.save``; zip or legacy format) or a safetensors
      file. The state_dict may be bare or under ``state_dict``/``model``/``net``, and its
      keys may carry the ``module.`` prefix of ``nn.DataParallel``.

  Returns:
    ``(state, info)``: ``{'layer1.0.conv1.weight': ndarray, ...}`` (prefix removed), and
    ``info = {'path', 'sha256', 'format', 'container', 'stripped_prefix', 'num_tensors'}``.

  Raises:
    InputError: missing, truncated or non-checkpoint file; a pickle that would run code;
      no state_dict inside; torch or safetensors not installed.
  """
  fmt = detect_format(path)
  if fmt == "safetensors":
    obj: Any = _load_safetensors(path)
  else:
    obj = _load_pytorch(path)
  state, container = _find_state_dict(obj, path)
  keys = list(state)
  stripped = None
  if keys and all(k.startswith(PARALLEL_PREFIX) for k in keys):
    stripped = PARALLEL_PREFIX
    state = {k[len(PARALLEL_PREFIX) :]: v for k, v in state.items()}
  out = {str(k): _to_numpy(v) for k, v in state.items()}
  info = {
    "path": os.path.abspath(path),
    "sha256": sha256_file(path),
    "format": fmt,
    "container": container,
    "stripped_prefix": stripped,
    "num_tensors": len(out),
  }
  return out, info


# --------------------------------------------------------------------------- conversion


def _slots(abstract: PyTree) -> dict[str, dict[tuple[str, str], tuple[str, ...]]]:
  """``{'layer1_0_conv1': {('params', 'kernel'): flat key, ...}}`` of a Flax variable tree."""
  slots: dict[str, dict[tuple[str, str], tuple[str, ...]]] = {}
  owner: dict[str, tuple[str, ...]] = {}
  for key in traverse_util.flatten_dict(abstract):
    collection, *path, leaf = key
    name = "_".join(path)
    if owner.setdefault(name, tuple(path)) != tuple(path):
      # Two module paths that join to the same name would make the renaming ambiguous.
      raise RuntimeError(f"Module paths {owner[name]} and {path} both map to {name!r}.")
    slots.setdefault(name, {})[(collection, leaf)] = key
  return slots


def _torch_name(key: tuple[str, ...]) -> str:
  """The PyTorch state_dict key of a Flax variable (for messages and signatures).

  The reference layouts use no '_' in module names, so every '_' of a Flax module name
  stands for a '.' (``('layer1_0', 'conv1', 'kernel')`` -> ``layer1.0.conv1.weight``).
  """
  collection, *path, leaf = key
  del collection
  kind = {"kernel": "weight", "scale": "weight", "mean": "running_mean", "var": "running_var"}
  return ".".join(path).replace("_", ".") + "." + kind.get(leaf, leaf)


def _torch_shape(key: tuple[str, ...], shape: tuple[int, ...]) -> tuple[int, ...]:
  """The PyTorch shape of a Flax variable's shape (inverse of the layout change)."""
  if key[-1] == "kernel" and len(shape) == 4:
    return (shape[3], shape[2], shape[0], shape[1])
  if key[-1] == "kernel" and len(shape) == 2:
    return (shape[1], shape[0])
  return tuple(shape)


def _chw_to_hwc_rows(weight: np.ndarray, feature_shape: tuple[int, int, int]) -> np.ndarray:
  """Permutes a linear weight's input columns from (C, H, W) to (H, W, C) flatten order."""
  h, w, c = feature_shape
  if weight.shape[1] != h * w * c:
    return weight  # mis-shaped: reported by the shape check with the original shape
  return weight.reshape(weight.shape[0], c, h, w).transpose(0, 2, 3, 1).reshape(weight.shape[0], -1)


def torch_state_to_flax(
  state: Mapping[str, np.ndarray],
  abstract: PyTree,
  *,
  flatten_shapes: Mapping[str, tuple[int, int, int]] | None = None,
) -> PyTree:
  """Converts a PyTorch state_dict to Flax variables by renaming and changing layouts.

  Args:
    state: ``{'layer1.0.conv1.weight': array [O, I, kh, kw], ...}`` (NumPy; no prefix).
    abstract: the model's variables or their shapes, ``{'params', 'batch_stats'}``.
    flatten_shapes: ``{flax module name: (H, W, C)}`` of linear layers that read a
      flattened feature map (ConvNet's ``fc``); their input columns are permuted from
      PyTorch's (C, H, W) order to Flax's (H, W, C).

  Returns:
    ``{'params', 'batch_stats'}`` with float32 NumPy leaves, structured like ``abstract``.

  Raises:
    InputError: missing, unexpected or mis-shaped keys (all listed), or a classifier
      whose class count differs from the model's.
  """
  flat_abstract = traverse_util.flatten_dict(abstract)
  slots = _slots(abstract)
  slots_by_key = {key: name for name, s in slots.items() for key in s.values()}
  flatten_shapes = dict(flatten_shapes or {})
  out: dict[tuple[str, ...], np.ndarray] = {}
  unexpected, misshaped = [], []
  for name, value in state.items():
    module, _, kind = name.rpartition(".")
    if kind == "num_batches_tracked":
      continue  # a training counter; Flax keeps no equivalent
    slot = slots.get(module.replace(".", "_"))
    if slot is None:
      unexpected.append(name)
      continue
    value = np.asarray(value)
    if kind == "weight":
      key = slot.get(("params", "kernel")) or slot.get(("params", "scale"))
      if key is not None and key[-1] == "kernel":
        if value.ndim == 4:  # conv OIHW -> HWIO (groups live in the I/groups axis)
          value = value.transpose(2, 3, 1, 0)
        elif value.ndim == 2:  # linear [out, in] -> [in, out]
          if slots_by_key[key] in flatten_shapes:
            value = _chw_to_hwc_rows(value, flatten_shapes[slots_by_key[key]])
          value = value.T
    else:
      key = slot.get(_BUFFERS[kind]) if kind in _BUFFERS else None
    if key is None:
      unexpected.append(name)
      continue
    want = tuple(flat_abstract[key].shape)
    if value.shape != want:
      misshaped.append((name, key, tuple(np.asarray(state[name]).shape), want))
      continue
    if not np.issubdtype(value.dtype, np.floating):
      misshaped.append((name, key, f"dtype {value.dtype}", want))
      continue
    out[key] = np.ascontiguousarray(value, dtype=np.float32)
  missing = [
    key for key in flat_abstract if key not in out and key not in {m[1] for m in misshaped}
  ]
  if unexpected or missing or misshaped:
    raise _mismatch_error(state, flat_abstract, slots_by_key, unexpected, missing, misshaped)
  return traverse_util.unflatten_dict(out)


def _listing(title: str, items: list[str]) -> str:
  shown = items[:_LIST_LIMIT]
  more = f" ... and {len(items) - len(shown)} more" if len(items) > len(shown) else ""
  return f"{title} ({len(items)}): " + ", ".join(shown) + more


def _mismatch_error(state, flat_abstract, slots_by_key, unexpected, missing, misshaped):
  """InputError naming the problem: class count, or the key lists."""
  # A wrong class count shows up as the classifier alone being mis-shaped.
  dense = [k for k in flat_abstract if k[-1] == "kernel" and len(flat_abstract[k].shape) == 2]
  if not unexpected and not missing and misshaped and len(dense) == 1:
    head = slots_by_key[dense[0]]
    if all(slots_by_key[m[1]] == head for m in misshaped):
      weight = [m for m in misshaped if m[1] == dense[0]]
      want = flat_abstract[dense[0]].shape[1]
      if weight and isinstance(weight[0][2], tuple) and weight[0][2][0] != want:
        name, got = weight[0][0].rpartition(".")[0], weight[0][2][0]
        return ClassCountError(
          f"The checkpoint's classifier '{name}' has {got} outputs, but the model is built "
          f"for {want} classes. Pass --num-classes {got} if the checkpoint is the right "
          f"one (a {got}-class teacher), or use the checkpoint trained on this dataset."
        )
  lines = []
  if unexpected:
    lines.append(_listing("unexpected keys in the checkpoint", sorted(unexpected)))
  if missing:
    names = sorted(_torch_name(k) for k in missing)
    lines.append(_listing("missing keys the model needs", names))
  if misshaped:
    lines.append(
      _listing(
        "mis-shaped keys",
        [
          f"{name} {got} (model needs {_torch_shape(key, want)})"
          for name, key, got, want in misshaped
        ],
      )
    )
  return InputError(
    "The checkpoint does not fit the architecture it is being converted to.\n  "
    + "\n  ".join(lines)
    + "\nCheck --arch, --stem and --width (the checkpoint must follow the reference layout of "
    "that architecture)."
  )


def _signature(keys) -> frozenset[str]:
  return frozenset(k for k in keys if not k.endswith(".num_batches_tracked"))


@functools.cache
def _arch_signature(name: str, stem: str) -> frozenset[str]:
  """The state_dict keys (names only) of a zoo architecture's reference layout."""
  try:
    model = models.create_model(name, 10, stem=stem)
    shapes = checkpoint.abstract_variables(model, (32, 32, 3))
  except ValueError:  # InputError included: e.g. ShuffleNet v1 has no ImageNet layout
    return frozenset()
  return frozenset(_torch_name(k) for k in traverse_util.flatten_dict(shapes))


def _canonical(keys) -> frozenset[str]:
  """Keys with the module part renamed by the zoo's rule ('.' -> '_')."""
  out = set()
  for k in keys:
    module, _, kind = k.rpartition(".")
    out.add(module.replace(".", "_") + "." + kind)
  return frozenset(out)


def guess_architecture(state_keys) -> list[tuple[str, str]]:
  """Zoo ``(architecture, stem)`` pairs whose reference layout has exactly these keys.

  Names are compared after '.' -> '_' (the zoo's naming rule), so ``layer1.0.conv1.weight``
  and ``layer1_0.conv1.weight`` agree. Traces each architecture once (no FLOPs).
  """
  want = _canonical(_signature(state_keys))
  found = []
  for name in models.list_models():
    for stem in STEMS:
      if _canonical(_arch_signature(name, stem)) == want:
        found.append((name, stem))
  return found


def feature_map_shapes(model, image_shape) -> dict[str, tuple[int, int, int]]:
  """``{'fc': (H, W, C)}`` for models whose head reads a flattened feature map."""
  if not isinstance(model, ConvNet):
    return {}
  abstract = checkpoint.abstract_variables(model, image_shape)
  channels = abstract["params"][f"features_{model.depth - 1}_conv"]["kernel"].shape[-1]
  return {"fc": (image_shape[0] // 2**model.depth, image_shape[1] // 2**model.depth, channels)}


# --------------------------------------------------------------------------- the job


def _triple(values, what: str) -> tuple[float, float, float]:
  values = tuple(float(v) for v in values)
  if len(values) == 1:
    values = values * 3
  if len(values) != 3:
    raise InputError(f"--{what} takes 1 or 3 values (per RGB channel), got {len(values)}.")
  return values


def convert(
  *,
  arch: str,
  num_classes: int,
  torch_path: str,
  out: str,
  dataset: str,
  image_size: int | None = None,
  stem: str = "auto",
  width: float = 1.0,
  mean=None,
  std=None,
) -> dict[str, Any]:
  """Converts a PyTorch checkpoint and writes it as a finished teacher in ``out``.

  Args:
    arch: zoo architecture (``models.list_models()``), e.g. 'resnet18'.
    num_classes: classes of the checkpoint's classifier.
    torch_path: the ``.pth``/``.pt``/safetensors file.
    out: the teacher directory, normally ``<workdir>/teachers/<arch>``.
    dataset: the dataset name the runs that use this teacher have (``DatasetInfo.name``,
      e.g. 'cifar100', 'imagenet1k'); checked by distill like a squeezed teacher's.
    image_size: side of the (square) images; default: the dataset's native size.
    stem: 'cifar', 'imagenet' or 'auto' (cifar up to 64x64, as ``config.stem='auto'``).
    width: channel multiplier of the architecture (1.0 for published checkpoints).
    mean, std: per-channel normalisation of the run; default: the dataset's standard one.

  Returns:
    The metadata written with the teacher.

  Raises:
    InputError: any problem with the arguments or the checkpoint; nothing is written.
  """
  if arch not in models.list_models():
    raise InputError(f"Unknown --arch {arch!r}. Available: {', '.join(models.list_models())}.")
  if not isinstance(num_classes, int) or num_classes < 1:
    raise InputError(f"--num-classes must be a positive integer, got {num_classes!r}.")
  if image_size is None:
    if dataset not in KNOWN_IMAGE_SIZES:
      raise InputError(
        f"No native image size is known for dataset {dataset!r}: pass --image-size "
        f"(known: {', '.join(f'{k} {v}' for k, v in KNOWN_IMAGE_SIZES.items())})."
      )
    image_size = KNOWN_IMAGE_SIZES[dataset]
  if image_size < 1:
    raise InputError(f"--image-size must be positive, got {image_size}.")
  image_shape = (int(image_size), int(image_size), 3)
  if stem == "auto":
    stem = "cifar" if image_size <= 64 else "imagenet"
  if stem not in STEMS:
    raise InputError(f"--stem must be 'auto' or one of {STEMS}, got {stem!r}.")
  if mean is None or std is None:
    known = types.KNOWN_STATS.get(dataset)
    if known is None:
      raise InputError(
        f"No standard normalisation is known for dataset {dataset!r}: pass --mean and --std "
        "(the per-channel statistics the run normalises with, for images in [0, 1])."
      )
    mean = known[0] if mean is None else mean
    std = known[1] if std is None else std
  mean, std = _triple(mean, "mean"), _triple(std, "std")
  if checkpoint.teacher_exists(out):
    raise InputError(f"A finished teacher already exists in {out}; delete it first to replace it.")

  model = models.create_model(arch, num_classes, stem=stem, width=width)
  abstract = checkpoint.abstract_variables(model, image_shape)
  state, info = load_torch_state(torch_path)
  try:
    variables = torch_state_to_flax(
      state, abstract, flatten_shapes=feature_map_shapes(model, image_shape)
    )
  except ClassCountError:
    raise
  except InputError as e:
    guesses = [g for g in guess_architecture(state) if g != (arch, stem)]
    hint = ""
    if guesses:
      hint = (
        " The checkpoint's keys are those of "
        + " or ".join(f"--arch {n} --stem {s}" for n, s in guesses)
        + "."
      )
    raise InputError(
      f"Cannot convert {torch_path} to {arch} (stem {stem}, width {width:g}).{hint}\n{e}"
    ) from e

  metadata = checkpoint.teacher_metadata(
    architecture=arch,
    stem=stem,
    width=width,
    num_classes=num_classes,
    image_shape=image_shape,
    dataset=dataset,
    mean=mean,
    std=std,
    test_accuracy=None,  # not measured here; distill reports it as unknown
    source="pytorch",
    converted_from=info,
    batch_norm={"epsilon": BN_EPSILON, "flax_momentum": BN_MOMENTUM, "pytorch_momentum": 0.1},
  )
  variables = jax.tree.map(np.asarray, variables)
  checkpoint.save_teacher(out, variables, metadata)
  return metadata


def _parser() -> argparse.ArgumentParser:
  p = argparse.ArgumentParser(
    prog="python -m infer_jax.convert",
    description=__doc__,
    formatter_class=argparse.RawDescriptionHelpFormatter,
  )
  p.add_argument("--arch", required=True, help="zoo architecture, e.g. resnet18, mobilenetv2")
  p.add_argument("--num-classes", type=int, required=True, help="classes of the checkpoint")
  p.add_argument("--torch", required=True, help=".pth/.pt (torch.save) or safetensors file")
  p.add_argument("--out", required=True, help="teacher directory: <workdir>/teachers/<arch>")
  p.add_argument(
    "--dataset",
    required=True,
    help="dataset name of the runs using the teacher (cifar10, cifar100, tinyimagenet, "
    "imagenet1k, or config.data.name)",
  )
  p.add_argument("--image-size", type=int, default=None, help="default: the dataset's")
  p.add_argument("--stem", default="auto", help="cifar | imagenet | auto (cifar up to 64x64)")
  p.add_argument("--width", type=float, default=1.0, help="channel multiplier (default 1)")
  p.add_argument("--mean", type=float, nargs="+", default=None, help="default: the dataset's")
  p.add_argument("--std", type=float, nargs="+", default=None, help="default: the dataset's")
  return p


def main(argv: list[str] | None = None) -> int:
  """Command-line entry point; returns the exit status (2 for a user error)."""
  args = _parser().parse_args(argv)
  try:
    meta = convert(
      arch=args.arch,
      num_classes=args.num_classes,
      torch_path=args.torch,
      out=args.out,
      dataset=args.dataset,
      image_size=args.image_size,
      stem=args.stem,
      width=args.width,
      mean=args.mean,
      std=args.std,
    )
  except InputError as e:
    print(f"error: {e}", file=sys.stderr)
    return 2
  src = meta["converted_from"]
  print(
    f"wrote teacher {meta['architecture']} (stem {meta['stem']}, {meta['num_classes']} "
    f"classes, {meta['image_shape'][0]}x{meta['image_shape'][1]}, dataset "
    f"{meta['dataset']}) to {os.path.abspath(args.out)} from {src['format']} file "
    f"{src['path']} (sha256 {src['sha256'][:16]}..., {src['num_tensors']} tensors)"
  )
  if os.path.basename(os.path.normpath(args.out)) != meta["architecture"]:
    print(
      f"note: distill looks for this teacher in <workdir>/teachers/{meta['architecture']}; "
      f"{args.out} is not named so.",
      file=sys.stderr,
    )
  return 0


if __name__ == "__main__":
  sys.exit(main())
