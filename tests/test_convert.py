"""PyTorch interop: converted reference modules behave exactly like the zoo models.

The PyTorch modules are our own (tests/torch_refs, written to the torchvision and CIFAR
layouts) with random weights and non-trivial BatchNorm statistics. Each is converted with
``infer_jax.convert`` and run in inference mode on the same random batch. Tolerances
(float32 on CPU, both sides):

* logits: ``|jax - torch| <= 1e-4 * max|torch|`` (relative to the logit scale);
* BN-input statistics (per-channel mean and biased variance of every BatchNorm input,
  captured with forward pre-hooks in PyTorch and ``bn_stats.capture_bn_statistics`` here),
  layer by layer: ``|jax - torch| <= 1e-4 * max|torch|``; the same layers run, and the same
  layer runs first;
* the recover loss (mean CE + r_bn * BN matching, first layer weighted 10) of
  ``bn_stats.teacher_loss`` against the same loss written in PyTorch: relative 1e-4;
* its gradient with respect to the input: ``||jax - torch|| <= 1e-3 * ||torch||``.

Tests skip where torch is not installed.
"""

from __future__ import annotations

import copy
import functools

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from infer_jax import bn_stats, checkpoint, convert, models

torch = pytest.importorskip("torch")
F = torch.nn.functional
# One thread: on a small shared CPU, PyTorch's intra-op threads contend with XLA's and a
# 32x32 ResNet-18 forward takes ~1 s instead of ~0.03 s.
torch.set_num_threads(1)

from tests.torch_refs import mobile, resnet, shufflenet  # noqa: E402

# Every architecture the converter covers (zoo name, stem), at full width.
COVERED = [
  ("resnet18", "cifar"),
  ("resnet18", "imagenet"),
  ("resnet34", "cifar"),
  ("resnet34", "imagenet"),
  ("resnet50", "cifar"),
  ("resnet50", "imagenet"),
  ("resnet101", "cifar"),
  ("resnet101", "imagenet"),
  ("mobilenetv2", "cifar"),
  ("mobilenetv2", "imagenet"),
  ("efficientnet_b0", "cifar"),
  ("efficientnet_b0", "imagenet"),
  ("shufflenet_g2", "cifar"),
  ("shufflenetv2", "cifar"),
  ("shufflenetv2", "imagenet"),
  ("convnet", "cifar"),
]
R_BN, FIRST_MULTIPLIER = 0.5, 10.0


def reference(name: str, num_classes: int, stem: str, image_size: int = 32):
  """Our PyTorch reference module of a zoo architecture (same module names, '.' -> '_')."""
  if name.startswith(("resnet", "convnet")):
    return resnet.build(name, num_classes, stem, image_size=image_size)
  if name.startswith(("mobilenetv2", "efficientnet")):
    return mobile.build(name, num_classes, stem)
  if name.startswith("shufflenetv2"):
    return getattr(shufflenet, name)(num_classes, stem=stem)
  return getattr(shufflenet, name)(num_classes)


def randomize_batch_norm(ref, x_calibration, seed: int = 0) -> None:
  """Non-trivial BN parameters and statistics that keep a deep network well conditioned.

  Random affine parameters; running statistics measured on a calibration batch (with
  those parameters), then perturbed by a few percent. Arbitrary running statistics would
  compound over tens of layers into huge, ill-conditioned activations, which test float32
  rounding rather than the conversion.
  """
  gen = torch.Generator().manual_seed(seed)
  bns = [m for m in ref.modules() if isinstance(m, torch.nn.BatchNorm2d)]
  with torch.no_grad():
    for m in bns:
      c = m.num_features
      m.weight.copy_(torch.rand(c, generator=gen) * 0.5 + 0.75)
      m.bias.copy_(0.1 * torch.randn(c, generator=gen))
      m.reset_running_stats()
      m.momentum = None  # cumulative average: one batch sets the running stats to its own
    ref.train()
    ref(x_calibration)
    for m in bns:
      m.momentum = 0.1
      c = m.num_features
      m.running_mean.add_(0.1 * torch.randn(c, generator=gen) * m.running_var.sqrt())
      m.running_var.mul_(torch.exp(0.1 * torch.randn(c, generator=gen)))
  ref.eval()


