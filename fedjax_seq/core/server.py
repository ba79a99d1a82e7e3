"""Server optimizers: the round's aggregate as a pseudo-gradient for an optax transform.

Each round an algorithm proposes a new server model (the clients' or
superclients' weighted average, or FedDyn's corrected average). With a server
optimizer the server treats g = (server params - proposal) as a gradient and
takes one step of an optax transform on it, as fedjax's
`fed_avg(..., server_optimizer=...)` and "Adaptive Federated Optimization"
(ICLR 2021) do. SGD with lr 1 makes the proposal the new model:
that is FedAvg, and `server_optimizer` returns None for it, so the default
round takes the proposal as is, bit for bit (x - 1 * (x - a) need not equal a
in floating point).

The adaptive optimizers follow that paper's Algorithm 2, with Delta = -g:
m <- b1 m + (1 - b1) Delta; v <- v + Delta^2 (FedAdagrad),
v <- v - (1 - b2) Delta^2 sign(v - Delta^2) (FedYogi),
v <- b2 v + (1 - b2) Delta^2 (FedAdam); x <- x + lr m / (sqrt(v) + eps),
with m = 0 and v = eps^2 at the start (their v_{-1} >= tau^2) and no bias
correction. FedAvgM is SGD with heavy-ball momentum on g (optax.sgd).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_seq.errors import InputError

OPTIMIZERS = ("sgd", "momentum", "adam", "yogi", "adagrad")
ADAPTIVE = ("adam", "yogi", "adagrad")


class FedOptState(NamedTuple):
  """First and second moments of the adaptive server optimizers (see module)."""
  m: Any
  v: Any


def scale_by_fedopt(kind: str, b1: float, b2: float, eps: float) -> optax.GradientTransformation:
  """Algorithm 2's direction m / (sqrt(v) + eps) of a pseudo-gradient (see module)."""
  if kind not in ADAPTIVE:
    raise ValueError(f"unknown adaptive optimizer {kind!r}; valid: {', '.join(ADAPTIVE)}")

  def init(params):
    return FedOptState(jax.tree.map(jnp.zeros_like, params),
                       jax.tree.map(lambda p: jnp.full_like(p, eps * eps), params))

  def update(grads, state, params=None):
    del params
    m = jax.tree.map(lambda m, g: b1 * m + (1 - b1) * g, state.m, grads)
    if kind == "adagrad":
      v = jax.tree.map(lambda v, g: v + g * g, state.v, grads)
    elif kind == "yogi":
      v = jax.tree.map(lambda v, g: v - (1 - b2) * g * g * jnp.sign(v - g * g), state.v, grads)
    else:
      v = jax.tree.map(lambda v, g: b2 * v + (1 - b2) * g * g, state.v, grads)
    return jax.tree.map(lambda m, v: m / (jnp.sqrt(v) + eps), m, v), FedOptState(m, v)

  return optax.GradientTransformation(init, update)


def server_optimizer(name: str = "sgd", *, lr: float = 1.0, momentum: float = 0.9,
                     b1: float = 0.9, b2: float = 0.99,
                     eps: float = 1e-3) -> optax.GradientTransformation | None:
  """The server's optax transform by name; None for SGD with lr 1 (FedAvg: the proposal as is).

  Args:
    name: one of OPTIMIZERS: "sgd", "momentum" (FedAvgM), "adam", "yogi",
      "adagrad" (FedAdam, FedYogi, FedAdagrad).
    lr: server learning rate (eta).
    momentum: FedAvgM's momentum (beta).
    b1, b2: first- and second-moment decays of the adaptive ones (Reddi et
      al.: 0.9 and 0.99).
    eps: their adaptivity tau, added to sqrt(v).
  """
  if name not in OPTIMIZERS:
    raise InputError(f"unknown optimizer {name!r}; valid: {', '.join(OPTIMIZERS)}",
                     argument="optimizer")
  if not lr > 0:
    raise InputError(f"lr must be > 0, got {lr}", argument="lr")
  for arg, value in (("momentum", momentum), ("b1", b1), ("b2", b2)):
    if not 0 <= value < 1:
      raise InputError(f"{arg} must be in [0, 1), got {value}", argument=arg)
  if not eps > 0:
    raise InputError(f"eps must be > 0, got {eps}", argument="eps")
  if name == "sgd":
    return None if lr == 1.0 else optax.sgd(lr)
  if name == "momentum":
    return optax.sgd(lr, momentum=momentum)
  return optax.chain(scale_by_fedopt(name, b1, b2, eps), optax.scale(-lr))


def init(optimizer: optax.GradientTransformation | None, params):
  """The optimizer's state (None without one)."""
  return None if optimizer is None else optimizer.init(params)


def step(optimizer: optax.GradientTransformation | None, params, proposal, opt_state):
  """(new server params, new optimizer state) from the round's proposed model."""
  if optimizer is None:
    return proposal, opt_state
  grads = jax.tree.map(jnp.subtract, params, proposal)
  updates, opt_state = optimizer.update(grads, opt_state, params)
  return optax.apply_updates(params, updates), opt_state
