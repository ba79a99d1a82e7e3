"""How superclients are formed: the paper's clustering study (Table IV, Figs. 3-8), no training.

  python -m fedjax_seq.study --config=configs/fedseq.py --workdir=DIR [--config.X=...]
      [--groupings=random,greedy,kmeans,greedy_mixture] [--measures=kullback,gini,cosine,wasserstein]
      [--representations=confidence,classifier_last,classifier_last2,classifier_all]
      [--pretrain_epochs=1,5,10,20] [--save_models] [--models_from=OTHER_STUDY_DIR]
      [--random_repeats=20] [--noheatmaps]

Loads and partitions the data exactly as a training run of the config does,
pre-trains the K clients' evaluator models once per pre-training-epochs
value (each value from scratch, exactly as a training run with that value:
E epochs are not continued from fewer, see below), extracts every requested
representation from the same models, and forms every compatible grouping x
measure x representation x epochs combination with the config's
max_clients / min_examples and the generator a training run uses for
grouping (`default_rng(seed + 1)`, fresh per combination), so each
combination's groups are the groups a training run with that setting forms.
`random` needs no representation and is always included. Incompatible
combinations (kullback/gini or greedy_mixture on a non-probability
representation) are skipped and listed.

Reference rows built from the clients' true class counts (a simulation
knows them; never a training option) are marked `oracle`:
* `oracle-greedy-kullback`: the original's greedy + kullback on the true
  normalised class distributions;
* `oracle`: the lowest mean KL of greedy_mixture on the true distributions,
  and of `oracle-greedy-kullback` and of the best representer-based
  combination, each then refined by swaps on the true class counts
  (`grouping.refine_by_swaps`). So it is <= every other row by construction.

Scores per combination: number of superclients, clients and examples per
superclient, the mean and max KL divergence of the superclients' class
distributions from uniform (lower is better), mean distinct classes per
superclient, and the mean +- std of the mean KL of `random_repeats` random
groupings with the same superclient sizes (clients per superclient). Per
pre-training-epochs value, the error of the confidence vectors as estimates
of the clients' class distributions: mean KL(true || estimate) (estimate
smoothed by 1e-6), mean total variation, and how often the estimate's top
class is the client's largest class.

DIR receives:
* study.json: settings, every combination's membership, class counts and
  scores, skipped combinations, estimate errors (deterministic: a rerun or a
  study on reused models writes the same file; wall times go to timing.json);
* study.md / study.csv: the table sorted by mean KL from uniform;
* groupings/<name>.json: each combination's superclients in the
  superclients.json format, for `--config.fedseq.superclients_from=`;
* heatmaps/<name>.png, comparison.png, estimate_error.png;
* representers/e<E>.npz (the representers per epochs value) and, with
  --save_models, models/e<E>.npz (every client's pre-trained model).

Rerunning the same command finishes what is missing: representers,
groupings and heatmaps already in DIR are reused (DIR's study_config.json
must match the config, else the study refuses). `--models_from=OTHER_DIR`
reuses another study's saved models (same data, partition and evaluator
settings, checked) instead of pre-training.

Pre-training is not continued across epochs values: a client's E-epoch
schedule does begin with its E'-epoch one, but the scan over E * steps is a
different XLA program from the one over E' * steps, so bit-identity with a
training run is not guaranteed; every value is pre-trained separately.
"""

import dataclasses
import hashlib
import io
import json
import os
import sys
import time
from typing import Sequence, TextIO

import numpy as np

from fedjax_seq import files, plot, registry
from fedjax_seq.errors import InputError
from fedjax_seq.superclients import grouping
from fedjax_seq.superclients.formation import kl_from_uniform, summary, superclient_rows

ESTIMATE_EPS = 1e-6
STUDY_FILE, CONFIG_FILE, TIMING_FILE = "study.json", "study_config.json", "timing.json"
ORACLE, ORACLE_KULLBACK = "oracle", "oracle-greedy-kullback"
# Config fields that decide the pre-trained models (with the data's content hash).
MODEL_FIELDS = ("seed", "data.name", "data.num_clients", "data.alpha", "data.iid",
                "data.max_iter_dirichlet", "data.rebalance", "data.augment",
                "fedseq.evaluator_model", "model.name", "model.conv_impl", "model.compute_dtype",
                "client.lr", "client.momentum", "client.weight_decay", "client.batch_size",
                "client.max_steps", "engine.unroll")
# ... and the ones that further decide representers and groupings.
STUDY_FIELDS = MODEL_FIELDS + ("data.exemplars_per_class", "fedseq.max_clients",
                               "fedseq.min_examples", "fedseq.pca_variance",
                               "fedseq.augment_exemplars")


@dataclasses.dataclass(frozen=True)
class Options:
  """What to study (the command's flags, validated)."""
  groupings: tuple[str, ...] = ()        # () = every registered one
  measures: tuple[str, ...] = ()
  representations: tuple[str, ...] = ()
  pretrain_epochs: tuple[int, ...] = ()  # () = the config's fedseq.pretrain_epochs
  save_models: bool = False
  models_from: str = ""
  random_repeats: int = 20
  heatmaps: bool = True


@dataclasses.dataclass(frozen=True)
class Combination:
  name: str
  grouping: str
  measure: str | None = None
  representation: str | None = None
  pretrain_epochs: int | None = None
  oracle: bool = False


def _names(text: str, valid: Sequence[str], what: str) -> tuple[str, ...]:
  names = [n.strip() for n in text.split(",")]
  if not text.strip() or any(not n for n in names):
    raise InputError(f"--{what} needs a non-empty comma-separated list; valid: {', '.join(valid)}")
  for n in names:
    if n not in valid:
      raise InputError(f"unknown {what[:-1].replace('_', ' ')} {n!r} in --{what}; valid: "
                       f"{', '.join(valid)}")
  return tuple(dict.fromkeys(names))


