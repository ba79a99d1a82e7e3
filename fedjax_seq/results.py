"""Reading finished or running workdirs into comparable rows (no plotting here).

A workdir holds `config.json` and `metrics.jsonl` (see README.md). The rows
report what the paper reports: final accuracy and the number of rounds to
reach target accuracies, so runs can be compared in a table or CSV without
matplotlib.
"""

import csv
import io
import json
import math
import os
from typing import Any, Optional, Sequence

from fedjax_seq.errors import UserError

CONFIG_FILE = "config.json"
METRICS_FILE = "metrics.jsonl"
SUPERCLIENTS_FILE = "superclients.json"


def _read_json(path: str) -> Any:
  try:
    with open(path) as f:
      return json.load(f)
  except FileNotFoundError:
    raise UserError(f"{path} does not exist") from None
  except json.JSONDecodeError as e:
    raise UserError(f"{path} is not valid JSON ({e.msg} at line {e.lineno})") from None
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"cannot read {path}: {e}") from None


def _read_records(path: str) -> list[dict]:
  try:
    with open(path) as f:
      lines = f.read().splitlines()
  except FileNotFoundError:
    raise UserError(f"{path} does not exist") from None
  except (OSError, UnicodeDecodeError) as e:
    raise UserError(f"cannot read {path}: {e}") from None
  records = []
  for number, line in enumerate(lines, 1):
    if not line.strip():
      continue
    try:
      record = json.loads(line)
    except json.JSONDecodeError:
      raise UserError(f"{path} line {number} is not valid JSON") from None
    if not isinstance(record, dict) or not isinstance(record.get("round"), int) or not (
        isinstance(record.get("test_accuracy"), (int, float))):
      raise UserError(f"{path} line {number} lacks an integer 'round' and a numeric "
                      "'test_accuracy'")
    records.append(record)
  return records


def load_run(run_dir: str) -> dict:
  """Loads one workdir: {'dir', 'name', 'config', 'records'}.

  Raises UserError naming the path when the directory, `config.json` or
  `metrics.jsonl` is missing or corrupt, so a typo in a list of runs stops
  before any output is written.
  """
  if not os.path.exists(run_dir):
    raise UserError(f"run directory {run_dir} does not exist")
  if not os.path.isdir(run_dir):
    raise UserError(f"run directory {run_dir} is not a directory")
  config = _read_json(os.path.join(run_dir, CONFIG_FILE))
  if not isinstance(config, dict):
    raise UserError(f"{os.path.join(run_dir, CONFIG_FILE)} does not hold a JSON object")
  records = _read_records(os.path.join(run_dir, METRICS_FILE))
  name = os.path.basename(os.path.normpath(os.path.abspath(run_dir)))
  return {"dir": run_dir, "name": name, "config": config, "records": records}


def load_superclients(run_dir: str) -> dict:
  """Loads `superclients.json` of a FedSeq-family run, checking what the heatmap needs."""
  path = os.path.join(run_dir, SUPERCLIENTS_FILE)
  if not os.path.isdir(run_dir):
    raise UserError(f"run directory {run_dir} does not exist or is not a directory")
  if not os.path.exists(path):
    raise UserError(f"{path} does not exist (only FedSeq-family runs write it)")
  info = _read_json(path)
  superclients = info.get("superclients") if isinstance(info, dict) else None
  if not isinstance(superclients, list) or not superclients:
    raise UserError(f"{path} has no 'superclients' list")
  widths = set()
  for sc in superclients:
    counts = sc.get("class_counts") if isinstance(sc, dict) else None
    if not isinstance(counts, list) or not all(isinstance(c, (int, float)) for c in counts):
      raise UserError(f"{path}: every superclient needs a numeric 'class_counts' list")
    widths.add(len(counts))
  if len(widths) != 1 or 0 in widths:
    raise UserError(f"{path}: superclients have class_counts of different or zero lengths")
  return info


def config_value(config: dict, path: str, default=None):
  """The value at a dotted path of a nested config dict, or `default` if absent."""
  node = config
  for key in path.split("."):
    if not isinstance(node, dict) or key not in node:
      return default
    node = node[key]
  return node


def is_finished(run: dict) -> bool:
  """True when the last evaluation is at the configured last round."""
  rounds = config_value(run["config"], "rounds")
  return bool(run["records"]) and run["records"][-1]["round"] == rounds


def alpha_label(config: dict) -> str:
  """The partition as the paper names it: alpha=0 (pathological), alpha=0.2, or iid."""
  if config_value(config, "data.iid", False):
    return "iid"
  alpha = config_value(config, "data.alpha")
  return f"alpha={alpha:g}" if isinstance(alpha, (int, float)) else "alpha=?"


