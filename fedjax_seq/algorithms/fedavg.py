"""Federated averaging with any client rule, weighting and server optimizer.

FedAvg, FairAvg, FedProx, FedDyn and SCAFFOLD are this one algorithm:

  fedavg = fedavg(rule=plain(), weighting="size")
  fairavg = fedavg(rule=plain(), weighting="uniform")
  fedprox = fedavg(rule=prox(mu))
  feddyn = fedavg(rule=dyn(alpha, variant), weighting="uniform")
  scaffold = fedavg(rule=scaffold(control))

A round samples max(int(C*K), 1) clients without replacement; each trains
from the server model under the rule, with its own per-client row; the
rule's server side turns the round's models (weighted by dataset size or
uniformly) into a proposal, and the server optimizer (core/server.py; none:
the proposal as is) steps towards it. The presets below name the baselines.
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_seq.algorithms import rules
from fedjax_seq.core import server as server_lib
from fedjax_seq.core.rounds import Algorithm, uniform_sampler
from fedjax_seq.core.state import ClientRows, gather_rows, scatter_rows

WEIGHTINGS = ("size", "uniform")


class ServerState(NamedTuple):
  """The server model, the rule's server state, per-client rows, the server optimizer's state."""
  params: Any
  server: Any = None               # e.g. SCAFFOLD's c, FedDyn's h
  clients: ClientRows | None = None  # e.g. SCAFFOLD's c_i, FedDyn's g_i
  opt: Any = None                  # the server optimizer's state


class ClientOut(NamedTuple):
  """What one participant hands to the aggregation."""
  params: Any
  loss: jax.Array
  weight: jax.Array | None  # None when the rule's server update does not read weights
  row: Any = None
  contribution: Any = None


def server_side(rule: rules.ClientRule, optimizer: optax.GradientTransformation | None,
                num_clients: int, state, models, weights: jax.Array, contributions):
  """(params, rule server state, optimizer state) after a round: the rule's proposal, then
  one server-optimizer step towards it (FedDyn's correction comes first)."""
  proposal, server = rule.aggregate(state.server, state.params, models, weights, contributions,
                                    num_clients)
  params, opt = server_lib.step(optimizer, state.params, proposal, state.opt)
  return params, server, opt


def check_rule(rule: rules.ClientRule, trainer, weighting: str | None = None) -> None:
  """Raises ValueError for a rule that cannot run with this trainer or weighting."""
  rules.check_local_sgd(rule, trainer.sgd)
  if weighting not in (None, "uniform") and not rule.weighted:
    raise ValueError(f"{rule.name} averages the round's models uniformly (its own server "
                     "update); use weighting='uniform'")


def fedavg(trainer, num_clients: int, fraction: float, *, rule: rules.ClientRule | None = None,
           weighting: str = "size",
           server_optimizer: optax.GradientTransformation | None = None) -> Algorithm:
  """Averages the sampled clients' models after local training under `rule`.

  Args:
    trainer: a `core.engine.LocalTrainer`.
    num_clients: K.
    fraction: C; max(int(C*K), 1) clients per round, without replacement.
    rule: the clients' `rules.ClientRule` (default `rules.plain()`).
    weighting: "size" (weight by client dataset size, FedAvg) or "uniform"
      (FairAvg; FedDyn's rule requires it).
    server_optimizer: an optax transform applied to server params minus the
      proposal (core/server.py); None takes the proposal as is.
  """
  rule = rule or rules.plain()
  if weighting not in WEIGHTINGS:
    raise ValueError(f"unknown weighting {weighting!r}; valid: {', '.join(WEIGHTINGS)}")
  check_rule(rule, trainer, weighting)

  def init(params):
    return ServerState(params, rule.init_server(params), rule.init_rows(params, num_clients),
                       server_lib.init(server_optimizer, params))

  def weight(data, client_id):
    if not rule.weighted:  # the rule's server update does not read weights
      return None
    size = data.client_sizes[client_id]
    return (size if weighting == "size" else jnp.ones_like(size)).astype(jnp.float32)

  def participant_update(state, data, client_id, key):
    key = jax.random.fold_in(key, client_id)
    row = None if state.clients is None else gather_rows(state.clients, client_id)
    update = rule.train(trainer, state.params, row, state.server, data, client_id, key)
    return ClientOut(update.result.params, update.result.loss, weight(data, client_id),
                     update.row, update.contribution)

  def aggregate(state, client_ids, outs):
    params, server, opt = server_side(rule, server_optimizer, num_clients, state, outs.params,
                                      outs.weight, outs.contribution)
    clients = None if state.clients is None else scatter_rows(state.clients, client_ids, outs.row)
    return ServerState(params, server, clients, opt), {"train_loss": jnp.mean(outs.loss)}

  return Algorithm(init, uniform_sampler(num_clients, fraction), participant_update, aggregate)


def fairavg(trainer, num_clients: int, fraction: float, **kwargs) -> Algorithm:
  """FairAvg: every sampled client weighted equally (the original's "uniform" policy)."""
  return fedavg(trainer, num_clients, fraction, weighting="uniform", **kwargs)


def fedprox(trainer, num_clients: int, fraction: float, *, mu: float = 0.01,
            **kwargs) -> Algorithm:
  """FedProx: FedAvg whose clients add mu * (w - w_global) to every step."""
  return fedavg(trainer, num_clients, fraction, rule=rules.prox(mu), **kwargs)


def feddyn(trainer, num_clients: int, fraction: float, *, alpha: float = 0.1,
           variant: str = "paper", **kwargs) -> Algorithm:
  """FedDyn (see `rules.dyn`): its clients, and its server update over the round's models."""
  return fedavg(trainer, num_clients, fraction, rule=rules.dyn(alpha, variant),
                weighting="uniform", **kwargs)


def scaffold(trainer, num_clients: int, fraction: float, *, control: str = "gradient",
             **kwargs) -> Algorithm:
  """SCAFFOLD (see `rules.scaffold`), dataset-size-weighted model average."""
  return fedavg(trainer, num_clients, fraction, rule=rules.scaffold(control), **kwargs)
