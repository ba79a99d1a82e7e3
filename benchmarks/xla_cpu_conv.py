"""LeNet's two convolutions on the CPU: XLA's `lax.conv`, our im2col, PyTorch; one table.

Run (from the repository root): python benchmarks/xla_cpu_conv.py [--batch=64 --calls=20]

For conv1 (B x 32 x 32 x 3 -> 64 filters 5 x 5) and conv2 (B x 14 x 14 x 64
-> 64 filters 5 x 5), VALID, stride 1, float32, it times three computations
separately: the forward pass, the input gradient (d loss / d x, given the
output gradient) and the kernel gradient (d loss / d w), each as

  lax.conv   `jax.lax.conv_general_dilated` and its autodiff (NHWC, HWIO),
  im2col     the library's `Conv(impl="im2col")`: the k*k shifted views
             concatenated and one matmul, with its own kernel-gradient VJP,
  torch      `torch.nn.functional.conv2d` and `torch.nn.grad.conv2d_input /
             conv2d_weight` (oneDNN), NCHW, where torch is installed,

each jitted alone, median milliseconds of `--calls` calls after a warm-up.
Every column is checked against lax.conv (max abs difference printed). The
table is printed as Markdown, ready to attach to an upstream report, followed
by one JSON line.
"""

import os
import sys

if __package__ in (None, ""):  # run as a path (python benchmarks/NAME.py): import from the checkout
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import json
import time

from absl import app, flags
import jax
import jax.numpy as jnp
import numpy as np

from fedjax_seq.models.layers import Conv

FLAGS = flags.FLAGS
flags.DEFINE_integer("batch", 64, "Batch size B.")
flags.DEFINE_integer("calls", 20, "Timed calls per cell (median).")
flags.DEFINE_integer("threads", 0, "torch.set_num_threads (0: all cores).")

# name -> (input height/width, input channels); 64 filters of 5 x 5 each.
SHAPES = {"conv1": (32, 3), "conv2": (14, 64)}
FEATURES, KERNEL = 64, 5
PARTS = ("forward", "input grad", "kernel grad")


def median_ms(fn, *args) -> float:
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(FLAGS.calls):
    t = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t)
  return 1e3 * sorted(times)[len(times) // 2]


def jax_parts(impl: str):
  """(forward, input gradient, kernel gradient) as three jitted functions of (x, w, g)."""
  conv = Conv(FEATURES, KERNEL, impl=impl)

  def apply(x, w):  # without the bias: the convolution alone
    return conv.apply({"params": {"kernel": w, "bias": jnp.zeros(FEATURES)}}, x) - 0.0

  forward = jax.jit(lambda x, w, g: apply(x, w))
  d_input = jax.jit(lambda x, w, g: jax.vjp(lambda x: apply(x, w), x)[1](g)[0])
  d_kernel = jax.jit(lambda x, w, g: jax.vjp(lambda w: apply(x, w), w)[1](g)[0])
  return forward, d_input, d_kernel


def torch_parts():
  import torch  # pylint: disable=import-outside-toplevel
  torch.set_num_threads(FLAGS.threads or os.cpu_count())
  f = torch.nn.functional
  nchw = lambda a: torch.from_numpy(np.ascontiguousarray(a))
  def wrap(fn):
    def run(x, w, g):
      with torch.no_grad():
        return fn(x, w, g)
    return run
  parts = (wrap(lambda x, w, g: f.conv2d(x, w)),
           wrap(lambda x, w, g: torch.nn.grad.conv2d_input(x.shape, w, g)),
           wrap(lambda x, w, g: torch.nn.grad.conv2d_weight(x, w.shape, g)))
  # NHWC/HWIO arrays -> NCHW/OIHW tensors; results back to NHWC/HWIO for the check.
  to_torch = lambda x, w, g: (nchw(x.transpose(0, 3, 1, 2)), nchw(w.transpose(3, 2, 0, 1)),
                              nchw(g.transpose(0, 3, 1, 2)))
  back = (lambda y: y.numpy().transpose(0, 2, 3, 1), lambda y: y.numpy().transpose(0, 2, 3, 1),
          lambda y: y.numpy().transpose(2, 3, 1, 0))
  return torch.__version__, parts, to_torch, back


def main(argv):
  del argv
  try:
    torch_version, t_parts, to_torch, back = torch_parts()
  except ImportError:
    torch_version = None
  rng = np.random.default_rng(0)
  rows, out = [], {"batch": FLAGS.batch, "jax": jax.__version__, "torch": torch_version,
                   "device": jax.devices()[0].device_kind, "cells": {}}
  impls = {"lax.conv": jax_parts("xla"), "im2col": jax_parts("im2col")}
  for name, (size, cin) in SHAPES.items():
    ho = size - KERNEL + 1
    x = rng.standard_normal((FLAGS.batch, size, size, cin), np.float32)
    w = rng.standard_normal((KERNEL, KERNEL, cin, FEATURES), np.float32) * 0.05
    g = rng.standard_normal((FLAGS.batch, ho, ho, FEATURES), np.float32)
    for p, part in enumerate(PARTS):
      cell = {}
      expected = np.asarray(impls["lax.conv"][p](x, w, g))
      for impl, fns in impls.items():
        cell[impl] = median_ms(fns[p], x, w, g)
        cell[impl + " diff"] = float(np.abs(np.asarray(fns[p](x, w, g)) - expected).max())
      if torch_version:
        args = to_torch(x, w, g)
        cell["torch"] = median_ms(t_parts[p], *args)
        cell["torch diff"] = float(np.abs(back[p](t_parts[p](*args)) - expected).max())
      out["cells"][f"{name} {part}"] = {k: round(v, 6 if "diff" in k else 2) for k, v in cell.items()}
      rows.append((name, part, cell))
  head = ["conv", "part", "lax.conv ms", "im2col ms"] + (["torch ms"] if torch_version else [])
  print(f"B = {FLAGS.batch}, float32, jax {jax.__version__}"
        + (f", torch {torch_version}" if torch_version else "") + f", {out['device']}")
  print("| " + " | ".join(head) + " |")
  print("|" + " --- |" * len(head))
  for name, part, cell in rows:
    cols = [name, part] + [f"{cell[k]:.1f}" for k in ("lax.conv", "im2col", "torch") if k in cell]
    print("| " + " | ".join(cols) + " |")
  print(json.dumps(out), flush=True)


if __name__ == "__main__":
  app.run(main)
