"""FedAvg (dataset-size weights) and the shared client-averaging skeleton.

FairAvg and FedProx are this algorithm with uniform weights or a proximal
correction; SCAFFOLD and FedDyn reuse its sampling and averaging.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_seq.core.engine import Correction
from fedjax_seq.core.rounds import Algorithm, uniform_sampler, weighted_mean


class ServerState(NamedTuple):
  params: Any


class ClientOut(NamedTuple):
  params: Any
  loss: jax.Array
  weight: jax.Array


WEIGHTINGS = ("size", "uniform")


def fedavg(trainer, num_clients: int, fraction: float, *, weighting: str = "size",
           correction: Correction | None = None) -> Algorithm:
  """Averages the sampled clients' models after local training.

  Args:
    trainer: a `core.engine.LocalTrainer`.
    num_clients: K.
    fraction: C; max(int(C*K), 1) clients per round, without replacement.
    weighting: "size" (FedAvg: weight by client dataset size) or "uniform"
      (FairAvg).
    correction: optional `correction(params, anchor)` added to each local
      step; the anchor is the server model the client received.
  """
  if weighting not in WEIGHTINGS:
    raise ValueError(f"unknown weighting {weighting!r}")

  def init(params):
    return ServerState(params)

  def participant_update(state, data, client_id, key):
    key = jax.random.fold_in(key, client_id)
    res = trainer.train(state.params, data, client_id, key, ctx=state.params,
                        correction=correction)
    size = data.client_sizes[client_id]
    weight = size if weighting == "size" else jnp.ones_like(size)
    return ClientOut(res.params, res.loss, weight.astype(jnp.float32))

  def aggregate(state, cohort, outs):
    del state, cohort
    params = weighted_mean(outs.params, outs.weight)
    return ServerState(params), {"train_loss": jnp.mean(outs.loss)}

  return Algorithm(init, uniform_sampler(num_clients, fraction), participant_update, aggregate)
