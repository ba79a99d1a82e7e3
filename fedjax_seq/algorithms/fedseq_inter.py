"""FedSeqInter: FedSeq whose superclients continue each other's models.

A bank of n = max(int(C*S), 1) model slots, all starting as the initial
model, and weights w (zeros). Each round the k-th sampled superclient
trains slot k from the slot's own model and w_k += its dataset size; the
server model is sum_k w_k * bank_k / sum_k w_k. Every `aggregation_period`
rounds (round r with r % period == 0, as the original counts from 1) the
slots are reset to the server model and w to zero before training. With
the FedDyn rule the server model comes from FedDyn's server update over the
bank's n trained models instead.

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

from fedjax_seq.algorithms.feddyn import dyn_server_update
from fedjax_seq.algorithms.fedseq import (LocalRule, Superclients, scatter_member_rows,
                                          superclient_update, validate_rule)
from fedjax_seq.core.engine import tree_where
from fedjax_seq.core.rounds import Algorithm, gather_rows, num_sampled, sample_ids, weighted_mean

PERIODS = ("num_superclients", "fraction_superclients", "never")
VARIANTS = ("paper", "original")


class InterState(NamedTuple):
  params: Any
  bank: Any            # n model slots, leading axis n
  weights: jax.Array   # (n,)
  round: jax.Array     # rounds completed
  h: Any = None
  client_rows: Any = None


class Member(NamedTuple):
  slot: jax.Array
  superclient: jax.Array


def aggregation_period(name: str | int, num_superclients: int, num_slots: int) -> int:
  """Rounds between resets: a name from PERIODS, or a number of rounds."""
  if isinstance(name, int):
    return name
  if name not in PERIODS:
    raise ValueError(f"unknown aggregation period {name!r}")
  return {"num_superclients": num_superclients, "fraction_superclients": num_slots,
          "never": 2**31 - 1}[name]


def fedseq_inter(trainer, superclients: Superclients, num_clients: int, fraction: float, *,
                 rule: LocalRule = LocalRule("plain"), period: str | int = "num_superclients",
                 sequential_rounds: int = 1, shuffle: bool = True, dropout: float = 0.0,
                 dropout_variant: str = "paper", variant: str = "paper") -> Algorithm:
  """FedSeqInter over `superclients` (see the module docstring).

  Args: as `fedseq.fedseq`, plus `period` (rounds between bank resets: a
  name from PERIODS or a number) and `variant` ("paper" or "original").
  """
  validate_rule(rule)
  if variant not in VARIANTS:
    raise ValueError(f"unknown FedSeqInter variant {variant!r}; valid: {', '.join(VARIANTS)}")
  s = superclients.num_superclients
  n = num_sampled(fraction, s)
  every = aggregation_period(period, s, n)
  options = dict(sequential_rounds=sequential_rounds, shuffle=shuffle, dropout=dropout,
                 dropout_variant=dropout_variant)
  update = superclient_update(trainer, rule, superclients, options, num_clients)

  def init(params):
    bank = jax.tree.map(lambda p: jnp.broadcast_to(p, (n,) + p.shape), params)
    dyn = rule.name == "dyn"
    return InterState(params, bank, jnp.zeros((n,), jnp.float32), jnp.zeros((), jnp.int32),
                      jax.tree.map(jnp.zeros_like, params) if dyn else None,
                      rule.init_rows(params, num_clients))

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
    return update(start, state.client_rows, data, member.superclient, key)

  def aggregate(state, cohort, outs):
    weights = jnp.where(resets(state), 0.0, state.weights) + superclients.sizes[cohort.superclient]
    metrics = {"train_loss": jnp.mean(outs.loss)}
    if variant == "original":  # a shared round leaves every slot holding the last model
      last = jax.tree.map(lambda m: jnp.broadcast_to(m[-1], m.shape), outs.params)
      outs = outs._replace(params=tree_where(shared(state), last, outs.params))
    if rule.name == "dyn":
      params, h = dyn_server_update(state.params, state.h, outs.params, rule.alpha, num_clients)
      rows = scatter_member_rows(state.client_rows, superclients.members[cohort.superclient],
                                 outs.rows)
    else:
      params, h, rows = weighted_mean(outs.params, weights), None, None
    return InterState(params, outs.params, weights, state.round + 1, h, rows), metrics

  return Algorithm(init, sample, participant_update, aggregate,
                   lambda cohort: superclients.members[cohort.superclient],
                   chain if variant == "original" else None)
