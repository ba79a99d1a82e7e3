"""jemalloc for the commands, without a manual LD_PRELOAD: the command re-executes itself once.

XLA:CPU allocates and frees every local step's temporaries (tens of MB: the
im2col patches and their gradients). glibc's malloc hands blocks that large
to the OS with mmap/munmap, so every step faults its memory back in; glibc's
own knobs (its mmap threshold, `mallopt`) do not avoid that. jemalloc with
`retain` and no decay keeps the memory mapped and reuses it, which makes CPU
rounds faster (benchmarks/RESULTS.md, "the allocator"). An allocator must be
chosen before the process starts, so `main.py`, the study and the benchmarks
call `reexec_or_exit()` first thing (a sweep's runs are `main.py` commands):
where `libjemalloc.so.2` is installed (Debian/Ubuntu: `libjemalloc2`) and not
yet loaded, the same command is executed again with it preloaded. The
numbers do not change (the allocator decides where buffers live, not what
they hold). `FEDJAX_SEQ_ALLOCATOR=system` keeps the system allocator.

This module imports nothing heavy: it runs before JAX is imported.
"""

import ctypes.util
import os
import sys

ENV = "FEDJAX_SEQ_ALLOCATOR"  # "jemalloc" (the default where installed) or "system"
CHOICES = ("jemalloc", "system")
# Keep freed pages mapped (retain) and never give them back (no dirty/muzzy decay).
JEMALLOC_CONF = "retain:true,dirty_decay_ms:-1,muzzy_decay_ms:-1"
_REEXECUTED = "_FEDJAX_SEQ_REEXECUTED"


def jemalloc_library() -> str | None:
  """The loader's name for jemalloc (e.g. "libjemalloc.so.2"), or None where not installed."""
  return ctypes.util.find_library("jemalloc")


def active() -> str:
  """The allocator this process runs with: "jemalloc" or "system"."""
  try:
    with open("/proc/self/maps") as f:
      return "jemalloc" if "libjemalloc" in f.read() else "system"
  except OSError:
    return "system"


def reexec_with_jemalloc() -> None:
  """Executes this command again with jemalloc preloaded, where that applies; else returns.

  Returns at once when FEDJAX_SEQ_ALLOCATOR=system, off Linux, when jemalloc
  is already loaded or not installed, or in the re-executed process itself.
  Raises ValueError for an unknown FEDJAX_SEQ_ALLOCATOR.
  """
  choice = os.environ.get(ENV, "jemalloc")
  if choice not in CHOICES:
    raise ValueError(f"environment variable {ENV}={choice!r}; valid: {', '.join(CHOICES)}")
  if (choice == "system" or not sys.platform.startswith("linux") or os.environ.get(_REEXECUTED)
      or active() == "jemalloc"):
    return
  library = jemalloc_library()
  if library is None:
    return
  env = dict(os.environ)
  env["LD_PRELOAD"] = " ".join(p for p in (library, env.get("LD_PRELOAD", "")) if p)
  env.setdefault("MALLOC_CONF", JEMALLOC_CONF)
  env[_REEXECUTED] = "1"
  sys.stdout.flush()
  sys.stderr.flush()
  # orig_argv keeps `-m package.module` and interpreter options as they were given.
  os.execve(sys.executable, [sys.executable] + sys.orig_argv[1:], env)


def reexec_or_exit() -> None:
  """`reexec_with_jemalloc()` for a command's first line: a bad setting exits with one line."""
  try:
    reexec_with_jemalloc()
  except ValueError as e:
    sys.exit(f"error: {e}")