def parse_options(groupings: str | None = None, measures: str | None = None,
                  representations: str | None = None,
                  pretrain_epochs: str | None = None,
                  save_models: bool = False, models_from: str = "", random_repeats: int = 20,
                  heatmaps: bool = True) -> Options:
  """Options from the flags' text (None: every registered name); InputError on a bad value."""
  epochs: tuple[int, ...] = ()  # None: the config's fedseq.pretrain_epochs
  if pretrain_epochs is not None:
    values = [v.strip() for v in str(pretrain_epochs).split(",")]
    try:
      epochs = tuple(int(v) for v in values)
    except ValueError:
      raise InputError("--pretrain_epochs needs a non-empty comma-separated list of integers, "
                       f"got {pretrain_epochs!r}") from None
    if any(e < 1 for e in epochs):
      raise InputError(f"--pretrain_epochs must all be >= 1, got {pretrain_epochs}")
    epochs = tuple(sorted(set(epochs)))
  if random_repeats < 1:
    raise InputError(f"--random_repeats must be >= 1, got {random_repeats}")
  def names(text, seam, what):  # None: every registered name (users' included)
    return seam.names() if text is None else _names(text, seam.names(), what)

  return Options(names(groupings, registry.GROUPINGS, "groupings"),
                 names(measures, registry.MEASURES, "measures"),
                 names(representations, registry.REPRESENTATIONS, "representations"), epochs,
                 bool(save_models), models_from, int(random_repeats), bool(heatmaps))


def combination_name(grouping_name: str, measure: str | None, representation: str | None,
                     epochs: int | None) -> str:
  """A short name for one grouping setting, e.g. greedy-kullback-confidence-e10."""
  entry = registry.GROUPINGS.get(grouping_name)
  if not entry.needs_representers:
    return grouping_name
  parts = [grouping_name] + ([measure] if entry.uses_measure else [])
  return "-".join(parts + [representation, f"e{epochs}"])


def config_combination(config) -> str:
  """The name of the combination a training run of `config` forms."""
  f = config.fedseq
  return combination_name(f.grouping, f.measure, f.representation, f.pretrain_epochs)


def plan(options: Options, epochs: Sequence[int], *, evaluator: str,
         has_classifier: bool, exemplars: int) -> tuple[list[Combination], list[dict]]:
  """The combinations to form and the skipped ones with the reason.

  Groupings that need no representers come first, once each (and `random`
  always, as the baseline); every other combination is checked with
  `registry.check_formation`, the rules a training run is validated with.
  """
  free = [g for g in options.groupings if not registry.GROUPINGS.get(g).needs_representers]
  combos = [Combination(g, g) for g in dict.fromkeys(["random", *free])]
  skipped = []
  for g in options.groupings:
    entry = registry.GROUPINGS.get(g)
    if not entry.needs_representers:
      continue
    for e in epochs:
      for rep in options.representations:
        for m in (options.measures if entry.uses_measure else (None,)):
          name = combination_name(g, m, rep, e)
          try:
            registry.check_formation(g, m or "kullback", rep, evaluator=evaluator,
                                     has_classifier=has_classifier, exemplars=exemplars)
          except ValueError as err:
            skipped.append({"name": name, "reason": str(err)})
          else:
            combos.append(Combination(name, g, m, rep, e))
  return combos, skipped


# --------------------------------------------------------------------------- scores


def score_groups(groups: Sequence[Sequence[int]], counts: np.ndarray) -> dict:
  """Superclient statistics from the clients' class counts (K, C)."""
  rows = superclient_rows(groups, counts)
  kls = np.array([r["kl_from_uniform"] for r in rows])
  examples = np.array([r["num_examples"] for r in rows])
  members = np.array([len(g) for g in groups])
  classes = np.array([np.count_nonzero(r["class_counts"]) for r in rows])
  return {"num_superclients": len(groups),
          "clients_mean": float(members.mean()), "clients_max": int(members.max()),
          "examples_min": int(examples.min()), "examples_mean": float(examples.mean()),
          "examples_max": int(examples.max()),
          "classes_mean": float(classes.mean()),
          "kl_mean": float(kls.mean()), "kl_max": float(kls.max())}


def random_baseline(members: Sequence[int], counts: np.ndarray, repeats: int,
                    rng: np.random.Generator) -> tuple[float, float]:
  """Mean and std (ddof 1; 0 for one draw) of the mean KL of random groups of these sizes."""
  bounds = np.cumsum(members)[:-1]
  values = []
  for _ in range(repeats):
    groups = np.split(rng.permutation(len(counts)), bounds)
    values.append(np.mean([kl_from_uniform(counts[g].sum(0)) for g in groups]))
  return float(np.mean(values)), float(np.std(values, ddof=1)) if repeats > 1 else 0.0


def estimate_error(counts: np.ndarray, estimates: np.ndarray) -> dict:
  """How well probability estimates (K, C) match the clients' true class distributions."""
  p = counts / counts.sum(1, keepdims=True)
  q = (np.asarray(estimates, np.float64) + ESTIMATE_EPS) / (1 + ESTIMATE_EPS * p.shape[1])
  with np.errstate(divide="ignore", invalid="ignore"):
    kl = np.where(p > 0, p * np.log(p / q), 0.0).sum(1)
  return {"kl_mean": float(kl.mean()), "tv_mean": float(0.5 * np.abs(p - q).sum(1).mean()),
          "top_class_agreement": float(np.mean(q.argmax(1) == p.argmax(1)))}


