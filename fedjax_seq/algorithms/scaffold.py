"""SCAFFOLD with the original implementation's semantics.

State: server model, server control c and every client's control c_i as one
stacked pytree with a leading axis of size K (zeros at start); a round
gathers the selected rows and scatters them back, leaving the others
untouched. Local step: gradient + weight decay + (c - c_i). New control
("option 1"): the average task-loss gradient at the received server model
over the client's own batches. Server: dataset-size-weighted average of the
client models; c += (1/K) * sum of the round's (c_i_new - c_i).
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_seq.core.rounds import (Algorithm, gather_rows, scatter_rows, stacked_zeros,
                                    uniform_sampler, weighted_mean)


class ScaffoldState(NamedTuple):
  params: Any
  control: Any          # c, like params
  client_controls: Any  # c_i for all K clients, leading axis K


class ScaffoldOut(NamedTuple):
  params: Any
  control: Any  # the client's new c_i
  delta: Any    # c_i_new - c_i
  loss: jax.Array
  weight: jax.Array


def scaffold(trainer, num_clients: int, fraction: float) -> Algorithm:
  """SCAFFOLD over K clients, max(int(C*K), 1) per round (see the module docstring)."""

  def init(params):
    zeros = jax.tree.map(jnp.zeros_like, params)
    return ScaffoldState(params, zeros, stacked_zeros(params, num_clients))

  def participant_update(state, data, client_id, key):
    key = jax.random.fold_in(key, client_id)
    c_i = gather_rows(state.client_controls, client_id)
    res = trainer.train(state.params, data, client_id, key, ctx=(state.control, c_i),
                        grad_term=lambda w, ctx: jax.tree.map(jnp.subtract, *ctx))
    new_c_i = trainer.mean_gradient(state.params, data, client_id, jax.random.fold_in(key, 1))
    delta = jax.tree.map(jnp.subtract, new_c_i, c_i)
    size = data.client_sizes[client_id].astype(jnp.float32)
    return ScaffoldOut(res.params, new_c_i, delta, res.loss, size)

  def aggregate(state, client_ids, outs):
    params = weighted_mean(outs.params, outs.weight)
    control = jax.tree.map(lambda c, d: c + jnp.sum(d, 0) / num_clients, state.control,
                           outs.delta)
    client_controls = scatter_rows(state.client_controls, client_ids, outs.control)
    return ScaffoldState(params, control, client_controls), {"train_loss": jnp.mean(outs.loss)}

  return Algorithm(init, uniform_sampler(num_clients, fraction), participant_update, aggregate)
