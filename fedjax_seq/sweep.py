"""Runs the Cartesian product of config values, one main.py workdir per point.

  python -m fedjax_seq.sweep --config=configs/fedseq.py \
      --sweep=config.data.alpha=0,0.2,0.5 --sweep=config.seed=0,1,2 \
      --workdir=runs/ablation [--config.rounds=50 ...] \
      [--dry_run] [--emit=slurm [--slurm_time=24:00:00]] [--targets=0.6,0.7]

Every point runs as `python main.py --config=<same file> --workdir=<point dir>
<the --config.* overrides given here> <the point's --config.k=v>` in a
subprocess, where `python` is the interpreter running the sweep. The current
directory is kept, so relative paths mean what they meant on this command
line; main.py is the one next to the package (a source checkout), else the one
in the current directory. A point's directory is named from its values, e.g.
`runs/ablation/alpha=0.2,seed=1`.

Finished points (last evaluation at config.rounds) are skipped; unfinished
ones are run again, which resumes them (main.py's job). Every point's config
is validated before the first one starts. A failing point is reported and the
sweep goes on, exiting non-zero at the end. At the end `summary.md` and
`summary.csv` in --workdir compare the points, points that differ only in
seed as one row (mean and 95% confidence interval), and `summary_runs.md` and
`summary_runs.csv` list every point.

`--dry_run` prints the commands and writes nothing (also with --emit).
`--emit=slurm` writes `<workdir>/slurm/<point>.sbatch` (one GPU each) and
prints the sbatch commands, running nothing. Bad input, an invalid point's
config included, stops with a one-line `error:` before anything runs.
"""

import dataclasses
import itertools
import json
import os
import re
import shlex
import subprocess
import sys
from typing import Any, Sequence

from absl import app, flags
from ml_collections import config_dict, config_flags

import fedjax_seq
from fedjax_seq import cli, files, results
from fedjax_seq.errors import InputError

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "Experiment config file (as for main.py).",
                                lock_config=True)
flags.DEFINE_multi_string("sweep", [], "config.PATH=V1,V2,...; repeat for a Cartesian product.")
flags.DEFINE_string("workdir", None, "Directory holding one workdir per point and the summary.")
flags.DEFINE_bool("dry_run", False, "Print the commands; run and write nothing.")
flags.DEFINE_enum("emit", None, ["slurm"], "Write a batch script per point instead of running.")
flags.DEFINE_string("slurm_time", "24:00:00", "#SBATCH --time of each emitted script.")
flags.DEFINE_string("targets", "", "Accuracy targets for the summary's rounds-to-target, "
                    "e.g. 0.6,0.7.")
flags.DEFINE_enum("program", "train", ["train", "study"],
                  "What each point runs: train (main.py) or study (python -m fedjax_seq.study, "
                  "the superclient formation study; a point is finished once its study.json "
                  "exists).")
flags.DEFINE_string("study_flags", "", "--program=study: flags passed to every study, e.g. "
                    "'--pretrain_epochs=10,20 --groupings=random,greedy'.")
flags.mark_flags_as_required(["config", "workdir"])

_OVERRIDE = re.compile(r"^-{1,2}(no)?config\.")
_SPEC = re.compile(r"^config\.([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*)*)=(.*)$", re.S)
_SLURM_TIME = re.compile(r"^(\d+-)?\d+(:\d{1,2}){0,2}$")
_UNSAFE = re.compile(r"[^A-Za-z0-9._=,+-]")


@dataclasses.dataclass
class Axis:
  """One --sweep: a config path and its values (as typed, and parsed to the field's type)."""
  path: str
  tokens: list[str]
  values: list[Any]


@dataclasses.dataclass
class Point:
  """One element of the product: its directory name, overrides and command."""
  name: str
  workdir: str
  assignments: list[tuple[str, str, Any]]  # (path, token, value)
  command: list[str]


def _field_type(config: config_dict.ConfigDict, path: str) -> type:
  """The type of an existing leaf field; InputError naming the path otherwise."""
  *parents, leaf = path.split(".")
  node = config
  for i, key in enumerate(parents):
    if not isinstance(node, config_dict.ConfigDict) or key not in node:
      raise InputError(f"--sweep: the config has no field config.{'.'.join(parents[:i + 1])}")
    node = node[key]
  if not isinstance(node, config_dict.ConfigDict) or leaf not in node:
    raise InputError(f"--sweep: the config has no field config.{path}")
  if isinstance(node[leaf], config_dict.ConfigDict):
    raise InputError(f"--sweep: config.{path} is a group of fields; sweep one of its fields")
  return node.get_type(leaf)


