"""infer-jax against the PyTorch way, on the same work, in one run: the only fair speed ratio.

Command (from the repository root, with the ``[torch]`` extra installed)::

    python benchmarks/vs_pytorch.py --quick        # 8 rows: every stage and family, C = 10
    python benchmarks/vs_pytorch.py                # every row, 5 blocks of 2 calls a side
    python benchmarks/vs_pytorch.py --stages student --archs resnet18 --blocks 7
    python benchmarks/vs_pytorch.py --smoke        # tiny networks, 1 block: checks the wiring

The PyTorch side is what a PyTorch user of the method runs: eager float32, the project's own
reference modules (``tests/torch_refs/``) and the reference algorithm written from the
specification (``tests/torch_refs/algorithm.py``), one subset / batch at a time. Both sides
start from the same weights (the PyTorch network's state converted with
``infer_jax.convert``), see inputs of the same shapes and do the same work:

* ``recover`` (one iteration of one subset of C images, image-iterations/s): PyTorch
  ``x = images + u``, ``torch.roll`` by a random offset (jitter 4), the teacher in eval mode
  with forward pre-hooks recording every BatchNorm input's mean and biased variance,
  ``CE + r_bn * (10 * R_first + sum_l R_l)``, backward, the cosine rate written into
  ``Adam(betas=(0.5, 0.9))``, its step. Ours: ``infer_jax.recover.make_step`` for K = 1
  (roll drawn on device, the same loss, optax Adam).
* ``student`` (one step on a batch, images/s): PyTorch per-image ``RandomCrop(32, 4)`` +
  flip + normalise, MixUp, KL with T = 30 against the mixed static labels (``static``) or
  the teachers' logits on the mixed batch (``dynamic``), AdamW; the student in train mode.
  Ours: ``infer_jax.student.make_student_step`` (augmentation, MixUp and draws on device).
* ``train`` (the squeeze step on a uint8 batch of 128, images/s): PyTorch normalises the
  uint8 batch, runs the network in train mode, CE, SGD(0.1, momentum 0.9, wd 5e-4) with the
  cosine rate. Ours: ``infer_jax.runtime.train.make_train_step`` with ``sgd_optimizer``.
* ``relabel`` (teacher logits of N = 1000 instances in batches of 500, images/s): PyTorch
  ``torch.no_grad`` eval-mode forward; ours ``infer_jax.relabel.static_labels`` (host arrays
  in, host arrays out: the transfers are counted).

Timing: each side is built and run once (compilation and warm-up, reported as
``first_call_s``), then the two sides alternate: ``--blocks`` blocks per side, each of
``--iters`` calls, the order swapped every block (ours first, then PyTorch first, ...) so
that drift in the machine's load falls on both. Reported per row: the medians
(``ours_per_s``, ``torch_per_s``) and minima of the per-block rates, ``ratio`` = median ours
/ median PyTorch (> 1: ours is faster), ``ratio_pairs`` the per-block-pair ratios, and for
every block the 1-minute load average and the CPU used by other processes during the block
(``other_cpu``, in cores, from ``/proc/stat`` minus this process's ``/proc/self/stat``). A
ratio is only meaningful when ``other_cpu`` stayed near 0.

PyTorch runs with as many intra-op threads as JAX's CPU backend uses (the cores this process
may run on). The header and the JSON record the machine, versions, git commit and command;
the JSON (``--out``, default ``benchmarks/results/vs_pytorch_<hostname>.json``, ``_quick``
suffix under ``--quick``) is rewritten atomically after every row.
"""

from __future__ import annotations

import argparse
import datetime
import os
import shlex
import socket
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # tests.torch_refs: the PyTorch reference modules
sys.path.insert(0, str(Path(__file__).resolve().parent))
from teachers import _loadavg, machine_info, write_json  # noqa: E402

from infer_jax import convert, models, recover, relabel, student  # noqa: E402
from infer_jax.core import bn_stats  # noqa: E402
from infer_jax.models.common import scale_channels  # noqa: E402
from infer_jax.runtime import checkpoint, train  # noqa: E402

FAMILIES = ("resnet18", "mobilenetv2", "efficientnet_b0", "shufflenet_g2")
SHAPE = (32, 32, 3)
MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)
RESULTS_DIR = Path(__file__).resolve().parent / "results"


