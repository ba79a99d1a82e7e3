"""Commands preload jemalloc by re-executing themselves; the numbers are the allocator's to keep."""

import json
import os

import helpers
from helpers import tiny_flags
from fedjax_seq import allocator

SMALL = tiny_flags(rounds=2, eval_every=1)  # the tiny run (tests/helpers.py), 2 rounds


def main_py(workdir, **env):
  return helpers.main_py("--config=configs/fedavg.py", f"--workdir={workdir}", *SMALL,
                         env={**os.environ, **env})


def test_jemalloc_is_installed_as_the_readme_says():
  assert allocator.jemalloc_library() is not None  # README's set-up line installs libjemalloc2


def test_main_runs_on_jemalloc_with_the_numbers_of_the_system_allocator(tmp_path):
  runs = {}
  for name in allocator.CHOICES:
    proc = main_py(tmp_path / name, FEDJAX_SEQ_ALLOCATOR=name)
    assert proc.returncode == 0, proc.stderr
    info = json.loads((tmp_path / name / "run.json").read_text())
    assert info[-1]["allocator"] == name
    runs[name] = [{k: r[k] for k in ("round", "train_loss", "test_loss", "test_accuracy")}
                  for r in map(json.loads, (tmp_path / name / "metrics.jsonl").read_text()
                               .splitlines())]
  assert runs["jemalloc"] == runs["system"] and len(runs["system"]) == 2


def test_an_unknown_allocator_is_one_line(tmp_path):
  proc = main_py(tmp_path / "run", FEDJAX_SEQ_ALLOCATOR="tcmalloc")
  assert proc.returncode == 1 and not (tmp_path / "run").exists()
  assert proc.stderr.strip() == ("error: environment variable FEDJAX_SEQ_ALLOCATOR='tcmalloc'; "
                                 "valid: jemalloc, system")


def test_the_re_executed_process_keeps_its_command_line(tmp_path):
  # The command line survives the re-execution (sys.orig_argv), and the child sees jemalloc loaded.
  code = ("import sys; from fedjax_seq import allocator; allocator.reexec_with_jemalloc(); "
          "print(allocator.active(), sys.argv[1:])")
  proc = helpers.python("-c", code, "a", "--b=1", timeout=60,
                        env={k: v for k, v in os.environ.items()
                             if k not in ("LD_PRELOAD", allocator.ENV, "_FEDJAX_SEQ_REEXECUTED")})
  assert proc.returncode == 0, proc.stderr
  assert proc.stdout.split()[0] == "jemalloc" and "'a', '--b=1'" in proc.stdout