# --------------------------------------------------------------------------- files


def _save_npz(path: str, arrays: dict, meta: dict) -> None:
  buffer = io.BytesIO()
  np.savez(buffer, __meta__=np.array(json.dumps(meta, sort_keys=True)), **arrays)
  files.write_atomic(path, buffer.getvalue())


def _load_npz(path: str) -> tuple[dict, dict]:
  try:
    with np.load(path, allow_pickle=False) as z:
      arrays = {k: z[k] for k in z.files}
  except (OSError, ValueError, EOFError) as e:
    raise InputError(f"cannot read {path}: {e}") from None
  meta = json.loads(str(arrays.pop("__meta__", "{}")))
  return arrays, meta


def _differences(want: dict, have: dict) -> list[str]:
  return [f"{k}: {have.get(k)!r} there, {want.get(k)!r} here"
          for k in sorted(set(want) | set(have)) if want.get(k) != have.get(k)]


def _fingerprints(config, ds, clients, exemplars) -> tuple[dict, dict]:
  """(models' fingerprint, study's fingerprint): config fields plus hashes of the data."""
  h = hashlib.sha256()
  h.update(np.ascontiguousarray(ds.train_images).tobytes())
  h.update(np.asarray(ds.train_labels, np.int64).tobytes())
  for c in clients:
    h.update(np.asarray(len(c), np.int64).tobytes())
    h.update(np.asarray(c, np.int64).tobytes())
  models = {k: files.lookup(config, k) for k in MODEL_FIELDS}
  models["clients_sha256"] = h.hexdigest()
  e = hashlib.sha256()
  e.update(np.ascontiguousarray(ds.test_images[exemplars]).tobytes())
  e.update(np.asarray(ds.test_labels[exemplars], np.int64).tobytes())
  study = {**{k: files.lookup(config, k) for k in STUDY_FIELDS}, **models,
           "exemplars_sha256": e.hexdigest()}
  return models, study


# --------------------------------------------------------------------------- pictures


_COLOURS = {"random": "tab:gray", "greedy": "tab:blue", "kmeans": "tab:orange",
            "greedy_mixture": "tab:green"}
_MORE_COLOURS = ("tab:purple", "tab:red", "tab:olive", "tab:pink", "tab:cyan", "tab:brown")


def _colours(groupings: Sequence[str]) -> dict[str, str]:
  """A colour per grouping: the built-ins' fixed ones, then a cycle for the others."""
  others = [g for g in dict.fromkeys(groupings) if g not in _COLOURS]
  return {**{g: c for g, c in _COLOURS.items() if g in groupings},
          **{g: _MORE_COLOURS[i % len(_MORE_COLOURS)] for i, g in enumerate(others)}}
_LINE_STYLES = {"greedy-kullback": ("tab:blue", "o"), "greedy-gini": ("tab:cyan", "v"),
                "greedy-cosine": ("tab:purple", "s"), "greedy-wasserstein": ("tab:brown", "D"),
                "kmeans": ("tab:orange", "^"), "greedy_mixture": ("tab:green", "P")}


def plot_comparison(rows: list[dict], out_path: str, title: str) -> None:
  """Mean KL from uniform per combination (best on top), random band, oracle line."""
  plt = plot.pyplot()
  fig, ax = plt.subplots(figsize=(7, 1.3 + 0.15 * len(rows)), dpi=100)
  y = np.arange(len(rows))[::-1]
  palette = _colours([r["grouping"] for r in rows if not r["oracle"]])
  colours = ["black" if r["oracle"] else palette[r["grouping"]] for r in rows]
  ax.barh(y, [r["kl_mean"] for r in rows], color=colours, height=0.7)
  rand = next(r for r in rows if r["name"] == "random")
  lo, hi = rand["random_kl_mean"] - rand["random_kl_std"], rand["random_kl_mean"] + rand["random_kl_std"]
  ax.axvspan(lo, hi, color="tab:gray", alpha=0.25, label="random, mean +- std")
  oracle = next(r for r in rows if r["name"] == ORACLE)
  ax.axvline(oracle["kl_mean"], color="black", linestyle="--", linewidth=1, label="oracle")
  ax.set_yticks(y)
  ax.set_yticklabels([r["name"] for r in rows], fontsize=6)
  ax.set_ylim(-0.6, len(rows) - 0.4)
  ax.set_xlabel("mean KL(superclient classes || uniform), lower is better")
  ax.set_title(title, fontsize="small")
  handles = [plt.Rectangle((0, 0), 1, 1, color=c) for c in palette.values()]
  handles += [plt.Rectangle((0, 0), 1, 1, color="black")]
  extra, extra_labels = ax.get_legend_handles_labels()
  ax.legend(handles + extra, list(palette) + ["oracle (true labels)"] + extra_labels,
            fontsize=6, loc="upper right", framealpha=0.9)
  ax.grid(True, axis="x", alpha=0.3)
  plot.save_figure(plt, fig, out_path)


