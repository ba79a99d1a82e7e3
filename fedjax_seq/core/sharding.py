"""SPMD across devices: a 1-D mesh with a `clients` axis.

The round's participant axis (clients or superclients) and the stacked
per-client state are sharded over `clients`; the server state and the
training images are replicated; the aggregation's sums become cross-device
reductions that XLA inserts. A cohort that does not divide the device count
is padded by XLA internally. Per-client state is found by convention: the
fields of an algorithm state whose names start with `client_` hold one row
per client (leading axis K).
"""

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from fedjax_seq.errors import UserError

AXIS = "clients"


def make_mesh(num_devices: int = 0) -> Mesh | None:
  """A mesh over the first `num_devices` devices (0: all); None for a single device."""
  devices = jax.devices()
  if num_devices < 0 or num_devices > len(devices):
    raise UserError(f"config.mesh.num_devices must be in [0, {len(devices)}], got {num_devices}")
  devices = devices[:num_devices or len(devices)]
  return Mesh(np.array(devices), (AXIS,)) if len(devices) > 1 else None


def shard_rows(tree, mesh: Mesh | None):
  """Constrains every leaf's leading axis to be split over the mesh (inside jit)."""
  if mesh is None or tree is None:
    return tree
  spec = NamedSharding(mesh, P(AXIS))
  return jax.tree.map(lambda x: jax.lax.with_sharding_constraint(x, spec), tree)


def shard_client_state(state, mesh: Mesh | None):
  """Shards the `client_*` fields of a NamedTuple state; the rest is left replicated."""
  if mesh is None or not hasattr(state, "_fields"):
    return state
  return state._replace(**{f: shard_rows(getattr(state, f), mesh)
                           for f in state._fields if f.startswith("client_")})