def _parse_value(token: str, field_type: type, path: str) -> Any:
  """Parses one swept value as the field's type, as config_flags would."""
  kind = {bool: "a boolean (true/false)", int: "an integer", float: "a number"}
  error = InputError(f"--sweep: value {token!r} of config.{path} is not "
                     f"{kind.get(field_type, field_type.__name__)}")
  if field_type is bool:
    lowered = token.lower()
    if lowered in ("true", "t", "1"):
      return True
    if lowered in ("false", "f", "0"):
      return False
    raise error
  if field_type is int:
    try:
      return int(token)
    except ValueError:
      raise error from None
  if field_type is float:
    try:
      return float(token)
    except ValueError:
      raise error from None
  if field_type is str:
    return token
  raise InputError(f"--sweep: config.{path} holds a {field_type.__name__}; only int, float, "
                   "bool and str fields can be swept")


def parse_axis(spec: str, config: config_dict.ConfigDict) -> Axis:
  """Parses 'config.data.alpha=0,0.2' against the loaded config."""
  match = _SPEC.match(spec)
  if not match:
    raise InputError(f"--sweep={spec}: expected config.PATH=V1,V2,... "
                     "(e.g. --sweep=config.data.alpha=0,0.2,0.5)")
  path, values_text = match.groups()
  field_type = _field_type(config, path)
  tokens = [t.strip() for t in values_text.split(",")] if values_text.strip() else []
  if not tokens:
    raise InputError(f"--sweep={spec}: no values; give config.{path}=V1,V2,...")
  if any(not t for t in tokens):
    raise InputError(f"--sweep={spec}: empty value in the list")
  values = [_parse_value(t, field_type, path) for t in tokens]
  for i, v in enumerate(values):
    if v in values[:i]:
      raise InputError(f"--sweep={spec}: value {tokens[i]!r} is given twice")
  return Axis(path, tokens, values)


def _axis_labels(axes: Sequence[Axis]) -> list[str]:
  """Each axis's name in point directories: the last path component unless ambiguous."""
  leaves = [a.path.rsplit(".", 1)[-1] for a in axes]
  return [leaf if leaves.count(leaf) == 1 else a.path for leaf, a in zip(leaves, axes)]


def point_name(labels: Sequence[str], tokens: Sequence[str]) -> str:
  """'alpha=0.2,seed=1', with anything unsafe in a file name replaced by '_'."""
  return _UNSAFE.sub("_", ",".join(f"{l}={t}" for l, t in zip(labels, tokens)))


def _display(path: str) -> str:
  """A path relative to the current directory when below it, else absolute."""
  absolute = os.path.abspath(path)
  relative = os.path.relpath(absolute)
  return absolute if relative == ".." or relative.startswith(".." + os.sep) else relative


def find_main() -> str:
  """main.py of the checkout the package comes from, else of the current directory."""
  candidates = [os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(
      fedjax_seq.__file__))), "main.py"), os.path.join(os.getcwd(), "main.py")]
  for candidate in candidates:
    if os.path.isfile(candidate):
      return _display(candidate)
  raise InputError("cannot find main.py next to the fedjax_seq package or in the current "
                   "directory; run the sweep from the repository root")


def passthrough_overrides(argv: Sequence[str]) -> list[str]:
  """The --config.* arguments of the command line, verbatim, in order."""
  out, i = [], 0
  while i < len(argv):
    arg = argv[i]
    if _OVERRIDE.match(arg):
      out.append(arg)
      name = arg.lstrip("-").split("=", 1)[0]
      takes_next = ("=" not in arg and not name.startswith("no") and name in FLAGS and
                    not FLAGS[name].boolean and i + 1 < len(argv))
      if takes_next:  # `--config.rounds 50` form
        out.append(argv[i + 1])
        i += 1
    i += 1
  return out


def _overridden_paths(overrides: Sequence[str]) -> set[str]:
  paths = set()
  for arg in overrides:
    if _OVERRIDE.match(arg):
      name = arg.lstrip("-").split("=", 1)[0]
      paths.add(name[len("noconfig."):] if name.startswith("noconfig.") else name[7:])
  return paths


def _format_token(value: Any, token: str) -> str:
  return ("true" if value else "false") if isinstance(value, bool) else token