def torch_recover_loss(ref, x_nchw: np.ndarray, labels: np.ndarray):
  """The recover objective written independently in PyTorch, with forward pre-hooks.

  Returns:
    ``(logits [N, C], {module name: (mean, var)}, first BN name, loss, d loss / d x NCHW)``.
  """
  stats, order, handles = {}, [], []
  for name, m in ref.named_modules():
    if isinstance(m, torch.nn.BatchNorm2d):

      def hook(module, inputs, name=name):
        x = inputs[0]
        stats[name] = (x.mean(dim=(0, 2, 3)), x.var(dim=(0, 2, 3), unbiased=False))
        order.append(name)

      handles.append(m.register_forward_pre_hook(hook))
  x = torch.from_numpy(x_nchw).requires_grad_(True)
  try:
    logits = ref(x)
  finally:
    for h in handles:
      h.remove()
  bn = 0.0
  for name in order:
    m = dict(ref.named_modules())[name]
    mean, var = stats[name]
    term = torch.linalg.vector_norm(mean - m.running_mean) + torch.linalg.vector_norm(
      var - m.running_var
    )
    bn = bn + (FIRST_MULTIPLIER if name == order[0] else 1.0) * term
  loss = F.cross_entropy(logits, torch.from_numpy(labels).long()) + R_BN * bn
  loss.backward()
  as_np = {k: (a.detach().numpy(), b.detach().numpy()) for k, (a, b) in stats.items()}
  return logits.detach().numpy(), as_np, order[0], float(loss.detach()), x.grad.numpy()


@functools.cache
def _jax_step(name: str, stem: str, num_classes: int, image_size: int, batch: int):
  """One compiled function: BN statistics, and the recover loss with its input gradient."""
  model = models.create_model(name, num_classes, stem=stem)
  first = bn_stats.bn_layer_order(
    model,
    checkpoint.abstract_variables(model, (image_size, image_size, 3)),
    (batch, image_size, image_size, 3),
  )[0]

  def step(variables, x, labels):
    logits, stats = bn_stats.capture_bn_statistics(model, variables, x)
    loss_fn = functools.partial(
      bn_stats.teacher_loss,
      model,
      variables,
      labels=labels,
      r_bn=R_BN,
      first_layer=first,
      first_multiplier=FIRST_MULTIPLIER,
    )
    (loss, _), grad = jax.value_and_grad(loss_fn, has_aux=True)(x)
    return logits, stats, loss, grad

  return jax.jit(step), first


def _close(actual, expected, rel: float, what: str) -> None:
  """``|actual - expected| <= rel * max|expected|`` elementwise."""
  actual, expected = np.asarray(actual), np.asarray(expected)
  assert actual.shape == expected.shape, (what, actual.shape, expected.shape)
  scale = max(float(np.max(np.abs(expected))), 1e-12)
  err = float(np.max(np.abs(actual - expected)))
  assert err <= rel * scale, f"{what}: max error {err:.3g} > {rel} * {scale:.3g}"


