"""BN-input statistics capture and the BN-matching loss against a plain NumPy computation."""

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from infer_jax.core import bn_stats

EPS = 1e-5


class _Block(nn.Module):
  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(5, (1, 1), use_bias=False, name="conv")(x)
    return nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=EPS, name="bn")(x)


class _Toy(nn.Module):
  """conv3x3 -> BN -> ReLU -> [conv1x1 -> BN] -> mean -> dense.

  The first BN is named 'z_bn' so that sorted-key order differs from call order.
  """

  @nn.compact
  def __call__(self, x, train=False):
    x = nn.Conv(4, (3, 3), padding=((1, 1), (1, 1)), use_bias=False, name="conv1")(x)
    x = nn.BatchNorm(use_running_average=not train, momentum=0.9, epsilon=EPS, name="z_bn")(x)
    x = nn.relu(x)
    x = _Block(name="block")(x, train)
    return nn.Dense(3, name="fc")(jnp.mean(x, axis=(1, 2)))


def _toy_variables(seed=0):
  """Random params and non-trivial running statistics."""
  model = _Toy()
  # Every value is replaced below: an rbg key, whose bits compile faster than threefry's.
  variables = model.init(jax.random.key(seed, impl="rbg"), jnp.zeros((1, 5, 5, 3)))
  rng = np.random.default_rng(seed)

  def randomise(path, leaf):
    if path[-1] == "mean":
      return jnp.asarray(rng.normal(size=leaf.shape), jnp.float32)
    if path[-1] == "var":
      return jnp.asarray(rng.uniform(0.5, 2.0, size=leaf.shape), jnp.float32)
    return jnp.asarray(rng.normal(size=leaf.shape), jnp.float32)

  flat = traverse_util.flatten_dict(variables)
  flat = {k: randomise(k, v) for k, v in flat.items()}
  return model, traverse_util.unflatten_dict(flat)


def _np_forward(v, x):
  """NumPy reference: logits and the BN inputs of the toy model."""
  p, s = v["params"], v["batch_stats"]
  xp = np.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  k = np.asarray(p["conv1"]["kernel"], np.float64)
  h1 = np.zeros(x.shape[:3] + (4,))
  for i in range(3):
    for j in range(3):
      h1 += np.einsum("nhwc,co->nhwo", xp[:, i : i + x.shape[1], j : j + x.shape[2]], k[i, j])

  def bn(h, stats, params):
    return (h - stats["mean"]) / np.sqrt(stats["var"] + EPS) * params["scale"] + params["bias"]

  a1 = np.maximum(bn(h1, s["z_bn"], p["z_bn"]), 0)
  h2 = np.einsum("nhwc,co->nhwo", a1, np.asarray(p["block"]["conv"]["kernel"][0, 0]))
  a2 = bn(h2, s["block"]["bn"], p["block"]["bn"])
  logits = a2.mean(axis=(1, 2)) @ np.asarray(p["fc"]["kernel"]) + np.asarray(p["fc"]["bias"])
  return logits, {("z_bn",): h1, ("block", "bn"): h2}


def _np_bn_loss(bn_inputs, running, first, mult):
  flat = traverse_util.flatten_dict(running)
  total = 0.0
  for path, h in bn_inputs.items():
    mu, var = h.mean(axis=(0, 1, 2)), h.var(axis=(0, 1, 2))  # np.var is biased (ddof=0)
    w = mult if path == first else 1.0
    total += w * (
      np.linalg.norm(mu - flat[path + ("mean",)]) + np.linalg.norm(var - flat[path + ("var",)])
    )
  return total


