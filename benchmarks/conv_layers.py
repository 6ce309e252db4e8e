"""Where the ResNet-18 student step's time goes: each convolution, ours against PyTorch's, one run.

Command (from the repository root, with the ``[torch]`` extra installed)::

    python benchmarks/conv_layers.py                 # full width, batch 64 (~3 min on 2 CPUs)
    python benchmarks/conv_layers.py --smoke         # width 0.125, batch 4, 1 block: wiring

For each distinct convolution of the CIFAR ResNet-18 student (width ``--width``, batch
``--batch``, 32x32 inputs) it times, alternating the two sides as ``vs_pytorch.py`` does:

* ``fwd``: the forward convolution. Ours: ``infer_jax.models.common.Conv2D`` as the models
  use it (on the CPU: ``lax.conv`` for k x k, a matrix product for 1x1); PyTorch:
  ``torch.nn.functional.conv2d`` (oneDNN).
* ``bwd``: the gradients the student step takes: the weight gradient, and the input gradient
  of every layer but the stem (the images need none). Ours: the VJP of the same
  ``Conv2D`` (on the CPU the k x k weight gradient is k*k matrix products, the input
  gradient XLA's transposed convolution); PyTorch: ``aten.convolution_backward``.

Each row is weighted by how often its shape occurs in the network, and the sums are set
against the whole student step (static labels, C = 10, ``vs_pytorch.student_pair``) timed in
the same run: ``rest`` = step - convolutions is BatchNorm, ReLU, the augmentation, MixUp, the
loss and AdamW. The JSON (``--out``, default ``benchmarks/results/conv_layers_<hostname>.json``)
holds every row with its blocks and the machine.
"""

from __future__ import annotations

import argparse
import datetime
import shlex
import socket
import sys
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent))
import vs_pytorch  # noqa: E402
from teachers import _loadavg, machine_info, write_json  # noqa: E402

from infer_jax.models.common import Conv2D, scale_channels  # noqa: E402


def resnet18_convs(width: float) -> list[dict[str, Any]]:
  """The distinct convolutions of the CIFAR ResNet-18 at ``width``, with their counts.

  Returns:
    rows of ``name, hw (input side), cin, cout, k, stride, pad, count, dx`` (whether the
    step takes the input gradient).
  """
  c = [scale_channels(64 * 2**i, width) for i in range(4)]
  rows = [dict(name="stem 3x3", hw=32, cin=3, cout=c[0], k=3, stride=1, pad=1, count=1, dx=False)]
  rows.append(dict(name="layer1 3x3", hw=32, cin=c[0], cout=c[0], k=3, stride=1, pad=1, count=4))
  for i in range(1, 4):
    hw = 32 >> i
    rows += [
      dict(name=f"layer{i + 1} 3x3 s2", hw=2 * hw, cin=c[i - 1], cout=c[i], k=3, stride=2, pad=1),
      dict(name=f"layer{i + 1} 3x3", hw=hw, cin=c[i], cout=c[i], k=3, stride=1, pad=1, count=3),
      dict(name=f"layer{i + 1} 1x1 s2", hw=2 * hw, cin=c[i - 1], cout=c[i], k=1, stride=2, pad=0),
    ]
  for r in rows:
    r.setdefault("count", 1)
    r.setdefault("dx", True)
  return rows


