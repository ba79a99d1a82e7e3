"""One run at a time per workdir: an OS lock held from before anything is read or written."""

import fcntl
import os
import socket

import jax
import numpy as np

from fedjax_seq.errors import InputError


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
      raise InputError(f"cannot write to workdir {workdir}: {e.strerror}") from None
    if self.fd is None:
      holder = self._holder()
      self._remove_created()
      raise InputError(f"workdir {workdir} is in use by {holder}")
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


def lock_workdir(workdir: str) -> WorkdirLock | None:
  """Process 0 locks the workdir (creating it) before anything is written or loaded.

  With several processes, all of them learn whether it could, so none
  goes on alone. Raises InputError when another run holds the workdir.
  """
  lock, error = None, None
  if jax.process_index() == 0:
    try:
      lock = WorkdirLock(workdir)
    except InputError as e:
      error = e
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    if not int(multihost_utils.broadcast_one_to_all(np.int32(error is None))) and error is None:
      error = InputError(f"process 0 could not lock workdir {workdir} (see its error)")
  if error is not None:
    raise error
  return lock