def import_torch():
  """torch and the reference modules, or a clear error saying how to install them."""
  try:
    import torch
  except ImportError:
    raise SystemExit(
      "vs_pytorch.py needs PyTorch: pip install -e '.[torch]' (or pip install torch)."
    ) from None
  from tests.torch_refs import algorithm, mobile, resnet, shufflenet

  return torch, algorithm, {"resnet": resnet, "mobile": mobile, "shufflenet": shufflenet}


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
  p = argparse.ArgumentParser(
    description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter
  )
  p.add_argument("--stages", default="recover,student,train,relabel")
  p.add_argument("--archs", default=",".join(FAMILIES), help="recover (and train) families")
  p.add_argument(
    "--classes", default=None, help="C of recover and the student (10,100; --quick: 10)"
  )
  p.add_argument("--student-widths", default=None, help="1.0,0.25 (--quick: 1.0)")
  p.add_argument("--label-modes", default="static,dynamic")
  p.add_argument("--train-archs", default=None, help="default: resnet18 (--quick), --archs")
  p.add_argument("--batch", type=int, default=64, help="student batch")
  p.add_argument("--train-batch", type=int, default=128)
  p.add_argument("--relabel-images", type=int, default=1000)
  p.add_argument("--blocks", type=int, default=None, help="timed blocks per side (5)")
  p.add_argument("--iters", type=int, default=None, help="calls per block (2)")
  p.add_argument(
    "--quick",
    action="store_true",
    help="3 blocks x 1 call; C = 10, the full-width student, train: ResNet-18 (8 rows)",
  )
  p.add_argument(
    "--smoke", action="store_true", help="tiny networks (resnet_tiny), 1 block x 1 call"
  )
  p.add_argument(
    "--omp-passive",
    action="store_true",
    help="OMP_WAIT_POLICY=PASSIVE for PyTorch (set before torch is imported): on a shared, "
    "oversubscribed machine spinning OpenMP threads slow PyTorch down by up to 100x",
  )
  p.add_argument("--out", default=None)
  a = p.parse_args(argv)
  blocks, iters = (1, 1) if a.smoke else (3, 1) if a.quick else (5, 2)
  a.blocks = a.blocks or blocks
  a.iters = a.iters or iters
  if a.smoke:
    a.archs, a.train_archs = "resnet_tiny", "resnet_tiny"
    a.classes, a.student_widths = "10", "1.0"
    a.batch, a.train_batch, a.relabel_images = 8, 8, 16
  if a.train_archs is None:
    a.train_archs = "resnet18" if a.quick else a.archs
  # --quick: every stage and family once, compiled once each (compiles dominate a row).
  a.classes = a.classes or ("10" if a.quick else "10,100")
  a.student_widths = a.student_widths or ("1.0" if a.quick else "1.0,0.25")
  split = lambda s: [x.strip() for x in s.split(",") if x.strip()]  # noqa: E731
  a.stages, a.archs, a.train_archs = split(a.stages), split(a.archs), split(a.train_archs)
  a.label_modes = split(a.label_modes)
  a.classes = [int(c) for c in split(a.classes)]
  a.student_widths = [float(w) for w in split(a.student_widths)]
  if unknown := set(a.stages) - {"recover", "student", "train", "relabel"}:
    p.error(f"unknown stages {sorted(unknown)}; choose from recover,student,train,relabel")
  if unknown := set(a.label_modes) - {"static", "dynamic"}:
    p.error(f"unknown label modes {sorted(unknown)}; choose from static,dynamic")
  if a.blocks < 1 or a.iters < 1:
    p.error("--blocks and --iters must be positive")
  if a.out is None:
    suffix = "_smoke" if a.smoke else "_quick" if a.quick else ""
    a.out = str(RESULTS_DIR / f"vs_pytorch_{socket.gethostname()}{suffix}.json")
  return a


# --------------------------------------------------------------------------- load


def _cpu_jiffies() -> tuple[int, int] | None:
  """(busy jiffies of the whole machine, jiffies of this process), or None off Linux."""
  try:
    with open("/proc/stat") as f:
      fields = [int(v) for v in f.readline().split()[1:]]
    with open("/proc/self/stat") as f:
      own = f.read().rsplit(")", 1)[1].split()
  except (OSError, ValueError, IndexError):
    return None
  # user nice system idle iowait irq softirq steal (guest time is already in user).
  busy = sum(fields[:3]) + sum(fields[5:8])
  return busy, int(own[11]) + int(own[12])  # utime + stime of every thread


