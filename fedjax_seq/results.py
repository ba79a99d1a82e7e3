"""Reading finished or running workdirs into comparable rows (no plotting here).

A workdir holds `config.json` and `metrics.jsonl` (see docs/running.md). The rows
report what the paper reports: final accuracy and the number of rounds to
reach target accuracies, so runs can be compared in a table or CSV without
matplotlib. Runs that differ only in `seed` form a group, reported as a mean
with a 95% confidence interval, since one seed says little about a method.
"""

import csv
import io
import json
import math
import os
import statistics
from typing import Any, Optional, Sequence

from fedjax_seq import files
from fedjax_seq.errors import InputError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUPERCLIENTS_FILE = "superclients.json"
WALL_TIME = "wall_time_incl_formation_s"  # training (elapsed_s) + superclient formation
CI = "_ci95"  # suffix of a column holding the 95% half-width of the column it extends
# Fields that have their own column in the group table, so `setting` leaves them out.
GROUP_KEYS = ("algorithm.name", "data.name", "data.alpha", "data.iid", "rounds")


def _read_records(path: str) -> list[dict]:
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    raise InputError(f"{path} does not exist") from None
  except (OSError, UnicodeDecodeError) as e:
    raise InputError(f"cannot read {path}: {e}") from None
  records, previous = [], None  # previous: (round, line number)
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      raise InputError(f"{path} line {number} is not valid JSON") from None
    if not isinstance(record, dict) or not isinstance(record.get("round"), int) or not (
        isinstance(record.get("test_accuracy"), (int, float))):
      raise InputError(f"{path} line {number} lacks an integer 'round' and a numeric "
                       "'test_accuracy'")
    if previous is not None and record["round"] <= previous[0]:
      raise InputError(f"{path} line {number}: round {record['round']} does not come after round "
                       f"{previous[0]} (line {previous[1]}); rounds must strictly increase, so two "
                       "runs probably wrote to this workdir: give each run its own --workdir")
    previous = (record["round"], number)
    records.append(record)
  return records


def load_run(run_dir: str) -> dict:
  """Loads one workdir: {'dir', 'name', 'config', 'records', 'formation_s'}.

  Raises InputError naming the path when the directory, `config.json` or
  `metrics.jsonl` is missing or corrupt, so a typo in a list of runs stops
  before any output is written. `formation_s` is the superclient formation
  time from a FedSeq-family run's `superclients.json` (None for other runs):
  `elapsed_s` in metrics.jsonl counts training only.
  """
  if not os.path.exists(run_dir):
    raise InputError(f"run directory {run_dir} does not exist")
  if not os.path.isdir(run_dir):
    raise InputError(f"run directory {run_dir} is not a directory")
  config = files.read_json(os.path.join(run_dir, CONFIG_FILE))
  if not isinstance(config, dict):
    raise InputError(f"{os.path.join(run_dir, CONFIG_FILE)} does not hold a JSON object")
  records = _read_records(os.path.join(run_dir, METRICS_FILE))
  name = os.path.basename(os.path.normpath(os.path.abspath(run_dir)))
  superclients_path = os.path.join(run_dir, SUPERCLIENTS_FILE)
  info = files.read_json(superclients_path) if os.path.exists(superclients_path) else None
  formation_s = info.get("formation_s") if isinstance(info, dict) else None
  if not isinstance(formation_s, (int, float)) or isinstance(formation_s, bool):
    formation_s = None
  return {"dir": run_dir, "name": name, "config": config, "records": records,
          "formation_s": formation_s}


def load_superclients(run_dir: str) -> dict:
  """Loads `superclients.json` of a FedSeq-family run, checking what the heatmap needs."""
  path = os.path.join(run_dir, SUPERCLIENTS_FILE)
  if not os.path.isdir(run_dir):
    raise InputError(f"run directory {run_dir} does not exist or is not a directory")
  if not os.path.exists(path):
    raise InputError(f"{path} does not exist (only FedSeq-family runs write it)")
  info = files.read_json(path)
  superclients = info.get("superclients") if isinstance(info, dict) else None
  if not isinstance(superclients, list) or not superclients:
    raise InputError(f"{path} has no 'superclients' list")
  widths = set()
  for sc in superclients:
    counts = sc.get("class_counts") if isinstance(sc, dict) else None
    if not isinstance(counts, list) or not all(isinstance(c, (int, float)) for c in counts):
      raise InputError(f"{path}: every superclient needs a numeric 'class_counts' list")
    widths.add(len(counts))
  if len(widths) != 1 or 0 in widths:
    raise InputError(f"{path}: superclients have class_counts of different or zero lengths")
  return info


