"""The paper's FedAvg round as a plain PyTorch per-client loop, side by side with ours.

Run (from the repository root; needs the optional extra: pip install -e ".[compare]"):
  python benchmarks/torch_loop.py                 # PyTorch loop, then our round, one JSON line
  python benchmarks/torch_loop.py --ours=false    # the PyTorch loop only

The round: LeNet (conv5x5-64, pool, conv5x5-64, pool, FC 384, 192, 10),
100 clients x 100 CIFAR-shaped images, one local epoch of batches of 64
(two steps per client), SGD lr 0.01, weight decay 4e-4, random crop (pad 4)
and horizontal flip as tensor ops, a deep copy of the global model per
client and the dataset-size-weighted average of their state dicts: the
original implementation's structure without its bookkeeping. Our round is
`benchmarks/throughput.py --config=configs/fedavg.py
--config.data.name=synthetic` (K = 500, C = 0.2: the same 100 x 100
images per round), run in a subprocess after the PyTorch loop so that the
two never share the cores; `ours_over_torch` > 1 means ours is faster.
PyTorch is never needed by the library or its tests.
"""

import os
import sys

if __package__ in (None, ""):  # run as a path (python benchmarks/NAME.py): import from the checkout
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import copy
import json
import subprocess
import time

from absl import app, flags

FLAGS = flags.FLAGS
flags.DEFINE_integer("clients", 100, "Clients per round.")
flags.DEFINE_integer("examples", 100, "Images per client.")
flags.DEFINE_integer("batch_size", 64, "Local batch size.")
flags.DEFINE_integer("rounds", 3, "Timed rounds after one warm-up round.")
flags.DEFINE_integer("threads", 0, "torch.set_num_threads (0: all cores).")
flags.DEFINE_bool("ours", True, "Also time our round (benchmarks/throughput.py) and report the ratio.")
flags.DEFINE_list("ours_flags", [], "Extra flags for our round, e.g. --config.engine.unroll=2.")


def lenet(torch, num_classes: int = 10):
  nn = torch.nn
  return nn.Sequential(
      nn.Conv2d(3, 64, 5), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(64, 64, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
      nn.Linear(64 * 5 * 5, 384), nn.ReLU(), nn.Linear(384, 192), nn.ReLU(),
      nn.Linear(192, num_classes))


def augment(torch, x):
  """Random crop of the 4-padded image and horizontal flip, per image, as tensor ops."""
  n = x.shape[0]
  padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
  i = torch.randint(0, 9, (n,))
  j = torch.randint(0, 9, (n,))
  rows = (i[:, None] + torch.arange(32)[None])[:, None, :, None].expand(n, 3, 32, 40)
  out = torch.gather(padded, 2, rows)
  cols = (j[:, None] + torch.arange(32)[None])[:, None, None, :].expand(n, 3, 32, 32)
  out = torch.gather(out, 3, cols)
  flip = torch.rand(n) < 0.5
  out[flip] = out[flip].flip(3)
  return out


def torch_round(torch, model, clients, batch_size):
  """One FedAvg round: each client trains a deep copy; the server averages by size."""
  total = sum(len(y) for _, y in clients)
  acc = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
  loss_fn = torch.nn.CrossEntropyLoss()
  for x, y in clients:
    local = copy.deepcopy(model)
    opt = torch.optim.SGD(local.parameters(), lr=0.01, weight_decay=4e-4)
    perm = torch.randperm(len(y))
    for s in range(0, len(y), batch_size):
      b = perm[s:s + batch_size]
      opt.zero_grad()
      loss_fn(local(augment(torch, x[b])), y[b]).backward()
      opt.step()
    for k, v in local.state_dict().items():
      acc[k] += v * (len(y) / total)
  model.load_state_dict(acc)


def time_torch() -> dict:
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(FLAGS.threads or os.cpu_count())
  torch.manual_seed(0)
  model = lenet(torch)
  clients = [(torch.rand(FLAGS.examples, 3, 32, 32), torch.randint(0, 10, (FLAGS.examples,)))
             for _ in range(FLAGS.clients)]
  torch_round(torch, model, clients, FLAGS.batch_size)  # warm-up
  times = []
  for _ in range(FLAGS.rounds):
    t = time.perf_counter()
    torch_round(torch, model, clients, FLAGS.batch_size)
    times.append(time.perf_counter() - t)
  return {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
          "torch_seconds_per_round": round(sorted(times)[len(times) // 2], 4)}


def time_ours() -> dict:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, os.path.join(root, "benchmarks", "throughput.py"),
         "--config=" + os.path.join(root, "configs", "fedavg.py"), "--config.data.name=synthetic",
         f"--config.client.batch_size={FLAGS.batch_size}", f"--rounds={FLAGS.rounds}",
         *FLAGS.ours_flags]
  out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main(argv):
  del argv
  out = {"clients": FLAGS.clients, "examples_per_client": FLAGS.examples, **time_torch()}
  if FLAGS.ours:
    ours = time_ours()
    out.update({"ours_seconds_per_round": ours["seconds_per_round"],
                "ours_fraction_of_peak": ours.get("fraction_of_peak"),
                "ours_flags": FLAGS.ours_flags,
                "ours_over_torch": round(out["torch_seconds_per_round"]
                                         / ours["seconds_per_round"], 3)})
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  app.run(main)
