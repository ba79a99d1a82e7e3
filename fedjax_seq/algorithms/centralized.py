"""Centralized training as the published code runs it: cosine-annealed learning rate.

One "round" is the trainer's epochs over one client holding every training
example. Epoch t (counted from 0) uses lr * (1 + cos(pi * t / T)) / 2 with T
the number of rounds, PyTorch's `CosineAnnealingLR(T_max=T)` stepped once per
epoch. The default centralized run (configs/centralized.py, variant "paper")
keeps a constant learning rate instead and is plain `fedavg` over that
single client.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp

from fedjax_seq.algorithms.fedavg import ClientOut, fedavg
from fedjax_seq.core.rounds import Algorithm
from fedjax_seq.errors import InputError

VARIANTS = ("paper", "original")


class CentralState(NamedTuple):
  """The model and the number of epochs trained."""
  params: Any
  round: jax.Array  # epochs completed


def cosine_factor(t: jax.Array, total: int) -> jax.Array:
  """The learning-rate factor of epoch t: (1 + cos(pi * t / total)) / 2."""
  return 0.5 * (1.0 + jnp.cos(jnp.pi * t.astype(jnp.float32) / total))


def centralized(trainer, *, rounds: int) -> Algorithm:
  """One client (id 0) with every example; cosine learning rate over `rounds` rounds."""
  if rounds < 1:
    raise InputError(f"rounds must be >= 1, got {rounds}", argument="rounds")

  def init(params):
    return CentralState(params, jnp.zeros((), jnp.int32))

  def sample(state, key):
    del state, key
    return jnp.zeros((1,), jnp.int32)

  def participant_update(state, data, client_id, key):
    res = trainer.train(state.params, data, client_id, jax.random.fold_in(key, client_id),
                        lr_scale=cosine_factor(state.round, rounds))
    return ClientOut(res.params, res.loss, jnp.float32(1.0))

  def aggregate(state, cohort, outs):
    del cohort
    params = jax.tree.map(lambda x: x[0], outs.params)
    return CentralState(params, state.round + 1), {"train_loss": jnp.mean(outs.loss)}

  return Algorithm(init, sample, participant_update, aggregate)


def check_variant(variant: str) -> None:
  """Raises ValueError unless variant is one of VARIANTS."""
  if variant not in VARIANTS:
    raise InputError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}", argument="variant")


def baseline(trainer, *, rounds: int, variant: str = "paper") -> Algorithm:
  """The centralized upper bound over one client (id 0) holding every example.

  variant="paper": constant learning rate (FedAvg over that one client);
  "original": the published code's cosine learning rate over `rounds`.
  """
  check_variant(variant)
  if variant == "original":
    return centralized(trainer, rounds=rounds)
  return fedavg(trainer, 1, 1.0)