def test_capture_matches_numpy():
  model, v = _toy_variables()
  x = np.random.default_rng(1).normal(size=(6, 5, 5, 3)).astype(np.float32)
  logits, stats = jax.jit(lambda v, x: bn_stats.capture_bn_statistics(model, v, x))(v, x)
  np_logits, np_inputs = _np_forward(jax.tree.map(np.asarray, v), x.astype(np.float64))
  np.testing.assert_allclose(logits, np_logits, rtol=1e-4, atol=1e-4)
  # Same structure as batch_stats (both layers ran here).
  chex.assert_trees_all_equal_structs(stats, v["batch_stats"])
  flat = traverse_util.flatten_dict(stats)
  for path, h in np_inputs.items():
    np.testing.assert_allclose(flat[path + ("mean",)], h.mean(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(flat[path + ("var",)], h.var(axis=(0, 1, 2)), rtol=1e-5, atol=1e-5)
    chex.assert_type(flat[path + ("var",)], jnp.float32)


def test_layer_order_is_call_order_not_key_order():
  model, v = _toy_variables()
  order = bn_stats.bn_layer_order(model, v, (2, 5, 5, 3))
  assert order == (("z_bn",), ("block", "bn"))


@pytest.mark.parametrize("mult", [1.0, 10.0])
def test_bn_loss_and_teacher_loss_match_numpy(mult):
  model, v = _toy_variables()
  x = np.random.default_rng(2).normal(size=(4, 5, 5, 3)).astype(np.float32)
  labels = np.array([0, 2, 1, 2])
  first = bn_stats.bn_layer_order(model, v, x.shape)[0]
  loss, aux = jax.jit(
    lambda v, x, y: bn_stats.teacher_loss(
      model, v, x, y, r_bn=0.5, first_layer=first, first_multiplier=mult
    )
  )(v, x, labels)
  np_logits, np_inputs = _np_forward(jax.tree.map(np.asarray, v), x.astype(np.float64))
  np_bn = _np_bn_loss(np_inputs, jax.tree.map(np.asarray, v["batch_stats"]), first, mult)
  z = np_logits - np_logits.max(axis=1, keepdims=True)
  logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
  np_ce = -logp[np.arange(4), labels].mean()
  np.testing.assert_allclose(aux["bn"], np_bn, rtol=1e-4)
  np.testing.assert_allclose(aux["ce"], np_ce, rtol=1e-4)
  np.testing.assert_allclose(loss, np_ce + 0.5 * np_bn, rtol=1e-4)
  chex.assert_shape(loss, ())


def test_input_gradient_matches_finite_differences():
  model, v = _toy_variables()
  first = ("z_bn",)
  x = np.random.default_rng(3).normal(size=(3, 5, 5, 3))
  labels = np.array([0, 1, 2])
  with jax.enable_x64():
    v64 = jax.tree.map(lambda a: jnp.asarray(a, jnp.float64), v)

    def f(x):
      return bn_stats.teacher_loss(model, v64, x, labels, r_bn=1.0, first_layer=first)[0]

    jax.test_util.check_grads(f, (jnp.asarray(x),), order=1, modes=("rev",), eps=1e-4)


def test_vmap_over_subsets_equals_loop_and_traces_once():
  model, v = _toy_variables()
  x = np.random.default_rng(4).normal(size=(3, 4, 5, 5, 3)).astype(np.float32)  # [K, C, ...]
  labels = np.tile(np.array([0, 1, 2, 0]), (3, 1))
  first = ("z_bn",)

  @jax.jit
  @chex.assert_max_traces(n=1)
  def all_subsets(v, x, y):
    return jax.vmap(
      lambda xk, yk: bn_stats.teacher_loss(model, v, xk, yk, r_bn=1.0, first_layer=first)[0]
    )(x, y)

  losses = all_subsets(v, x, labels)
  all_subsets(v, x + 1.0, labels)  # same shapes: no retrace
  chex.assert_shape(losses, (3,))
  for k in range(3):
    loss_k, _ = bn_stats.teacher_loss(model, v, x[k], labels[k], r_bn=1.0, first_layer=first)
    np.testing.assert_allclose(losses[k], loss_k, rtol=1e-5)


def test_bn_loss_keeps_leading_axes():
  model, v = _toy_variables()
  x = np.random.default_rng(5).normal(size=(2, 4, 5, 5, 3)).astype(np.float32)
  stats = jax.vmap(lambda xk: bn_stats.capture_bn_statistics(model, v, xk)[1])(x)
  loss = bn_stats.bn_matching_loss(stats, v["batch_stats"], first_layer=("z_bn",))
  chex.assert_shape(loss, (2,))


def test_bn_loss_gradient_is_zero_at_exact_match():
  # When a subset's statistics equal the running ones exactly, ||.||_2 has no gradient;
  # the loss must give 0 there (a subgradient, and the minimum), not NaN or anything else.
  stats = {"bn": {"mean": jnp.ones(3), "var": jnp.ones(3)}}
  g = jax.grad(lambda s: bn_stats.bn_matching_loss(s, stats, first_layer=None))(stats)
  chex.assert_trees_all_equal(g, jax.tree.map(jnp.zeros_like, stats))
  # Away from the match it is the unit vector (s - r) / ||s - r|| (by hand: (3, 4) / 5).
  moved = {"bn": {"mean": jnp.array([1.0, 4.0, 5.0]), "var": jnp.ones(3)}}
  g = jax.grad(lambda s: bn_stats.bn_matching_loss(s, stats, first_layer=None))(moved)
  np.testing.assert_allclose(g["bn"]["mean"], [0.0, 0.6, 0.8], rtol=1e-6)
  np.testing.assert_array_equal(g["bn"]["var"], np.zeros(3))


def test_errors():
  model, v = _toy_variables()
  x = jnp.zeros((2, 5, 5, 3))
  _, stats = bn_stats.capture_bn_statistics(model, v, x)
  with pytest.raises(KeyError, match="first_layer"):
    bn_stats.bn_matching_loss(stats, v["batch_stats"], first_layer=("nope",))
  with pytest.raises(KeyError, match="running statistics"):
    bn_stats.bn_matching_loss(stats, {"z_bn": v["batch_stats"]["z_bn"]}, first_layer=None)

  class NoBN(nn.Module):
    @nn.compact
    def __call__(self, x, train=False):
      return nn.Dense(3)(x)

  no_bn = NoBN()
  with pytest.raises(ValueError, match="no BatchNorm"):
    bn_stats.bn_layer_order(no_bn, no_bn.init(jax.random.key(0), jnp.zeros((1, 4))), (1, 4))


ZOO_TINY = [
  "resnet_tiny",
  "mobilenetv2_tiny",
  "efficientnet_tiny",
  "shufflenet_g2_tiny",
  "shufflenetv2_tiny",
  "convnet_tiny",
]


@pytest.mark.parametrize("name", ZOO_TINY)
def test_zoo_capture_agrees_with_flax_batchnorm(name):
  """On every family: in training mode, the captured input moments are exactly the batch
  statistics Flax's BatchNorm folds into its running averages."""
  from infer_jax import models
  from infer_jax.models.common import BN_MOMENTUM

  model = models.create_model(name, 10)
  x = jax.random.normal(jax.random.key(1), (6, 8, 8, 3))
  v = jax.jit(lambda k: model.init(k, x[:1], train=False))(jax.random.key(0, impl="rbg"))
  rngs = {"dropout": jax.random.key(2)}

  @jax.jit
  def run(v, x):
    _, updates = model.apply(v, x, train=True, mutable=["batch_stats"], rngs=rngs)
    _, stats = bn_stats.capture_bn_statistics(model, v, x, train=True, rngs=rngs)
    return updates["batch_stats"], stats

  new_running, stats = run(v, x)
  old = traverse_util.flatten_dict(v["batch_stats"])
  new = traverse_util.flatten_dict(new_running)
  captured = traverse_util.flatten_dict(stats)
  assert captured, "no BatchNorm statistics captured"
  for key, value in captured.items():
    # running <- m * running + (1 - m) * batch statistic (Flax: biased variance).
    batch_stat = (new[key] - BN_MOMENTUM * old[key]) / (1 - BN_MOMENTUM)
    np.testing.assert_allclose(value, batch_stat, rtol=2e-3, atol=2e-4, err_msg=str(key))
  # Every layer that ran is captured; a layer that never runs (EfficientNet's first-block
  # expansion, created only to mirror the reference's parameters) is not.
  ran = {k for k in old if not np.array_equal(old[k], new[k])}
  assert ran <= set(captured)
  order = bn_stats.bn_layer_order(model, v, x.shape)
  assert {p + ("mean",) for p in order} == {k for k in captured if k[-1] == "mean"}
