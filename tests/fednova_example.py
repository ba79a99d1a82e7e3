"""FedNova (NeurIPS 2020) with plain local SGD, added as a client rule.

Run: python main.py --config=tests/fednova_example.py --workdir=runs/fednova
"""

import jax
import jax.numpy as jnp

from configs import default
from fedjax_seq.algorithms import registry, rules


def nova() -> rules.ClientRule:
  """Plain local SGD; the server normalises each client's update by its local steps tau_i.

  proposal = x - tau_eff * sum_i p_i (x - y_i) / tau_i with tau_eff = sum_i p_i tau_i
  and p_i the algorithm's weights. With equal tau_i this is FedAvg.
  """
  plain = rules.plain()

  def train(trainer, params, row, server, data, client_id, key):
    update = plain.train(trainer, params, row, server, data, client_id, key)
    return update._replace(contribution=update.result.num_steps.astype(jnp.float32))

  def aggregate(server, params, models, weights, steps, num_clients):
    p = weights / jnp.sum(weights)
    tau_eff, steps = jnp.sum(p * steps), jnp.maximum(steps, 1.0)
    proposal = jax.tree.map(lambda x, y: x - tau_eff * jnp.tensordot(p / steps, x - y, axes=1),
                            params, models)
    return proposal, server

  return rules.ClientRule("nova", train, zero_contribution=lambda params: jnp.zeros(()),
                          aggregate=aggregate)


registry.register("fednova", registry.averaging(nova))      # FedAvg's sampling and weights
registry.register("fedseq_nova", registry.sequential(nova))  # the same rule in FedSeq's chains


def get_config():
  c = default.get_config()
  c.algorithm.name = "fednova"
  return c
