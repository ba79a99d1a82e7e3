"""Models: shapes, PyTorch-style init, and the two convolution formulations."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import linen as nn

from helpers import call_with_fusion_emitters
from fedjax_seq.core import engine
from fedjax_seq.models import get_model, initialize, is_convolutional


@pytest.mark.parametrize("shape,fc1_in", [((3, 32, 32, 3), 1600), ((3, 28, 28, 1), 1024)])
def test_lenet_im2col_equals_lax_conv(shape, fc1_in):
  x = jax.random.normal(jax.random.key(0), shape)
  y = jax.random.randint(jax.random.key(1), (shape[0],), 0, 10)
  a, b = get_model("lenet", 10, conv_impl="xla"), get_model("lenet", 10, conv_impl="im2col")
  # Jitted: one program each instead of an op-by-op compile of every layer (same formulas).
  params = jax.jit(a.init)(jax.random.key(2), x)
  assert params["params"]["fc1"]["kernel"].shape == (fc1_in, 384)
  np.testing.assert_allclose(jax.jit(a.apply)(params, x), jax.jit(b.apply)(params, x), atol=1e-5)

  def loss(m):
    return lambda p: jnp.mean(jax.nn.log_softmax(m.apply(p, x))[jnp.arange(shape[0]), y])

  ga, gb = jax.jit(jax.grad(loss(a)))(params), jax.jit(jax.grad(loss(b)))(params)
  for u, v in zip(jax.tree.leaves(ga), jax.tree.leaves(gb), strict=True):
    np.testing.assert_allclose(u, v, atol=1e-5)


def test_lenet_parameter_count_and_torch_init():
  params = jax.jit(get_model("lenet", 10).init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert sum(p.size for p in jax.tree.leaves(params)) == 797962  # as the original's LeNet
  k = np.asarray(params["params"]["fc1"]["kernel"])
  bound = 1 / np.sqrt(1600)
  assert np.abs(k).max() <= bound and np.abs(k).max() > 0.95 * bound


def test_mlp_is_2nn():
  params = get_model("mlp", 10).init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))
  shapes = {k: v["kernel"].shape for k, v in params["params"].items()}
  assert shapes == {"fc1": (784, 200), "fc2": (200, 200), "fc3": (200, 10)}


@pytest.mark.parametrize("name,shape", [("lenet", (5, 32, 32, 3)), ("lenet", (5, 28, 28, 1)),
                                        ("mlp", (5, 28, 28, 1)), ("mlp", (5, 32, 32, 3))])
def test_jitted_init_is_the_eager_init_bit_for_bit(name, shape):
  images = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
  for seed in range(3):
    key = jax.random.split(jax.random.key(seed))[0]
    model = get_model(name, 10)
    eager, jitted = model.init(key, images[:1].astype(np.float32)), initialize(model, key, images)
    assert jax.tree.structure(eager) == jax.tree.structure(jitted)
    for a, b in zip(jax.tree.leaves(eager), jax.tree.leaves(jitted), strict=True):
      assert a.dtype == b.dtype and np.asarray(a).tobytes() == np.asarray(b).tobytes()


class _DenseNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(x.reshape(x.shape[0], -1))


class _ConvNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    return nn.Dense(3)(nn.Conv(4, (3, 3))(x).reshape(x.shape[0], -1))


def test_strategy_auto_loops_on_cpu_for_convolutional_models_and_ragged_clients():
  """The registered LeNet convolves under either conv_impl (im2col has no lax.conv), a user's
  flax Conv too; the MLP and a user's dense module do not. auto: on CPU a loop for those or
  for clients of different sizes, else vmap."""
  shape = (8, 8, 1)
  found = {"lenet im2col": is_convolutional(get_model("lenet", 4, conv_impl="im2col"), shape),
           "lenet xla": is_convolutional(get_model("lenet", 4, conv_impl="xla"), shape),
           "user conv": is_convolutional(_ConvNet(), shape),
           "mlp": is_convolutional(get_model("mlp", 4), shape),
           "user dense": is_convolutional(_DenseNet(), shape)}
  assert found == {"lenet im2col": True, "lenet xla": True, "user conv": True, "mlp": False,
                   "user dense": False}

  def resolve(strategy, convolutional, equal_sizes, backend):
    return engine.resolve_strategy(strategy, convolutional=convolutional,
                                   equal_sizes=equal_sizes, backend=backend)
  assert resolve("auto", True, True, "cpu") == "loop"
  assert resolve("auto", False, True, "cpu") == "vmap"
  assert resolve("auto", False, False, "cpu") == "loop"  # ragged clients: bucketed loop
  assert resolve("auto", True, False, "gpu") == "vmap"
  assert resolve("loop", False, True, "gpu") == "loop"
  assert resolve("vmap", True, False, "cpu") == "vmap"


def test_unknown_model_lists_valid_names():
  with pytest.raises(ValueError, match="lenet, mlp"):
    get_model("resnet", 10)


def _plain_patch_matmul(patches, kernel, swapped):
  del swapped
  return jnp.dot(patches, kernel)  # the formulation before the custom VJP


def _fedavg_round_bytes(height, channels, strategy):
  """Server parameters after one paper-shaped FedAvg round (LeNet, B = 64, 100-image clients)."""
  from configs import fedavg
  from fedjax_seq.training import experiment
  c = fedavg.get_config()
  c.data.name, c.data.num_clients, c.model.conv_impl = "synthetic", 2, "im2col"
  c.data.exemplars_per_class = 0
  c.data.synthetic.update(train_size=200, test_size=20, height=height, width=height,
                          channels=channels)
  c.client.fraction, c.engine.strategy = 1.0, strategy
  exp = experiment.build(c)
  # Compared bit for bit with another program: both compiled with XLA's fusion emitters.
  state = exp.algorithm.init(exp.init_params)
  state, _ = call_with_fusion_emitters(exp.round_fn, state, exp.data, experiment.round_key(0, 1))
  return [np.asarray(p).tobytes() for p in jax.tree.leaves(state.params)]


@pytest.mark.parametrize("height,channels,strategy",
                         [(32, 3, "loop"), (28, 1, "vmap")])
def test_im2col_gradient_is_plain_autodiff_bit_for_bit(height, channels, strategy, monkeypatch):
  """The custom VJP only reschedules XLA; a paper-shaped round's bytes are unchanged."""
  from fedjax_seq.models import layers
  assert layers.SWAPPED_KERNEL_GRAD_MIN_WIDTH <= 5 * 5 * 64  # conv2 takes the swapped form
  got = _fedavg_round_bytes(height, channels, strategy)
  monkeypatch.setattr(layers, "patch_matmul", _plain_patch_matmul)
  want = _fedavg_round_bytes(height, channels, strategy)
  assert len(got) == 10 and got == want