def check_parity(name: str, stem: str, *, num_classes: int = 10, image_size: int = 32, seed=0):
  """Converts the reference and checks logits, BN statistics, loss and input gradient."""
  torch.manual_seed(seed)
  ref = reference(name, num_classes, stem, image_size)
  rng = np.random.default_rng(seed)
  batch = 4
  shape = (batch, 3, image_size, image_size)
  randomize_batch_norm(ref, torch.from_numpy(rng.normal(size=(8, *shape[1:])).astype(np.float32)))
  x = rng.normal(size=shape).astype(np.float32)
  labels = rng.integers(0, num_classes, size=batch)
  t_logits, t_stats, t_first, t_loss, t_grad = torch_recover_loss(ref, x, labels)
  # The gradient of a deep random network is ill-conditioned in float32 (PyTorch's own
  # float32 gradient is up to ~0.6% from its float64 one), so the gradient is compared
  # with the float64 gradient of the same PyTorch module.
  g64 = torch_recover_loss(copy.deepcopy(ref).double(), x.astype(np.float64), labels)[-1]
  torch_err = np.linalg.norm(t_grad - g64) / np.linalg.norm(g64)

  model = models.create_model(name, num_classes, stem=stem)
  state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  image_shape = (image_size, image_size, 3)
  variables = convert.torch_state_to_flax(
    state,
    checkpoint.abstract_variables(model, image_shape),
    flatten_shapes=convert.feature_map_shapes(model, image_shape),
  )
  step, first = _jax_step(name, stem, num_classes, image_size, batch)
  with jax.default_matmul_precision("highest"):
    logits, stats, loss, grad = step(
      variables, jnp.asarray(x.transpose(0, 2, 3, 1)), jnp.asarray(labels)
    )

  _close(logits, t_logits, 1e-4, "logits")
  flat = _flat_stats(stats)
  assert set(flat) == {k.replace(".", "_") for k in t_stats}, "different BN layers ran"
  assert "_".join(first) == t_first.replace(".", "_"), (first, t_first)
  for key, (t_mean, t_var) in t_stats.items():
    mean, var = flat[key.replace(".", "_")]
    _close(mean, t_mean, 1e-4, f"BN input mean of {key}")
    _close(var, t_var, 1e-4, f"BN input var of {key}")
  np.testing.assert_allclose(float(loss), t_loss, rtol=1e-4)
  grad_nchw = np.asarray(grad).transpose(0, 3, 1, 2)
  assert np.linalg.norm(g64) > 0
  rel = np.linalg.norm(grad_nchw - g64) / np.linalg.norm(g64)
  assert rel <= max(1e-3, 2 * torch_err), (
    f"input gradient: relative error {rel:.3g} from PyTorch's float64 gradient, where "
    f"PyTorch's float32 gradient has {torch_err:.3g}"
  )
  return {"loss": t_loss, "grad_rel_err": float(rel), "torch_f32_err": float(torch_err)}


def _flat_stats(stats) -> dict[str, tuple[np.ndarray, np.ndarray]]:
  """``{'layer1_0_bn1': (mean, var)}`` of a captured statistics tree."""
  from flax import traverse_util

  out: dict[str, list] = {}
  for path, v in traverse_util.flatten_dict(stats).items():
    out.setdefault("_".join(path[:-1]), {})[path[-1]] = np.asarray(v)
  return {k: (d["mean"], d["var"]) for k, d in out.items()}


@pytest.mark.parametrize("name,stem", COVERED)
def test_full_width_state_dict_converts_to_the_zoo_model(name, stem):
  """Key set and every shape of the full-size reference layout, at the dataset's class count."""
  num_classes = 1000 if stem == "imagenet" else 100
  image_size = 224 if stem == "imagenet" else 32
  ref = reference(name, num_classes, stem, image_size)
  model = models.create_model(name, num_classes, stem=stem)
  abstract = checkpoint.abstract_variables(model, (image_size, image_size, 3))
  state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  variables = convert.torch_state_to_flax(state, abstract)
  chex.assert_trees_all_equal_shapes(variables, abstract)


# Numerical parity (logits, BN statistics, loss, input gradient) at full width. ResNet-34
# and ResNet-101 are ResNet-18's and ResNet-50's blocks repeated more often: their logits
# are checked below, their full key sets and shapes above.
PARITY = [
  c for c in COVERED if c[0] not in ("resnet34", "resnet101") and c != ("resnet50", "cifar")
]


@pytest.mark.parametrize("name,stem", PARITY)
def test_converted_reference_matches_in_logits_bn_statistics_loss_and_gradient(name, stem):
  check_parity(name, stem)


@pytest.mark.parametrize(
  "name,stem", [("resnet34", "imagenet"), ("resnet50", "cifar"), ("resnet101", "cifar")]
)
def test_deep_resnets_give_the_same_logits(name, stem):
  torch.manual_seed(1)
  ref = reference(name, 10, stem)
  rng = np.random.default_rng(1)
  randomize_batch_norm(ref, torch.from_numpy(rng.normal(size=(8, 3, 32, 32)).astype(np.float32)))
  x = rng.normal(size=(2, 3, 32, 32)).astype(np.float32)
  with torch.no_grad():
    expected = ref(torch.from_numpy(x)).numpy()
  model = models.create_model(name, 10, stem=stem)
  state = {k: v.detach().numpy() for k, v in ref.state_dict().items()}
  variables = convert.torch_state_to_flax(state, checkpoint.abstract_variables(model, (32, 32, 3)))
  apply = jax.jit(functools.partial(model.apply, train=False))
  logits = apply(variables, jnp.asarray(x.transpose(0, 2, 3, 1)))
  _close(logits, expected, 1e-4, "logits")
