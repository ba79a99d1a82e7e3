"""Algorithms as pure transforms, and the driver that runs their rounds.

An algorithm is four pure functions (optax-style NamedTuple):

  init(params) -> state
  sample(state, key) -> cohort        # pytree, leading axis = participants
  participant_update(state, data, member, key) -> out
  aggregate(state, cohort, outs) -> (state, metrics)

`member` is one row of the cohort (a client id, or a superclient id and its
slot). `make_round` composes them into `round(state, data, key) -> (state,
metrics)` with one of two strategies:

  vmap  the whole round is one jitted computation, participants vmapped;
        this is the accelerator path.
  loop  sampling and aggregation jitted, participants run one after another
        through one jitted update; faster on XLA:CPU (benchmarks/RESULTS.md).

Both give the same numbers (tests/test_rounds.py).
"""

import functools
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from fedjax_seq.core.sharding import globalize, is_multiprocess, shard_client_state, shard_rows

class Algorithm(NamedTuple):
  init: Callable
  sample: Callable
  participant_update: Callable
  aggregate: Callable
  # clients_of(cohort) -> client ids whose per-client rows the round touches
  # (ids >= K are padding); only needed to keep per-client state on the host.
  clients_of: Callable = lambda cohort: cohort
  # chain(state) -> (on, start): when `on` (a bool scalar), this round's
  # participants run one after another in cohort order, the first from
  # `start`, each next one from the model the previous one returned, through
  # participant_update(..., start=params) (FedSeqInter's original bank).
  chain: Callable | None = None


def num_sampled(fraction: float, population: int) -> int:
  """The original's `max(int(C * K), 1)`."""
  return max(int(fraction * population), 1)


def sample_ids(key: jax.Array, population: int, n: int) -> jax.Array:
  """n distinct ids from range(population), in random order."""
  return jax.random.choice(key, population, (n,), replace=False).astype(jnp.int32)


def uniform_sampler(population: int, fraction: float) -> Callable:
  """`sample(state, key)`: max(int(C * population), 1) distinct ids, as every algorithm samples."""
  n = num_sampled(fraction, population)
  return lambda state, key: sample_ids(key, population, n)


def weighted_mean(trees, weights: jax.Array):
  """sum_i w_i * tree_i / sum_i w_i over a stacked pytree (leading axis i)."""
  w = weights.astype(jnp.float32) / jnp.sum(weights)
  return jax.tree.map(lambda x: jnp.tensordot(w, x, axes=1), trees)


def stacked_zeros(params, num_rows: int):
  """`num_rows` zero copies of params: the initial per-client state.

  Host (NumPy) zeros, allocated lazily: the training loop puts them on the
  device, or keeps them on the host with `engine.client_state=host`.
  """
  return jax.tree.map(lambda p: np.zeros((num_rows,) + p.shape, p.dtype), params)


class RowTable(NamedTuple):
  """A device window onto host-resident per-client rows.

  `rows` holds the round's rows; `index[client_id]` is a client's row in it
  (len(rows) for clients outside the window, padding id K included).
  """
  rows: Any
  index: jax.Array  # (K + 1,) int32


def gather_rows(tree, i: jax.Array):
  """Row(s) of client(s) i of a stacked per-client pytree (or of a RowTable)."""
  if isinstance(tree, RowTable):
    return gather_rows(tree.rows, tree.index[i])
  return jax.tree.map(lambda x: x[i], tree)


def scatter_rows(tree, ids: jax.Array, rows):
  """The stacked pytree with the rows of clients `ids` replaced.

  Every other row is untouched; ids out of range (padding) are dropped.
  """
  if isinstance(tree, RowTable):
    return tree._replace(rows=scatter_rows(tree.rows, tree.index[ids], rows))
  return jax.tree.map(lambda x, r: x.at[ids].set(r, mode="drop"), tree, rows)


def client_fields(state) -> list[str]:
  """The per-client (`client_*`) fields of a NamedTuple state that are set."""
  return [f for f in getattr(state, "_fields", ()) if f.startswith("client_")
          and getattr(state, f) is not None]


