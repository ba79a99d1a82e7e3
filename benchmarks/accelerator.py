"""Everything we want to know on an accelerator, in one command: one JSON and one Markdown table.

Run (from the repository root; `python -m benchmarks.accelerator` works too):
  python benchmarks/accelerator.py --out=runs/accelerator          # the full run (see --budget_s)
  python benchmarks/accelerator.py --tiny --out=/tmp/acc           # the same code, CPU, seconds

On a GPU machine without a package registry, docs/speed.md, "The accelerator run",
gives the one line that installs the carried wheels and runs this.

Sections, in order, each skipped (and marked so) once `--budget_s` is spent:
  peak      the backend's matmul peak, float32 and bfloat16 (benchmarks/flops.py);
  rounds    the paper's round (LeNet, CIFAR-shaped synthetic data, K = 500,
            C = 0.2, E = 1, B = 64) of FedAvg, FedProx, SCAFFOLD, FedDyn,
            FedSeq and FedSeqInter with the vmap strategy, float32 and
            bfloat16: compile s, s/round, compiled memory, FLOP/s and the
            fraction of peak, and the projected wall time of a 10,000-round
            CIFAR-10 run (compile + rounds + formation; evaluation excluded);
  conv_impl FedAvg's float32 round again with im2col convolutions (the rounds
            above use `auto`: lax.conv off CPU), right after FedAvg's point:
            which convolution is faster under vmap on this device;
  formation FedSeq's superclient formation for K = 500 at 10 pre-training
            epochs (timed as part of the first FedSeq build);
  grid      the projected wall time of the paper's 60-run grid (10
            algorithms x CIFAR-10/100 x 3 alphas; each priced at its
            family's float32 round);
  scaling   FedAvg rounds of 10, 100 and 1,000 clients of 100 images (C = 1);
  profile   the ten most expensive ops of one FedAvg round (jax.profiler).

--tiny shrinks every section (MLP, 20 clients of 20 images, 1 pre-training
epoch, 2 rounds, cohorts 2/4/8) so the suite runs it on CPU.
"""

import os
import sys

if __package__ in (None, ""):  # run as a path (python benchmarks/NAME.py): import from the checkout
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
if __name__ == "__main__":  # before anything allocates: jemalloc where installed
  from fedjax_seq import allocator
  allocator.reexec_or_exit()

import collections
import glob
import importlib
import json
import tempfile
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from benchmarks import flops as flops_lib
from benchmarks.timing import quiet_logs, time_rounds
from fedjax_seq.algorithms.registry import ALGORITHMS
from fedjax_seq.models.registry import default_conv_impl
from fedjax_seq.training import experiment as experiment_lib

FLAGS = flags.FLAGS
flags.DEFINE_string("out", "runs/accelerator", "Folder for accelerator.json and accelerator.md.")
flags.DEFINE_bool("tiny", False, "Tiny problem sizes (a CPU smoke run of the same code).")
flags.DEFINE_integer("rounds", 3, "Timed rounds per point after the compile round.")
flags.DEFINE_float("budget_s", 330.0, "Start no new section or point after this many seconds.")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "Compute dtypes of the round section.")

FAMILIES = ("fedavg", "fedprox", "scaffold", "feddyn", "fedseq", "fedseq_inter")
# The paper's Table I: each algorithm priced at the round of its family.
GRID = {"fedavg": "fedavg", "fedprox": "fedprox", "scaffold": "scaffold", "feddyn": "feddyn",
        "fedseq": "fedseq", "fedseq_prox": "fedseq", "fedseq_dyn": "fedseq",
        "fedseq_inter": "fedseq_inter", "fedseq_inter_prox": "fedseq_inter",
        "fedseq_inter_dyn": "fedseq_inter"}
GRID_ROUNDS = {"cifar10": 10000, "cifar100": 20000}
ALPHAS = 3


def paper_config(name: str, dtype: str = "float32", tiny: bool = False):
  """configs/NAME.py on CIFAR-shaped synthetic data, vmap strategy."""
  c = importlib.import_module(f"configs.{name}").get_config()
  c.data.name = "synthetic"
  c.engine.strategy = "vmap"
  c.model.compute_dtype = dtype
  if tiny:
    c.model.name = c.fedseq.evaluator_model = "mlp"
    c.data.num_clients, c.data.synthetic.train_size, c.data.synthetic.test_size = 20, 400, 200
    c.fedseq.pretrain_epochs, c.fedseq.min_examples, c.fedseq.max_clients = 1, 60, 4
  return c