def plot_estimates(rows: list[dict], estimates: dict, out_path: str, title: str) -> None:
  """Confidence-vector error and superclient KL against pre-training epochs."""
  plt = plot.pyplot()
  fig, (left, right) = plt.subplots(1, 2, figsize=(9, 3.6), dpi=100)
  if estimates:
    es = sorted(int(e) for e in estimates)
    left.plot(es, [estimates[str(e)]["kl_mean"] for e in es], "o-", label="KL(true || estimate)")
    left.plot(es, [estimates[str(e)]["tv_mean"] for e in es], "s-", label="total variation")
    left.plot(es, [1 - estimates[str(e)]["top_class_agreement"] for e in es], "^-",
              label="top class wrong (fraction)")
    left.legend(fontsize=7)
  else:
    left.text(0.5, 0.5, "no confidence representation", ha="center", transform=left.transAxes)
  left.set_xlabel("pre-training epochs")
  left.set_title("confidence vectors vs true class distributions", fontsize="small")
  left.grid(True, alpha=0.3)
  lines: dict[str, list] = {}
  for r in rows:
    if r["representation"] == "confidence" and not r["oracle"]:
      key = r["name"].rsplit("-e", 1)[0]
      lines.setdefault(key, []).append((r["pretrain_epochs"], r["kl_mean"], r["grouping"]))
  for key, points in sorted(lines.items()):
    points.sort()
    colour, marker = _LINE_STYLES.get(key.replace("-confidence", ""), ("tab:pink", "x"))
    right.plot([p[0] for p in points], [p[1] for p in points], marker=marker, linestyle="-",
               label=key, color=colour)
  rand = next(r for r in rows if r["name"] == "random")
  right.axhspan(rand["random_kl_mean"] - rand["random_kl_std"],
                rand["random_kl_mean"] + rand["random_kl_std"], color="tab:gray", alpha=0.25,
                label="random, mean +- std")
  oracle = next(r for r in rows if r["name"] == ORACLE)
  right.axhline(oracle["kl_mean"], color="black", linestyle="--", linewidth=1, label="oracle")
  right.set_xlabel("pre-training epochs")
  right.set_ylabel("mean KL from uniform")
  right.set_title("superclients formed on confidence vectors", fontsize="small")
  right.legend(fontsize=6, loc="best")
  right.grid(True, alpha=0.3)
  fig.suptitle(title, fontsize="small")
  plot.save_figure(plt, fig, out_path)


# --------------------------------------------------------------------------- tables


def _fmt(v, digits=3):
  if v is None:
    return "-"
  if isinstance(v, float):
    return f"{v:.{digits}f}"
  return str(v)


TABLE_COLUMNS = ("rank", "name", "grouping", "measure", "representation", "pretrain_epochs",
                 "oracle", "config_setting", "num_superclients", "clients_mean", "clients_max",
                 "examples_min", "examples_mean", "examples_max", "classes_mean", "kl_mean",
                 "kl_max", "random_kl_mean", "random_kl_std", "gap_closed")


def to_csv(rows: list[dict]) -> str:
  """The study's table as CSV, one row per combination."""
  import csv  # pylint: disable=import-outside-toplevel
  import io  # pylint: disable=import-outside-toplevel
  out = io.StringIO()
  w = csv.writer(out, lineterminator="\n")
  w.writerow(TABLE_COLUMNS)
  for r in rows:
    w.writerow(["" if r.get(c) is None else r.get(c) for c in TABLE_COLUMNS])
  return out.getvalue()


def to_markdown(rows: list[dict]) -> str:
  """The study's table as Markdown, one row per combination."""
  head = ("| rank | combination | S | clients/SC | examples/SC min/mean/max | classes/SC | "
          "KL mean | KL max | random, same sizes | gap closed |")
  lines = [head, "|" + " --- |" * 10]
  for r in rows:
    name = r["name"] + (" **(oracle)**" if r["oracle"] else "") + (
        " (config)" if r["config_setting"] else "")
    gap = "-" if r["gap_closed"] is None else f"{100 * r['gap_closed']:.0f}%"
    lines.append(
        f"| {r['rank']} | {name} | {r['num_superclients']} | {r['clients_mean']:.1f} | "
        f"{r['examples_min']}/{r['examples_mean']:.0f}/{r['examples_max']} | "
        f"{r['classes_mean']:.2f} | {r['kl_mean']:.3f} | {r['kl_max']:.3f} | "
        f"{r['random_kl_mean']:.3f} +- {r['random_kl_std']:.3f} | {gap} |")
  return "\n".join(lines) + "\n"


def _markdown_report(study: dict) -> str:
  s = study
  rand = next(r for r in s["combinations"] if r["name"] == "random")
  out = ["# Superclient formation study\n",
         f"{s['dataset']}, K = {s['num_clients']} clients, alpha = {s['config']['data']['alpha']}, "
         f"min_examples = {s['config']['fedseq']['min_examples']}, max_clients = "
         f"{s['config']['fedseq']['max_clients']}, evaluator {s['config']['fedseq']['evaluator_model']}, "
         f"lr {s['config']['client']['lr']}, pre-training epochs "
         f"{', '.join(map(str, s['settings']['pretrain_epochs'])) or '-'}.\n",
         "Sorted by the superclients' mean KL divergence from the uniform class distribution "
         "(lower is better). *random, same sizes*: mean +- std of the mean KL of "
         f"{s['settings']['random_repeats']} random groupings with this row's superclient sizes. "
         "*gap closed*: (random - row) / (random - oracle), with random the random row's "
         f"{rand['random_kl_mean']:.3f}. Oracle rows use the true class counts (a bound, not a "
         "training option). (config): the setting of the config itself.\n",
         to_markdown(s["combinations"])]
  if s["estimates"]:
    out.append("\n## Confidence vectors as estimates of the class distributions\n")
    out.append("| pre-training epochs | mean KL(true \\|\\| estimate) | mean total variation | "
               "top class right |\n| --- | --- | --- | --- |")
    for e, v in sorted(s["estimates"].items(), key=lambda kv: int(kv[0])):
      out.append(f"| {e} | {v['kl_mean']:.4f} | {v['tv_mean']:.4f} | "
                 f"{100 * v['top_class_agreement']:.1f}% |")
    out.append("")
  if s["skipped"]:
    out.append("\n## Skipped combinations\n")
    out.extend(f"- {k['name']}: {k['reason']}" for k in s["skipped"])
    out.append("")
  out.append(f"\nOracle: {s['oracle_source']}.\n")
  return "\n".join(out) + "\n"


