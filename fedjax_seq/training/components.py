"""Config -> the pieces every command builds the same way: sections, model, local trainer.

Shared by the training run, the superclient study and the benchmarks, so a
model or trainer is built from a config in one place.
"""

from typing import Any

import ml_collections

from fedjax_seq import registry
from fedjax_seq.core import engine
from fedjax_seq.models import get_model, is_convolutional, uses_lax_conv


def section(config_group: ml_collections.ConfigDict, name: str, defaults: dict) -> dict:
  """An entry's own config section (e.g. `config.model.mlp`) over the entry's defaults.

  An entry registered after the config was made has no section: its defaults.
  """
  own = config_group.get(name) if name in config_group else None
  own = own.to_dict() if isinstance(own, ml_collections.ConfigDict) else {}
  return {**defaults, **own}


def model_name(config, role: str = "train") -> str:
  """The registered model the run trains ("train") or pre-trains in formation ("evaluator")."""
  if role == "evaluator" and config.fedseq.evaluator_model:
    return config.fedseq.evaluator_model
  return config.model.name


def build_model(config, name: str, num_classes: int) -> tuple[Any, tuple[str, ...]]:
  """(flax module, its declared classifier layers) of a registered model, as configured."""
  entry = registry.MODELS.get(name)
  module = get_model(name, num_classes, conv_impl=config.model.conv_impl,
                     compute_dtype=config.model.compute_dtype,
                     hyperparameters=section(config.model, name, entry.hyperparameters))
  return module, entry.classifier_layers(module)


def strategy(config, model, image_shape: tuple[int, ...], data) -> str:
  """config.engine.strategy for this model, these clients (a FedData) and this backend
  ("auto" resolved: vmap or loop)."""
  return engine.resolve_strategy(config.engine.strategy,
                                 convolutional=is_convolutional(model, image_shape),
                                 equal_sizes=data.equal_sizes)


def make_trainer(config, model, preprocess, local_epochs: int,
                 image_shape: tuple[int, ...]) -> engine.LocalTrainer:
  """Local SGD as configured (lr, momentum, weight decay, batch, unroll, step cap)."""
  c = config.client
  return engine.make_local_trainer(
      model.apply, preprocess, engine.SGD(c.lr, c.momentum, c.weight_decay),
      local_epochs=local_epochs, batch_size=c.batch_size,
      unroll=engine.resolve_unroll(config.engine.unroll, uses_lax_conv(model, image_shape)),
      max_steps=c.max_steps)
