"""Accuracy curves, superclient heatmaps, summary tables and metrics CSV from workdirs.

  python -m fedjax_seq.plot RUN_DIR [RUN_DIR ...] [--out FILE.png]
      [--superclients RUN_DIR --heatmap_out FILE.png]
      [--table FILE.md] [--targets 0.6,0.7] [--metrics_csv FILE.csv]

Test accuracy against rounds for all runs on one axes, as the paper's
accuracy curves; runs that differ only in seed are one group, drawn as the
mean curve with a shaded 95% confidence band. `--superclients` draws the
superclients x classes share of examples from a FedSeq-family run's
superclients.json; `--table` writes the summary per group (mean and 95% CI of
final/best accuracy and rounds to each target) as FILE.md and FILE.csv, and
per run as FILE_runs.md and FILE_runs.csv; `--metrics_csv` writes every
evaluation of every run. matplotlib is an optional extra
(`pip install -e ".[plot]"`), imported only here and only when drawing, so the
library, the tables and the tests of the rest run without it.
"""

import argparse
import collections
import os
import sys
from typing import Optional, Sequence

from fedjax_seq import cli, files, results
from fedjax_seq.errors import InputError

INSTALL_HINT = 'pip install -e ".[plot]"'


def pyplot():
  """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise InputError(f"plotting needs matplotlib, which is not installed; run: {INSTALL_HINT}"
                     ) from None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


LABEL_KEYS = ("algorithm.name", "data.alpha", "data.iid")  # what the label always shows


def group_labels(groups: Sequence[Sequence[dict]]) -> list[str]:
  """One legend label per group of seeds: 'fedseq (alpha=0, 3 seeds)'.

  Groups sharing algorithm and partition get the config fields that tell them
  apart (the dataset by name, others as field=value); groups with equal
  configs (a repeated seed) get the first run's name, or its path where
  names collide too.
  """
  configs = [g[0]["config"] for g in groups]
  labels = []
  for group, config, fields in zip(groups, configs,
                                   results.distinguishing(configs, LABEL_KEYS)):
    parts = [results.alpha_label(config), results.setting_text(fields)]
    if len(group) > 1:
      parts.append(f"{len(group)} seeds")
    name = files.lookup(config, "algorithm.name", "?")
    labels.append(f"{name} ({', '.join(p for p in parts if p)})")
  counts = collections.Counter(labels)
  names = collections.Counter(g[0]["name"] for g in groups)
  for i, group in enumerate(groups):
    if counts[labels[i]] > 1:
      tag = group[0]["name"] if names[group[0]["name"]] == 1 else group[0]["dir"]
      labels[i] = f"{labels[i][:-1]}, {tag})"
  return labels


def plot_accuracy(runs: Sequence[dict], out_path: str) -> None:
  """Test accuracy (%) against rounds: per group of seeds the mean curve with its
  95% confidence band (a single run is just its line), one legend entry each."""
  plt = pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=150)
  groups = results.group_runs(runs)
  for group, label in zip(groups, group_labels(groups)):
    for run in group:
      if not run["records"]:
        print(f"note: {run['dir']} has no evaluations yet; not drawn", file=sys.stderr)
    curve = results.accuracy_curve(group)
    if not curve:
      continue
    rounds = [c[0] for c in curve]
    mean = [100 * c[2] for c in curve]
    marker = "o" if len(curve) <= 25 else None
    (line,) = ax.plot(rounds, mean, label=label, linewidth=1.5, marker=marker, markersize=3)
    if any(c[3] is not None for c in curve):
      half = [100 * (c[3] or 0.0) for c in curve]
      ax.fill_between(rounds, [m - h for m, h in zip(mean, half)],
                      [m + h for m, h in zip(mean, half)], color=line.get_color(), alpha=0.2,
                      linewidth=0)
  datasets = sorted({str(files.lookup(r["config"], "data.name")) for r in runs})
  ax.set_title("Test accuracy" + (f" on {datasets[0]}" if len(datasets) == 1 else "") +
               (" (mean and 95% CI over seeds)" if any(len(g) > 1 for g in groups) else ""))
  ax.set_xlabel("round")
  ax.set_ylabel("test accuracy (%)")
  ax.grid(True, alpha=0.4)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(loc="lower right", fontsize="small")
  save_figure(plt, fig, out_path)


# Heatmap geometry in inches: a cell per (superclient, class) plus room for the
# title, labels and colour bar, kept within a page-sized figure.
HEATMAP_ROW_IN, HEATMAP_COLUMN_IN = 0.14, 0.4
HEATMAP_WIDTH_IN, HEATMAP_HEIGHT_IN = (4.5, 11.0), (2.8, 9.0)  # (min, max)
COLORBAR_WIDTH_IN = 0.15


def heatmap_size(num_superclients: int, num_classes: int) -> tuple[float, float]:
  """(width, height) in inches following the number of classes and superclients."""
  clamp = lambda x, bounds: min(max(x, bounds[0]), bounds[1])
  return (clamp(2.0 + HEATMAP_COLUMN_IN * num_classes, HEATMAP_WIDTH_IN),
          clamp(1.5 + HEATMAP_ROW_IN * num_superclients, HEATMAP_HEIGHT_IN))


def plot_superclients(info: dict, out_path: str, name: str = "") -> None:
  """Heatmap of each superclient's share of examples per class (rows sum to 1),
  sized to its content, with a colour bar of fixed narrow width."""
  plt = pyplot()
  from mpl_toolkits.axes_grid1 import make_axes_locatable  # pylint: disable=import-outside-toplevel
  counts = [sc["class_counts"] for sc in info["superclients"]]
  fractions = [[c / sum(row) if sum(row) else 0.0 for c in row] for row in counts]
  num_sc, num_classes = len(fractions), len(fractions[0])
  fig, ax = plt.subplots(figsize=heatmap_size(num_sc, num_classes), dpi=150)
  image = ax.imshow(fractions, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0,
                    interpolation="nearest")
  cax = make_axes_locatable(ax).append_axes("right", size=COLORBAR_WIDTH_IN, pad=0.1)
  fig.colorbar(image, cax=cax, label="share of the superclient's examples")
  if num_classes <= 20:
    ax.set_xticks(range(num_classes))
  if num_sc <= 30:
    ax.set_yticks(range(num_sc))
    ax.set_yticklabels([str(sc.get("id", i)) for i, sc in enumerate(info["superclients"])],
                       fontsize="small")
  ax.set_xlabel("class")
  ax.set_ylabel("superclient")
  clients = sum(len(sc.get("clients", [])) for sc in info["superclients"])
  ax.set_title(f"Superclient class composition{f' ({name})' if name else ''}\n"
               f"{num_sc} superclients, {clients} clients", fontsize="small")
  save_figure(plt, fig, out_path)


def save_figure(plt, fig, out_path: str) -> None:
  """Lays out, writes and closes a figure; an unwritable path is an InputError."""
  try:
    fig.tight_layout()
    fig.savefig(out_path)
  except OSError as e:
    raise InputError(f"cannot write {out_path}: {e.strerror or e}") from None
  finally:
    plt.close(fig)


def _check_output(path: str, flag: str, supported: Sequence[str]) -> None:
  """Refuses an output path before anything is drawn, so bad input writes nothing."""
  if os.path.isdir(path):
    raise InputError(f"{flag} {path} is a directory; give a file name such as curves.png")
  ext = os.path.splitext(path)[1].lstrip(".").lower()
  if ext not in supported:
    raise InputError(f"{flag} {path}: unknown image format {ext!r}; use one of "
                     f"{', '.join(sorted(supported))}")
  parent = os.path.dirname(os.path.abspath(path))
  if os.path.exists(parent) and not os.path.isdir(parent):
    raise InputError(f"{flag} {path}: {parent} is not a directory")


class _Parser(argparse.ArgumentParser):
  """argparse whose errors are InputErrors, so they print as one `error:` line."""

  def error(self, message):
    raise InputError(message)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog="python -m fedjax_seq.plot",
              description="Plot test accuracy vs rounds of runs (seeds of one setting as a "
                          "mean with a 95% CI band); optionally a superclient heatmap, a "
                          "summary table and every evaluation as CSV.")
  p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="workdirs of main.py runs")
  p.add_argument("--out", help="accuracy plot file, e.g. curves.png")
  p.add_argument("--superclients", metavar="RUN_DIR",
                 help="FedSeq-family run whose superclients.json to draw")
  p.add_argument("--heatmap_out", help="heatmap file (with --superclients)")
  p.add_argument("--table", metavar="FILE.md",
                 help="summary per group of seeds as FILE.md and FILE.csv; per run as "
                      "FILE_runs.md and FILE_runs.csv")
  p.add_argument("--targets", default="",
                 help="accuracy targets for rounds-to-target, e.g. 0.6,0.7")
  p.add_argument("--metrics_csv", metavar="FILE.csv",
                 help="every evaluation of every run, one row each, as CSV")
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Validates everything, then draws and writes; returns the exit status."""
  try:
    args = _parser().parse_args(argv)
    if not (args.out or args.heatmap_out or args.table or args.metrics_csv):
      raise InputError("nothing to write: give --out, --heatmap_out, --table or --metrics_csv")
    if bool(args.superclients) != bool(args.heatmap_out):
      raise InputError("--superclients and --heatmap_out go together")
    targets = results.parse_targets(args.targets)
    runs = [results.load_run(d) for d in args.runs]
    info = results.load_superclients(args.superclients) if args.superclients else None
    images = [(p, f) for p, f in ((args.out, "--out"), (args.heatmap_out, "--heatmap_out")) if p]
    outputs = [p for p, _ in images] + (results.table_paths(args.table) if args.table else [])
    if args.metrics_csv:
      if os.path.isdir(args.metrics_csv):
        raise InputError(f"--metrics_csv {args.metrics_csv} is a directory")
      outputs.append(args.metrics_csv)
    absolute = [os.path.abspath(p) for p in outputs]
    if len(set(absolute)) != len(absolute):
      raise InputError("--out, --heatmap_out, --table and --metrics_csv must name different files")
    if images:
      plt = pyplot()
      supported = list(plt.figure().canvas.get_supported_filetypes())
      plt.close("all")
      for path, flag in images:
        _check_output(path, flag, supported)
    for path in absolute:
      os.makedirs(os.path.dirname(path), exist_ok=True)

    if args.out:
      plot_accuracy(runs, args.out)
      print(f"wrote {args.out}")
    if info is not None:
      name = os.path.basename(os.path.normpath(os.path.abspath(args.superclients)))
      plot_superclients(info, args.heatmap_out, name)
      print(f"wrote {args.heatmap_out}")
    if args.table:
      _, paths = results.write_tables(runs, targets, args.table)
      print(f"wrote {', '.join(paths)}")
    if args.metrics_csv:
      results.write_text(results.to_csv(results.metrics_rows(runs)), args.metrics_csv)
      print(f"wrote {args.metrics_csv}")
  except InputError as e:
    cli.report(e)
    return 2
  except OSError as e:
    cli.report(f"{e.strerror or e}: {e.filename or ''}".rstrip(": "))
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
