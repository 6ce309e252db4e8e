"""Every shipped config loads, names registered teachers and a known data source."""

import glob
import importlib.util
import os

import pytest

from infer_jax.data import sources
from infer_jax.runtime import config_lib

CONFIGS = sorted(glob.glob(os.path.join(os.path.dirname(__file__), "..", "configs", "*.py")))


def _load(path):
  spec = importlib.util.spec_from_file_location("cfg", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.parametrize("path", CONFIGS, ids=os.path.basename)
def test_config_is_valid(path):
  module = _load(path)
  assert module.__doc__ and "python -m infer_jax." in module.__doc__  # says how to run it
  config = module.get_config()
  assert config_lib.teacher_names(config)
  assert config.data.source in sources.SOURCES
  assert config.stem in ("auto", "cifar", "imagenet")
  assert set(config.keys()) == set(config_lib.base_config().keys())


def test_tiny_is_the_four_infer_families():
  config = _load(os.path.join(os.path.dirname(CONFIGS[0]), "tiny.py")).get_config()
  assert config.data.source == "digits"
  families = [n.split("_tiny")[0] for n in config_lib.teacher_names(config)]
  assert families == ["resnet", "mobilenetv2", "efficientnet", "shufflenet_g2"]
