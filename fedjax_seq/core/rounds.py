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

Both give the same numbers (tests/test_fedavg.py and the tests of each family).
"""

import functools
from typing import Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh

from fedjax_seq.core.sharding import globalize, is_multiprocess, shard_client_state, shard_rows
from fedjax_seq.core.state import ClientRows, client_rows, map_client_rows


class Algorithm(NamedTuple):
  """An algorithm as pure functions (see the module docstring)."""
  init: Callable
  sample: Callable
  participant_update: Callable
  aggregate: Callable
  # clients_of(cohort) -> client ids whose per-client rows the round touches
  # (ids >= K are padding); only needed to keep per-client state on the host.
  clients_of: Callable = lambda cohort: cohort
  # chain(state) -> (on, start), for algorithms whose cohort may run as a
  # chain: when `on` (a bool scalar, decided on the device) the participants
  # run one after another in cohort order, the first from `start` and each
  # next one from the model the previous one returned, through
  # participant_update(..., start=params). The algorithm decides when and
  # from where; the driver only runs the chain it is given.
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


# Where per-client state lives (config engine.client_state): on the device, or on the host.
CLIENT_STATES = ("device", "host")


def with_host_client_state(alg: Algorithm, round_fn: Callable) -> Callable:
  """Keeps every `ClientRows` of the state in host memory; each round moves only its rows.

  Before the round the touched clients' rows are copied to the device as a
  window of fixed size (one compile); afterwards they are written back into
  the host arrays in place. Equal to the device-resident round (tested).
  """
  sample = jax.jit(lambda state, key: alg.sample(state, round_keys(key)[0]))

  def run(state, data, key):
    tables = client_rows(state)
    if not tables:
      return round_fn(state, data, key)
    light = map_client_rows(lambda t: None, state)  # sampling needs no rows on the device
    ids = np.asarray(alg.clients_of(sample(light, key))).reshape(-1)
    k = jax.tree.leaves(tables[0].rows)[0].shape[0]
    real = np.unique(ids[ids < k])
    index = np.full(k + 1, len(ids), np.int32)
    index[real] = np.arange(len(real), dtype=np.int32)
    index = jnp.asarray(index)

    def window(table: ClientRows) -> ClientRows:
      return ClientRows(jax.tree.map(lambda x: jnp.asarray(np.concatenate(
          [x[real], np.zeros((len(ids) - len(real),) + x.shape[1:], x.dtype)])), table.rows),
          index)

    state, metrics = round_fn(map_client_rows(window, state), data, key)
    for table, out in zip(tables, client_rows(state)):
      rows = jax.device_get(out.rows)
      jax.tree.map(lambda h, r: h.__setitem__(real, r[:len(real)]), table.rows, rows)
    hosted = iter(tables)
    return map_client_rows(lambda _: next(hosted), state), metrics

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


def make_round(alg: Algorithm, strategy: str, mesh: Mesh | None = None, chunk: int = 0,
               batch_size: int = 0):
  """round(state, data, key) -> (state, metrics) under `strategy`.

  With a `mesh` (vmap strategy), participants and per-client state are
  sharded over its `clients` axis (core/sharding.py). `chunk` > 0 vmaps
  the cohort in chunks of that many participants (`lax.map` with a batch
  size) when a whole cohort's activations do not fit. `batch_size` > 0
  (loop strategy, clients of different sizes): each participant runs only
  its bucket's steps (see `step_bucket`) instead of the largest client's.
  The incoming state is donated: its buffers (K-row per-client state
  included) are updated in place, so the caller must use the returned
  state, not the one passed in.
  """
  if strategy == "vmap":
    return _vmap_round(alg, mesh, chunk)
  if mesh is not None:
    raise ValueError("a device mesh needs the vmap strategy")
  if strategy == "loop":
    return _loop_round(alg, batch_size)
  raise ValueError(f"unknown strategy {strategy!r}")


def step_bucket(size: int, batch_size: int, max_size: int) -> int:
  """The size cap of a participant whose largest client holds `size` examples.

  Its steps per epoch, ceil(size / B), rounded up to a power of two, times B
  (at most `max_size`): a run compiles at most 1 + ceil(log2(ceil(max_size /
  B))) participant programs, and a client runs fewer than twice its steps.
  """
  steps = max(-(-size // batch_size), 1)
  return min(max_size, (1 << (steps - 1).bit_length()) * batch_size)


def _vmap_round(alg: Algorithm, mesh: Mesh | None, chunk: int):
  """The whole round as one jitted computation, participants vmapped (or chained)."""

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


def _bucketed(alg: Algorithm, data, cohort, batch_size: int) -> list:
  """Each participant's data with its size cap (`step_bucket`); `data` itself when every
  client has the same size or bucketing is off. One host read of the cohort per round."""
  n = jax.tree.leaves(cohort)[0].shape[0]
  if not batch_size or getattr(data, "equal_sizes", True):  # (data other than FedData: as is)
    return [data] * n
  sizes = np.append(np.asarray(data.client_sizes), 0)  # padding ids (K) hold nothing
  ids = np.minimum(np.asarray(alg.clients_of(cohort)).reshape(n, -1), len(sizes) - 1)
  caps = [step_bucket(int(sizes[row].max()), batch_size, data.max_client_size) for row in ids]
  return [data.replace(size_cap=cap) for cap in caps]


def _loop_round(alg: Algorithm, batch_size: int):
  """Sampling and aggregation jitted; participants one after another through one jitted update."""

  @jax.jit
  def begin(state, key):
    k_sample, k_train = round_keys(key)
    return alg.sample(state, k_sample), k_train

  @jax.jit
  def update(state, data, cohort, i, key, **start):
    """Participant i's update; the row is taken inside the call (no eager op per participant)."""
    return alg.participant_update(state, data, jax.tree.map(lambda x: x[i], cohort), key, **start)

  @functools.partial(jax.jit, donate_argnums=0)
  def put(outs, i, out):
    """Writes participant i's output into row i, in place (no stack of every output later)."""
    return jax.tree.map(lambda rows, o: rows.at[i].set(o), outs, out)

  @functools.partial(jax.jit, static_argnums=0)
  def first(n, out):
    """The n rows for the cohort's outputs, row 0 written: one fused fill, not eager zeros."""
    return jax.tree.map(lambda o: jnp.zeros((n,) + o.shape, o.dtype).at[0].set(o), out)

  @jax.jit
  def link(state, data, cohort, i, key, on, start):
    """Participant i of a cohort that may be chained: from `start` when `on` (no host sync)."""
    return jax.lax.cond(on, lambda: update(state, data, cohort, i, key, start=start),
                        lambda: update(state, data, cohort, i, key))

  aggregate = jax.jit(alg.aggregate, donate_argnums=0)
  chain = None if alg.chain is None else jax.jit(alg.chain)

  def round_fn(state, data, key):
    # Host (NumPy) leaves, e.g. a fresh state's K-row zeros, would otherwise be copied to
    # the device again by every participant's call.
    state = jax.device_put(state)
    cohort, k_train = begin(state, key)
    n = jax.tree.leaves(cohort)[0].shape[0]
    if chain is not None:
      on, start = chain(state)
    inputs = _bucketed(alg, data, cohort, batch_size)
    outs = None
    for i in range(n):
      if chain is None:
        out = update(state, inputs[i], cohort, i, k_train)
      else:
        out = link(state, inputs[i], cohort, i, k_train, on, start)
        start = out.params
      outs = first(n, out) if outs is None else put(outs, i, out)
    return aggregate(state, cohort, outs)

  return round_fn
