"""FedSeq: superclients trained sequentially, each chain a `lax.scan`.

Superclients are a padded [S, max_clients] table of client ids (padding =
K, out of range) fixed before round 0. A round samples max(int(C*S), 1)
superclients; each starts from the server model and makes
`sequential_rounds` passes over its members: per pass, a random `dropout`
fraction of members is dropped and the rest shuffled (`shuffle`), then each
member trains `local_epochs` on its own data from the model it receives and
hands the result on. The chain is a `lax.scan` over member slots whose carry
is the model; absent and dropped members are exact no-ops. Server: the
superclients' final models averaged with superclient-size weights.

The local rule of each member is plain SGD, FedProx (the anchor is the model
the member receives) or FedDyn (the member keeps its own g_i and anchors on
the model it receives; the FedDyn server update runs over the superclients
with K the number of clients).
"""

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from fedjax_seq.algorithms.feddyn import VARIANTS as DYN_VARIANTS
from fedjax_seq.algorithms.feddyn import dyn_local_update, dyn_server_update
from fedjax_seq.algorithms.fedprox import prox_correction
from fedjax_seq.core.engine import tree_where
from fedjax_seq.core.rounds import (Algorithm, gather_rows, scatter_rows, stacked_zeros,
                                    uniform_sampler, weighted_mean)

RULES = ("plain", "prox", "dyn")


class Superclients(NamedTuple):
  """Membership as device arrays (shapes fixed for the run)."""
  members: jax.Array  # (S, M) int32 client ids; padding = K
  sizes: jax.Array    # (S,) float32, examples per superclient

  @property
  def num_superclients(self) -> int:
    return self.members.shape[0]


def make_superclients(groups: Sequence[np.ndarray], client_sizes: np.ndarray) -> Superclients:
  k = len(client_sizes)
  width = max(len(g) for g in groups)
  members = np.full((len(groups), width), k, np.int32)
  for s, g in enumerate(groups):
    members[s, :len(g)] = g
  sizes = np.array([client_sizes[np.asarray(g, int)].sum() for g in groups], np.float32)
  return Superclients(jnp.asarray(members), jnp.asarray(sizes))


class LocalRule(NamedTuple):
  """How one client trains from a received model, and its per-client state."""
  name: str
  mu: float = 0.0
  alpha: float = 0.1
  variant: str = "paper"

  def init_rows(self, params, num_clients: int):
    return stacked_zeros(params, num_clients) if self.name == "dyn" else None

  def update(self, trainer, params, row, data, client_id, key):
    """-> (LocalResult, new per-client row)."""
    if self.name == "plain":
      return trainer.train(params, data, client_id, key), row
    if self.name == "prox":
      return trainer.train(params, data, client_id, key, ctx=params,
                           correction=prox_correction(self.mu)), row
    return dyn_local_update(trainer, self.alpha, self.variant, params, row, data, client_id, key)


def validate_rule(rule: LocalRule):
  if rule.name not in RULES:
    raise ValueError(f"unknown local rule {rule.name!r}")
  if rule.name == "dyn" and rule.variant not in DYN_VARIANTS:
    raise ValueError(f"unknown FedDyn variant {rule.variant!r}")


def member_key(key: jax.Array, client_id: jax.Array, pass_index: int) -> jax.Array:
  """A client's key: FedAvg's fold_in(round key, id) on the first pass."""
  k = jax.random.fold_in(key, client_id)
  return k if pass_index == 0 else jax.random.fold_in(k, pass_index)


DROPOUT_VARIANTS = ("paper", "original")


def pass_order(key: jax.Array, real: jax.Array, shuffle: bool, dropout: float,
               dropout_variant: str = "paper"):
  """(slot order with active members first, active mask) for one pass.

  Dropout draws max(1, min(n - 1, ceil(n * dropout))) of the n present
  members. "paper": that many distinct members drop, and a lone member
  never does. "original": as the published code, the indices are drawn
  with replacement (so fewer may drop) and a lone member drops (its
  superclient then hands the received model back unchanged).
  """
  m = real.shape[0]
  k_drop, k_shuffle = jax.random.split(key)
  active = real
  if dropout > 0:
    n = jnp.sum(real)
    wanted = jnp.clip(jnp.ceil(n * dropout).astype(jnp.int32), 1, jnp.maximum(n - 1, 1))
    if dropout_variant == "original":
      draws = jax.random.randint(k_drop, (m,), 0, jnp.maximum(n, 1))
      drawn = jnp.arange(m) < wanted
      dropped = jnp.any((draws[None, :] == jnp.arange(m)[:, None]) & drawn[None, :], axis=1)
      active = real & ~dropped
    else:
      n_drop = jnp.where(n > 1, wanted, 0)
      scores = jnp.where(real, jax.random.uniform(k_drop, (m,)), 2.0)
      rank = jnp.argsort(jnp.argsort(scores))
      active = real & (rank >= n_drop)
  base = jax.random.uniform(k_shuffle, (m,)) if shuffle else jnp.arange(m, dtype=jnp.float32) / m
  order = jnp.argsort(jnp.where(active, base, 2.0 + jnp.arange(m)))
  return order, active


