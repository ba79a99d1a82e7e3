"""Checkpoints of the whole training state with orbax (atomic, last few kept).

A checkpoint holds the algorithm state (server model, every per-client
state, FedSeqInter's bank) and JSON metadata (the round, the pending
training losses since the last evaluation, elapsed time). Superclient
membership lives in `superclients.json`, written once before round 0.
Orbax commits a checkpoint by renaming a finished temporary directory, so a
run killed mid-write resumes from the last complete one.
"""

import os
from typing import Any

import orbax.checkpoint as ocp

from fedjax_seq.errors import InputError


class Checkpointer:
  """The orbax manager of WORKDIR/checkpoints: one step per saved round."""

  def __init__(self, workdir: str, keep: int = 3):
    self.directory = os.path.abspath(os.path.join(workdir, "checkpoints"))
    self.manager = ocp.CheckpointManager(
        self.directory, options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True))

  def latest(self) -> int | None:
    """The latest committed checkpoint's round, or None."""
    return self.manager.latest_step()

  def save(self, round_index: int, state: Any, meta: dict) -> None:
    """Saves a round's state and metadata (asynchronously; committed by rename)."""
    self.manager.save(round_index, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), meta=ocp.args.JsonSave(meta)))

  def restore(self, round_index: int, target: Any) -> tuple[Any, dict]:
    """(state, meta) of a round; InputError if it is unreadable or from another run."""
    try:
      out = self.manager.restore(round_index, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for corrupt or foreign data
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise InputError(f"cannot restore checkpoint {self.directory}/{round_index} ({first[:200]}); "
                       "move the checkpoints directory away to start over") from None
    return out.state, out.meta

  def wait(self) -> None:
    """Blocks until an asynchronous save in flight is committed."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    """Waits for a save in flight, then releases orbax's resources."""
    self.wait()
    self.manager.close()