# --------------------------------------------------------------------------- the study


def _say(stream: TextIO | None, text: str) -> None:
  if stream is not None:
    print(f"study: {text}", file=stream, flush=True)


def run_study(config, workdir: str, options: Options, stream: TextIO | None = sys.stdout) -> dict:
  """Runs the study into `workdir`; returns what it did (pre-trained / loaded / cached / formed)."""
  return _Study(config, workdir, options, stream).run()


class _Study:
  """One run of the study, phase by phase: check, load, cache, evaluate, form, score, write."""

  def __init__(self, config, workdir: str, options: Options, stream: TextIO | None):
    self.config, self.workdir, self.options, self.stream = config, workdir, options, stream
    self.f = config.fedseq
    self.start = time.time()
    self.report = {"pretrained": [], "models_loaded": [], "representers_cached": [],
                   "formed": [], "reused": [], "timing_s": {}}

  def run(self) -> dict:
    self.check()
    self.load()
    self.find_cache()
    self.prepare_workdir()
    representers = self.evaluate_clients()
    t0 = time.time()
    formed, combos = self.form(representers)
    oracle_source = self.add_oracles(formed, combos)
    rows = self.score(formed, combos)
    study = self.write(rows, representers, oracle_source)
    self.report["timing_s"]["groupings"] = round(time.time() - t0, 2)
    self.draw(rows, study["estimates"])
    self.report["timing_s"]["total"] = round(time.time() - self.start, 2)
    files.write_json(os.path.join(self.workdir, TIMING_FILE), self.report)
    return self.summarise(rows)

  def check(self) -> None:
    """Everything refusable from the config and flags alone, before any data is read."""
    from fedjax_seq.training import components, experiment  # pylint: disable=import-outside-toplevel
    experiment.validate(self.config)
    files.check_directory(self.workdir, "--workdir")
    self.epochs = self.options.pretrain_epochs or (int(self.f.pretrain_epochs),)
    self.evaluator_name = components.model_name(self.config, "evaluator")
    self.combos, self.skipped = plan(
        self.options, self.epochs, evaluator=self.evaluator_name,
        has_classifier=registry.MODELS.get(self.evaluator_name).classifier is not None,
        exemplars=self.config.data.exemplars_per_class)
    self.informed = [c for c in self.combos
                     if registry.GROUPINGS.get(c.grouping).needs_representers]
    wanted = {c.representation for c in self.informed}
    self.needed_reps = [r for r in registry.REPRESENTATIONS if r in wanted]
    plot.pyplot()  # matplotlib missing: refused now, not after the pre-training
    models_from = self.options.models_from
    if models_from and not os.path.isdir(os.path.join(models_from, "models")):
      raise InputError(f"--models_from {models_from}: no models/ directory there (was that "
                       "study run with --save_models?)")

  def load(self) -> None:
    """The clients exactly as a training run of the config splits them."""
    from fedjax_seq.training import experiment  # pylint: disable=import-outside-toplevel
    from fedjax_seq.training import superclients as forming  # pylint: disable=import-outside-toplevel
    self.fed = experiment.load_federated(self.config)
    self.sizes = np.array([len(c) for c in self.fed.clients], np.int64)
    try:
      grouping.check_feasible(self.sizes, self.f.max_clients, self.f.min_examples)
    except ValueError as e:
      raise InputError(f"config.fedseq: {e}") from None
    self.counts = forming.class_counts(self.fed.ds, self.fed.clients)
    self.model_fp, self.study_fp = _fingerprints(self.config, self.fed.ds, self.fed.clients,
                                                 self.fed.exemplars)

  def find_cache(self) -> None:
    """Representers and models already in the workdir (or --models_from), checked to match."""
    workdir, epochs = self.workdir, self.epochs
    self.config_path = os.path.join(workdir, CONFIG_FILE)
    if os.path.exists(self.config_path):
      diff = _differences(self.study_fp, files.read_json(self.config_path))
      if diff:
        raise InputError(f"{workdir} holds a study of other clients or settings "
                         f"({'; '.join(diff)}); use another --workdir")
    self.rep_paths = {e: os.path.join(workdir, "representers", f"e{e}.npz") for e in epochs}
    self.cached: dict[int, dict] = {}
    for e in epochs:
      if os.path.exists(self.rep_paths[e]):
        arrays, meta = _load_npz(self.rep_paths[e])
        if meta.get("pretrain_epochs") == e:
          self.cached[e] = arrays
    self.missing = {e: [r for r in self.needed_reps if r not in self.cached.get(e, {})]
                    for e in epochs}
    self.model_paths = {}
    for e in (e for e in epochs if self.missing[e]):
      for root in filter(None, (self.options.models_from, workdir)):
        path = os.path.join(root, "models", f"e{e}.npz")
        if os.path.exists(path):
          self.model_paths[e] = path
          break
    for e, path in self.model_paths.items():
      with np.load(path, allow_pickle=False) as z:
        meta = json.loads(str(z["__meta__"]))
      diff = _differences({**self.model_fp, "pretrain_epochs": e},
                          {k: meta.get(k) for k in list(self.model_fp) + ["pretrain_epochs"]})
      if diff:
        raise InputError(f"the models in {path} were pre-trained on other clients or settings "
                         f"({'; '.join(diff)}); pre-train them here (drop --models_from) or "
                         "point --models_from at a study of these clients")

  def prepare_workdir(self) -> None:
    """The output directories and study_config.json (once everything refusable was checked)."""
    subs = ("representers", "groupings", "heatmaps") + (
        ("models",) if self.options.save_models else ())
    for sub in subs:
      try:
        os.makedirs(os.path.join(self.workdir, sub), exist_ok=True)
      except OSError as e:
        raise InputError(f"cannot create {os.path.join(self.workdir, sub)}: "
                         f"{e.strerror or e}") from None
    if not os.path.exists(self.config_path):
      files.write_json(self.config_path, self.study_fp)

  def evaluate_clients(self) -> dict[int, dict]:
    """{epochs: {representation: (K, D)}}: pre-trained (or loaded) once per epochs value."""
    from fedjax_seq.training import superclients as forming  # pylint: disable=import-outside-toplevel
    representers: dict[int, dict] = {}
    evaluator = self._evaluator() if any(self.missing.values()) else None
    for e in self.epochs:
      reps = dict(self.cached.get(e, {}))  # every representation cached, kept in the cache file
      if self.missing[e]:
        t0 = time.time()
        models = self._client_models(e, *evaluator)
        evaluation = forming.evaluation(self.config, evaluator[0], models, self.fed.ds,
                                        self.fed.exemplars)
        for rep in self.missing[e]:
          reps[rep] = forming.representers(evaluation, rep)
        del models, evaluation
        _save_npz(self.rep_paths[e], reps, {"pretrain_epochs": e})
        self.report["timing_s"][f"client_evaluation_e{e}"] = round(time.time() - t0, 2)
      elif e in self.cached and self.needed_reps:
        _say(self.stream, f"E={e}: representers from {self.rep_paths[e]} (no pre-training)")
        self.report["representers_cached"].append(e)
      representers[e] = {r: reps[r] for r in self.needed_reps}
    return representers

  def _evaluator(self):
    """(evaluator, its parameters' tree structure, leaf names, the clients, strategy)."""
    import jax  # pylint: disable=import-outside-toplevel
    from fedjax_seq.training import components  # pylint: disable=import-outside-toplevel
    from fedjax_seq.data.federated import Preprocess, make_fed_data  # pylint: disable=import-outside-toplevel
    from fedjax_seq.training import superclients as forming  # pylint: disable=import-outside-toplevel
    ds = self.fed.ds
    preprocess = Preprocess(ds.mean, ds.std, ds.augment and self.config.data.augment)
    ev = forming.evaluator(self.config, ds, preprocess)
    paths, treedef = jax.tree_util.tree_flatten_with_path(ev.init)
    leaf_names = [jax.tree_util.keystr(p) for p, _ in paths]
    data = make_fed_data(ds.train_images, ds.train_labels, self.fed.clients)
    strategy = components.strategy(self.config, ev.model, ev.image_shape, data)
    return ev, treedef, leaf_names, data, strategy

  def _client_models(self, e: int, ev, treedef, leaf_names, data, strategy):
    """Every client's evaluator after e epochs: loaded from a saved study, or pre-trained."""
    import jax  # pylint: disable=import-outside-toplevel
    stream = self.stream
    if e in self.model_paths:
      arrays, meta = _load_npz(self.model_paths[e])
      if meta.get("leaves") != leaf_names:
        raise InputError(f"the models in {self.model_paths[e]} are not {self.evaluator_name} "
                         "models")
      _say(stream, f"E={e}: loaded the pre-trained client models from {self.model_paths[e]} "
                   "(no pre-training)")
      self.report["models_loaded"].append(e)
      return jax.tree_util.tree_unflatten(
          treedef, [jax.numpy.asarray(arrays[f"leaf{i}"]) for i in range(len(leaf_names))])
    _say(stream, f"E={e}: pre-training {data.num_clients} clients for {e} epochs ({strategy})")
    t0 = time.time()

    def progress(done, total):
      _say(stream, f"E={e}: pre-trained {done}/{total} clients ({time.time() - t0:.0f} s)")

    from fedjax_seq.training import superclients as forming  # pylint: disable=import-outside-toplevel
    models = forming.pretrain(self.config, ev, data, e, progress)
    self.report["pretrained"].append(e)
    if self.options.save_models:
      path = os.path.join(self.workdir, "models", f"e{e}.npz")
      leaves = jax.tree_util.tree_leaves(models)
      _save_npz(path, {f"leaf{i}": np.asarray(x) for i, x in enumerate(leaves)},
                {**self.model_fp, "pretrain_epochs": e, "leaves": leaf_names,
                 "strategy": strategy})
      _say(stream, f"E={e}: saved the client models to {path}")
    return models

  def group(self, reps, method: str, measure: str | None, representation: str | None = None):
    """The shared formation path (training/superclients.py), as lists of client ids."""
    from fedjax_seq.training import superclients as forming  # pylint: disable=import-outside-toplevel
    groups, _ = forming.form(self.config, self.sizes, self.fed.ds.num_classes, grouping=method,
                             measure=measure or "kullback", representation=representation,
                             client_representers=reps)
    return [g.tolist() for g in groups]

  def form(self, representers) -> tuple[dict[str, list[list[int]]], list[Combination]]:
    """Every combination's groups: reused from the workdir, or formed and written."""

    def reps_of(c: Combination):
      if not registry.GROUPINGS.get(c.grouping).needs_representers:
        return np.zeros((len(self.sizes), 0))
      return representers[c.pretrain_epochs][c.representation]

    formed: dict[str, list[list[int]]] = {}
    for c in self.combos:
      path = os.path.join(self.workdir, "groupings", f"{c.name}.json")
      if os.path.exists(path):
        formed[c.name] = [list(s["clients"]) for s in files.read_json(path)["superclients"]]
        self.report["reused"].append(c.name)
        continue
      try:
        formed[c.name] = self.group(reps_of(c), c.grouping, c.measure, c.representation)
      except ValueError as e:
        self.skipped.append({"name": c.name, "reason": f"cannot be formed: {e}"})
        continue
      self.report["formed"].append(c.name)
      files.write_json(path, _grouping_info(c, formed[c.name], self.counts, reps_of(c), self.f))
    return formed, [c for c in self.combos if c.name in formed]

  def add_oracles(self, formed: dict, combos: list[Combination]) -> str:
    """The oracle rows (true class distributions as representers); returns the oracle's source."""
    counts, sizes, min_examples = self.counts, self.sizes, self.f.min_examples
    truth = counts / counts.sum(1, keepdims=True)
    kullback = self.group(truth, "greedy", "kullback")
    candidates = [("greedy_mixture on the true class distributions",
                   self.group(truth, "greedy_mixture", None)),
                  (f"{ORACLE_KULLBACK} refined by swaps on the true class counts",
                   grouping.refine_by_swaps(kullback, counts, sizes, min_examples))]
    best_real = min(combos, key=lambda c: (score_groups(formed[c.name], counts)["kl_mean"],
                                           c.name))
    candidates.append((f"{best_real.name} refined by swaps on the true class counts",
                       grouping.refine_by_swaps(formed[best_real.name], counts, sizes,
                                                min_examples)))
    scored = [(score_groups(g, counts)["kl_mean"], i) for i, (_, g) in enumerate(candidates)]
    source, oracle_groups = candidates[min(scored)[1]]
    oracles = [(Combination(ORACLE_KULLBACK, "greedy", "kullback", "true_distribution", None,
                            True), kullback),
               (Combination(ORACLE, "oracle", None, "true_distribution", None, True),
                oracle_groups)]
    for c, g in oracles:
      formed[c.name] = g
      files.write_json(os.path.join(self.workdir, "groupings", f"{c.name}.json"),
                       _grouping_info(c, g, counts, truth, self.f,
                                      source=source if c.name == ORACLE else None))
      combos.append(c)
    return source

  def score(self, formed: dict, combos: list[Combination]) -> list[dict]:
    """One row per combination, ranked by mean KL, with its random baseline and gap closed."""
    own = config_combination(self.config)
    rows = []
    for c in combos:
      groups = formed[c.name]
      row = {"name": c.name, "grouping": c.grouping, "measure": c.measure,
             "representation": c.representation, "pretrain_epochs": c.pretrain_epochs,
             "oracle": c.oracle, "config_setting": c.name == own,
             **score_groups(groups, self.counts)}
      rmean, rstd = random_baseline([len(g) for g in groups], self.counts,
                                    self.options.random_repeats,
                                    np.random.default_rng([self.config.seed, 2]))
      row.update(random_kl_mean=rmean, random_kl_std=rstd,
                 grouping_file=f"groupings/{c.name}.json",
                 superclients=superclient_rows(groups, self.counts))
      rows.append(row)
    rows.sort(key=lambda r: (r["kl_mean"], not r["oracle"], r["name"]))
    rand = next(r for r in rows if r["name"] == "random")
    span = rand["random_kl_mean"] - next(r for r in rows if r["name"] == ORACLE)["kl_mean"]
    for i, r in enumerate(rows, 1):
      r["rank"] = i
      r["gap_closed"] = (rand["random_kl_mean"] - r["kl_mean"]) / span if span > 1e-12 else None
    return rows

  def write(self, rows: list[dict], representers: dict, oracle_source: str) -> dict:
    """study.json, study.md and study.csv; returns the study record."""
    options, config = self.options, self.config
    estimates = {str(e): estimate_error(self.counts, representers[e]["confidence"])
                 for e in self.epochs if "confidence" in representers.get(e, {})}
    study = {
        "dataset": config.data.name, "num_clients": len(self.sizes),
        "num_classes": self.fed.ds.num_classes,
        "settings": {"groupings": list(options.groupings), "measures": list(options.measures),
                     "representations": list(options.representations),
                     "pretrain_epochs": list(self.epochs) if self.informed else [],
                     "random_repeats": options.random_repeats,
                     "config_combination": config_combination(config)},
        "config": json.loads(config.to_json()),
        "fingerprint": self.study_fp,
        "best": next(r for r in rows if not r["oracle"])["name"], "oracle": ORACLE,
        "oracle_source": oracle_source,
        "estimates": estimates,
        "skipped": self.skipped,
        "combinations": [dict(r) for r in rows],
        "client_class_counts": self.counts.astype(int).tolist(),
    }
    files.write_json(os.path.join(self.workdir, STUDY_FILE), study)
    files.write_atomic(os.path.join(self.workdir, "study.md"), _markdown_report(study))
    files.write_atomic(os.path.join(self.workdir, "study.csv"), to_csv(_table(rows)))
    return study

  def draw(self, rows: list[dict], estimates: dict) -> None:
    """comparison.png, estimate_error.png and one heatmap per new or changed combination."""
    t0, f = time.time(), self.f
    title = (f"{self.config.data.name}, K={len(self.sizes)}, alpha={self.config.data.alpha}, "
             f"min_examples={f.min_examples}, max_clients={f.max_clients}")
    table = _table(rows)
    plot_comparison(table, os.path.join(self.workdir, "comparison.png"), title)
    plot_estimates(table, estimates, os.path.join(self.workdir, "estimate_error.png"), title)
    if self.options.heatmaps:
      for r in rows:
        path = os.path.join(self.workdir, "heatmaps", f"{r['name']}.png")
        if r["oracle"] or r["name"] in self.report["formed"] or not os.path.exists(path):
          plot.plot_superclients({"superclients": r["superclients"]}, path, r["name"])
    self.report["timing_s"]["pictures"] = round(time.time() - t0, 2)

  def summarise(self, rows: list[dict]) -> dict:
    """Prints the table's head and the best combination; returns the report."""
    stream, workdir = self.stream, self.workdir
    table = _table(rows)
    if stream is not None:
      shown = [r for r in table if r["rank"] <= 10 or r["name"] in ("random", ORACLE)]
      print(to_markdown(shown), file=stream, end="", flush=True)
    _say(stream, f"skipped {len(self.skipped)} incompatible combinations (listed in study.md)"
         if self.skipped else "no combination skipped")
    best = next(r for r in rows if not r["oracle"])
    rand = next(r for r in rows if r["name"] == "random")
    oracle_kl = next(r for r in rows if r["name"] == ORACLE)["kl_mean"]
    _say(stream, f"best non-oracle combination: {best['name']}: mean KL {best['kl_mean']:.3f} "
                 f"(random {rand['random_kl_mean']:.3f} +- {rand['random_kl_std']:.3f}, oracle "
                 f"{oracle_kl:.3f}); {len(rows)} combinations in {time.time() - self.start:.0f} s")
    _say(stream, f"its grouping: {os.path.join(workdir, best['grouping_file'])}")
    _say(stream, "train on it with --config.fedseq.superclients_from="
                 f"{os.path.join(workdir, best['grouping_file'])}")
    self.report["best_grouping_file"] = os.path.join(workdir, best["grouping_file"])
    return self.report


