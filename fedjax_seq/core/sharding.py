"""SPMD across devices: a 1-D mesh with a `clients` axis.

The round's participant axis (clients or superclients) and the stacked
per-client state are sharded over `clients`; the server state and the
training images are replicated; the aggregation's sums become cross-device
reductions that XLA inserts. A cohort that does not divide the device count
is padded by XLA internally. Per-client state is what the state declares as
such: every `core.state.ClientRows` in it (one row per client, leading axis
K).

Several processes (hosts) share one mesh after `initialize_distributed`:
every process holds the same data and state (both are deterministic in the
seed), `globalize` turns them into global arrays replicated over the mesh,
and `localize` reads a replicated result back on each process.
"""

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fedjax_seq.core.state import map_client_rows
from fedjax_seq.errors import InputError

AXIS = "clients"


def make_mesh(num_devices: int = 0) -> Mesh | None:
  """A mesh over the first `num_devices` devices (0: all); None for a single device.

  ValueError for a count outside [0, available devices].
  """
  devices = jax.devices()
  if num_devices < 0 or num_devices > len(devices):
    raise InputError(f"num_devices must be in [0, {len(devices)}], got {num_devices}",
                     argument="num_devices")
  devices = devices[:num_devices or len(devices)]
  return Mesh(np.array(devices), (AXIS,)) if len(devices) > 1 else None


def shard_rows(tree, mesh: Mesh | None):
  """Constrains every leaf's leading axis to be split over the mesh (inside jit)."""
  if mesh is None or tree is None:
    return tree
  spec = NamedSharding(mesh, P(AXIS))
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, spec), tree)


def shard_client_state(state, mesh: Mesh | None):
  """Shards the rows of every `ClientRows` in a state; the rest is left replicated."""
  if mesh is None:
    return state
  return map_client_rows(lambda t: t._replace(rows=shard_rows(t.rows, mesh)), state)


def initialize_distributed(coordinator_address: str, num_processes: int, process_id: int) -> None:
  """Joins a multi-process run (before any other JAX call); a no-op for one process.

  On CPU the cross-process collectives use gloo.
  """
  if num_processes <= 1:
    return
  jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(coordinator_address or None, num_processes, process_id)
  except (RuntimeError, ValueError) as e:
    raise InputError(f"cannot join the distributed run at {coordinator_address}: "
                     f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def is_multiprocess(mesh: Mesh | None) -> bool:
  """Whether a mesh spans several processes (then arrays must be globalized)."""
  return mesh is not None and jax.process_count() > 1


def globalize(tree, mesh: Mesh | None):
  """Process-local arrays -> global arrays replicated over a multi-process mesh."""
  if not is_multiprocess(mesh):
    return tree
  replicated = NamedSharding(mesh, P())

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return x
    if isinstance(x, jax.Array) and jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
      return jax.random.wrap_key_data(one(jax.random.key_data(x)),
                                      impl=jax.random.key_impl(x))
    value = np.asarray(x)
    return jax.make_array_from_callback(value.shape, replicated, lambda idx: value[idx])

  return jax.tree.map(one, tree)


def localize(tree):
  """A replicated global array as this process's local copy (others unchanged)."""
  return jax.tree.map(
      lambda x: x.addressable_data(0) if isinstance(x, jax.Array) and not x.is_fully_addressable
      else x, tree)