def chain(trainer, rule: LocalRule, params, rows, members: jax.Array, data, key: jax.Array,
          order_key: jax.Array, *, sequential_rounds: int, shuffle: bool, dropout: float,
          num_clients: int, dropout_variant: str = "paper"):
  """Trains one superclient's members in sequence; returns (params, rows, mean loss).

  `rows` holds the members' per-client state (leading axis = member slot)
  or None.
  """
  real = members < num_clients
  loss_sum = jnp.zeros((), jnp.float32)
  count = jnp.zeros((), jnp.int32)
  for p in range(sequential_rounds):
    order, active = pass_order(jax.random.fold_in(order_key, p), real, shuffle, dropout,
                               dropout_variant)

    def step(carry, slot, p=p, active=active):
      params, rows, loss_sum, count = carry
      cid = members[slot]
      row = None if rows is None else gather_rows(rows, slot)
      res, new_row = rule.update(trainer, params, row, data, cid, member_key(key, cid, p))
      on = active[slot]
      params = tree_where(on, res.params, params)
      if rows is not None:
        rows = jax.tree.map(lambda r, n, o: r.at[slot].set(jnp.where(on, n, o)), rows, new_row,
                            row)
      return (params, rows, loss_sum + jnp.where(on, res.loss, 0.0),
              count + on.astype(jnp.int32)), None

    (params, rows, loss_sum, count), _ = jax.lax.scan(step, (params, rows, loss_sum, count),
                                                      order)
  return params, rows, loss_sum / jnp.maximum(count, 1)


class FedSeqState(NamedTuple):
  params: Any
  h: Any = None             # FedDyn server state (rule "dyn")
  client_rows: Any = None   # FedDyn g_i for all K clients (rule "dyn")


class ChainOut(NamedTuple):
  params: Any
  rows: Any
  loss: jax.Array


def superclient_update(trainer, rule, sc: Superclients, options: dict, num_clients: int):
  """participant_update(start_params, state_rows, data, sc_id, key) shared with FedSeqInter."""
  if options.get("dropout_variant", "paper") not in DROPOUT_VARIANTS:
    raise ValueError(f"unknown dropout variant {options['dropout_variant']!r}; valid: "
                     f"{', '.join(DROPOUT_VARIANTS)}")

  def update(start, client_rows, data, sc_id, key):
    members = sc.members[sc_id]
    rows = None if client_rows is None else gather_rows(client_rows, members)
    params, rows, loss = chain(trainer, rule, start, rows, members, data, key,
                               jax.random.fold_in(key, num_clients + sc_id),
                               num_clients=num_clients, **options)
    return ChainOut(params, rows, loss)

  return update


def scatter_member_rows(client_rows, members: jax.Array, rows):
  """Writes the (n, M) members' rows back; padded slots (id K) are dropped."""
  return scatter_rows(client_rows, members.reshape(-1),
                      jax.tree.map(lambda r: r.reshape((-1,) + r.shape[2:]), rows))


def fedseq(trainer, superclients: Superclients, num_clients: int, fraction: float, *,
           rule: LocalRule = LocalRule("plain"), sequential_rounds: int = 1, shuffle: bool = True,
           dropout: float = 0.0, dropout_variant: str = "paper") -> Algorithm:
  """FedSeq over `superclients` (see the module docstring).

  Args:
    trainer: a `core.engine.LocalTrainer` (one member's local epochs).
    superclients: the fixed membership table.
    num_clients: K.
    fraction: C; max(int(C*S), 1) superclients per round.
    rule: each member's local rule (plain, prox, dyn).
    sequential_rounds: E_S, passes over the members per round.
    shuffle: shuffle the members at every pass.
    dropout: fraction of members dropped at every pass.
    dropout_variant: "paper" or "original" (see `pass_order`).
  """
  validate_rule(rule)
  options = dict(sequential_rounds=sequential_rounds, shuffle=shuffle, dropout=dropout,
                 dropout_variant=dropout_variant)
  update = superclient_update(trainer, rule, superclients, options, num_clients)

  def init(params):
    if rule.name == "dyn":
      return FedSeqState(params, jax.tree.map(jnp.zeros_like, params),
                         rule.init_rows(params, num_clients))
    return FedSeqState(params)

  def participant_update(state, data, sc_id, key):
    return update(state.params, state.client_rows, data, sc_id, key)

  def aggregate(state, sc_ids, outs):
    metrics = {"train_loss": jnp.mean(outs.loss)}
    if rule.name == "dyn":
      params, h = dyn_server_update(state.params, state.h, outs.params, rule.alpha, num_clients)
      rows = scatter_member_rows(state.client_rows, superclients.members[sc_ids], outs.rows)
      return FedSeqState(params, h, rows), metrics
    return FedSeqState(weighted_mean(outs.params, superclients.sizes[sc_ids])), metrics

  return Algorithm(init, uniform_sampler(superclients.num_superclients, fraction),
                   participant_update, aggregate, lambda sc_ids: superclients.members[sc_ids])
