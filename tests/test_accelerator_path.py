"""The accelerator path, as far as a CPU can check it.

Every algorithm family's vmapped round (the strategy `auto` picks on GPU and
TPU) is exported for the `cuda` and `tpu` platforms with `jax.export` and
must contain nothing that needs the host: no Python callback and no custom
call (XLA:CPU-only kernels such as LAPACK or oneDNN enter a module as custom
calls). Every family with LeNet in bfloat16 (convolutions and the low
precision, where such kernels would come from); FedAvg with both models in
both compute dtypes (the model's part of a round is the same in every
family). And three rounds of every family, under either strategy, compile
only in the first round.
"""

import re

import jax
import pytest
from jax import monitoring

from fedjax_seq import build
from helpers import tiny_config

FAMILIES = ["fedavg", "fedprox", "scaffold", "feddyn", "fedseq", "fedseq_inter"]


def experiment(family: str, **overrides):
  """The tiny run of `family`; FedSeq groups at random (no pre-training: not the subject)."""
  return build(tiny_config(family, **{"fedseq.grouping": "random", "fedseq.evaluator_model": "",
                                     **overrides}))


def abstract(tree):
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), tree)


EXPORTED = ([(family, "lenet", "bfloat16") for family in FAMILIES]
            + [("fedavg", model, dtype) for model in ("lenet", "mlp")
               for dtype in ("float32", "bfloat16") if (model, dtype) != ("lenet", "bfloat16")])


@pytest.mark.parametrize("family,model,dtype", EXPORTED)
def test_vmapped_round_lowers_for_gpu_and_tpu_without_host_code(family, model, dtype):
  # conv_impl "xla": what `auto` resolves to on an accelerator (lax.conv).
  exp = experiment(family, **{"engine.strategy": "vmap", "model.name": model,
                              "model.compute_dtype": dtype,
                              "model.conv_impl": "xla" if model == "lenet" else "auto"})
  state = exp.algorithm.init(exp.init_params)
  exported = jax.export.export(exp.round_fn, platforms=("cuda", "tpu"))(
      abstract(state), abstract(exp.data), jax.random.key(0))
  assert exported.platforms == ("cuda", "tpu")
  text = exported.mlir_module()
  assert not re.findall(r"custom_call\s*@\S+", text), (family, model, dtype)
  assert "callback" not in text, (family, model, dtype)
  if model == "lenet":  # the model is really in it: its convolutions, in the compute dtype
    assert "stablehlo.convolution" in text
  if dtype == "bfloat16":
    assert "bf16" in text


@pytest.mark.parametrize("strategy", ["vmap", "loop"])
@pytest.mark.parametrize("family", FAMILIES)
def test_three_rounds_compile_only_in_the_first(family, strategy):
  exp = experiment(family, **{"engine.strategy": strategy})
  state = exp.algorithm.init(exp.init_params)
  compiles = []

  def count(event: str, duration: float, **kwargs):
    del duration, kwargs
    if event == "/jax/core/compile/backend_compile_duration" and counting:
      compiles.append(event)

  counting = False
  monitoring.register_event_duration_secs_listener(count)
  try:
    state, _ = exp.round_fn(state, exp.data, jax.random.key(1))
    jax.block_until_ready(state)
    counting = True
    for r in (2, 3):
      state, metrics = exp.round_fn(state, exp.data, jax.random.key(r))
    jax.block_until_ready(state)
  finally:
    counting = False
    monitoring.unregister_event_duration_listener(count)
  assert compiles == [], f"{family}/{strategy}: {len(compiles)} compilations after round 1"
  assert float(metrics["train_loss"]) > 0