def is_finished(run: dict) -> bool:
  """True when the last evaluation is at the configured last round."""
  rounds = files.lookup(run["config"], "rounds")
  return bool(run["records"]) and run["records"][-1]["round"] == rounds


def alpha_label(config: dict) -> str:
  """The partition as the paper names it: alpha=0 (pathological), alpha=0.2, or iid."""
  if files.lookup(config, "data.iid", False):
    return "iid"
  alpha = files.lookup(config, "data.alpha")
  return f"alpha={alpha:g}" if isinstance(alpha, (int, float)) else "alpha=?"


def target_column(target: float) -> str:
  """The summary column name for a target accuracy, e.g. rounds_to_0.7."""
  return f"rounds_to_{target:g}"


def parse_targets(text: str) -> list[float]:
  """Parses '0.6,0.7' into accuracy targets in (0, 1]; InputError otherwise."""
  if not text.strip():
    return []
  targets = []
  for item in text.split(","):
    try:
      t = float(item)
    except ValueError:
      raise InputError(f"target {item.strip()!r} is not a number; use e.g. 0.6,0.7") from None
    if not 0 < t <= 1:
      raise InputError(f"target {t:g} is not an accuracy in (0, 1]; use fractions, e.g. 0.6")
    targets.append(t)
  return targets


def rounds_to_target(records: Sequence[dict], target: float) -> Optional[int]:
  """First evaluated round whose accuracy reaches `target`; None if never."""
  for r in records:
    if r["test_accuracy"] >= target:
      return r["round"]
  return None


def group_runs(runs: Sequence[dict]) -> list[list[dict]]:
  """Runs whose config.json agree except for `seed`, in order of first appearance.

  The workdir name is irrelevant. A seed that a group already has starts
  another group: the same seed twice is one sample, not two.
  """
  without_seed = lambda run: {k: v for k, v in run["config"].items() if k != "seed"}
  groups: list[list[dict]] = []
  for run in runs:
    for group in groups:
      if (without_seed(group[0]) == without_seed(run) and
          all(r["config"].get("seed") != run["config"].get("seed") for r in group)):
        group.append(run)
        break
    else:
      groups.append([run])
  return groups


def distinguishing(configs: Sequence[dict], base_keys: Sequence[str]) -> list[dict]:
  """Per config, its flattened fields (not `seed`, not `base_keys`) that differ among
  the configs agreeing with it on `base_keys`: what tells those apart."""
  flats = [files.flatten(c) for c in configs]
  bases = [[f.get(k) for k in base_keys] for f in flats]
  out = []
  for flat, base in zip(flats, bases):
    peers = [f for f, b in zip(flats, bases) if b == base]
    keys = sorted(set().union(*peers) - set(base_keys) - {"seed"})
    out.append({k: flat.get(k) for k in keys if any(p.get(k) != flat.get(k) for p in peers)})
  return out


def setting_text(fields: dict, limit: int = 3) -> str:
  """'client.lr=0.1, cifar100': fields as labels show them (the dataset by its name),
  at most `limit` of them and a count of the rest, so labels and cells stay short."""
  show = lambda v: f"{v:g}" if isinstance(v, float) else str(v)
  parts = [show(v) if k == "data.name" else f"{k}={show(v)}" for k, v in fields.items()]
  more = [f"+{len(parts) - limit} more"] if len(parts) > limit else []
  return ", ".join(parts[:limit] + more)


