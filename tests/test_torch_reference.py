"""The PyTorch reference algorithm (tests/torch_refs/algorithm.py) against hand computations,
and first cross-checks of infer-jax against it.

The reference is what the parity tests trust, so it is checked here on its own: the BN-input
moments its hooks record against a manual forward pass, its recover loss against NumPy,
Adam with the cosine rate against the update rule written out by hand, the per-step clamp,
the KL, the crop, flip and MixUp, the BatchNorm running-statistics update and the +Dyn
targets.

The cross-checks run infer-jax's public functions where they need no injected random draws:
static labels (``relabel.static_labels``) on converted teachers; the recover step
(``recover.make_step``) with jitter 0, i.e. every roll offset 0; and the student step
(``student.make_student_step``) without augmentation and MixUp. Errors measured on CPU
(relative, ``||ours - reference|| / ||reference||``; run with ``-s`` to print them):

* static labels, float32: 3.5e-7 (bound 1e-5);
* recover, test-sized ResNet, 10 iterations: float64 compensator 1.2e-13 after 1 and 2.5e-9
  after 10 iterations, losses 2.7e-8 (bound 1e-6; float32-level because the zoo's logits
  are float32); float32 compensator 4.0e-7 (bound 1e-4), losses 1.0e-7 (bound 1e-5);
* student, 5 AdamW steps, float32: losses 2.8e-6 (static) and 2.3e-6 (+Dyn), parameters
  1.5e-7 and 4.2e-7, running means 2.9e-7 and 1.1e-6, running variances 9.3e-8 against the
  reference with the biased-variance rule of Flax's BatchNorm (bound 1e-5); against
  PyTorch's unbiased rule they are 2.0e-4 apart, the gap between the reference's two
  rules (to 1%).

Skipped where torch is not installed.
"""

from __future__ import annotations

import copy
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from infer_jax import convert, evaluate, models, recover, relabel, student
from infer_jax.core import bn_stats
from infer_jax.runtime import checkpoint
from infer_jax.runtime import train as train_lib
from tests.conftest import TORCH_HOW, require_module

torch = require_module("torch", TORCH_HOW)
torch.set_num_threads(1)
F = torch.nn.functional
nn = torch.nn

from tests.torch_refs import algorithm as ref  # noqa: E402
from tests.torch_refs import mobile, resnet  # noqa: E402

MEAN = (0.4914, 0.4822, 0.4465)
STD = (0.2470, 0.2435, 0.2616)


# --------------------------------------------------------------------------- a tiny network


class TinyNet(nn.Module):
  """conv-BN-ReLU, strided conv-BN-ReLU, pool, linear; ``unused`` is a BN that never runs."""

  def __init__(self, num_classes: int = 5):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 4, 3, padding=1, bias=False)
    self.bn1 = nn.BatchNorm2d(4)
    self.conv2 = nn.Conv2d(4, 6, 3, stride=2, padding=1, bias=False)
    self.bn2 = nn.BatchNorm2d(6)
    self.unused = nn.BatchNorm2d(6)
    self.fc = nn.Linear(6, num_classes)

  def forward(self, x):
    x = F.relu(self.bn1(self.conv1(x)))
    x = F.relu(self.bn2(self.conv2(x)))
    return self.fc(x.mean(dim=(2, 3)))


def _tiny_net(seed: int = 0, dtype=torch.float64) -> TinyNet:
  torch.manual_seed(seed)
  net = TinyNet().to(dtype)
  gen = torch.Generator().manual_seed(seed + 1)
  with torch.no_grad():
    for bn in (net.bn1, net.bn2, net.unused):
      c = bn.num_features
      bn.weight.copy_(torch.rand(c, generator=gen) + 0.5)
      bn.bias.copy_(0.1 * torch.randn(c, generator=gen))
      bn.running_mean.copy_(0.2 * torch.randn(c, generator=gen))
      bn.running_var.copy_(torch.rand(c, generator=gen) + 0.5)
  return net.eval()