def build_points(config_arg: str, workdir: str, axes: Sequence[Axis],
                 overrides: Sequence[str], main_py: str,
                 extra: Sequence[str] = ()) -> list[Point]:
  """The product of the axes (first axis slowest), each with its command.

  `main_py` is a script path, or a module name run with `python -m`; `extra`
  flags end every command.
  """
  labels = _axis_labels(axes)
  points, seen = [], {}
  for combo in itertools.product(*(range(len(a.values)) for a in axes)):
    tokens = [axes[k].tokens[i] for k, i in enumerate(combo)]
    name = point_name(labels, tokens)
    if name in seen:
      raise InputError(f"points {seen[name]} and {','.join(tokens)} map to the same "
                       f"directory {name}; use values that differ in letters or digits")
    seen[name] = ",".join(tokens)
    assignments = [(axes[k].path, tokens[k], axes[k].values[i]) for k, i in enumerate(combo)]
    point_dir = os.path.join(_display(workdir), name)
    program = [main_py] if main_py.endswith(".py") else ["-m", main_py]
    command = [sys.executable, *program, f"--config={config_arg}", f"--workdir={point_dir}",
               *overrides,
               *(f"--config.{p}={_format_token(v, t)}" for p, t, v in assignments),
               *extra]
    points.append(Point(name, point_dir, assignments, command))
  return points


def resolved_config(config: config_dict.ConfigDict, point: Point) -> config_dict.ConfigDict:
  """The config a point runs with: the sweep's (overrides applied) plus the point's values."""
  c = config.copy_and_resolve_references()
  for path, _, value in point.assignments:
    *parents, leaf = path.split(".")
    node = c
    for key in parents:
      node = node[key]
    node[leaf] = value
  return c


def point_config(config: config_dict.ConfigDict, point: Point) -> dict:
  """The resolved config a point runs with, as main.py writes it to config.json."""
  return json.loads(json.dumps(resolved_config(config, point).to_dict()))


def validate_points(config: config_dict.ConfigDict, points: Sequence[Point]) -> None:
  """Refuses the sweep at its first invalid point, before any point starts, so a bad
  value is not found only after the good points have run (also with --dry_run)."""
  # Imported here: it loads JAX, which the flag checks before this do not need.
  from fedjax_seq.training import experiment  # pylint: disable=import-outside-toplevel
  for point in points:
    try:
      experiment.validate(resolved_config(config, point))
    except InputError as e:
      raise InputError(f"point {point.name} is invalid: {e}; nothing was run") from None


def status(point: Point, wanted: dict) -> tuple[bool, str]:
  """(finished, note): finished when its last evaluation is at the requested rounds."""
  if not os.path.exists(os.path.join(point.workdir, results.METRICS_FILE)):
    return False, "not started"
  try:
    run = results.load_run(point.workdir)
  except InputError as e:
    return False, f"unreadable ({e})"
  done = run["records"][-1]["round"] if run["records"] else 0
  if not (results.is_finished(run) and run["config"].get("rounds") == wanted["rounds"]):
    return False, f"at round {done} of {wanted['rounds']}"
  have = files.flatten(run["config"])
  changed = sorted(k for k, v in files.flatten(wanted).items() if have.get(k, v) != v)
  note = f"finished ({done} rounds)"
  if changed:
    note += (f"; note: its config.json differs in {', '.join(changed)}; use another "
             "--workdir to run the new setting")
  return True, note


def study_status(point: Point) -> tuple[bool, str]:
  """(finished, note) of a study point: finished once its study.json exists."""
  if os.path.exists(os.path.join(point.workdir, "study.json")):
    return True, "finished (study.json written)"
  return False, "not finished"


def write_slurm(point: Point, slurm_dir: str, job_prefix: str, time: str) -> str:
  """Writes one sbatch script for a point; returns its path."""
  script = os.path.join(slurm_dir, f"{point.name}.sbatch")
  lines = [
      "#!/bin/bash",
      f"#SBATCH --job-name={job_prefix}{point.name}",
      f"#SBATCH --output={os.path.join(os.path.abspath(slurm_dir), point.name)}-%j.out",
      "#SBATCH --gres=gpu:1",
      f"#SBATCH --time={time}",
      "# One point of a fedjax_seq sweep; submitting it again resumes an unfinished run.",
      "set -euo pipefail",
      f"cd {shlex.quote(os.getcwd())}",
      f"exec {shlex.join(point.command)}",
      "",
  ]
  with open(script, "w") as f:
    f.write("\n".join(lines))
  return script


