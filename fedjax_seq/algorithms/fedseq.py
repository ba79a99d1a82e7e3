"""FedSeq: superclients trained sequentially, each chain a `lax.scan`.

Superclients are a padded [S, max_clients] table of client ids (padding =
K, out of range) fixed before round 0. A round samples max(int(C*S), 1)
superclients; each starts from the server model and makes
`sequential_rounds` passes over its members: per pass, a random `dropout`
fraction of members is dropped and the rest shuffled (`shuffle`), then each
member trains `local_epochs` on its own data from the model it receives and
hands the result on. The chain is a `lax.scan` over member slots whose carry
is the model; absent and dropped members are exact no-ops. Server: the
rule's server side over the superclients' final models, weighted by
superclient size (plain, prox, scaffold: their weighted average), then the
server optimizer, if any.

Each member trains under any client rule (algorithms/rules.py) from the
model it receives, which is its anchor (FedProx's w_global, FedDyn's
w_server, the x of SCAFFOLD's control), with its own per-client row (FedDyn's
g_i, SCAFFOLD's c_i) and the server's state (SCAFFOLD's c). The members'
contributions (SCAFFOLD's c_i_new - c_i) are summed over the members that
trained; the rule's server update sees one sum per superclient, with K the
number of clients.
"""

from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from fedjax_seq.algorithms import rules
from fedjax_seq.algorithms.fedavg import ServerState, check_rule, server_side
from fedjax_seq.core import server as server_lib
from fedjax_seq.core.engine import tree_where
from fedjax_seq.core.rounds import Algorithm, uniform_sampler
from fedjax_seq.core.state import gather_rows, scatter_rows
from fedjax_seq.errors import InputError


class Superclients(NamedTuple):
  """Membership as device arrays (shapes fixed for the run)."""
  members: jax.Array  # (S, M) int32 client ids; padding = K
  sizes: jax.Array    # (S,) float32, examples per superclient

  @property
  def num_superclients(self) -> int:
    return self.members.shape[0]


def make_superclients(groups: Sequence[np.ndarray], client_sizes: np.ndarray) -> Superclients:
  """Groups of client ids as a padded table (padding id K) with their total sizes."""
  k = len(client_sizes)
  width = max(len(g) for g in groups)
  members = np.full((len(groups), width), k, np.int32)
  for s, g in enumerate(groups):
    members[s, :len(g)] = g
  sizes = np.array([client_sizes[np.asarray(g, int)].sum() for g in groups], np.float32)
  return Superclients(jnp.asarray(members), jnp.asarray(sizes))


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


class ChainOptions(NamedTuple):
  """How a superclient's members are chained each round (see `chain_options`)."""
  sequential_rounds: int = 1
  shuffle: bool = True
  dropout: float = 0.0
  dropout_variant: str = "paper"


def chain_options(sequential_rounds: int = 1, shuffle: bool = True, dropout: float = 0.0,
                  dropout_variant: str = "paper") -> ChainOptions:
  """Checked chain options: E_S passes, shuffling, dropout and its variant (see `pass_order`)."""
  if sequential_rounds < 1:
    raise InputError(f"sequential_rounds must be >= 1, got {sequential_rounds}",
                     argument="sequential_rounds")
  if not 0 <= dropout < 1:
    raise InputError(f"dropout must be in [0, 1), got {dropout}", argument="dropout")
  if dropout_variant not in DROPOUT_VARIANTS:
    raise InputError(f"unknown dropout_variant {dropout_variant!r}; valid: "
                     f"{', '.join(DROPOUT_VARIANTS)}", argument="dropout_variant")
  return ChainOptions(sequential_rounds, shuffle, dropout, dropout_variant)


