"""Checkpoints of the whole training state with orbax (atomic, last few kept), and the workdir lock.

A checkpoint holds the algorithm state (server model, every per-client
state, FedSeqInter's bank) and JSON metadata (the round, the pending
training losses since the last evaluation, elapsed time). Superclient
membership lives in `superclients.json`, written once before round 0.
Orbax commits a checkpoint by renaming a finished temporary directory, so a
run killed mid-write resumes from the last complete one.
"""

import fcntl
import os
import socket
from typing import Any

import orbax.checkpoint as ocp

from fedjax_seq.errors import UserError


LOCK_FILE = ".lock"


class WorkdirLock:
  """An exclusive lock on a workdir, held by the one process that runs in it.

  An OS lock (flock) on WORKDIR/.lock: the kernel drops it when its process
  dies, however it dies (SIGKILL included), so a lock is never stale. The
  file names the holder (pid and host) for the refusal message. Creates
  the workdir if needed; `release` removes what it created when nothing
  else was written there. Separate opens of the file conflict even within
  one process, so nested runs (compare_with) lock their own sub-workdirs.
  """

  def __init__(self, workdir: str):
    self.workdir = os.path.abspath(workdir)
    self.path = os.path.join(self.workdir, LOCK_FILE)
    top = self.workdir  # the outermost directory this lock creates, if any
    while not os.path.exists(os.path.dirname(top)):
      top = os.path.dirname(top)
    self.created = None if os.path.exists(self.workdir) else top
    try:
      os.makedirs(self.workdir, exist_ok=True)
      self.fd = self._lock()
    except OSError as e:
      self._remove_created()
      raise UserError(f"cannot write to workdir {workdir}: {e.strerror}") from None
    if self.fd is None:
      holder = self._holder()
      self._remove_created()
      raise UserError(f"workdir {workdir} is in use by {holder}")
    os.ftruncate(self.fd, 0)
    os.write(self.fd, f"pid {os.getpid()} on host {socket.gethostname()}\n".encode())

  def _lock(self) -> int | None:
    """A locked descriptor of the file at `path`, or None if another holds it."""
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        os.close(fd)
        return None
      try:  # the file may have been removed by a holder's release() meanwhile
        if os.stat(self.path).st_ino == os.fstat(fd).st_ino:
          return fd
      except FileNotFoundError:
        pass
      os.close(fd)

  def _holder(self) -> str:
    try:
      with open(self.path) as f:
        text = f.read().strip()
    except OSError:
      text = ""
    return text or "another process (pid unknown)"

  def _remove_created(self) -> None:
    """Removes the directories this lock created, if they hold nothing else."""
    if self.created is None:
      return
    try:
      if os.listdir(self.workdir) in ([], [LOCK_FILE]):
        if os.path.exists(self.path):
          os.unlink(self.path)
        d = self.workdir
        while True:
          os.rmdir(d)  # fails, and stops, at a directory that holds something else
          if d == self.created:
            break
          d = os.path.dirname(d)
    except OSError:
      pass

  def release(self) -> None:
    """Drops the lock; a workdir it created and nothing wrote into is removed."""
    if self.fd is None:
      return
    self._remove_created()
    os.close(self.fd)
    self.fd = None

  def __enter__(self) -> "WorkdirLock":
    return self

  def __exit__(self, *exc) -> None:
    self.release()


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
    """(state, meta) of a round; UserError if it is unreadable or from another run."""
    try:
      out = self.manager.restore(round_index, args=ocp.args.Composite(
          state=ocp.args.StandardRestore(target), meta=ocp.args.JsonRestore()))
    except Exception as e:  # orbax raises many types for corrupt or foreign data
      first = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
      raise UserError(f"cannot restore checkpoint {self.directory}/{round_index} ({first[:200]}); "
                      "move the checkpoints directory away to start over") from None
    return out.state, out.meta

  def wait(self) -> None:
    """Blocks until an asynchronous save in flight is committed."""
    self.manager.wait_until_finished()

  def close(self) -> None:
    """Waits for a save in flight, then releases orbax's resources."""
    self.wait()
    self.manager.close()
