"""FedDyn, in the paper's form and in the form of the original FedSeq code.

State: server model, server h (zeros) and every client's g_i stacked with a
leading axis K (zeros). Server, both variants, with n the round's clients:
h <- h - (alpha/K) * (sum_i w_i - n * w_server); w <- mean_i w_i - h / alpha.

variant="paper": local objective = task loss - <w, g_i>
  + (alpha/2) * ||w - w_server||^2, both terms differentiated; after local
  training g_i <- g_i - alpha * (w_final - w_server).
variant="original": the original PyTorch client computes the linear term
  from detached parameters, so only the quadratic term reaches the gradient,
  and it applies g_i <- g_i - alpha * (w_current - w_server) after every
  local step. Kept to reproduce the published numbers.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_seq.core.rounds import (Algorithm, gather_rows, scatter_rows, stacked_zeros,
                                    uniform_sampler)

VARIANTS = ("paper", "original")


class FedDynState(NamedTuple):
  params: Any
  h: Any
  client_grads: Any  # g_i for all K clients, leading axis K


class FedDynOut(NamedTuple):
  params: Any
  grad: Any  # the client's new g_i
  loss: jax.Array


def dyn_local_update(trainer, alpha: float, variant: str, params, g_i, data, client_id, key):
  """One client's FedDyn training from `params` (its anchor); returns (result, new g_i).

  Shared with FedSeq+Dyn, where each member of a chain anchors on the model
  it receives.
  """
  quad = lambda w, anchor: jax.tree.map(lambda a, b: alpha * (a - b), w, anchor)
  if variant == "paper":
    res = trainer.train(params, data, client_id, key, ctx=(g_i, params),
                        grad_term=lambda w, ctx: jax.tree.map(jnp.subtract, quad(w, ctx[1]),
                                                              ctx[0]))
    new_g = jax.tree.map(jnp.subtract, g_i, quad(res.params, params))
    return res, new_g
  if variant == "original":
    res = trainer.train(params, data, client_id, key, ctx=(g_i, params),
                        grad_term=lambda w, ctx: quad(w, ctx[1]),
                        post_step=lambda w, ctx: (jax.tree.map(jnp.subtract, ctx[0],
                                                               quad(w, ctx[1])), ctx[1]))
    return res, res.ctx[0]
  raise ValueError(f"unknown FedDyn variant {variant!r}")


def dyn_server_update(params, h, models, alpha: float, num_clients: int):
  """(new params, new h) from the stacked models of the round's n participants."""
  n = jax.tree.leaves(models)[0].shape[0]
  total = jax.tree.map(lambda m: jnp.sum(m, 0), models)
  h = jax.tree.map(lambda h, s, w: h - alpha / num_clients * (s - n * w), h, total, params)
  params = jax.tree.map(lambda s, h: s / n - h / alpha, total, h)
  return params, h


def feddyn(trainer, num_clients: int, fraction: float, *, alpha: float = 0.1,
           variant: str = "paper") -> Algorithm:
  """FedDyn over K clients, max(int(C*K), 1) per round (see the module docstring)."""
  if variant not in VARIANTS:
    raise ValueError(f"unknown FedDyn variant {variant!r}")

  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return FedDynState(params, zeros, stacked_zeros(params, num_clients))

  def participant_update(state, data, client_id, key):
    key = jax.random.fold_in(key, client_id)
    g_i = gather_rows(state.client_grads, client_id)
    res, new_g = dyn_local_update(trainer, alpha, variant, state.params, g_i, data, client_id,
                                  key)
    return FedDynOut(res.params, new_g, res.loss)

  def aggregate(state, client_ids, outs):
    params, h = dyn_server_update(state.params, state.h, outs.params, alpha, num_clients)
    grads = scatter_rows(state.client_grads, client_ids, outs.grad)
    return FedDynState(params, h, grads), {"train_loss": jnp.mean(outs.loss)}

  return Algorithm(init, uniform_sampler(num_clients, fraction), participant_update, aggregate)