def compiled_bytes(round_fn, state, data, key) -> int | None:
  """Argument + output + temporary bytes of the compiled round (None where not reported)."""
  try:
    m = round_fn.lower(state, data, key).compile().memory_analysis()
    return int(m.argument_size_in_bytes + m.output_size_in_bytes + m.temp_size_in_bytes)
  except Exception:  # pylint: disable=broad-except  (not every backend or wrapper reports it)
    return None


def peak_bytes_in_use() -> int | None:
  stats = jax.devices()[0].memory_stats() or {}
  return stats.get("peak_bytes_in_use")


def time_point(config, exp) -> dict:
  """One round's figures for a built experiment."""
  state = exp.algorithm.init(jax.tree.map(jnp.copy, exp.init_params))
  t = time.perf_counter()  # the compile happens here (the rounds then reuse it)
  memory = compiled_bytes(exp.round_fn, state, exp.data, experiment_lib.round_key(config.seed, 0))
  lower_s = time.perf_counter() - t
  compile_s, steady = time_rounds(exp.round_fn, state, exp.data, config.seed, FLAGS.rounds)
  compile_s += lower_s
  _, clients, examples = experiment_lib.round_workload(config, exp)
  return {"compile_s": round(compile_s, 2), "seconds_per_round": round(steady, 4),
          "clients_per_round": round(clients, 1), "examples_per_round": round(examples, 1),
          "compiled_bytes": memory, "process_peak_bytes": peak_bytes_in_use(),
          "flops_per_round": flops_lib.round_flops(config, exp, examples)}


def top_ops(trace_dir: str, n: int = 10) -> list[dict]:
  """The n ops with the most total time in a jax.profiler trace (device planes, else host)."""
  paths = glob.glob(os.path.join(trace_dir, "**", "*.xplane.pb"), recursive=True)
  if not paths:
    return []
  profile = jax.profiler.ProfileData.from_file(paths[0])
  device = [p for p in profile.planes if p.name.startswith("/device:")]
  totals, counts = collections.Counter(), collections.Counter()
  for plane in device or [p for p in profile.planes if p.name == "/host:CPU"]:
    for line in plane.lines:
      if not device and not line.name.startswith("tf_XLA"):
        continue  # host: only XLA's worker threads run ops
      for event in line.events:
        if event.duration_ns > 0 and not event.name.startswith(
            ("Threadpool", "ThunkExecutor", "end:", "Slinky")):
          totals[event.name] += event.duration_ns
          counts[event.name] += 1
  total = sum(totals.values()) or 1
  return [{"op": name, "ms": round(ns / 1e6, 3), "calls": counts[name],
           "share": round(ns / total, 4)} for name, ns in totals.most_common(n)]


def time_im2col(out: dict, budget: "Budget", save) -> None:
  """FedAvg's float32 round with im2col convolutions, next to its `auto` point."""
  auto = out["rounds"].get("fedavg/float32", {})
  if FLAGS.tiny:
    out["conv_impl"] = {"skipped": "tiny: the MLP has no convolution"}
  elif not budget.left():
    out["conv_impl"] = {"skipped": "budget"}
  else:
    config = paper_config("fedavg", "float32")
    config.model.conv_impl = "im2col"
    try:
      out["conv_impl"] = {"auto_is": default_conv_impl(jax.default_backend()),
                          "auto_seconds_per_round": auto.get("seconds_per_round"),
                          "im2col": time_point(config, experiment_lib.build(config))}
    except Exception as e:  # pylint: disable=broad-except  (record it; measure the rest)
      out["conv_impl"] = {"error": f"{type(e).__name__}: {e}"[:300]}
  save()


class Budget:
  """Marks sections and points skipped once the time budget is spent."""

  def __init__(self, seconds: float):
    self.end = time.perf_counter() + seconds

  def left(self) -> bool:
    return time.perf_counter() < self.end