def with_host_client_state(alg: Algorithm, round_fn: Callable) -> Callable:
  """Keeps the `client_*` state in host memory; each round moves only its rows.

  Before the round the touched clients' rows are copied to the device as a
  RowTable of fixed size (one compile); afterwards they are written back
  into the host arrays in place. Equal to the device-resident round (tested).
  """
  sample = jax.jit(lambda state, key: alg.sample(state, round_keys(key)[0]))

  def run(state, data, key):
    fields = client_fields(state)
    light = state._replace(**{f: None for f in fields})
    ids = np.asarray(alg.clients_of(sample(light, key))).reshape(-1)
    k = jax.tree.leaves(getattr(state, fields[0]))[0].shape[0]
    real = np.unique(ids[ids < k])
    index = np.full(k + 1, len(ids), np.int32)
    index[real] = np.arange(len(real), dtype=np.int32)

    def window(table):
      return jax.tree.map(lambda x: jnp.asarray(
          np.concatenate([x[real], np.zeros((len(ids) - len(real),) + x.shape[1:], x.dtype)])),
          table)

    tables = {f: getattr(state, f) for f in fields}
    state, metrics = round_fn(
        state._replace(**{f: RowTable(window(t), jnp.asarray(index)) for f, t in tables.items()}),
        data, key)
    for f, table in tables.items():
      rows = jax.device_get(getattr(state, f).rows)
      jax.tree.map(lambda h, r: h.__setitem__(real, r[:len(real)]), table, rows)
    return state._replace(**tables), metrics

  return run


def chained(alg: Algorithm, state, data, cohort, key: jax.Array, start):
  """Participants one after another (a `lax.scan`), each from the previous one's model."""

  def step(params, member):
    out = alg.participant_update(state, data, member, key, start=params)
    return out.params, out

  return jax.lax.scan(step, start, cohort)[1]


def round_keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sampling key, training key) of a round."""
  k_sample, k_train = jax.random.split(key)
  return k_sample, k_train


def make_round(alg: Algorithm, strategy: str, mesh: Mesh | None = None, chunk: int = 0):
  """round(state, data, key) -> (state, metrics) under `strategy`.

  With a `mesh` (vmap strategy), participants and per-client state are
  sharded over its `clients` axis (core/sharding.py). `chunk` > 0 vmaps
  the cohort in chunks of that many participants (`lax.map` with a batch
  size) when a whole cohort's activations do not fit. The incoming state is
  donated: its buffers (K-row per-client state included) are updated in
  place, so the caller must use the returned state, not the one passed in.
  """
  if strategy == "vmap":

    @functools.partial(jax.jit, donate_argnums=0)
    def round_fn(state, data, key):
      k_sample, k_train = round_keys(key)
      state = shard_client_state(state, mesh)
      cohort = shard_rows(alg.sample(state, k_sample), mesh)
      update = lambda member: alg.participant_update(state, data, member, k_train)
      side_by_side = lambda: (jax.lax.map(update, cohort, batch_size=chunk) if chunk
                              else jax.vmap(update)(cohort))
      if alg.chain is None:
        outs = side_by_side()
      else:
        on, start = alg.chain(state)
        outs = jax.lax.cond(on, lambda: chained(alg, state, data, cohort, k_train, start),
                            side_by_side)
      state, metrics = alg.aggregate(state, cohort, shard_rows(outs, mesh))
      return shard_client_state(state, mesh), metrics

    if is_multiprocess(mesh):  # inputs must be global arrays; only new ones are converted
      return lambda state, data, key: round_fn(
          globalize(state, mesh), globalize(data, mesh), globalize(key, mesh))
    return round_fn
  if mesh is not None:
    raise ValueError("a device mesh needs the vmap strategy")

  if strategy == "loop":

    @jax.jit
    def begin(state, key):
      k_sample, k_train = round_keys(key)
      return alg.sample(state, k_sample), k_train

    update = jax.jit(alg.participant_update)
    aggregate = jax.jit(alg.aggregate, donate_argnums=0)
    chain = None if alg.chain is None else jax.jit(alg.chain)

    def round_fn(state, data, key):
      cohort, k_train = begin(state, key)
      n = jax.tree.leaves(cohort)[0].shape[0]
      on, start = chain(state) if chain is not None else (False, None)
      outs = []
      for i in range(n):
        member = jax.tree.map(lambda x: x[i], cohort)
        if bool(on):  # one host sync per round, only for algorithms that may chain
          outs.append(update(state, data, member, k_train, start=start))
          start = outs[-1].params
        else:
          outs.append(update(state, data, member, k_train))
      return aggregate(state, cohort, jax.tree.map(lambda *x: jnp.stack(x), *outs))

    return round_fn

  raise ValueError(f"unknown strategy {strategy!r}")
