"""FedSeqInter: FedSeq whose superclients continue each other's models.

A bank of n = max(int(C*S), 1) model slots, all starting as the initial
model, and weights w (zeros). Each round the k-th sampled superclient
trains slot k from the slot's own model and w_k += its dataset size; the
server model is sum_k w_k * bank_k / sum_k w_k. Every `aggregation_period`
rounds (round r with r % period == 0, as the original counts from 1) the
slots are reset to the server model and w to zero before training. The
members train under any client rule (algorithms/rules.py), as in FedSeq;
the rule's server side runs over the bank's n trained slots with weights w
(FedDyn's: its own update over the n slots), then the server optimizer, if
any, steps from the server model towards that proposal.

variant="original" reproduces the published code, whose bank starts as n
references to ONE copy of the initial model that clients train in place:
until the first reset (rounds 1..P-1) the round's n superclients train one
shared model one after another, in sampling order, and it carries over from
round to round; every slot (so the server model too) is that model. From the
first reset on the slots are separate copies, as in variant="paper".
"""

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax

from fedjax_seq.algorithms import rules
from fedjax_seq.algorithms.fedavg import check_rule, server_side
from fedjax_seq.algorithms.fedseq import (Superclients, chain_options, scatter_member_rows,
                                          superclient_update)
from fedjax_seq.core import server as server_lib
from fedjax_seq.core.engine import tree_where
from fedjax_seq.core.rounds import Algorithm, num_sampled, sample_ids
from fedjax_seq.core.state import ClientRows, gather_rows
from fedjax_seq.errors import InputError

PERIODS = ("num_superclients", "fraction_superclients", "never")
VARIANTS = ("paper", "original")


class InterState(NamedTuple):
  """The server model, the bank and its weights, the round, and the rule's and optimizer's state."""
  params: Any
  bank: Any            # n model slots, leading axis n
  weights: jax.Array   # (n,)
  round: jax.Array     # rounds completed
  server: Any = None   # the rule's server state
  clients: ClientRows | None = None
  opt: Any = None      # the server optimizer's state


class Member(NamedTuple):
  """One participant of a round: its bank slot and its superclient."""
  slot: jax.Array
  superclient: jax.Array


def check_bank(period: str | int, variant: str) -> None:
  """Raises ValueError for an unknown bank variant or aggregation period (a name of PERIODS,
  or a number of rounds >= 1)."""
  if not isinstance(period, int) and period not in PERIODS:
    raise InputError(f"unknown period {period!r}; valid: {', '.join(PERIODS)}", argument="period")
  if isinstance(period, int) and period < 1:
    raise InputError(f"period must be >= 1 rounds, got {period}", argument="period")
  if variant not in VARIANTS:
    raise InputError(f"unknown variant {variant!r}; valid: {', '.join(VARIANTS)}", argument="variant")


def aggregation_period(name: str | int, num_superclients: int, num_slots: int) -> int:
  """Rounds between resets: a name from PERIODS, or a number of rounds."""
  if isinstance(name, int):
    return name
  return {"num_superclients": num_superclients, "fraction_superclients": num_slots,
          "never": 2**31 - 1}[name]


def fedseq_inter(trainer, superclients: Superclients, num_clients: int, fraction: float, *,
                 rule: rules.ClientRule | None = None, period: str | int = "num_superclients",
                 sequential_rounds: int = 1, shuffle: bool = True, dropout: float = 0.0,
                 dropout_variant: str = "paper", variant: str = "paper",
                 server_optimizer: optax.GradientTransformation | None = None) -> Algorithm:
  """FedSeqInter over `superclients` (see the module docstring).

  Args: as `fedseq.fedseq`, plus `period` (rounds between bank resets: a
  name from PERIODS or a number) and `variant` ("paper" or "original").
  """
  rule = rule or rules.plain()
  check_rule(rule, trainer)
  check_bank(period, variant)
  s = superclients.num_superclients
  n = num_sampled(fraction, s)
  every = aggregation_period(period, s, n)
  options = chain_options(sequential_rounds, shuffle, dropout, dropout_variant)
  update = superclient_update(trainer, rule, superclients, options, num_clients)

  def init(params):
    bank = jax.tree.map(lambda p: jnp.broadcast_to(p, (n,) + p.shape), params)
    return InterState(params, bank, jnp.zeros((n,), jnp.float32), jnp.zeros((), jnp.int32),
                      rule.init_server(params), rule.init_rows(params, num_clients),
                      server_lib.init(server_optimizer, params))

  def resets(state):
    return (state.round + 1) % every == 0

  def shared(state):
    """The original's one shared model: every round before the first reset."""
    return jnp.asarray(variant == "original") & (state.round + 1 < every)

  def chain(state):
    return shared(state), gather_rows(state.bank, 0)

  def sample(state, key):
    return Member(jnp.arange(n, dtype=jnp.int32), sample_ids(key, s, n))

  def participant_update(state, data, member, key, start=None):
    if start is None:
      start = tree_where(resets(state), state.params, gather_rows(state.bank, member.slot))
    return update(start, state, data, member.superclient, key)

  def aggregate(state, cohort, outs):
    weights = jnp.where(resets(state), 0.0, state.weights) + superclients.sizes[cohort.superclient]
    metrics = {"train_loss": jnp.mean(outs.loss)}
    if variant == "original":  # a shared round leaves every slot holding the last model
      last = jax.tree.map(lambda m: jnp.broadcast_to(m[-1], m.shape), outs.params)
      outs = outs._replace(params=tree_where(shared(state), last, outs.params))
    params, server, opt = server_side(rule, server_optimizer, num_clients, state, outs.params,
                                      weights, outs.contribution)
    rows = (None if state.clients is None else
            scatter_member_rows(state.clients, superclients.members[cohort.superclient],
                                outs.rows))
    return InterState(params, outs.params, weights, state.round + 1, server, rows, opt), metrics

  return Algorithm(init, sample, participant_update, aggregate,
                   lambda cohort: superclients.members[cohort.superclient],
                   chain if variant == "original" else None)