def run(out: dict, budget: Budget, save) -> None:
  """Fills `out` section by section, saving after each point."""
  tiny = FLAGS.tiny
  out["peak_flops_per_s"] = {"float32": flops_lib.peak_flops_per_s(jnp.float32,
                                                                    256 if tiny else 8192)}
  if jax.default_backend() != "cpu":
    out["peak_flops_per_s"]["bfloat16"] = flops_lib.peak_flops_per_s(jnp.bfloat16, 8192)
  save()
  superclients = None
  profiled = None  # FedAvg's float32 experiment, compiled already: the profile reuses it
  for dtype in FLAGS.dtypes:
    for name in FAMILIES:
      key = f"{name}/{dtype}"
      if not budget.left():
        out["rounds"][key] = {"skipped": "budget"}
        continue
      config = paper_config(name, dtype, tiny)
      sequential = ALGORITHMS[name].participants == "superclients"
      t = time.perf_counter()
      try:
        exp = experiment_lib.build(config, superclients=superclients if sequential else None)
        if sequential and superclients is None:
          out["formation"] = {"num_clients": config.data.num_clients,
                              "pretrain_epochs": config.fedseq.pretrain_epochs,
                              "evaluator": config.fedseq.evaluator_model,
                              "build_s_incl_formation": round(time.perf_counter() - t, 2),
                              "formation_s": exp.superclients["formation_s"],
                              "num_superclients": len(exp.superclients["superclients"])}
          superclients = ([np.asarray(s["clients"]) for s in exp.superclients["superclients"]],
                          exp.superclients)
        point = time_point(config, exp)
        if key == "fedavg/float32":
          profiled = (config, exp)
      except Exception as e:  # pylint: disable=broad-except  (record it; measure the rest)
        out["rounds"][key] = {"error": f"{type(e).__name__}: {e}"[:300]}
        save()
        continue
      peak = out["peak_flops_per_s"].get(dtype, out["peak_flops_per_s"]["float32"])
      point.update(flops_lib.efficiency(point["flops_per_round"], point["seconds_per_round"],
                                        peak))
      formation_s = out.get("formation", {}).get("formation_s", 0.0) if sequential else 0.0
      point["projected_10k_rounds_s"] = round(
          point["compile_s"] + 10000 * point["seconds_per_round"] + formation_s, 1)
      out["rounds"][key] = point
      save()
      if key == "fedavg/float32":
        time_im2col(out, budget, save)

  f32 = {n: out["rounds"].get(f"{n}/float32", {}) for n in FAMILIES}
  if all("seconds_per_round" in p for p in f32.values()):
    total = sum(ALPHAS * rounds * f32[family]["seconds_per_round"] + ALPHAS * f32[family]["compile_s"]
                for family in GRID.values() for rounds in GRID_ROUNDS.values())
    formations = sum(1 for a in GRID if ALGORITHMS[a].participants == "superclients")
    total += formations * ALPHAS * len(GRID_ROUNDS) * out.get("formation", {}).get("formation_s", 0)
    out["grid"] = {"runs": len(GRID) * len(GRID_ROUNDS) * ALPHAS, "projected_s": round(total, 1),
                   "projected_h": round(total / 3600, 2)}
  save()

  for n in (2, 4, 8) if tiny else (10, 100, 1000):
    if not budget.left():
      out["scaling"][str(n)] = {"skipped": "budget"}
      continue
    c = paper_config("fedavg", "float32", tiny)
    c.data.num_clients, c.client.fraction, c.data.iid = n, 1.0, True
    c.data.synthetic.train_size = n * (20 if tiny else 100)
    try:
      out["scaling"][str(n)] = time_point(c, experiment_lib.build(c))
    except Exception as e:  # pylint: disable=broad-except
      out["scaling"][str(n)] = {"error": f"{type(e).__name__}: {e}"[:300]}
    save()

  if budget.left():
    if profiled is None:  # its round point failed or was skipped
      c = paper_config("fedavg", "float32", tiny)
      profiled = (c, experiment_lib.build(c))
    c, exp = profiled
    state = exp.algorithm.init(jax.tree.map(jnp.copy, exp.init_params))
    state, _ = exp.round_fn(state, exp.data, experiment_lib.round_key(c.seed, 0))
    jax.block_until_ready(state)
    with tempfile.TemporaryDirectory() as trace_dir:
      with jax.profiler.trace(trace_dir):
        state, _ = exp.round_fn(state, exp.data, experiment_lib.round_key(c.seed, 1))
        jax.block_until_ready(state)
      out["profile"] = top_ops(trace_dir)
  else:
    out["profile"] = {"skipped": "budget"}
  save()


