"""FLOP counts by hand, XLA's count, and the one-call accelerator benchmark in its tiny mode."""

import json

import jax
import jax.numpy as jnp
import pytest

from benchmarks import flops
from helpers import LENET_MACS, MLP_MACS, python, train_flops
from fedjax_seq.models.registry import get_model


@pytest.mark.parametrize("name,macs", [("lenet", LENET_MACS), ("mlp", MLP_MACS)])
def test_flops_per_example_by_hand_and_by_xla(name, macs):
  model = get_model(name, 10, **({"conv_impl": "im2col"} if name == "lenet" else {}))
  params = jax.jit(model.init)(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
  assert [m for _, m in flops.layer_macs(model, params, (32, 32, 3))] == macs
  per_example = flops.train_flops_per_example(model, params, (32, 32, 3))
  assert per_example == train_flops(macs)
  assert flops.forward_flops_per_example(model, params, (32, 32, 3)) == 2 * sum(macs)
  # XLA counts biases, activations and the loss too: a little more, never less.
  ratio = flops.xla_step_flops(model, params, (16, 32, 32, 3)) / (16 * per_example)
  assert 1.0 <= ratio < 1.03


def test_accelerator_tiny_writes_every_section(tmp_path):
  proc = python("benchmarks/accelerator.py", "--tiny", "--rounds=1", "--dtypes=float32",
                f"--out={tmp_path}")
  assert proc.returncode == 0, proc.stderr[-3000:]
  out = json.loads((tmp_path / "accelerator.json").read_text())
  assert set(out["rounds"]) == {f"{n}/float32" for n in (
      "fedavg", "fedprox", "scaffold", "feddyn", "fedseq", "fedseq_inter")}
  mlp = train_flops(MLP_MACS)
  for key, p in out["rounds"].items():
    assert p["seconds_per_round"] > 0 and p["compile_s"] >= 0, (key, p)
    passes = 2 if key.startswith("scaffold") else 1  # option I's second pass
    # examples_per_round is rounded to 0.1 in the JSON (FedSeq's is a mean over superclients)
    assert p["flops_per_round"] == pytest.approx(passes * p["examples_per_round"] * mlp, rel=1e-3)
    assert p["flops_per_s"] == pytest.approx(p["flops_per_round"] / p["seconds_per_round"],
                                             rel=1e-3)
    assert 0 < p["fraction_of_peak"] < 1
    assert p["projected_10k_rounds_s"] >= 10000 * p["seconds_per_round"]
  # K = 20 clients of 20 images, C = 0.2: FedAvg trains 4 clients, 80 images.
  assert out["rounds"]["fedavg/float32"]["examples_per_round"] == 80
  assert out["formation"]["num_clients"] == 20 and out["formation"]["num_superclients"] >= 5
  assert out["grid"]["runs"] == 60 and out["grid"]["projected_s"] > 0
  assert out["conv_impl"] == {"skipped": "tiny: the MLP has no convolution"}
  assert [out["scaling"][n]["clients_per_round"] for n in ("2", "4", "8")] == [2, 4, 8]
  assert len(out["profile"]) == 10 and all(op["ms"] > 0 for op in out["profile"])
  table = (tmp_path / "accelerator.md").read_text()
  assert "| fedseq_inter | float32 |" in table and "The paper's grid (60 runs)" in table
