"""Image-classification data sources: random access to uint8 images and int64 labels.

Every loader returns a :class:`~infer_jax.data.types.Dataset` of two
:class:`~infer_jax.data.types.ImageSource` objects (train, test) and a
:class:`~infer_jax.data.types.DatasetInfo`; the readers live in :mod:`infer_jax.data.formats`,
one module per format, and this module picks one. Images are uint8 ``[H, W, 3]`` (RGB) or
``[H, W, 1]`` (greyscale: an npz of ``[N, H, W]`` or ``[N, H, W, 1]`` images, an image folder
whose files are all greyscale, a TFDS dataset with a 1-channel image feature); the digits
are replicated to three channels, as they always have been. Labels are int64 in
``[0, num_classes)``. Sources
follow grain's ``RandomAccessDataSource`` protocol (``__len__`` and ``__getitem__``), so they
can be handed to ``grain.MapDataset.source`` directly, and they expose ``labels`` without
decoding any image so that class-balanced samplers can index them cheaply.

Sources (``load_dataset(source=...)``):

* ``digits``: scikit-learn's bundled 8x8 handwritten digits (no download); a fixed,
  stratified 80/20 split: 1438 train / 359 test images.
* ``npz``: a ``.npz`` file with uint8 NHWC ``x_train``/``x_test``, integer ``y_train``/
  ``y_test`` and (optionally) a str array ``label_names`` (the layout written by
  ``../shared/data/prepare.py``).
* ``imagefolder``: ``<path>/{train,test}/<class>/<image files>`` (``val`` is accepted
  when ``test`` is missing), decoded lazily with Pillow.
* ``cifar10`` / ``cifar100``: the official "python version" archives
  (``cifar-10-python.tar.gz`` / ``cifar-100-python.tar.gz``), given as the archive, the
  unpacked directory or its parent. Their pickles are read with a restricted unpickler
  that only resolves numpy's array-reconstruction globals.
* ``tinyimagenet``: the official ``tiny-imagenet-200`` directory; the labelled ``val``
  split is used as the test split.
* ``tfds``: a TensorFlow Datasets dataset already prepared in the ``array_record``
  file format, read through ``tfds.data_source`` (random access, no TensorFlow needed).

Preparing a TFDS dataset as array_record: TFDS can *read* array_record datasets
without TensorFlow, but its builders for CIFAR/ImageNet need TensorFlow to *prepare*
them (they encode images with ``tf.image``). On a machine with TensorFlow installed run
``pip install tensorflow tensorflow-datasets`` and then, e.g.,
``tfds build cifar10 --file_format=array_record --data_dir=/data/tfds`` (ImageNet-1k
needs the manual-download tarballs in ``/data/tfds/downloads/manual`` first:
``tfds build imagenet2012 --file_format=array_record --data_dir=/data/tfds``). Copy the
resulting ``/data/tfds/<name>/<version>/`` tree to the training machine and load it with
``load_dataset('tfds', tfds_name='cifar10', data_dir='/data/tfds')``. A dataset prepared
in the default tfrecord format cannot be used: it has no random access. (A custom
``GeneratorBasedBuilder`` whose generator yields already-encoded PNG/JPEG bytes prepares
without TensorFlow; the tests build their TFDS fixture that way.) Labels are read
once per split (images left undecoded) and cached as ``infer_jax_labels-<split>.npy`` in the
dataset's version directory when it is writable, because array_record keeps whole examples
together and reading every label means reading the whole split.

Normalisation statistics (``DatasetInfo.mean``/``std``, for images scaled to [0, 1]) are
the standard constants for known names (cifar10, cifar100, tinyimagenet, imagenet1k; RGB only),
otherwise computed from the training images (all of them for in-memory sources, a fixed
seeded sample of up to 1000 images for lazily decoded ones); explicit ``mean``/``std``
arguments override both.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from infer_jax.data.formats import cifar, digits, imagefolder, npz, tfds, tinyimagenet
from infer_jax.data.types import (
  Dataset,
  check_class_coverage,
  check_image_size,
  check_min_size,
  make_dataset,
)
from infer_jax.runtime.errors import InputError

SOURCES = ("digits", "npz", "imagefolder", "cifar10", "cifar100", "tinyimagenet", "tfds")


# --------------------------------------------------------------------------- metadata


# --------------------------------------------------------------------------- sources


# --------------------------------------------------------------------------- helpers


# --------------------------------------------------------------------------- digits


# --------------------------------------------------------------------------- npz


# --------------------------------------------------------------------------- image folders


# --------------------------------------------------------------------------- CIFAR


# --------------------------------------------------------------------------- Tiny-ImageNet


# --------------------------------------------------------------------------- TFDS


# --------------------------------------------------------------------------- entry points


def load_dataset(
  source: str,
  path: str | os.PathLike | None = None,
  *,
  name: str | None = None,
  image_size: int | None = None,
  mean: Sequence[float] | None = None,
  std: Sequence[float] | None = None,
  tfds_name: str | None = None,
  data_dir: str | os.PathLike | None = None,
) -> Dataset:
  """Loads a dataset as a :class:`Dataset` of uint8 ``[H, W, C]`` images (C = 3, or 1 for
  greyscale data) and int64 labels.

  Args:
    source: one of ``SOURCES`` (see the module docstring).
    path: file or directory of the data (npz, imagefolder, cifar10/100, tinyimagenet).
    name: ``DatasetInfo.name``; defaults to the source name (digits, cifar10, cifar100,
      tinyimagenet), the file stem (npz), the folder name (imagefolder) or the TFDS name.
      Names in ``KNOWN_STATS`` get the standard mean/std.
    image_size: output side S, giving ``(S, S, C)`` images. In-memory sources (digits,
      npz, cifar) upsample square images by an integer factor (nearest neighbour); lazy
      sources (imagefolder, tinyimagenet, tfds) resize the shorter side to S (bilinear)
      and center-crop. Required for image folders/TFDS sets of mixed image sizes.
    mean, std: per-channel values (three, or one for greyscale) overriding the automatic
      statistics.
    tfds_name: TFDS dataset name (``source='tfds'``), e.g. ``'cifar10'``.
    data_dir: TFDS data directory (``source='tfds'``); TFDS's default when None.

  Returns:
    ``Dataset(train, test, info)``.

  Raises:
    InputError: for any unusable argument or data, with a message saying how to fix it.
  """
  if source not in SOURCES:
    raise InputError(
      f"Unknown data source {source!r}; choose one of {', '.join(SOURCES)} "
      "(config key data.source)."
    )
  image_size = check_image_size(image_size)
  if path is not None:
    path = os.fspath(path)
  if source == "digits":
    train, test, names = digits.load(image_size)
    default_name = "digits"
  elif source == "npz":
    train, test, names = npz.load(path, image_size)
    default_name = os.path.splitext(os.path.basename(path))[0]
  elif source == "imagefolder":
    train, test, names = imagefolder.load(path, image_size)
    default_name = os.path.basename(os.path.normpath(path))
  elif source in ("cifar10", "cifar100"):
    train, test, names = cifar.load(path, source, image_size)
    default_name = source
  elif source == "tinyimagenet":
    train, test, names = tinyimagenet.load(path, image_size)
    default_name = "tinyimagenet"
  else:
    if data_dir is not None:
      data_dir = os.fspath(data_dir)
    train, test, names, default_name = tfds.load(tfds_name, data_dir, image_size)
  return make_dataset(name or default_name, train, test, names, mean, std)


_CONFIG_KEYS = ("source", "path", "name", "image_size", "mean", "std", "tfds_name", "data_dir")


def load_from_config(cfg: Any) -> Dataset:
  """Calls :func:`load_dataset` with the keys of ``cfg`` (a ConfigDict or mapping).

  Recognised keys: ``source`` (default ``'digits'``), ``path``, ``name``, ``image_size``,
  ``mean``, ``std``, ``tfds_name``, ``data_dir``; missing keys and empty strings mean
  "not set". Other keys (e.g. batch sizes kept in the same config block) are ignored.
  """
  if hasattr(cfg, "to_dict"):
    cfg = cfg.to_dict()
  if not isinstance(cfg, Mapping):
    raise InputError(
      f"The data config must be a mapping or ConfigDict, got {type(cfg).__name__}; pass "
      "e.g. {'source': 'digits'}."
    )
  kw = {k: cfg.get(k) for k in _CONFIG_KEYS}
  # ConfigDicts cannot hold None for a typed field: '' and an image_size of 0 mean "unset".
  kw = {
    k: (None if (isinstance(v, str) and v == "") or (k == "image_size" and v == 0) else v)
    for k, v in kw.items()
  }
  source = kw.pop("source") or "digits"
  path = kw.pop("path")
  dataset = load_dataset(source, path, **kw)
  # A run needs every class in the training set and images of at least 8x8; say so now,
  # not after the teachers train.
  check_min_size(dataset.info.name, dataset.info.image_shape)
  check_class_coverage(dataset.info.name, dataset.train, dataset.info.label_names)
  return dataset
