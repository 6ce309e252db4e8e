"""The official ``tiny-imagenet-200`` directory; its labelled ``val`` split is the test split."""

from __future__ import annotations

import os

import numpy as np

from infer_jax.data.formats.imagefolder import FileImageSource, list_images
from infer_jax.data.types import check_path
from infer_jax.runtime.errors import InputError


def load(path: str, image_size: int | None):
  path = check_path(path, "tinyimagenet", "dir")
  if not os.path.isfile(os.path.join(path, "wnids.txt")):
    nested = os.path.join(path, "tiny-imagenet-200")
    if os.path.isfile(os.path.join(nested, "wnids.txt")):
      path = nested
    else:
      raise InputError(
        f"{path!r} has no wnids.txt; pass the official 'tiny-imagenet-200' directory "
        "(with wnids.txt, words.txt, train/ and val/)."
      )
  with open(os.path.join(path, "wnids.txt")) as f:
    wnids = [line.strip() for line in f if line.strip()]
  if not wnids:
    raise InputError(f"{path}/wnids.txt is empty; use the official Tiny-ImageNet files.")
  index = {w: i for i, w in enumerate(wnids)}
  words: dict[str, str] = {}
  words_file = os.path.join(path, "words.txt")
  if os.path.isfile(words_file):
    with open(words_file) as f:
      for line in f:
        wnid, _, text = line.rstrip("\n").partition("\t")
        if wnid in index:
          words[wnid] = text.split(",")[0].strip() or wnid
  label_names = [words.get(w, w) for w in wnids]

  train_files, train_labels = [], []
  for i, wnid in enumerate(wnids):
    d = os.path.join(path, "train", wnid, "images")
    found = list_images(d) if os.path.isdir(d) else []
    if not found:
      raise InputError(
        f"Tiny-ImageNet class folder {d!r} is missing or holds no images; use the full "
        "official tiny-imagenet-200 directory."
      )
    train_files += found
    train_labels += [i] * len(found)

  val_dir = os.path.join(path, "val", "images")
  ann = os.path.join(path, "val", "val_annotations.txt")
  if not os.path.isfile(ann) or not os.path.isdir(val_dir):
    raise InputError(
      f"{path!r} lacks val/val_annotations.txt or val/images/; the labelled val split is "
      "the test split, so use the official directory layout."
    )
  present = set(os.listdir(val_dir))
  test_files, test_labels = [], []
  with open(ann) as f:
    for lineno, line in enumerate(f, 1):
      if not line.strip():
        continue
      parts = line.rstrip("\n").split("\t")
      if len(parts) < 2 or parts[1] not in index or parts[0] not in present:
        raise InputError(
          f"{ann}:{lineno}: {line.strip()!r} does not name an image in val/images and a "
          "wnid from wnids.txt; use the official val_annotations.txt."
        )
      test_files.append(os.path.join(val_dir, parts[0]))
      test_labels.append(index[parts[1]])
  # The official images are all 64x64; FileImageSource checks each one as it decodes it
  # rather than opening 110k files up front.
  shape = (64, 64, 3) if image_size is None else (image_size, image_size, 3)
  train = FileImageSource(train_files, np.asarray(train_labels), shape, image_size)
  test = FileImageSource(test_files, np.asarray(test_labels), shape, image_size)
  return train, test, label_names