def usable_cores() -> int:
  """The cores this process may run on: XLA:CPU's intra-op pool has one thread per core."""
  try:
    return len(os.sched_getaffinity(0))
  except AttributeError:
    return os.cpu_count() or 1


def timed_block(fn: Callable[[], Any]) -> dict[str, Any]:
  """Runs ``fn`` once; its wall time, the load average and other processes' CPU meanwhile."""
  before = _cpu_jiffies()
  t0 = time.perf_counter()
  fn()
  seconds = time.perf_counter() - t0
  after = _cpu_jiffies()
  out = {"seconds": seconds, "loadavg_1m": round(os.getloadavg()[0], 2)}
  if before and after:
    tick = os.sysconf("SC_CLK_TCK")
    own = (after[1] - before[1]) / tick
    other = (after[0] - before[0]) / tick - own
    out["own_cpu"] = round(own / seconds, 2)  # cores
    out["other_cpu"] = round(max(other, 0.0) / seconds, 2)  # cores used by everything else
  return out


# --------------------------------------------------------------------------- networks


def torch_net(torch_mods, arch: str, classes: int, width: float):
  """Our PyTorch reference network of ``arch`` (CIFAR stem) at ``width``."""
  resnet = torch_mods["resnet"]
  if arch in resnet.ARCHS:
    block, stages = resnet.ARCHS[arch]
    base = 8 if arch == "resnet_tiny" else 64
    if width != 1.0 and arch == "resnet_tiny":
      raise SystemExit("resnet_tiny has no width multiplier; use --student-widths 1.0")
    base = scale_channels(base, width)
    return resnet.ResNet(block, stages, classes, "cifar", base_width=base)
  if width != 1.0:
    raise SystemExit(f"the PyTorch reference of {arch} is full width only; use width 1.0")
  if arch.startswith("shufflenet"):
    return getattr(torch_mods["shufflenet"], arch)(classes)
  return torch_mods["mobile"].build(arch, classes)


def paired(torch, torch_mods, arch: str, classes: int, width: float = 1.0, seed: int = 0):
  """``(torch net, flax model, flax variables)``: the same weights on both sides."""
  torch.manual_seed(seed)
  net = torch_net(torch_mods, arch, classes, width).float()
  model = models.create_model(arch, classes, stem="cifar", width=width)
  variables = convert.torch_state_to_flax(
    {k: v.detach().numpy() for k, v in net.state_dict().items()},
    checkpoint.abstract_variables(model, SHAPE),
    flatten_shapes=convert.feature_map_shapes(model, SHAPE),
  )
  return net, model, jax.tree.map(jnp.asarray, variables)


def nchw(x: np.ndarray):
  import torch

  return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))


# --------------------------------------------------------------------------- work items


def recover_pair(torch, ref, torch_mods, arch: str, c: int):
  """One recover iteration of one subset of ``c`` images, both ways."""
  net, model, variables = paired(torch, torch_mods, arch, c)
  rng = np.random.default_rng(0)
  images = rng.normal(size=(c, *SHAPE)).astype(np.float32)
  labels = np.arange(c, dtype=np.int32)
  cfg = recover.RecoverConfig(iterations=1000, checkpoint_every=0, log_every=0)

  tx = recover.optimizer(cfg)
  first = bn_stats.bn_layer_order(model, variables, (c, *SHAPE))[0]
  step = recover.make_step(model, cfg, first, tx)
  base, lab = jnp.asarray(images[None]), jnp.asarray(labels[None])
  s = {"p": jnp.zeros((1, 1, *SHAPE), jnp.float32), "i": 0}
  s["o"] = tx.init(s["p"])

  def ours():
    s["p"], s["o"], _ = step(variables, s["p"], s["o"], base, lab, jnp.int32(s["i"]))
    s["i"] += 1
    return s["p"]

  net.eval()
  for p in net.parameters():
    p.requires_grad_(False)
  timages, tlabels = nchw(images), torch.from_numpy(labels.astype(np.int64))
  u = torch.zeros((1, 3, *SHAPE[:2]), requires_grad=True)
  opt = torch.optim.Adam([u], lr=cfg.lr, betas=(0.5, 0.9), eps=1e-8)
  recorder = ref.BNInputRecorder(net)
  offsets = rng.integers(0, cfg.jitter + 1, (10_000, 2))
  t = {"i": 0}

  def theirs():
    i = t["i"]
    x = ref.roll(timages + u, *offsets[i % len(offsets)])
    loss, _, _ = ref.recover_loss(net, recorder, x, tlabels, cfg.r_bn, cfg.first_bn_multiplier)
    opt.zero_grad()
    loss.backward()
    ref.set_lr(opt, ref.cosine_lr(cfg.lr, i % cfg.iterations, cfg.iterations))
    opt.step()
    t["i"] += 1

  return ours, theirs, c, "img-it/s"


