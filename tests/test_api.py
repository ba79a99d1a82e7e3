"""The library API: build() gives main.py's rounds (the docs' example runs in
tests/test_end_to_end.py, on real data)."""

import jax
import numpy as np
import pytest

import fedjax_seq
from configs import default
from helpers import assert_trees_equal, tiny_config
from fedjax_seq.errors import InputError
from fedjax_seq.training.train import train_and_evaluate


def test_default_config_is_the_config_files_base():
  assert default.get_config() == fedjax_seq.default_config()
  assert fedjax_seq.default_config() is not fedjax_seq.default_config()  # a fresh copy


def small():
  """SCAFFOLD (per-client state too) on the tiny run (tests/helpers.py: 20 clients)."""
  return tiny_config("scaffold", rounds=3, eval_every=3)


def test_build_gives_main_pys_rounds(tmp_path):
  """Rounds 1..3 through the API equal a main.py run of the same config, bit for bit."""
  c = small()
  exp = fedjax_seq.build(c)
  assert exp.data.num_clients == 20 and exp.strategy == "vmap"  # a dense model: vmap on CPU too
  assert exp.algorithm.init is not None and exp.model.apply is not None
  state = exp.state
  for r in range(1, 4):
    state, metrics = exp.round(state, r)
  assert np.isfinite(float(metrics["train_loss"]))
  accuracy, loss = exp.evaluate(state)
  (record,) = train_and_evaluate(c, str(tmp_path / "run"))
  assert (accuracy, loss) == (record["test_accuracy"], record["test_loss"])
  # .state is a fresh initial state every time, usable after rounds consumed others.
  fresh = exp.state
  assert_trees_equal(fresh.params, exp.init_params)
  assert exp.evaluate(fresh) != (accuracy, loss)


def test_build_refuses_bad_config():
  c = small()
  c.client.lr = -1.0
  with pytest.raises(InputError, match="config.client.lr must be > 0"):
    fedjax_seq.build(c)


def test_every_public_function_and_class_has_a_docstring():
  """Library users read help(); every public name defined in the package says what it is for."""
  import importlib
  import inspect
  import pkgutil
  missing = []
  for info in pkgutil.walk_packages(fedjax_seq.__path__, "fedjax_seq."):
    module = importlib.import_module(info.name)
    for name, obj in vars(module).items():
      if name.startswith("_") or getattr(obj, "__module__", None) != module.__name__:
        continue
      if inspect.isfunction(obj) and not obj.__doc__:
        missing.append(f"{info.name}.{name}")
      if inspect.isclass(obj):
        if not obj.__doc__:
          missing.append(f"{info.name}.{name}")
        missing += [f"{info.name}.{name}.{m}" for m, f in vars(obj).items()
                    if not m.startswith("_") and inspect.isfunction(f) and not f.__doc__]
  assert not missing, missing
