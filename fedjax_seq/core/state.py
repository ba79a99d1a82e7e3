"""Per-client state, declared by its type rather than found by a field name.

An algorithm state holds what lives across rounds for every client (SCAFFOLD's
c_i, FedDyn's g_i) as a `ClientRows`: a pytree whose leaves have a leading
axis of size K. Wherever a `ClientRows` sits in a state, the round driver
shards it over the `clients` mesh axis (core/sharding.py), keeps it in host
memory with `engine.client_state=host` (core/rounds.py) and checkpoints it
with the rest of the state; no other part of a state is treated that way.
"""

from typing import Any, Callable, NamedTuple

import jax
import numpy as np


class ClientRows(NamedTuple):
  """One row per client (leading axis K), or a device window onto host-resident rows.

  `index` is None for the full table. For a window (host-resident state),
  `rows` holds the round's rows and `index[client_id]` is a client's row in
  it (len(rows) for clients outside the window, padding id K included).
  """
  rows: Any
  index: jax.Array | None = None


def is_client_rows(x) -> bool:
  """Whether a pytree node is declared per-client state."""
  return isinstance(x, ClientRows)


def client_rows(state) -> list[ClientRows]:
  """Every `ClientRows` in a state, in pytree order."""
  return [x for x in jax.tree.leaves(state, is_leaf=is_client_rows) if is_client_rows(x)]


def map_client_rows(fn: Callable[[ClientRows], Any], state):
  """The state with every `ClientRows` replaced by fn(it); everything else unchanged."""
  return jax.tree.map(lambda x: fn(x) if is_client_rows(x) else x, state, is_leaf=is_client_rows)


def stacked_zeros(params, num_rows: int) -> ClientRows:
  """`num_rows` zero copies of params: the usual initial per-client state.

  Host (NumPy) zeros, allocated lazily: the training loop puts them on the
  device, or keeps them on the host with `engine.client_state=host`.
  """
  return ClientRows(jax.tree.map(lambda p: np.zeros((num_rows,) + p.shape, p.dtype), params))


def gather_rows(table, i: jax.Array):
  """Row(s) of client(s) i of a `ClientRows` (full or window), or of a plain stacked pytree."""
  if is_client_rows(table):
    return gather_rows(table.rows, i if table.index is None else table.index[i])
  return jax.tree.map(lambda x: x[i], table)


def scatter_rows(table, ids: jax.Array, rows):
  """The table with the rows of clients `ids` replaced.

  Every other row is untouched; ids out of range (padding) are dropped.
  """
  if is_client_rows(table):
    where = ids if table.index is None else table.index[ids]
    return table._replace(rows=scatter_rows(table.rows, where, rows))
  return jax.tree.map(lambda x, r: x.at[ids].set(r, mode="drop"), table, rows)
