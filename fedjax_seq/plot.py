"""Accuracy curves, superclient heatmaps and summary tables from workdirs.

  python -m fedjax_seq.plot RUN_DIR [RUN_DIR ...] --out FILE.png
      [--superclients RUN_DIR --heatmap_out FILE.png]
      [--table FILE.md] [--targets 0.6,0.7]

Test accuracy against rounds for all runs on one axes, as the paper's
accuracy curves; `--superclients` draws the superclients x classes share of
examples from a FedSeq-family run's superclients.json; `--table` writes the
summary (final/best accuracy, rounds to each target) as FILE.md and FILE.csv.
matplotlib is an optional extra (`pip install -e ".[plot]"`), imported only
here and only when drawing, so the library and the tests of the rest run
without it.
"""

import argparse
import collections
import os
import sys
from typing import Optional, Sequence

from fedjax_seq import results
from fedjax_seq.errors import UserError

INSTALL_HINT = 'pip install -e ".[plot]"'


def _pyplot():
  """matplotlib.pyplot on the Agg backend (files only, no display needed)."""
  try:
    import matplotlib  # pylint: disable=import-outside-toplevel
  except ImportError:
    raise UserError(f"plotting needs matplotlib, which is not installed; run: {INSTALL_HINT}"
                    ) from None
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=import-outside-toplevel
  return plt


def run_labels(runs: Sequence[dict]) -> list[str]:
  """'fedseq (alpha=0)', with dataset, seed, then the run name added where labels collide."""
  labels = [f"{r['config'].get('algorithm', {}).get('name', '?')} "
            f"({results.alpha_label(r['config'])})" for r in runs]
  groups = collections.defaultdict(list)
  for i, label in enumerate(labels):
    groups[label].append(i)
  for label, idx in groups.items():
    if len(idx) < 2:
      continue
    parts = {i: [results.alpha_label(runs[i]["config"])] for i in idx}
    for key, fmt in (("data.name", "{}"), ("seed", "seed={}")):
      values = [results.config_value(runs[i]["config"], key) for i in idx]
      if len({str(v) for v in values}) > 1:
        for i, v in zip(idx, values):
          parts[i].append(fmt.format(v))
    for i in idx:
      labels[i] = f"{label.split(' (')[0]} ({', '.join(parts[i])})"
  counts = collections.Counter(labels)
  names = collections.Counter(r["name"] for r in runs)
  for i, run in enumerate(runs):
    if counts[labels[i]] > 1:
      tag = run["name"] if names[run["name"]] == 1 else run["dir"]
      labels[i] = f"{labels[i][:-1]}, {tag})"
  return labels


def plot_accuracy(runs: Sequence[dict], out_path: str) -> None:
  """Test accuracy (%) against rounds, one line per run."""
  plt = _pyplot()
  fig, ax = plt.subplots(figsize=(7, 4.5), dpi=150)
  for run, label in zip(runs, run_labels(runs)):
    records = run["records"]
    if not records:
      print(f"note: {run['dir']} has no evaluations yet; not drawn", file=sys.stderr)
      continue
    marker = "o" if len(records) <= 25 else None
    ax.plot([r["round"] for r in records], [100 * r["test_accuracy"] for r in records],
            label=label, linewidth=1.5, marker=marker, markersize=3)
  datasets = sorted({str(results.config_value(r["config"], "data.name")) for r in runs})
  ax.set_title("Test accuracy" + (f" on {datasets[0]}" if len(datasets) == 1 else ""))
  ax.set_xlabel("round")
  ax.set_ylabel("test accuracy (%)")
  ax.grid(True, alpha=0.4)
  if ax.get_legend_handles_labels()[0]:
    ax.legend(loc="lower right", fontsize="small")
  _save(plt, fig, out_path)


def plot_superclients(info: dict, out_path: str, name: str = "") -> None:
  """Heatmap of each superclient's share of examples per class (rows sum to 1)."""
  plt = _pyplot()
  counts = [sc["class_counts"] for sc in info["superclients"]]
  fractions = [[c / sum(row) if sum(row) else 0.0 for c in row] for row in counts]
  num_sc, num_classes = len(fractions), len(fractions[0])
  height = min(max(3.0, 0.22 * num_sc + 1.5), 20.0)
  fig, ax = plt.subplots(figsize=(7, height), dpi=150)
  image = ax.imshow(fractions, aspect="auto", cmap="viridis", vmin=0.0, vmax=1.0,
                    interpolation="nearest")
  fig.colorbar(image, ax=ax, label="fraction of the superclient's examples")
  if num_classes <= 20:
    ax.set_xticks(range(num_classes))
  if num_sc <= 30:
    ax.set_yticks(range(num_sc))
    ax.set_yticklabels([str(sc.get("id", i)) for i, sc in enumerate(info["superclients"])])
  ax.set_xlabel("class")
  ax.set_ylabel("superclient")
  clients = sum(len(sc.get("clients", [])) for sc in info["superclients"])
  ax.set_title(f"Superclient class composition{f' ({name})' if name else ''}: "
               f"{num_sc} superclients, {clients} clients", fontsize="medium")
  _save(plt, fig, out_path)


