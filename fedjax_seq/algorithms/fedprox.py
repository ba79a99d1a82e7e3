"""FedProx: local SGD plus the proximal gradient mu * (w - w_global).

As in the original's PGD optimizer, the proximal term is added to the update
direction after weight decay and momentum, with the anchor w_global being the
server model the client received this round.
"""

import jax

from fedjax_seq.algorithms.fedavg import fedavg
from fedjax_seq.core.rounds import Algorithm


def prox_correction(mu: float):
  def correction(params, anchor):
    return jax.tree.map(lambda w, a: mu * (w - a), params, anchor)
  return correction


def fedprox(trainer, num_clients: int, fraction: float, *, mu: float = 0.01) -> Algorithm:
  return fedavg(trainer, num_clients, fraction, correction=prox_correction(mu))
