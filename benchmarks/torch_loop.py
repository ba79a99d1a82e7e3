"""Our rounds side by side with a plain PyTorch per-client loop, in one run.

Run (from the repository root; needs the optional extra: pip install -e ".[compare]"):
  python benchmarks/torch_loop.py                    # every case: PyTorch loop, then ours
  python benchmarks/torch_loop.py --cases=lenet_cifar --ours=false   # one case, PyTorch only

Cases (each a FedAvg round of 100 clients x 100 images, one local epoch of
batches of 64 (64 + 36 examples per client), SGD lr 0.01, weight decay 4e-4):

  lenet_cifar  the paper's LeNet (conv5x5-64, pool, conv5x5-64, pool, FC 384,
               192, 10) on CIFAR-shaped images, random crop (pad 4) and
               horizontal flip per image
  mlp_cifar    the 3072-200-200-10 MLP on the same clients and augmentation
  mlp_fmnist   the 784-200-200-10 MLP on Fashion-MNIST-shaped (28x28x1)
               images, no augmentation (the library augments only 32x32x3)

The PyTorch loop has the original implementation's structure without its
bookkeeping: a deep copy of the global model per client, augmentation as
tensor ops, the dataset-size-weighted average of the clients' state dicts.
Our round is `benchmarks/throughput.py --config=configs/fedavg.py
--config.data.name=synthetic` with the case's model and image shape (K =
500, C = 0.2: the same 100 x 100 images per round), run in a subprocess
after the PyTorch loop so that the two never share the cores;
`ours_over_torch` > 1 means ours is faster. Both are also given as a
fraction of the float32 matmul peak that our benchmark measures in the same
run, over the same count of useful FLOPs (benchmarks/flops.py). One JSON
line per case. PyTorch is never needed by the library or its tests.
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

from fedjax_seq import cli

FLAGS = flags.FLAGS
flags.DEFINE_list("cases", ["lenet_cifar", "mlp_cifar", "mlp_fmnist"], "Cases to time (see above).")
flags.DEFINE_integer("clients", 100, "Clients per round.")
flags.DEFINE_integer("examples", 100, "Images per client.")
flags.DEFINE_integer("batch_size", 64, "Local batch size.")
flags.DEFINE_integer("rounds", 3, "Timed rounds after one warm-up round.")
flags.DEFINE_integer("threads", 0, "torch.set_num_threads (0: all cores).")
flags.DEFINE_bool("ours", True, "Also time our round (benchmarks/throughput.py) and report the ratio.")
flags.DEFINE_list("ours_flags", [], "Extra flags for our round, e.g. --config.engine.unroll=2.")


# case -> (model, (channels, height, width), augment, our config flags)
CASES = {
    "lenet_cifar": ("lenet", (3, 32, 32), True, []),
    "mlp_cifar": ("mlp", (3, 32, 32), True, ["--config.model.name=mlp"]),
    "mlp_fmnist": ("mlp", (1, 28, 28), False, [
        "--config.model.name=mlp", "--config.data.synthetic.height=28",
        "--config.data.synthetic.width=28", "--config.data.synthetic.channels=1"]),
}


def build_model(torch, name: str, shape: tuple[int, int, int], num_classes: int = 10):
  nn = torch.nn
  if name == "mlp":
    return nn.Sequential(nn.Flatten(), nn.Linear(shape[0] * shape[1] * shape[2], 200), nn.ReLU(),
                         nn.Linear(200, 200), nn.ReLU(), nn.Linear(200, num_classes))
  return nn.Sequential(
      nn.Conv2d(3, 64, 5), nn.ReLU(), nn.MaxPool2d(2),
      nn.Conv2d(64, 64, 5), nn.ReLU(), nn.MaxPool2d(2), nn.Flatten(),
      nn.Linear(64 * 5 * 5, 384), nn.ReLU(), nn.Linear(384, 192), nn.ReLU(),
      nn.Linear(192, num_classes))


def augment(torch, x):
  """Random crop of the 4-padded image and horizontal flip, per image, as tensor ops."""
  n, c, h, w = x.shape
  padded = torch.nn.functional.pad(x, (4, 4, 4, 4))
  i = torch.randint(0, 9, (n,))
  j = torch.randint(0, 9, (n,))
  rows = (i[:, None] + torch.arange(h)[None])[:, None, :, None].expand(n, c, h, w + 8)
  out = torch.gather(padded, 2, rows)
  cols = (j[:, None] + torch.arange(w)[None])[:, None, None, :].expand(n, c, h, w)
  out = torch.gather(out, 3, cols)
  flip = torch.rand(n) < 0.5
  out[flip] = out[flip].flip(3)
  return out


def torch_round(torch, model, clients, batch_size, augmented: bool):
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
      loss_fn(local(augment(torch, x[b]) if augmented else x[b]), y[b]).backward()
      opt.step()
    for k, v in local.state_dict().items():
      acc[k] += v * (len(y) / total)
  model.load_state_dict(acc)


def time_torch(case: str) -> dict:
  import torch  # pylint: disable=import-outside-toplevel
  name, shape, augmented, _ = CASES[case]
  torch.set_num_threads(FLAGS.threads or os.cpu_count())
  torch.manual_seed(0)
  model = build_model(torch, name, shape)
  clients = [(torch.rand(FLAGS.examples, *shape), torch.randint(0, 10, (FLAGS.examples,)))
             for _ in range(FLAGS.clients)]
  torch_round(torch, model, clients, FLAGS.batch_size, augmented)  # warm-up
  times = []
  for _ in range(FLAGS.rounds):
    t = time.perf_counter()
    torch_round(torch, model, clients, FLAGS.batch_size, augmented)
    times.append(time.perf_counter() - t)
  return {"torch": torch.__version__, "torch_threads": torch.get_num_threads(),
          "torch_seconds_per_round": round(sorted(times)[len(times) // 2], 4)}


def time_ours(case: str) -> dict:
  root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
  cmd = [sys.executable, os.path.join(root, "benchmarks", "throughput.py"),
         "--config=" + os.path.join(root, "configs", "fedavg.py"), "--config.data.name=synthetic",
         f"--config.client.batch_size={FLAGS.batch_size}", f"--rounds={FLAGS.rounds}",
         *CASES[case][3], *FLAGS.ours_flags]
  out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
  return json.loads(out.strip().splitlines()[-1])


def main(argv):
  del argv
  unknown = [c for c in FLAGS.cases if c not in CASES]
  if unknown:
    cli.fail(f"unknown case {unknown[0]!r} in --cases; valid: {', '.join(CASES)}")
  for case in FLAGS.cases:
    out = {"case": case, "clients": FLAGS.clients, "examples_per_client": FLAGS.examples,
           **time_torch(case)}
    if FLAGS.ours:
      ours = time_ours(case)
      torch_s, ours_s = out["torch_seconds_per_round"], ours["seconds_per_round"]
      peak, work = ours.get("peak_flops_per_s"), ours.get("flops_per_round")
      out.update({"ours_seconds_per_round": ours_s,
                  "ours_fraction_of_peak": ours.get("fraction_of_peak"),
                  "torch_fraction_of_peak": round(work / torch_s / peak, 4) if peak else None,
                  "peak_flops_per_s": peak, "flops_per_round": work,
                  "ours_flags": CASES[case][3] + FLAGS.ours_flags,
                  "ours_over_torch": round(torch_s / ours_s, 3)})
    print(json.dumps(out), flush=True)


if __name__ == "__main__":
  app.run(main)