def student_pair(torch, ref, torch_mods, arch, width, c, batch, mode, teacher_arch):
  """One student step on a batch of ``batch`` images, static or dynamic labels, both ways."""
  net, model, variables = paired(torch, torch_mods, arch, c, width, seed=1)
  cfg = student.StudentConfig(arch=arch, width=width, batch_size=batch)
  tx = student.make_optimizer(cfg, total_steps=10_000)
  labeller, tnet = None, None
  if mode == "dynamic":
    tnet, tmodel, tvars = paired(torch, torch_mods, teacher_arch, c, seed=2)
    tnet.eval()
    for p in tnet.parameters():
      p.requires_grad_(False)
    labeller = student.Labeller(
      fn=lambda v, x: tmodel.apply(v, x, train=False).astype(jnp.float32), variables=tvars
    )
  step = student.make_student_step(
    model, tx, cfg, mean=MEAN, std=STD, num_classes=c, label_mode=mode, label_fn=labeller
  )
  params = variables["params"]
  s = {
    "state": train.TrainState(
      step=jnp.zeros((), jnp.int32),
      params=params,
      batch_stats=variables["batch_stats"],
      opt_state=tx.init(params),
    )
  }
  rng = np.random.default_rng(0)
  pixels = rng.random((batch, *SHAPE), dtype=np.float32)
  soft = (5 * rng.normal(size=(batch, c))).astype(np.float32)
  host = {
    "image": ((pixels - np.asarray(MEAN)) / np.asarray(STD)).astype(np.float32),
    "label": rng.integers(0, c, batch).astype(np.int32),
  }
  if mode == "static":
    host["soft_label"] = soft
  dev_batch = jax.device_put(host)
  key = student.data_key(0)
  label_vars = labeller.variables if labeller else None

  def ours():
    s["state"], m = step(s["state"], dev_batch, key, label_vars)
    return s["state"]

  opt = torch.optim.AdamW(net.parameters(), lr=cfg.lr, weight_decay=cfg.weight_decay)
  tpixels, tsoft = nchw(pixels), torch.from_numpy(soft)
  pad = cfg.crop_padding

  def theirs():
    # The draws a PyTorch loader makes per image and per batch (numpy, as host code would).
    ref.student_step(
      net,
      opt,
      tpixels,
      tsoft if mode == "static" else None,
      tops=rng.integers(0, 2 * pad + 1, batch).tolist(),
      lefts=rng.integers(0, 2 * pad + 1, batch).tolist(),
      flips=(rng.random(batch) < 0.5).tolist(),
      lam=float(rng.beta(cfg.mixup_alpha, cfg.mixup_alpha)),
      perm=rng.permutation(batch).tolist(),
      lr=cfg.lr,
      mean=MEAN,
      std=STD,
      padding=pad,
      temperature=cfg.temperature,
      teachers=[tnet] if tnet is not None else None,
    )

  return ours, theirs, batch, "img/s"


def train_pair(torch, ref, torch_mods, arch: str, batch: int, c: int = 10):
  """The squeeze (teacher training) step on a uint8 batch, both ways."""
  net, model, variables = paired(torch, torch_mods, arch, c, seed=3)
  total = 100_000
  tx = train.sgd_optimizer(
    lr=0.1, momentum=0.9, nesterov=False, weight_decay=5e-4, total_steps=total
  )
  step = train.make_train_step(model, tx, mean=MEAN, std=STD)
  s = {
    "state": train.TrainState(
      step=jnp.zeros((), jnp.int32),
      params=variables["params"],
      batch_stats=variables["batch_stats"],
      opt_state=tx.init(variables["params"]),
    )
  }
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (batch, *SHAPE), dtype=np.uint8)
  labels = rng.integers(0, c, batch).astype(np.int32)
  dev_batch = jax.device_put({"image": images, "label": labels})

  def ours():
    s["state"], _ = step(s["state"], dev_batch)
    return s["state"]

  opt = torch.optim.SGD(net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)
  timages, tlabels = nchw(images), torch.from_numpy(labels.astype(np.int64))
  m = torch.tensor(MEAN).reshape(1, 3, 1, 1)
  sd = torch.tensor(STD).reshape(1, 3, 1, 1)
  t = {"i": 0}
  net.train()

  def theirs():
    x = (timages.float() / 255.0 - m) / sd
    loss = torch.nn.functional.cross_entropy(net(x), tlabels)
    opt.zero_grad()
    loss.backward()
    ref.set_lr(opt, ref.cosine_lr(0.1, t["i"], total))
    opt.step()
    t["i"] += 1

  return ours, theirs, batch, "img/s"