def gib(n) -> str:
  return "-" if n is None else f"{n / 2 ** 30:.2f}"


def markdown(out: dict) -> str:
  """The tables for RESULTS.md."""
  lines = [f"Device: {out['device']} ({out['backend']}), jax {out['jax']}; peak "
           + ", ".join(f"{k} {v / 1e12:.1f} TFLOP/s" for k, v in out["peak_flops_per_s"].items()),
           "", "| round | dtype | s/round | compile s | compiled GiB | TFLOP/s | of peak "
           "| 10k rounds h |", "| --- | --- | --- | --- | --- | --- | --- | --- |"]
  for key, p in out["rounds"].items():
    name, dtype = key.split("/")
    if "seconds_per_round" not in p:
      lines.append(f"| {name} | {dtype} | {p.get('error') or p.get('skipped')} | | | | | |")
      continue
    lines.append(f"| {name} | {dtype} | {p['seconds_per_round']:.4f} | {p['compile_s']:.1f} | "
                 f"{gib(p['compiled_bytes'])} | {p['flops_per_s'] / 1e12:.2f} | "
                 f"{p['fraction_of_peak']:.1%} | {p['projected_10k_rounds_s'] / 3600:.2f} |")
  c = out.get("conv_impl", {})
  if "im2col" in c:
    lines += ["", f"FedAvg float32 round, convolutions: auto ({c['auto_is']}) "
              f"{c['auto_seconds_per_round']} s, im2col {c['im2col']['seconds_per_round']} s "
              f"(compile {c['im2col']['compile_s']} s, {gib(c['im2col']['compiled_bytes'])} GiB)."]
  if "formation" in out:
    f = out["formation"]
    lines += ["", f"Formation, K = {f['num_clients']}, {f['pretrain_epochs']} pre-training "
              f"epochs ({f['evaluator']}): {f['formation_s']:.1f} s "
              f"({f['num_superclients']} superclients)."]
  if "grid" in out:
    g = out["grid"]
    lines += ["", f"The paper's grid ({g['runs']} runs), projected: {g['projected_h']:.1f} h."]
  lines += ["", "| clients per round | s/round | compile s | compiled GiB |", "| --- | --- | --- | --- |"]
  for n, p in out["scaling"].items():
    if "seconds_per_round" in p:
      lines.append(f"| {n} | {p['seconds_per_round']:.4f} | {p['compile_s']:.1f} | "
                   f"{gib(p['compiled_bytes'])} |")
    else:
      lines.append(f"| {n} | {p.get('error') or p.get('skipped')} | | |")
  if isinstance(out.get("profile"), list):
    lines += ["", "| op (one FedAvg round) | ms | calls | share |", "| --- | --- | --- | --- |"]
    lines += [f"| `{o['op'][:60]}` | {o['ms']:.2f} | {o['calls']} | {o['share']:.1%} |"
              for o in out["profile"]]
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  quiet_logs()
  os.makedirs(FLAGS.out, exist_ok=True)
  out = {"device": jax.devices()[0].device_kind, "backend": jax.default_backend(),
         "jax": jax.__version__, "tiny": FLAGS.tiny, "rounds_timed": FLAGS.rounds,
         "rounds": {}, "scaling": {}}
  start = time.perf_counter()

  def save():
    out["elapsed_s"] = round(time.perf_counter() - start, 1)
    for name, text in (("accelerator.json", json.dumps(out, indent=1)),
                       ("accelerator.md", markdown(out))):
      tmp = os.path.join(FLAGS.out, name + ".tmp")
      with open(tmp, "w") as fh:
        fh.write(text)
      os.replace(tmp, os.path.join(FLAGS.out, name))

  run(out, Budget(FLAGS.budget_s), save)
  print(markdown(out), flush=True)


if __name__ == "__main__":
  app.run(main)