def mean_ci95(values: Sequence[float]) -> tuple[Optional[float], Optional[float]]:
  """(mean, half-width of the two-sided 95% Student-t interval with n-1 degrees of
  freedom); one value is returned as is with no interval, none gives (None, None)."""
  from scipy import stats  # pylint: disable=import-outside-toplevel  # slow to import; rarely used
  n = len(values)
  if n < 2:
    return (values[0] if values else None), None
  half = stats.t.ppf(0.975, n - 1) * statistics.stdev(values) / math.sqrt(n)
  return statistics.fmean(values), float(half)


def accuracy_curve(group: Sequence[dict]) -> list[tuple[int, int, float, Optional[float]]]:
  """(round, seeds evaluated at it, mean accuracy, 95% half-width) per evaluated round,
  each round over the seeds that have it (an unfinished seed stops contributing)."""
  by_round: dict[int, list[float]] = {}
  for run in group:
    for r in run["records"]:
      by_round.setdefault(r["round"], []).append(r["test_accuracy"])
  return [(r, len(by_round[r]), *mean_ci95(by_round[r])) for r in sorted(by_round)]


def _alpha(config: dict) -> Any:
  return "iid" if files.lookup(config, "data.iid", False) else files.lookup(config, "data.alpha")


def _wall_time(run: dict) -> Optional[float]:
  """Training time (`elapsed_s`) plus superclient formation, which it does not count."""
  elapsed = run["records"][-1].get("elapsed_s") if run["records"] else None
  if not isinstance(elapsed, (int, float)):
    return None
  return elapsed + (run["formation_s"] or 0.0)


def summarize(runs: Sequence[dict], targets: Sequence[float] = ()) -> list[dict]:
  """One row per run (from `load_run`), in the given order.

  Columns: run, algorithm, dataset, alpha, seed, rounds (configured),
  rounds_done, final_accuracy, best_accuracy, rounds_to_<t> for each
  target, formation_s (FedSeq family), wall_time_incl_formation_s. Values a
  run does not have yet are None.
  """
  rows = []
  for run in runs:
    config, records = run["config"], run["records"]
    accuracies = [r["test_accuracy"] for r in records]
    row = {
        "run": run["name"],
        "algorithm": files.lookup(config, "algorithm.name"),
        "dataset": files.lookup(config, "data.name"),
        "alpha": _alpha(config),
        "seed": files.lookup(config, "seed"),
        "rounds": files.lookup(config, "rounds"),
        "rounds_done": records[-1]["round"] if records else 0,
        "final_accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
    }
    for t in targets:
      row[target_column(t)] = rounds_to_target(records, t)
    row["formation_s"] = run["formation_s"]
    row[WALL_TIME] = _wall_time(run)
    rows.append(row)
  return rows


def summarize_groups(runs: Sequence[dict], targets: Sequence[float] = ()) -> list[dict]:
  """One row per group of seeds (`group_runs`), in order of first appearance.

  Columns: algorithm, dataset, alpha, setting (the config fields that tell
  apart groups sharing the previous columns and rounds), rounds,
  rounds_done (a 'min-max' range when the seeds differ), n_seeds, seeds;
  final_accuracy and best_accuracy as mean with `_ci95` half-width;
  rounds_to_<t> (+ `_ci95`) over the seeds that reached t, reached_<t> as
  'k/n'; formation_s and wall_time_incl_formation_s as means.
  """
  groups = group_runs(runs)
  settings = distinguishing([g[0]["config"] for g in groups], GROUP_KEYS)
  rows = []
  for group, setting in zip(groups, settings):
    config, per_run = group[0]["config"], summarize(group, targets)
    done = sorted(r["rounds_done"] for r in per_run)
    row = {
        "algorithm": files.lookup(config, "algorithm.name"),
        "dataset": files.lookup(config, "data.name"),
        "alpha": _alpha(config),
        "setting": setting_text(setting) or None,
        "rounds": files.lookup(config, "rounds"),
        "rounds_done": done[0] if done[0] == done[-1] else f"{done[0]}-{done[-1]}",
        "n_seeds": len(group),
        "seeds": ",".join(str(r["seed"]) for r in per_run),
    }
    present = lambda column: [r[column] for r in per_run if r[column] is not None]
    for column in ("final_accuracy", "best_accuracy"):
      row[column], row[column + CI] = mean_ci95(present(column))
    for t in targets:
      reached = present(target_column(t))
      row[target_column(t)], row[target_column(t) + CI] = mean_ci95(reached)
      row[f"reached_{t:g}"] = f"{len(reached)}/{len(group)}"
    for column in ("formation_s", WALL_TIME):
      row[column] = statistics.fmean(present(column)) if present(column) else None
    rows.append(row)
  return rows