def relabel_pair(torch, ref, torch_mods, arch: str, n: int, c: int = 100, batch: int = 500):
  """Static labels of ``n`` instances by one teacher, both ways."""
  net, model, variables = paired(torch, torch_mods, arch, c, seed=4)
  batch = min(batch, n)
  teacher = checkpoint.Teacher(model=model, variables=variables, metadata={})
  instances = np.random.default_rng(0).normal(size=(n, *SHAPE)).astype(np.float32)
  mesh = train.data_mesh()

  def ours():
    return relabel.static_labels([teacher], instances, batch_size=batch, mesh=mesh)

  net.eval()

  def theirs():
    # A PyTorch user's loop: host NumPy batches in, logits back to NumPy.
    out = []
    for start in range(0, n, batch):
      x = nchw(instances[start : start + batch])
      out.append(ref.static_labels([net], x).numpy())
    return np.concatenate(out)

  return ours, theirs, n, "img/s"


# --------------------------------------------------------------------------- driver


def measure(ours, theirs, per_call: int, args) -> dict[str, Any]:
  """First calls, then ``args.blocks`` alternating blocks of ``args.iters`` calls a side."""

  def block(fn, sync):
    def run():
      out = None
      for _ in range(args.iters):
        out = fn()
      if sync:
        jax.block_until_ready(out)

    return run

  sides = {"ours": block(ours, True), "torch": block(theirs, False)}
  first = {}
  for name, fn in (("ours", ours), ("torch", theirs)):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    first[name] = round(time.perf_counter() - t0, 3)
  blocks = []
  for b in range(args.blocks):
    order = ("ours", "torch") if b % 2 == 0 else ("torch", "ours")
    for name in order:
      rec = timed_block(sides[name])
      rec["per_s"] = round(args.iters * per_call / rec["seconds"], 2)
      rec["seconds"] = round(rec["seconds"], 4)
      blocks.append({"block": b, "side": name, **rec})
  rates = {n: [r["per_s"] for r in blocks if r["side"] == n] for n in sides}
  pairs = [o / t for o, t in zip(rates["ours"], rates["torch"], strict=True)]
  others = [r["other_cpu"] for r in blocks if "other_cpu" in r]
  return {
    "ours_per_s": round(statistics.median(rates["ours"]), 2),
    "torch_per_s": round(statistics.median(rates["torch"]), 2),
    "ours_per_s_min": min(rates["ours"]),
    "torch_per_s_min": min(rates["torch"]),
    "ours_per_s_max": max(rates["ours"]),
    "torch_per_s_max": max(rates["torch"]),
    "ratio": round(statistics.median(rates["ours"]) / statistics.median(rates["torch"]), 3),
    "ratio_pairs": [round(r, 3) for r in pairs],
    "first_call_s": first,
    "other_cpu_median": round(statistics.median(others), 2) if others else None,
    "other_cpu_max": max(others) if others else None,
    "loadavg_1m_max": max(r["loadavg_1m"] for r in blocks),
    "blocks": blocks,
  }