def target_column(target: float) -> str:
  return f"rounds_to_{target:g}"


def parse_targets(text: str) -> list[float]:
  """Parses '0.6,0.7' into accuracy targets in (0, 1]; UserError otherwise."""
  if not text.strip():
    return []
  targets = []
  for item in text.split(","):
    try:
      t = float(item)
    except ValueError:
      raise UserError(f"target {item.strip()!r} is not a number; use e.g. 0.6,0.7") from None
    if not 0 < t <= 1:
      raise UserError(f"target {t:g} is not an accuracy in (0, 1]; use fractions, e.g. 0.6")
    targets.append(t)
  return targets


def rounds_to_target(records: Sequence[dict], target: float) -> Optional[int]:
  """First evaluated round whose accuracy reaches `target`; None if never."""
  for r in records:
    if r["test_accuracy"] >= target:
      return r["round"]
  return None


def summarize(runs: Sequence[dict], targets: Sequence[float] = ()) -> list[dict]:
  """One row per run (from `load_run`), in the given order.

  Columns: run, algorithm, dataset, alpha, seed, rounds (configured),
  rounds_done, final_accuracy, best_accuracy, rounds_to_<t> for each
  target, wall_time_s. Values a run does not have yet are None.
  """
  rows = []
  for run in runs:
    config, records = run["config"], run["records"]
    accuracies = [r["test_accuracy"] for r in records]
    alpha = "iid" if config_value(config, "data.iid", False) else config_value(config, "data.alpha")
    row = {
        "run": run["name"],
        "algorithm": config_value(config, "algorithm.name"),
        "dataset": config_value(config, "data.name"),
        "alpha": alpha,
        "seed": config_value(config, "seed"),
        "rounds": config_value(config, "rounds"),
        "rounds_done": records[-1]["round"] if records else 0,
        "final_accuracy": accuracies[-1] if accuracies else None,
        "best_accuracy": max(accuracies) if accuracies else None,
    }
    for t in targets:
      row[target_column(t)] = rounds_to_target(records, t)
    row["wall_time_s"] = records[-1].get("elapsed_s") if records else None
    rows.append(row)
  return rows


def _format(key: str, value: Any, missing: str) -> str:
  if value is None:
    return missing
  if isinstance(value, float) and not math.isfinite(value):
    return str(value)
  if key.endswith("_accuracy") and isinstance(value, (int, float)):
    return f"{value:.4f}"
  if key == "wall_time_s" and isinstance(value, (int, float)):
    return f"{value:.1f}"
  if isinstance(value, float):
    return f"{value:g}"
  return str(value)


def to_markdown(rows: Sequence[dict]) -> str:
  """A GitHub Markdown table; '-' marks a target never reached or a missing value."""
  if not rows:
    return "(no runs)\n"
  keys = list(rows[0])
  lines = ["| " + " | ".join(keys) + " |", "|" + "|".join(" --- " for _ in keys) + "|"]
  for row in rows:
    cells = [_format(k, row.get(k), "-").replace("|", "\\|") for k in keys]
    lines.append("| " + " | ".join(cells) + " |")
  return "\n".join(lines) + "\n"


def to_csv(rows: Sequence[dict]) -> str:
  """CSV at full precision; a missing value (e.g. a target never reached) is an empty cell."""
  if not rows:
    return ""
  out = io.StringIO()
  writer = csv.DictWriter(out, fieldnames=list(rows[0]), lineterminator="\n")
  writer.writeheader()
  for row in rows:
    writer.writerow({k: "" if v is None else v for k, v in row.items()})
  return out.getvalue()


def table_paths(markdown_path: str) -> tuple[str, str]:
  """(Markdown path, CSV path of the same stem), refusing paths that would clash."""
  stem, ext = os.path.splitext(markdown_path)
  if ext.lower() == ".csv":
    raise UserError(f"table path {markdown_path} ends in .csv; give the Markdown file "
                    "(e.g. summary.md), the CSV is written next to it")
  if os.path.isdir(markdown_path):
    raise UserError(f"table path {markdown_path} is a directory")
  return markdown_path, stem + ".csv"


def write_table(rows: Sequence[dict], markdown_path: str) -> str:
  """Writes `markdown_path` and the CSV of the same stem; returns the CSV path."""
  markdown_path, csv_path = table_paths(markdown_path)
  try:
    os.makedirs(os.path.dirname(os.path.abspath(markdown_path)), exist_ok=True)
    with open(markdown_path, "w") as f:
      f.write(to_markdown(rows))
    with open(csv_path, "w") as f:
      f.write(to_csv(rows))
  except OSError as e:
    raise UserError(f"cannot write {markdown_path}: {e.strerror or e}") from None
  return csv_path