def conv_pair(torch, spec: dict[str, Any], batch: int, pass_: str):
  """``(ours, theirs)`` closures of one convolution's ``pass_`` ('fwd' or 'bwd')."""
  rng = np.random.default_rng(0)
  hw, cin, cout, k, s, p = (spec[n] for n in ("hw", "cin", "cout", "k", "stride", "pad"))
  x = rng.normal(size=(batch, hw, hw, cin)).astype(np.float32)
  w = (rng.normal(size=(k, k, cin, cout)) / np.sqrt(k * k * cin)).astype(np.float32)
  module = Conv2D(cout, k, strides=s, padding=p, use_bias=False)
  apply = lambda x, w: module.apply({"params": {"kernel": w}}, x)  # noqa: E731
  ho = (hw + 2 * p - k) // s + 1
  dy = rng.normal(size=(batch, ho, ho, cout)).astype(np.float32)
  jx, jw, jdy = (jax.device_put(a) for a in (x, w, dy))
  tx = vs_pytorch.nchw(x)
  tw = torch.from_numpy(np.ascontiguousarray(w.transpose(3, 2, 0, 1)))
  tdy = vs_pytorch.nchw(dy)
  if pass_ == "fwd":
    fwd = jax.jit(apply)
    conv2d = torch.nn.functional.conv2d

    def theirs():
      with torch.no_grad():
        return conv2d(tx, tw, stride=s, padding=p)

    return (lambda: fwd(jx, jw)), theirs
  if spec["dx"]:
    bwd = jax.jit(lambda x, w, dy: jax.vjp(apply, x, w)[1](dy))
  else:
    bwd = jax.jit(lambda x, w, dy: jax.vjp(lambda w: apply(x, w), w)[1](dy))
  mask = [spec["dx"], True, False]

  def theirs():
    return torch.ops.aten.convolution_backward(
      tdy, tx, tw, None, [s, s], [p, p], [1, 1], False, [0, 0], 1, mask
    )

  return (lambda: bwd(jx, jw, jdy)), theirs


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--width", type=float, default=1.0)
  p.add_argument("--batch", type=int, default=64)
  p.add_argument("--blocks", type=int, default=5, help="timed blocks per side")
  p.add_argument("--iters", type=int, default=3, help="calls per block")
  p.add_argument("--smoke", action="store_true", help="width 0.125, batch 4, 1 block x 1 call")
  p.add_argument("--out", default=None)
  a = p.parse_args(argv)
  if a.smoke:
    a.width, a.batch, a.blocks, a.iters = 0.125, 4, 1, 1
  if a.blocks < 1 or a.iters < 1 or a.batch < 1 or a.width <= 0:
    p.error("--blocks, --iters, --batch and --width must be positive")
  if a.out is None:
    suffix = "_smoke" if a.smoke else ""
    a.out = str(vs_pytorch.RESULTS_DIR / f"conv_layers_{socket.gethostname()}{suffix}.json")
  return a


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  torch, ref, torch_mods = vs_pytorch.import_torch()
  torch.set_num_threads(vs_pytorch.usable_cores())
  info = machine_info()
  info["torch"] = torch.__version__
  info["torch_threads"] = torch.get_num_threads()
  command = shlex.join(["python", *(sys.argv if argv is None else ["conv_layers.py", *argv])])
  payload: dict[str, Any] = {
    "benchmark": "conv_layers",
    "command": command,
    "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "machine": info,
    "loadavg_before": _loadavg(),
    "settings": {"width": args.width, "batch": args.batch, "blocks": args.blocks},
    "rows": [],
  }
  print(f"# {command}")
  print(
    f"# {info['cpu_count']} CPUs ({info['cpu_model']}); torch {info['torch']}, "
    f"jax {info['jax']}, git {info['git']}; load before {payload['loadavg_before']}"
  )
  print(
    f"{'layer':<18} {'pass':<4} {'n':>2} {'ours ms':>8} {'torch ms':>8} {'ratio':>6} "
    f"{'other cpu':>9}",
    flush=True,
  )
  for spec in resnet18_convs(args.width):
    for pass_ in ("fwd", "bwd"):
      ours, theirs = conv_pair(torch, spec, args.batch, pass_)
      m = vs_pytorch.measure(ours, theirs, 1, args)
      row = {**spec, "pass": pass_, **m}
      row["ours_ms"] = round(1e3 / m["ours_per_s"], 2)
      row["torch_ms"] = round(1e3 / m["torch_per_s"], 2)
      payload["rows"].append(row)
      print(
        f"{spec['name']:<18} {pass_:<4} {spec['count']:>2} {row['ours_ms']:>8.1f} "
        f"{row['torch_ms']:>8.1f} {m['ratio']:>6.2f} {m['other_cpu_median']!s:>9}",
        flush=True,
      )
      write_json(args.out, payload)
  t0 = time.perf_counter()
  ours, theirs, per_call, _ = vs_pytorch.student_pair(
    torch, ref, torch_mods, "resnet18", args.width, 10, args.batch, "static", "resnet18"
  )
  m = vs_pytorch.measure(ours, theirs, per_call, args)
  step = {
    "ours_ms": round(1e3 * per_call / m["ours_per_s"], 1),
    "torch_ms": round(1e3 * per_call / m["torch_per_s"], 1),
  }
  payload["step"] = {
    "arch": "resnet18",
    "width": args.width,
    "classes": 10,
    "batch": args.batch,
    **step,
    **m,
    "row_s": round(time.perf_counter() - t0, 1),
  }
  payload["summary"] = {}
  for side in ("ours", "torch"):
    convs = sum(r["count"] * r[f"{side}_ms"] for r in payload["rows"])
    payload["summary"][side] = {
      "step_ms": step[f"{side}_ms"],
      "convs_ms": round(convs, 1),
      "rest_ms": round(step[f"{side}_ms"] - convs, 1),
    }
  payload["loadavg_after"] = _loadavg()
  write_json(args.out, payload)
  for side, s in payload["summary"].items():
    print(
      f"# {side:<5}: step {s['step_ms']:.1f} ms = convolutions {s['convs_ms']:.1f} ms "
      f"+ rest {s['rest_ms']:.1f} ms"
    )
  print(f"# load after {payload['loadavg_after']}; wrote {args.out}", flush=True)
  return payload


if __name__ == "__main__":
  main()