def chain(trainer, rule: rules.ClientRule, params, server, rows, members: jax.Array, data,
          key: jax.Array, order_key: jax.Array, options: ChainOptions, num_clients: int):
  """Trains one superclient's members in sequence: (params, rows, contribution, mean loss).

  `rows` holds the members' per-client state (leading axis = member slot)
  or None; `server` is the rule's server state, the same for every member.
  The contribution is the sum of the trained members' contributions.
  """
  real = members < num_clients
  loss_sum = jnp.zeros((), jnp.float32)
  count = jnp.zeros((), jnp.int32)
  total = rule.zero_contribution(params)
  for p in range(options.sequential_rounds):
    order, active = pass_order(jax.random.fold_in(order_key, p), real, options.shuffle,
                               options.dropout, options.dropout_variant)

    def step(carry, slot, p=p, active=active):
      params, rows, total, loss_sum, count = carry
      cid = members[slot]
      row = None if rows is None else gather_rows(rows, slot)
      update = rule.train(trainer, params, row, server, data, cid, member_key(key, cid, p))
      res, on = update.result, active[slot]
      params = tree_where(on, res.params, params)
      if rows is not None:
        rows = jax.tree.map(lambda r, n, o: r.at[slot].set(jnp.where(on, n, o)), rows,
                            update.row, row)
      if total is not None:
        total = jax.tree.map(lambda t, c: t + jnp.where(on, c, 0.0), total, update.contribution)
      return (params, rows, total, loss_sum + jnp.where(on, res.loss, 0.0),
              count + on.astype(jnp.int32)), None

    (params, rows, total, loss_sum, count), _ = jax.lax.scan(
        step, (params, rows, total, loss_sum, count), order)
  return params, rows, total, loss_sum / jnp.maximum(count, 1)


class ChainOut(NamedTuple):
  """One superclient's round: its final model, its members' rows, their contributions, loss."""
  params: Any
  rows: Any
  contribution: Any
  loss: jax.Array


def superclient_update(trainer, rule: rules.ClientRule, sc: Superclients, options: ChainOptions,
                       num_clients: int):
  """update(start_params, state, data, sc_id, key) -> ChainOut, shared with FedSeqInter.

  `state` supplies the rule's server state (`.server`) and the per-client
  rows (`.clients`).
  """

  def update(start, state, data, sc_id, key):
    members = sc.members[sc_id]
    rows = None if state.clients is None else gather_rows(state.clients, members)
    params, rows, total, loss = chain(trainer, rule, start, state.server, rows, members, data,
                                      key, jax.random.fold_in(key, num_clients + sc_id),
                                      options, num_clients)
    return ChainOut(params, rows, total, loss)

  return update


def scatter_member_rows(client_rows, members: jax.Array, rows):
  """Writes the (n, M) members' rows back; padded slots (id K) are dropped."""
  return scatter_rows(client_rows, members.reshape(-1),
                      jax.tree.map(lambda r: r.reshape((-1,) + r.shape[2:]), rows))


def fedseq(trainer, superclients: Superclients, num_clients: int, fraction: float, *,
           rule: rules.ClientRule | None = None, sequential_rounds: int = 1, shuffle: bool = True,
           dropout: float = 0.0, dropout_variant: str = "paper",
           server_optimizer: optax.GradientTransformation | None = None) -> Algorithm:
  """FedSeq over `superclients` (see the module docstring).

  Args:
    trainer: a `core.engine.LocalTrainer` (one member's local epochs).
    superclients: the fixed membership table.
    num_clients: K.
    fraction: C; max(int(C*S), 1) superclients per round.
    rule: each member's `rules.ClientRule` (default `rules.plain()`).
    sequential_rounds: E_S, passes over the members per round.
    shuffle: shuffle the members at every pass.
    dropout: fraction of members dropped at every pass.
    dropout_variant: "paper" or "original" (see `pass_order`).
    server_optimizer: an optax transform on server params minus the
      proposal (core/server.py); None takes the proposal as is.
  """
  rule = rule or rules.plain()
  check_rule(rule, trainer)
  options = chain_options(sequential_rounds, shuffle, dropout, dropout_variant)
  update = superclient_update(trainer, rule, superclients, options, num_clients)

  def init(params):
    return ServerState(params, rule.init_server(params), rule.init_rows(params, num_clients),
                       server_lib.init(server_optimizer, params))

  def participant_update(state, data, sc_id, key):
    return update(state.params, state, data, sc_id, key)

  def aggregate(state, sc_ids, outs):
    weights = superclients.sizes[sc_ids] if rule.weighted else None
    params, server, opt = server_side(rule, server_optimizer, num_clients, state, outs.params,
                                      weights, outs.contribution)
    rows = (None if state.clients is None else
            scatter_member_rows(state.clients, superclients.members[sc_ids], outs.rows))
    return ServerState(params, server, rows, opt), {"train_loss": jnp.mean(outs.loss)}

  return Algorithm(init, uniform_sampler(superclients.num_superclients, fraction),
                   participant_update, aggregate, lambda sc_ids: superclients.members[sc_ids])
