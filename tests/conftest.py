"""Test-session set-up shared by every test module.

Eight fake CPU devices are created before JAX initialises, so sharding code is tested
on a "multi-device" machine everywhere (laptops, CI) -- one device is a special case of
eight, not the other way round.
"""

import os
import pathlib

os.environ["XLA_FLAGS"] = (
  os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8"
).strip()
# Tests must not grab all host memory or threads of a small CI machine.
os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")

import pytest  # noqa: E402

REPO = pathlib.Path(__file__).resolve().parents[1]
SHARED_DATA = REPO.parent / "shared" / "data"


@pytest.fixture
def shared_data() -> pathlib.Path:
  """The real-data folder beside the checkout; skips the test when it is absent."""
  if not (SHARED_DATA / "prepare.py").exists():
    pytest.skip(f"{SHARED_DATA} is absent (real-data integration tests need it)")
  return SHARED_DATA