def work_items(args, torch, ref, torch_mods):
  """``(row fields, builder)`` of every work item, in run order."""
  items = []
  if "recover" in args.stages:
    for arch in args.archs:
      for c in args.classes:
        row = {"stage": "recover", "arch": arch, "width": 1.0, "classes": c, "batch": c}
        items.append((row, lambda a=arch, c=c: recover_pair(torch, ref, torch_mods, a, c)))
  if "student" in args.stages:
    student_arch = "resnet_tiny" if args.smoke else "resnet18"
    teacher_arch = student_arch
    for width in args.student_widths:
      for c in args.classes:
        for mode in args.label_modes:
          row = {
            "stage": f"student_{mode}",
            "arch": student_arch,
            "width": width,
            "classes": c,
            "batch": args.batch,
          }
          if mode == "dynamic":
            row["teachers"] = f"1 x {teacher_arch} width 1.0"

          def build(w=width, c=c, m=mode):
            return student_pair(
              torch, ref, torch_mods, student_arch, w, c, args.batch, m, teacher_arch
            )

          items.append((row, build))
  if "train" in args.stages:
    for arch in args.train_archs:
      row = {"stage": "train", "arch": arch, "width": 1.0, "classes": 10, "batch": args.train_batch}
      items.append((row, lambda a=arch: train_pair(torch, ref, torch_mods, a, args.train_batch)))
  if "relabel" in args.stages:
    arch = "resnet_tiny" if args.smoke else "resnet18"
    n = args.relabel_images
    row = {"stage": "relabel", "arch": arch, "width": 1.0, "classes": 100, "batch": min(n, 500)}
    row["images"] = n
    items.append((row, lambda: relabel_pair(torch, ref, torch_mods, arch, n)))
  return items


def main(argv: list[str] | None = None) -> dict[str, Any]:
  args = parse_args(argv)
  if args.omp_passive:
    if "torch" in sys.modules and os.environ.get("OMP_WAIT_POLICY", "").upper() != "PASSIVE":
      raise SystemExit("--omp-passive must be set before torch is imported (run it as a script)")
    os.environ["OMP_WAIT_POLICY"] = "PASSIVE"
  torch, ref, torch_mods = import_torch()
  torch.set_num_threads(usable_cores())
  command = shlex.join(["python", *(sys.argv if argv is None else ["vs_pytorch.py", *argv])])
  info = machine_info()
  info["torch"] = torch.__version__
  info["torch_threads"] = torch.get_num_threads()
  info["omp_wait_policy"] = os.environ.get("OMP_WAIT_POLICY")
  payload: dict[str, Any] = {
    "benchmark": "vs_pytorch",
    "command": command,
    "date_utc": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "machine": info,
    "loadavg_before": _loadavg(),
    "settings": {
      "blocks": args.blocks,
      "iters": args.iters,
      "image_shape": list(SHAPE),
      "stem": "cifar",
      "dtype": "float32",
    },
    "rows": [],
  }
  print(f"# {command}")
  print(
    f"# {info['hostname']}: {info['platform']} {info['device_kind']} x{info['device_count']}, "
    f"{info['cpu_count']} CPUs ({info['cpu_model']}); torch {info['torch']} "
    f"({info['torch_threads']} threads), jax {info['jax']}, git {info['git']}"
  )
  print(f"# load before {payload['loadavg_before']}; {args.blocks} blocks x {args.iters} calls")
  print(
    f"{'stage':<16} {'arch':<16} {'width':>5} {'C':>4} {'batch':>5} {'ours med':>9} "
    f"{'torch med':>9} {'ours min':>9} {'torch min':>9} {'ratio':>6} {'other cpu':>9} "
    f"{'load':>5}",
    flush=True,
  )
  started = time.perf_counter()
  for row, build in work_items(args, torch, ref, torch_mods):
    t0 = time.perf_counter()
    ours, theirs, per_call, unit = build()
    row = {**row, "unit": unit, **measure(ours, theirs, per_call, args)}
    row["row_s"] = round(time.perf_counter() - t0, 1)
    payload["rows"].append(row)
    print(
      f"{row['stage']:<16} {row['arch']:<16} {row['width']:>5} {row['classes']:>4} "
      f"{row['batch']:>5} {row['ours_per_s']:>9.1f} {row['torch_per_s']:>9.1f} "
      f"{row['ours_per_s_min']:>9.1f} {row['torch_per_s_min']:>9.1f} {row['ratio']:>6.2f} "
      f"{row['other_cpu_median'] if row['other_cpu_median'] is not None else '-':>9} "
      f"{row['loadavg_1m_max']:>5}",
      flush=True,
    )
    payload["loadavg_after"] = _loadavg()
    payload["elapsed_s"] = round(time.perf_counter() - started, 1)
    write_json(args.out, payload)
  print(
    f"# load after {payload.get('loadavg_after')}; {payload.get('elapsed_s')} s; "
    f"wrote {args.out}; ratio = ours / PyTorch (median of blocks), other cpu in cores",
    flush=True,
  )
  return payload


if __name__ == "__main__":
  main()