def _manual_forward(net: TinyNet, x: torch.Tensor):
  """Inference-mode forward written out: ``(logits, [input of bn1, input of bn2])``."""

  def bn(module, a):
    shape = (1, -1, 1, 1)
    scale = module.weight / torch.sqrt(module.running_var + module.eps)
    return (a - module.running_mean.view(shape)) * scale.view(shape) + module.bias.view(shape)

  a1 = F.conv2d(x, net.conv1.weight, padding=1)
  a2 = F.conv2d(F.relu(bn(net.bn1, a1)), net.conv2.weight, stride=2, padding=1)
  h = F.relu(bn(net.bn2, a2)).mean(dim=(2, 3))
  return h @ net.fc.weight.T + net.fc.bias, [a1, a2]


def _batch(n=5, size=8, seed=0, dtype=np.float64):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 3, size, size)).astype(dtype)
  return torch.from_numpy(x), torch.from_numpy(rng.permutation(n) % 5).long()


# --------------------------------------------------------------------------- the reference alone


def test_hooks_record_the_biased_moments_of_every_bn_input_that_runs():
  net = _tiny_net()
  x, _ = _batch()
  recorder = ref.BNInputRecorder(net)
  with torch.no_grad():
    net(x)
    _, inputs = _manual_forward(net, x)
  recorder.remove()
  assert recorder.order == ["bn1", "bn2"]  # 'unused' never ran
  for name, a in zip(["bn1", "bn2"], inputs, strict=True):
    a = a.numpy()
    n = a.shape[0] * a.shape[2] * a.shape[3]
    mean = a.sum(axis=(0, 2, 3)) / n
    var = ((a - mean[None, :, None, None]) ** 2).sum(axis=(0, 2, 3)) / n
    np.testing.assert_allclose(recorder.stats[name][0].numpy(), mean, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(recorder.stats[name][1].numpy(), var, rtol=1e-12)


def test_recover_loss_equals_a_hand_computation():
  net = _tiny_net()
  x, labels = _batch()
  recorder = ref.BNInputRecorder(net)
  with torch.no_grad():
    loss, ce, bn = ref.recover_loss(net, recorder, x, labels, r_bn=0.7, first_bn_multiplier=10.0)
    logits, inputs = _manual_forward(net, x)
  recorder.remove()
  z = logits.numpy()
  log_p = z - z.max(1, keepdims=True)
  log_p = log_p - np.log(np.exp(log_p).sum(1, keepdims=True))
  want_ce = -np.mean(log_p[np.arange(len(z)), labels.numpy()])
  want_bn = 0.0
  for weight, module, a in zip([10.0, 1.0], [net.bn1, net.bn2], inputs, strict=True):
    a = a.numpy()
    mean, var = a.mean(axis=(0, 2, 3)), a.var(axis=(0, 2, 3))
    want_bn += weight * (
      np.linalg.norm(mean - module.running_mean.numpy())
      + np.linalg.norm(var - module.running_var.numpy())
    )
  np.testing.assert_allclose(float(ce), want_ce, rtol=1e-12)
  np.testing.assert_allclose(float(bn), want_bn, rtol=1e-12)
  np.testing.assert_allclose(float(loss), want_ce + 0.7 * want_bn, rtol=1e-12)


def test_roll_moves_pixels_like_numpy_and_jax():
  x = torch.arange(2 * 3 * 5 * 6, dtype=torch.float64).reshape(2, 3, 5, 6)
  got = ref.roll(x, 2, 3).numpy()
  np.testing.assert_array_equal(got, np.roll(x.numpy(), (2, 3), axis=(2, 3)))
  assert got[0, 0, 2, 3] == x[0, 0, 0, 0]  # pixel (0, 0) moves to (dy, dx)
  # Our recover rolls NHWC with jnp.roll by (dy, dx) on (H, W): the same direction.
  nhwc = jnp.roll(jnp.asarray(x.numpy().transpose(0, 2, 3, 1)), (2, 3), axis=(1, 2))
  np.testing.assert_array_equal(np.asarray(nhwc).transpose(0, 3, 1, 2), got)


def test_cosine_rate_is_lr_at_the_first_step_and_above_zero_at_the_last():
  total = 7
  rates = [ref.cosine_lr(0.25, t, total) for t in range(total)]
  want = [0.25 * 0.5 * (1 + np.cos(np.pi * t / total)) for t in range(total)]
  np.testing.assert_allclose(rates, want, rtol=1e-15)
  assert rates[0] == 0.25 and 0 < rates[-1] < 0.25 * (np.pi / total) ** 2
  # optax.cosine_decay_schedule(lr, T) evaluated at the 0-based update count is the same rate.
  schedule = optax.cosine_decay_schedule(0.25, total)
  np.testing.assert_allclose([float(schedule(t)) for t in range(total)], want, rtol=1e-6)


def test_recover_is_adam_with_the_cosine_rate_written_out_by_hand():
  """Three iterations of INFER's recover against Adam(0.5, 0.9) by hand, float64."""
  net = _tiny_net()
  x, labels = _batch()
  offsets = [(1, 2), (0, 3), (4, 0)]
  lr, r_bn = 0.25, 0.5
  got = ref.recover(net, x, labels, offsets, lr=lr, r_bn=r_bn, save_at=(1, 2, 3))

  recorder = ref.BNInputRecorder(net)
  u = np.zeros((1, 3, 8, 8))
  m, v = np.zeros_like(u), np.zeros_like(u)
  b1, b2, eps = 0.5, 0.9, 1e-8
  for t, (dy, dx) in enumerate(offsets):
    ut = torch.from_numpy(u).requires_grad_(True)
    loss, _, _ = ref.recover_loss(net, recorder, ref.roll(x + ut, dy, dx), labels, r_bn)
    (g,) = torch.autograd.grad(loss, ut)
    np.testing.assert_allclose(got["loss"][t], float(loss.detach()), rtol=1e-12)
    g = g.numpy()
    m = b1 * m + (1 - b1) * g
    v = b2 * v + (1 - b2) * g * g
    m_hat, v_hat = m / (1 - b1 ** (t + 1)), v / (1 - b2 ** (t + 1))
    u = u - lr * 0.5 * (1 + math.cos(math.pi * t / 3)) * m_hat / (np.sqrt(v_hat) + eps)
    np.testing.assert_allclose(got["saved"][t + 1].numpy(), u, rtol=1e-10, atol=1e-13)
  recorder.remove()
  assert got["lr"][0] == lr  # no warm-up: the first step uses the full rate


def test_class_specific_recover_clamps_after_every_step():
  net = _tiny_net()
  x, labels = _batch()
  init = torch.from_numpy(np.random.default_rng(3).normal(size=x.shape))
  offsets = [(t % 3, (2 * t) % 5) for t in range(6)]
  kw = dict(lr=0.5, r_bn=0.01, parameterisation="class_specific", init=init)
  clamped = ref.recover(net, x, labels, offsets, clamp=(MEAN, STD), save_at=range(1, 7), **kw)
  free = ref.recover(net, x, labels, offsets, save_at=range(1, 7), **kw)
  lo, hi = ref.clip_bounds(MEAN, STD, x)
  for t in range(1, 7):
    p = clamped["saved"][t]
    assert bool(((p >= lo) & (p <= hi)).all()), f"out of range after step {t}"
    assert bool(((p == lo) | (p == hi)).any()), "the clamp never acted"
  # Without the clamp the images leave the range (noise init), so the clamp matters.
  q = free["saved"][6]
  assert bool(((q < lo) | (q > hi)).any())
  # The first step is the same; later ones see clamped images and differ.
  assert clamped["loss"][0] == free["loss"][0] and clamped["loss"][1] != free["loss"][1]


def test_instances_are_clipped_to_the_normalised_pixel_range():
  x, _ = _batch()
  u = torch.full((1, 3, 8, 8), 3.0, dtype=torch.float64)
  s = ref.instances(x, u, MEAN, STD).numpy()
  lo = (0 - np.asarray(MEAN)) / np.asarray(STD)
  hi = (1 - np.asarray(MEAN)) / np.asarray(STD)
  want = np.clip((x + u).numpy(), lo[None, :, None, None], hi[None, :, None, None])
  np.testing.assert_array_equal(s, want)


def test_kl_matches_the_numpy_formula():
  rng = np.random.default_rng(0)
  z, y = rng.normal(size=(2, 4, 7)) * 40
  got = float(ref.kl_with_temperature(torch.from_numpy(z), torch.from_numpy(y), 30.0))

  def softmax(a):
    e = np.exp(a - a.max(1, keepdims=True))
    return e / e.sum(1, keepdims=True)

  p, q = softmax(y / 30), softmax(z / 30)
  np.testing.assert_allclose(got, np.mean(np.sum(p * np.log(p / q), axis=1)), rtol=1e-12)
  assert float(ref.kl_with_temperature(torch.from_numpy(y), torch.from_numpy(y), 30.0)) == 0


def test_crop_flip_and_mixup_match_numpy():
  rng = np.random.default_rng(0)
  pixels = rng.uniform(size=(3, 3, 6, 5))
  tops, lefts, flips = [0, 4, 8], [8, 2, 0], [True, False, True]
  got = ref.crop_flip(torch.from_numpy(pixels), tops, lefts, flips, 4, MEAN, STD).numpy()
  padded = np.pad(pixels, ((0, 0), (0, 0), (4, 4), (4, 4)))
  for i in range(3):
    want = padded[i, :, tops[i] : tops[i] + 6, lefts[i] : lefts[i] + 5]
    want = want[:, :, ::-1] if flips[i] else want
    want = (want - np.asarray(MEAN)[:, None, None]) / np.asarray(STD)[:, None, None]
    np.testing.assert_allclose(got[i], want, rtol=1e-15)
  # Window (4, 4) without a flip is the image itself.
  same = ref.crop_flip(torch.from_numpy(pixels), [4] * 3, [4] * 3, [False] * 3, 4, MEAN, STD)
  want = (pixels - np.asarray(MEAN)[:, None, None]) / np.asarray(STD)[:, None, None]
  np.testing.assert_allclose(same.numpy(), want, rtol=1e-15)
  mixed = ref.mixup(torch.from_numpy(pixels), 0.3, [2, 0, 1]).numpy()
  np.testing.assert_allclose(mixed[0], 0.3 * pixels[0] + 0.7 * pixels[2], rtol=1e-15)


DRAWS = dict(tops=[0, 1, 8, 4], lefts=[3, 8, 0, 4], flips=[1, 0, 1, 0], lam=0.6, perm=[3, 2, 0, 1])


def _augmented(pixels):
  x = ref.crop_flip(pixels, DRAWS["tops"], DRAWS["lefts"], DRAWS["flips"], 4, MEAN, STD)
  return ref.mixup(x, DRAWS["lam"], DRAWS["perm"])


def test_student_step_is_adamw_with_kl_and_updates_bn_statistics():
  """One static-label step by hand: AdamW's first step, PyTorch's unbiased running_var."""
  initial, net, probe = _tiny_net(), _tiny_net(), _tiny_net()
  pixels = torch.from_numpy(np.random.default_rng(1).uniform(size=(4, 3, 8, 8)))
  soft = torch.from_numpy(np.random.default_rng(2).normal(size=(4, 5)) * 10)
  x = _augmented(pixels)
  recorder = ref.BNInputRecorder(probe)
  probe.train()
  want_loss = ref.kl_with_temperature(probe(x), ref.mixup(soft, 0.6, DRAWS["perm"]), 30.0)
  recorder.remove()
  grads = torch.autograd.grad(want_loss, list(probe.parameters()), allow_unused=True)

  opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
  loss = ref.student_step(net, opt, pixels, soft, lr=1e-3, mean=MEAN, std=STD, **DRAWS)
  np.testing.assert_allclose(loss, float(want_loss), rtol=1e-12)
  for p0, p1, g in zip(initial.parameters(), net.parameters(), grads, strict=True):
    if g is None:  # 'unused' BN: no gradient, so torch's AdamW leaves it alone (no decay)
      np.testing.assert_array_equal(p1.detach().numpy(), p0.detach().numpy())
      continue
    # AdamW's first step: decay, then lr * m_hat / (sqrt(v_hat) + eps) = lr * g / (|g| + eps).
    want = p0.detach() * (1 - 1e-3 * 0.01) - 1e-3 * g / (g.abs() + 1e-8)
    np.testing.assert_allclose(p1.detach().numpy(), want.numpy(), rtol=1e-9, atol=1e-15)
  for name, n in (("bn1", 4 * 8 * 8), ("bn2", 4 * 4 * 4)):
    mean, var_biased = (a.detach() for a in recorder.stats[name])
    old, new = initial.get_submodule(name), net.get_submodule(name)
    want_mean = 0.9 * old.running_mean + 0.1 * mean
    want_var = 0.9 * old.running_var + 0.1 * var_biased * n / (n - 1)  # unbiased
    np.testing.assert_allclose(new.running_mean.numpy(), want_mean.numpy(), rtol=1e-12)
    np.testing.assert_allclose(new.running_var.numpy(), want_var.numpy(), rtol=1e-12)


def test_biased_running_var_hook_gives_flax_rule():
  net, flax_like = _tiny_net(), _tiny_net()
  x, _ = _batch(n=4)
  recorder = ref.BNInputRecorder(flax_like)
  hook = ref.BiasedRunningVar(flax_like)
  net.train()
  flax_like.train()
  with torch.no_grad():
    net(x)
    flax_like(x)
  hook.remove()
  recorder.remove()
  for name in ("bn1", "bn2"):
    var_b = recorder.stats[name][1]
    want = 0.9 * _tiny_net().get_submodule(name).running_var + 0.1 * var_b
    np.testing.assert_allclose(
      flax_like.get_submodule(name).running_var.numpy(), want.numpy(), rtol=1e-12
    )
    assert not torch.equal(
      net.get_submodule(name).running_var, flax_like.get_submodule(name).running_var
    )


def test_dynamic_targets_are_the_teachers_mean_on_the_mixed_batch():
  net, teachers = _tiny_net(0), [_tiny_net(5), _tiny_net(6)]
  pixels = torch.from_numpy(np.random.default_rng(1).uniform(size=(4, 3, 8, 8)))
  x = _augmented(pixels)
  with torch.no_grad():
    targets = (teachers[0](x) + teachers[1](x)) / 2
    probe = copy.deepcopy(net).train()
    want = ref.kl_with_temperature(probe(x), targets, 30.0)
  opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
  loss = ref.student_step(
    net, opt, pixels, None, lr=1e-3, mean=MEAN, std=STD, teachers=teachers, **DRAWS
  )
  np.testing.assert_allclose(loss, float(want), rtol=1e-12)
  np.testing.assert_allclose(ref.static_labels(teachers, x).numpy(), targets.numpy(), rtol=1e-15)
  assert not teachers[0].training  # teachers label in eval mode


# --------------------------------------------------------------------------- infer-jax vs reference


def _rel(a, b) -> float:
  """``||a - b|| / ||b||`` over flattened arrays."""
  a, b = np.asarray(a, np.float64).ravel(), np.asarray(b, np.float64).ravel()
  return float(np.linalg.norm(a - b) / np.linalg.norm(b))


def _converted(
  name: str, seed: int, *, size: int = 16, calibrate=True, dtype=jnp.float32, logit_scale=1.0
):
  """``(torch net, Flax model, Flax variables)``: our reference of ``name`` (CIFAR stem, 10
  classes) converted with ``infer_jax.convert``; ``logit_scale`` multiplies the classifier
  (teacher logits of the size trained teachers give, so that softmax(y / 30) is not flat)."""
  torch.manual_seed(seed)
  net = resnet.build(name, 10, "cifar") if name.startswith("resnet") else mobile.build(name, 10)
  if calibrate:
    ref.calibrate_batchnorm(net, size, seed)
  head = [m for m in net.modules() if isinstance(m, nn.Linear)][-1]
  with torch.no_grad():
    head.weight.mul_(logit_scale)
    head.bias.mul_(logit_scale)
  model = models.create_model(name, 10, stem="cifar", dtype=dtype)
  shape = (size, size, 3)
  variables = convert.torch_state_to_flax(
    {k: v.detach().numpy() for k, v in net.state_dict().items()},
    checkpoint.abstract_variables(model, shape),
    flatten_shapes=convert.feature_map_shapes(model, shape),
  )
  return net, model, variables


def _nchw(x_nhwc: np.ndarray):
  return torch.from_numpy(np.ascontiguousarray(x_nhwc.transpose(0, 3, 1, 2)))


def test_static_labels_match_the_reference():
  rng = np.random.default_rng(0)
  instances = rng.normal(size=(12, 16, 16, 3)).astype(np.float32)
  nets, teachers = [], []
  for seed, name in enumerate(["resnet_tiny", "mobilenetv2_tiny"]):
    net, model, variables = _converted(name, seed)
    nets.append(net)
    teachers.append(checkpoint.Teacher(model, variables, {"architecture": name}))
  with jax.default_matmul_precision("highest"):
    ours = relabel.static_labels(teachers, instances, batch_size=8)
  want = ref.static_labels(nets, _nchw(instances)).numpy()
  print(f"static labels: {_rel(ours, want):.2e}")
  assert _rel(ours, want) <= 1e-5, _rel(ours, want)


@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_recover_iterations_match_the_reference_with_zero_offsets(dtype):
  """``recover.make_step`` with jitter 0 (every roll offset 0) for 10 iterations."""
  num, iterations = 10, 10
  jdt = jnp.float64 if dtype == "float64" else jnp.float32
  rng = np.random.default_rng(1)
  images = rng.normal(size=(num, 16, 16, 3))
  labels = np.arange(num)
  cfg = recover.RecoverConfig(
    iterations=iterations, lr=0.25, r_bn=1.0, jitter=0, checkpoint_every=0, log_every=0
  )
  tx = recover.optimizer(cfg)
  losses, saved = [], {}
  with jax.enable_x64(dtype == "float64"), jax.default_matmul_precision("highest"):
    net, model, variables = _converted("resnet_tiny", 3, dtype=jdt)
    first = bn_stats.bn_layer_order(model, variables, (num, 16, 16, 3))[0]
    step = recover.make_step(model, cfg, first, tx)
    v = jax.tree.map(lambda a: jnp.asarray(a, jdt), variables)
    params = jnp.zeros((1, 1, 16, 16, 3), jdt)
    opt_state = tx.init(params)
    base = jnp.asarray(images[None], jdt)
    y = jnp.asarray(labels[None], jnp.int32)
    for it in range(iterations):
      params, opt_state, metrics = step(v, params, opt_state, base, y, jnp.int32(it))
      losses.append(float(metrics["loss"][0]))
      if it + 1 in (1, iterations):
        saved[it + 1] = np.asarray(params[0, 0])
  tdt = torch.float64 if dtype == "float64" else torch.float32
  got = ref.recover(
    net.to(tdt),
    _nchw(images).to(tdt),
    torch.from_numpy(labels).long(),
    [(0, 0)] * iterations,
    lr=0.25,
    r_bn=1.0,
    save_at=(1, iterations),
  )
  tol_u, tol_loss = (1e-6, 1e-6) if dtype == "float64" else (1e-4, 1e-5)
  for count, u in saved.items():
    want = got["saved"][count].numpy()[0].transpose(1, 2, 0)
    print(f"{dtype} u after {count}: {_rel(u, want):.2e}; losses {_rel(losses, got['loss']):.2e}")
    assert _rel(u, want) <= tol_u, (count, _rel(u, want))
  np.testing.assert_allclose(losses, got["loss"], rtol=tol_loss)


@pytest.mark.parametrize("label_mode", ["static", "dynamic"])
def test_student_steps_match_the_reference_without_augmentation(label_mode):
  """``student.make_student_step`` with augment 'none' and MixUp off (window (4, 4), no flip,
  lam 1, identity permutation in the reference), float32, 5 steps of AdamW + cosine."""
  steps, batch = 5, 8
  net, model, variables = _converted("resnet_tiny", 7, calibrate=False)
  biased_twin = copy.deepcopy(net)
  hook = ref.BiasedRunningVar(biased_twin)
  cfg = student.StudentConfig(
    arch="resnet_tiny", augment="none", mixup_alpha=0.0, batch_size=batch, epochs=1
  )
  tx = student.make_optimizer(cfg, steps)
  label_fn = label_vars = t_nets = None
  if label_mode == "dynamic":
    t_nets, teachers = [], []
    for seed in (11, 12):
      t_net, t_model, t_vars = _converted("resnet_tiny", seed, logit_scale=30.0)
      t_nets.append(t_net)
      teachers.append(checkpoint.Teacher(t_model, t_vars, {"architecture": "resnet_tiny"}))
    label_fn = evaluate.ensemble_label_fn(teachers)
    label_vars = label_fn.variables
  step = student.make_student_step(
    model,
    tx,
    cfg,
    mean=MEAN,
    std=STD,
    num_classes=10,
    label_mode=label_mode,
    label_fn=label_fn,
  )
  state = train_lib.TrainState(
    step=jnp.zeros((), jnp.int32),
    params=variables["params"],
    batch_stats=variables["batch_stats"],
    opt_state=tx.init(variables["params"]),
  )
  rng = np.random.default_rng(2)
  opt = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=0.01)
  opt_twin = torch.optim.AdamW(biased_twin.parameters(), lr=1e-3, weight_decay=0.01)
  ours, theirs = [], []
  for t in range(steps):
    pixels = rng.uniform(size=(batch, 16, 16, 3)).astype(np.float32)
    soft = (5 * rng.normal(size=(batch, 10))).astype(np.float32)
    normalised = ((pixels - np.float32(MEAN)) / np.float32(STD)).astype(np.float32)
    data = {"image": normalised, "label": np.zeros(batch, np.int32)}
    if label_mode == "static":
      data["soft_label"] = soft
    with jax.default_matmul_precision("highest"):
      state, metrics = step(state, data, student.data_key(0), label_vars)
    ours.append(float(metrics["loss"]))
    draws = dict(
      tops=[4] * batch,
      lefts=[4] * batch,
      flips=[False] * batch,
      lam=1.0,
      perm=list(range(batch)),
      lr=ref.cosine_lr(1e-3, t, steps),
      mean=MEAN,
      std=STD,
      teachers=t_nets,
    )
    args = (_nchw(pixels), torch.from_numpy(soft) if label_mode == "static" else None)
    theirs.append(ref.student_step(net, opt, *args, **draws))
    ref.student_step(biased_twin, opt_twin, *args, **draws)
  hook.remove()
  np.testing.assert_allclose(ours, theirs, rtol=1e-5)
  shape = (16, 16, 3)

  def as_flax(module):
    return convert.torch_state_to_flax(
      {k: v.detach().numpy() for k, v in module.state_dict().items()},
      checkpoint.abstract_variables(model, shape),
    )

  unbiased, biased = as_flax(net), as_flax(biased_twin)

  def flat(tree, leaf=None):
    items = sorted(traverse_util.flatten_dict(tree).items())
    return np.concatenate([np.ravel(a) for k, a in items if leaf is None or k[-1] == leaf])

  ours_p, want_p = flat(state.params), flat(biased["params"])
  errors = {
    "loss": _rel(ours, theirs),
    "params": _rel(ours_p, want_p),
    "params (unbiased twin)": _rel(ours_p, flat(unbiased["params"])),
    "running mean": _rel(flat(state.batch_stats, "mean"), flat(biased["batch_stats"], "mean")),
    "running var": _rel(flat(state.batch_stats, "var"), flat(biased["batch_stats"], "var")),
  }
  print(label_mode, {k: f"{v:.2e}" for k, v in errors.items()})
  assert max(errors.values()) <= 1e-5, errors
  # Flax updates the running variance with the biased batch variance, PyTorch with the
  # unbiased one: ours equals the reference under the biased rule (above) and is below
  # PyTorch's by the accumulated 0.1 * var / (n - 1) terms.
  torch_var = flat(unbiased["batch_stats"], "var")
  gap = flat(biased["batch_stats"], "var") - torch_var
  assert np.all(gap < 0)
  np.testing.assert_allclose(flat(state.batch_stats, "var") - torch_var, gap, rtol=1e-2, atol=1e-7)
  off = _rel(flat(state.batch_stats, "var"), torch_var)
  print(label_mode, f"running var vs PyTorch's unbiased rule: {off:.2e}")