def run_sweep(argv: Sequence[str]) -> int:
  """Validates everything, then prints, emits or runs the points; returns the exit status."""
  config = cli.loaded_config(FLAGS)
  workdir = FLAGS.workdir
  files.check_directory(workdir, "--workdir")
  if not FLAGS.sweep:
    raise InputError("give at least one --sweep=config.PATH=V1,V2,...")
  axes = [parse_axis(spec, config) for spec in FLAGS.sweep]
  paths = [a.path for a in axes]
  for p in paths:
    if paths.count(p) > 1:
      raise InputError(f"config.{p} is swept twice; give its values in one --sweep")
  overrides = passthrough_overrides(argv)
  both = sorted(set(paths) & _overridden_paths(overrides))
  if both:
    raise InputError(f"config.{both[0]} is both swept and overridden with --config.{both[0]}")
  if not _SLURM_TIME.match(FLAGS.slurm_time):
    raise InputError(f"--slurm_time={FLAGS.slurm_time}: expected e.g. 24:00:00 or 1-00:00:00")
  targets = results.parse_targets(FLAGS.targets)
  study = FLAGS.program == "study"
  try:
    extra = shlex.split(FLAGS.study_flags)
  except ValueError as e:
    raise InputError(f"--study_flags: {e}") from None
  if extra and not study:
    raise InputError("--study_flags needs --program=study")
  points = build_points(FLAGS["config"].config_filename, workdir, axes, overrides,
                        "fedjax_seq.study" if study else find_main(), extra)
  for point in points:
    files.check_directory(point.workdir, "point workdir")
  validate_points(config, points)
  states = [study_status(p) if study else status(p, point_config(config, p)) for p in points]

  if FLAGS.dry_run:
    for point, (finished, note) in zip(points, states):
      if finished:
        print(f"skip {point.name}: {note}", file=sys.stderr)
      else:
        print(shlex.join(point.command))
    return 0
  if FLAGS.emit == "slurm":
    return _emit_slurm(points, states, workdir)
  return _run_points(points, states, workdir, study, targets)


def _emit_slurm(points: Sequence[Point], states, workdir: str) -> int:
  """One sbatch script per unfinished point, in WORKDIR/slurm; prints how to submit them."""
  slurm_dir = os.path.join(workdir, "slurm")
  try:
    os.makedirs(slurm_dir, exist_ok=True)
    job_prefix = _UNSAFE.sub("_", os.path.basename(os.path.normpath(os.path.abspath(workdir))))
    scripts = []
    for point, (finished, note) in zip(points, states, strict=True):
      if finished:
        print(f"skip {point.name}: {note}")
      else:
        scripts.append(write_slurm(point, slurm_dir, job_prefix + "-", FLAGS.slurm_time))
  except OSError as e:
    raise InputError(f"cannot write to {slurm_dir}: {e.strerror or e}") from None
  print(f"wrote {len(scripts)} sbatch scripts to {slurm_dir}; submit them with:")
  for script in scripts:
    print(f"  sbatch {shlex.quote(script)}")
  return 0


def _run_points(points: Sequence[Point], states, workdir: str, study: bool,
                targets: Sequence[float]) -> int:
  """Runs the unfinished points one after another, then tabulates what finished."""
  try:
    os.makedirs(workdir, exist_ok=True)
  except OSError as e:
    raise InputError(f"cannot create --workdir {workdir}: {e.strerror or e}") from None
  failed = []
  for i, (point, (finished, note)) in enumerate(zip(points, states, strict=True), 1):
    prefix = f"[{i}/{len(points)}] {point.name}"
    if finished:
      print(f"{prefix}: {note}; skipped", flush=True)
      continue
    print(f"{prefix}: {note}; running {shlex.join(point.command)}", flush=True)
    rc = subprocess.call(point.command)
    if rc != 0:
      failed.append(f"{point.name} (exit {rc})")
      print(f"{prefix}: FAILED with exit status {rc}; going on", flush=True)
  if study:
    done = [p for p in points if study_status(p)[0]]
    print("\n".join(["", f"{len(done)} of {len(points)} studies finished; their tables:"] +
                     [f"  {os.path.join(p.workdir, 'study.md')}" for p in done]), flush=True)
  else:
    write_summary(points, workdir, targets)
  if failed:
    raise InputError(f"{len(failed)} of {len(points)} points failed: {', '.join(failed)}")
  return 0


def write_summary(points: Sequence[Point], workdir: str, targets: Sequence[float]) -> None:
  """summary.md/.csv per group of seeds and summary_runs.md/.csv per point, over the
  points that have a readable run; prints the group table."""
  runs = []
  for point in points:
    try:
      runs.append(results.load_run(point.workdir))
    except InputError as e:
      print(f"summary: leaving out {point.name}: {e}", file=sys.stderr)
  rows, paths = results.write_tables(runs, targets, os.path.join(workdir, "summary.md"))
  print(f"\n{results.to_markdown(rows)}\nwrote {', '.join(paths)}", flush=True)


def main(argv: Sequence[str]) -> None:
  """absl entry point: runs the sweep, an InputError as one `error:` line."""
  if len(argv) > 1:
    cli.fail(f"unexpected arguments: {' '.join(argv[1:])}")
  try:
    sys.exit(cli.run(lambda: run_sweep(sys.argv[1:])))
  except KeyboardInterrupt:
    print("error: interrupted; run the same command again to resume", file=sys.stderr)
    sys.exit(130)


if __name__ == "__main__":
  app.run(main, flags_parser=lambda argv: cli.parse_flags(FLAGS, argv))