def metrics_rows(runs: Sequence[dict]) -> list[dict]:
  """One row per (run, evaluation): the run's name, workdir, algorithm, dataset,
  alpha and seed, then every field of its metrics.jsonl record."""
  rows = []
  for run in runs:
    config = run["config"]
    about = {"run": run["name"], "workdir": run["dir"],
             "algorithm": files.lookup(config, "algorithm.name"),
             "dataset": files.lookup(config, "data.name"), "alpha": _alpha(config),
             "seed": files.lookup(config, "seed")}
    rows.extend({**about, **record} for record in run["records"])
  return rows


def _format(key: str, value: Any, missing: str) -> str:
  if value is None:
    return missing
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  if key.endswith("_accuracy") and isinstance(value, (int, float)):
    return f"{value:.4f}"
  if key.endswith("_s") and isinstance(value, (int, float)):
    return f"{value:.1f}"
  if key.startswith("rounds_to_") and isinstance(value, float):
    return f"{round(value, 1):g}"
  if isinstance(value, float):
    return f"{value:g}"
  return str(value)


def to_markdown(rows: Sequence[dict]) -> str:
  """A GitHub Markdown table; '-' marks a target never reached or a missing value.

  A column `X_ci95` next to `X` is shown inside X's cells as 'mean ± half-width'.
  """
  if not rows:
    return "(no runs)\n"
  keys = [k for k in rows[0] if not (k.endswith(CI) and k[:-len(CI)] in rows[0])]
  header = [f"{k} ± 95% CI" if k + CI in rows[0] else k for k in keys]
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join(" --- " for _ in keys) + "|"]
  for row in rows:
    cells = []
    for k in keys:
      cell = _format(k, row.get(k), "-")
      if row.get(k + CI) is not None:
        cell += f" ± {_format(k, row[k + CI], '-')}"
      cells.append(cell.replace("|", "\\|"))
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict]) -> str:
  """CSV at full precision, columns in order of first appearance; a missing value
  (e.g. a target never reached) is an empty cell."""
  if not rows:
    return ""
  fields = list(dict.fromkeys(k for row in rows for k in row))
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=fields, restval="", lineterminator="\n")
  writer.writeheader()
  for row in rows:
    writer.writerow({k: "" if v is None else v for k, v in row.items()})
  return out.getvalue()


def table_paths(markdown_path: str) -> list[str]:
  """The files `write_tables` writes: FILE.md, FILE.csv (per group) and FILE_runs.md,
  FILE_runs.csv (per run), refusing a path that would clash."""
  stem, ext = os.path.splitext(markdown_path)
  if ext.lower() == ".csv":
    raise InputError(f"table path {markdown_path} ends in .csv; give the Markdown file "
                     "(e.g. summary.md), the CSV is written next to it")
  if os.path.isdir(markdown_path):
    raise InputError(f"table path {markdown_path} is a directory")
  return [markdown_path, stem + ".csv", stem + "_runs" + ext, stem + "_runs.csv"]


def write_text(text: str, path: str) -> None:
  """Writes a file, creating its directory; an OSError becomes an InputError naming it."""
  try:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    files.write_atomic(path, text)
  except OSError as e:
    raise InputError(f"cannot write {path}: {e.strerror or e}") from None


def write_tables(runs: Sequence[dict], targets: Sequence[float],
                 markdown_path: str) -> tuple[list[dict], list[str]]:
  """Writes the per-group summary (Markdown and CSV) and the per-run one next to it.

  Returns the group rows and the paths written, in `table_paths` order.
  """
  paths = table_paths(markdown_path)
  group_rows, run_rows = summarize_groups(runs, targets), summarize(runs, targets)
  for text, path in zip((to_markdown(group_rows), to_csv(group_rows), to_markdown(run_rows),
                         to_csv(run_rows)), paths):
    write_text(text, path)
  return group_rows, paths