def _table(rows: list[dict]) -> list[dict]:
  """The rows without their superclients (the table's columns)."""
  return [{k: v for k, v in r.items() if k != "superclients"} for r in rows]


def _grouping_info(c: Combination, groups, counts, reps, f, source=None) -> dict:
  """A superclients.json-format record of one combination (what training can read back)."""
  settings = {"grouping": c.grouping, "measure": c.measure, "representation": c.representation,
              "pretrain_epochs": c.pretrain_epochs, "max_clients": f.max_clients,
              "min_examples": f.min_examples, "study_combination": c.name, "oracle": c.oracle}
  if source:
    settings["oracle_source"] = source
  return summary([np.asarray(g, np.int64) for g in groups], counts, reps, **settings)


def cli(config, workdir: str, stream: TextIO | None = sys.stdout, **flags) -> int:
  """Runs the study from flag values; an InputError becomes one `error:` line and exit 1."""
  from fedjax_seq import cli as cli_lib  # pylint: disable=import-outside-toplevel
  try:
    run_study(config, workdir, parse_options(**flags), stream)
  except InputError as e:
    cli_lib.report(e)
    return 1
  return 0


def _main() -> None:
  import logging  # pylint: disable=import-outside-toplevel
  from absl import app, flags  # pylint: disable=import-outside-toplevel
  from absl import logging as absl_logging  # pylint: disable=import-outside-toplevel
  from ml_collections import config_flags  # pylint: disable=import-outside-toplevel
  from fedjax_seq import cli as cli_lib  # pylint: disable=import-outside-toplevel

  FLAGS = flags.FLAGS
  config_flags.DEFINE_config_file("config", None, "Config file (as main.py's).", lock_config=True)
  flags.DEFINE_string("workdir", None, "Directory for the study's tables, pictures and groupings.")
  flags.DEFINE_string("groupings", None, "Comma-separated groupings (default: all registered).")
  flags.DEFINE_string("measures", None, "Comma-separated greedy measures (default: all).")
  flags.DEFINE_string("representations", None,
                      "Comma-separated client representations (default: all).")
  flags.DEFINE_string("pretrain_epochs", None,
                      "Comma-separated pre-training epochs (default: config.fedseq.pretrain_epochs).")
  flags.DEFINE_bool("save_models", False, "Save the pre-trained client models in WORKDIR/models.")
  flags.DEFINE_string("models_from", "", "A study directory whose saved models to reuse.")
  flags.DEFINE_integer("random_repeats", 20, "Random groupings per row's random baseline.")
  flags.DEFINE_bool("heatmaps", True, "Draw one composition heatmap per combination.")

  def main(argv):
    if len(argv) > 1:
      cli_lib.fail(f"unexpected arguments: {' '.join(argv[1:])}")
    absl_logging.set_verbosity(absl_logging.WARNING)
    logging.getLogger("jax._src.xla_bridge").setLevel(logging.WARNING)
    if FLAGS.config is None or not FLAGS.workdir:
      cli_lib.fail("--config and --workdir are required")
    config = cli_lib.loaded_config(FLAGS)
    sys.exit(cli(config, FLAGS.workdir, groupings=FLAGS.groupings, measures=FLAGS.measures,
                 representations=FLAGS.representations, pretrain_epochs=FLAGS.pretrain_epochs,
                 save_models=FLAGS.save_models, models_from=FLAGS.models_from,
                 random_repeats=FLAGS.random_repeats, heatmaps=FLAGS.heatmaps))

  app.run(main, flags_parser=lambda argv: cli_lib.parse_flags(FLAGS, argv))


if __name__ == "__main__":
  from fedjax_seq import allocator  # pylint: disable=ungrouped-imports
  allocator.reexec_or_exit()  # see fedjax_seq/allocator.py
  _main()
