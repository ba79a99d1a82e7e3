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
from jax.sharding import Mesh

from fedjax_seq.core.sharding import shard_client_state, shard_rows

State = Any


class Algorithm(NamedTuple):
  init: Callable
  sample: Callable
  participant_update: Callable
  aggregate: Callable


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
  """`num_rows` zero copies of params: the initial per-client state."""
  return jax.tree.map(lambda p: jnp.zeros((num_rows,) + p.shape, p.dtype), params)


def gather_rows(tree, i: jax.Array):
  """Row(s) i of a stacked per-client pytree."""
  return jax.tree.map(lambda x: x[i], tree)


def scatter_rows(tree, ids: jax.Array, rows):
  """The stacked pytree with rows `ids` replaced; every other row untouched."""
  return jax.tree.map(lambda x, r: x.at[ids].set(r), tree, rows)


def round_keys(key: jax.Array) -> tuple[jax.Array, jax.Array]:
  """(sampling key, training key) of a round."""
  k_sample, k_train = jax.random.split(key)
  return k_sample, k_train


def make_round(alg: Algorithm, strategy: str, mesh: Mesh | None = None):
  """round(state, data, key) -> (state, metrics) under `strategy`.

  With a `mesh` (vmap strategy), participants and per-client state are
  sharded over its `clients` axis (core/sharding.py). The incoming state is
  donated: its buffers (K-row per-client state included) are updated in
  place, so the caller must use the returned state, not the one passed in.
  """
  if strategy == "vmap":

    @functools.partial(jax.jit, donate_argnums=0)
    def round_fn(state, data, key):
      k_sample, k_train = round_keys(key)
      state = shard_client_state(state, mesh)
      cohort = shard_rows(alg.sample(state, k_sample), mesh)
      outs = jax.vmap(alg.participant_update, in_axes=(None, None, 0, None))(
          state, data, cohort, k_train)
      state, metrics = alg.aggregate(state, cohort, shard_rows(outs, mesh))
      return shard_client_state(state, mesh), metrics

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

    def round_fn(state, data, key):
      cohort, k_train = begin(state, key)
      n = jax.tree.leaves(cohort)[0].shape[0]
      outs = [update(state, data, jax.tree.map(lambda x: x[i], cohort), k_train)
              for i in range(n)]
      return aggregate(state, cohort, jax.tree.map(lambda *x: jnp.stack(x), *outs))

    return round_fn

  raise ValueError(f"unknown strategy {strategy!r}")