def _save(plt, fig, out_path: str) -> None:
  try:
    fig.tight_layout()
    fig.savefig(out_path)
  except OSError as e:
    raise UserError(f"cannot write {out_path}: {e.strerror or e}") from None
  finally:
    plt.close(fig)


def _check_output(path: str, flag: str, supported: Sequence[str]) -> None:
  """Refuses an output path before anything is drawn, so bad input writes nothing."""
  if os.path.isdir(path):
    raise UserError(f"{flag} {path} is a directory; give a file name such as curves.png")
  ext = os.path.splitext(path)[1].lstrip(".").lower()
  if ext not in supported:
    raise UserError(f"{flag} {path}: unknown image format {ext!r}; use one of "
                    f"{', '.join(sorted(supported))}")
  parent = os.path.dirname(os.path.abspath(path))
  if os.path.exists(parent) and not os.path.isdir(parent):
    raise UserError(f"{flag} {path}: {parent} is not a directory")


class _Parser(argparse.ArgumentParser):
  """argparse whose errors are UserErrors, so they print as one `error:` line."""

  def error(self, message):
    raise UserError(message)


def _parser() -> argparse.ArgumentParser:
  p = _Parser(prog="python -m fedjax_seq.plot",
              description="Plot test accuracy vs rounds of runs; optionally a superclient "
                          "heatmap and a summary table.")
  p.add_argument("runs", nargs="+", metavar="RUN_DIR", help="workdirs of main.py runs")
  p.add_argument("--out", required=True, help="accuracy plot file, e.g. curves.png")
  p.add_argument("--superclients", metavar="RUN_DIR",
                 help="FedSeq-family run whose superclients.json to draw")
  p.add_argument("--heatmap_out", help="heatmap file (with --superclients)")
  p.add_argument("--table", metavar="FILE.md", help="summary table; FILE.csv is written too")
  p.add_argument("--targets", default="",
                 help="accuracy targets for rounds-to-target, e.g. 0.6,0.7")
  return p


def main(argv: Optional[Sequence[str]] = None) -> int:
  """Validates everything, then draws; returns the exit status."""
  try:
    args = _parser().parse_args(argv)
    if bool(args.superclients) != bool(args.heatmap_out):
      raise UserError("--superclients and --heatmap_out go together")
    targets = results.parse_targets(args.targets)
    runs = [results.load_run(d) for d in args.runs]
    info = results.load_superclients(args.superclients) if args.superclients else None
    outputs = [os.path.abspath(args.out)]
    if args.heatmap_out:
      outputs.append(os.path.abspath(args.heatmap_out))
    if args.table:
      outputs.extend(os.path.abspath(p) for p in results.table_paths(args.table))
    if len(set(outputs)) != len(outputs):
      raise UserError("--out, --heatmap_out and --table must name different files")
    plt = _pyplot()
    supported = list(plt.figure().canvas.get_supported_filetypes())
    plt.close("all")
    _check_output(args.out, "--out", supported)
    if args.heatmap_out:
      _check_output(args.heatmap_out, "--heatmap_out", supported)
    for path in outputs:
      os.makedirs(os.path.dirname(path), exist_ok=True)

    plot_accuracy(runs, args.out)
    print(f"wrote {args.out}")
    if info is not None:
      name = os.path.basename(os.path.normpath(os.path.abspath(args.superclients)))
      plot_superclients(info, args.heatmap_out, name)
      print(f"wrote {args.heatmap_out}")
    if args.table:
      csv_path = results.write_table(results.summarize(runs, targets), args.table)
      print(f"wrote {args.table} and {csv_path}")
  except UserError as e:
    print(f"error: {' '.join(str(e).split())}", file=sys.stderr)
    return 2
  except OSError as e:
    print(f"error: {e.strerror or e}: {e.filename or ''}".rstrip(": "), file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
