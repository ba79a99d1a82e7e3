"""The registries of models, datasets, groupings, measures and representations.

Every seam that a researcher may want to open is a registry of named entries,
as algorithms are (`fedjax_seq/algorithms/registry.py`). An entry declares
what it needs and what it provides; `check_formation` and the config
validation read those declarations before any data is loaded, so an
incompatible combination is refused at once. The built-ins are registered at
the bottom of this module through the same `register_*` calls users make
from their own modules (e.g. imported by their config file), after which the
names work in `main.py`, the sweep and the study.

Importing this module is cheap (no JAX): config files read it at flag
parsing time. Entries therefore name their code lazily: the built-ins'
functions import what they need when called.
"""

from __future__ import annotations

import os
from typing import Any, Callable, Generic, Iterator, NamedTuple, Sequence, TypeVar

E = TypeVar("E")


class Registry(Generic[E]):
  """Named entries of one kind; the built-ins cannot be replaced."""

  def __init__(self, kind: str, reserved: Sequence[str] = ()):
    self.kind = kind
    self._entries: dict[str, E] = {}
    self._builtin: set[str] = set()
    self._reserved = frozenset(reserved)  # the config group's own fields (sections share it)

  def register(self, name: str, entry: E, *, builtin: bool = False) -> E:
    """Adds `entry` under `name`; registering a user's name again replaces it."""
    if not isinstance(name, str) or not name.isidentifier():
      raise ValueError(f"a {self.kind} name must be an identifier (letters, digits, _), "
                       f"got {name!r}")
    if name in self._builtin:
      raise ValueError(f"{self.kind} {name!r} is built in; register yours under another name")
    if name in self._reserved:
      raise ValueError(f"{self.kind} name {name!r} is a config field; choose another name")
    self._entries[name] = entry
    if builtin:
      self._builtin.add(name)
    return entry

  def unregister(self, name: str) -> None:
    """Removes a user's entry (tests restore the registry with it)."""
    if name in self._builtin:
      raise ValueError(f"{self.kind} {name!r} is built in")
    self._entries.pop(name, None)

  def get(self, name: str) -> E:
    """The entry of `name`; ValueError listing the valid names otherwise."""
    if name not in self._entries:
      raise ValueError(f"unknown {self.kind} {name!r}; valid: {', '.join(self._entries)}")
    return self._entries[name]

  def __contains__(self, name: object) -> bool:
    return name in self._entries

  def __iter__(self) -> Iterator[str]:
    return iter(list(self._entries))

  def __len__(self) -> int:
    return len(self._entries)

  def items(self) -> list[tuple[str, E]]:
    """(name, entry) pairs in registration order (built-ins first)."""
    return list(self._entries.items())

  def names(self) -> tuple[str, ...]:
    """The registered names in registration order."""
    return tuple(self._entries)

  def is_builtin(self, name: str) -> bool:
    """Whether `name` is one of the package's own entries."""
    return name in self._builtin


# ------------------------------------------------------------------------ entries


class Model(NamedTuple):
  """A model: `build(num_classes, **options, **hyperparameters)` -> a flax module.

  The module maps a float32 batch (B, H, W, C) of normalised images to logits.

  hyperparameters: its own config section `config.model.NAME`, every field
    with its default (passed to `build` as keywords).
  classifier: the names of its top-level dense layers that form the
    classifier, in call order (each holds a `kernel` parameter), or a function
    of the built module returning them; None: no declared classifier, so only
    representations that need no weights (`confidence`) can use it.
  options: which shared settings `build` takes as keywords: "dtype" (the
    compute dtype, from `config.model.compute_dtype`) and "conv_impl" (how
    `fedjax_seq.models.layers.Conv` computes, resolved from
    `config.model.conv_impl`). A model that does not take one refuses a
    non-default value of it.
  """
  build: Callable[..., Any]
  hyperparameters: dict = {}
  classifier: Sequence[str] | Callable[[Any], Sequence[str]] | None = None
  options: tuple[str, ...] = ()

  def classifier_layers(self, module) -> tuple[str, ...]:
    """The declared classifier layers of a module built from this entry."""
    if self.classifier is None:
      return ()
    layers = self.classifier(module) if callable(self.classifier) else self.classifier
    return tuple(layers)


class Dataset(NamedTuple):
  """A dataset: `load(*, data_dir, seed, **hyperparameters)` -> `FederatedArrays`.

  hyperparameters: its own config section `config.data.NAME` (the synthetic
    dataset's sizes), passed to `load` as keywords.
  num_classes, image_shape: what the loaded arrays hold, where known before
    loading (None: only known once loaded); checked against the arrays.
  natural_clients: whether its arrays carry client ids (a natural partition:
    `data.num_clients`, `alpha` and `iid` do not apply); None: depends on
    the file.
  argument: "" for a plain name; otherwise the name is used as
    `NAME:ARGUMENT` and this says what ARGUMENT is (e.g. "PATH"); it is
    passed to `load` as `argument=`.
  check(argument): raises ValueError for an argument that cannot work (a
    missing file), so the config's validation refuses it before loading.
  """
  load: Callable[..., Any]
  hyperparameters: dict = {}
  num_classes: int | None = None
  image_shape: tuple[int, int, int] | None = None
  natural_clients: bool | None = False
  argument: str = ""
  check: Callable[[str], None] = lambda argument: None


class Grouping(NamedTuple):
  """A grouping: `group(representers, sizes, *, measure, max_clients, min_examples,
  num_classes, rng)` -> one array of client ids per superclient.

  representers: (K, D) float64, one row per client (K x 0 when the grouping
  needs none); sizes: (K,) examples per client; measure: the measure's
  `score` function when the grouping uses one, else None; rng: a NumPy
  Generator, the only source of randomness. Every client must appear in
  exactly one superclient (checked).

  uses_measure: whether it reads `config.fedseq.measure`.
  needs_probabilities: whether it needs representers that are probability
    vectors (rows non-negative, summing to 1), whatever the measure.
  needs_representers: False for groupings that read no representer (random):
    no client is then pre-trained.
  """
  group: Callable[..., list]
  uses_measure: bool = False
  needs_probabilities: bool = False
  needs_representers: bool = True


class Measure(NamedTuple):
  """A greedy measure: `score(group_representer (D,), client_representers (n, D))` -> (n,).

  Larger is better. needs_probabilities: whether it only makes sense on
  probability vectors.
  """
  score: Callable[[Any, Any], Any]
  needs_probabilities: bool = False


class Representation(NamedTuple):
  """A client representation: `extract(evaluation)` -> (K, D) host array.

  `evaluation` is a `fedjax_seq.superclients.formation.Evaluation`: the K
  pre-trained models stacked, the evaluator's apply function and classifier
  layers, the exemplars, the preprocessing and the PCA variance.

  probabilities: whether each row is a probability vector.
  needs_classifier: whether it reads the evaluator's declared classifier.
  needs_exemplars: whether it scores the held-out exemplars.
  """
  extract: Callable[[Any], Any]
  probabilities: bool = False
  needs_classifier: bool = False
  needs_exemplars: bool = False


# Entries' settings live in config.model.NAME / config.data.NAME, beside these fields.
MODELS: Registry[Model] = Registry("model", ("name", "conv_impl", "compute_dtype"))
DATASETS: Registry[Dataset] = Registry(
    "dataset", ("name", "dir", "num_clients", "alpha", "iid", "max_iter_dirichlet", "rebalance",
                "exemplars_per_class", "augment"))
GROUPINGS: Registry[Grouping] = Registry("grouping")
MEASURES: Registry[Measure] = Registry("measure")
REPRESENTATIONS: Registry[Representation] = Registry("representation")
MODEL_OPTIONS = ("dtype", "conv_impl")


def register_model(name: str, build: Callable[..., Any], *, hyperparameters: dict | None = None,
                   classifier=None, options: Sequence[str] = (), _builtin: bool = False) -> Model:
  """Registers a model (see `Model`); register before `default_config()` for a config section."""
  bad = [o for o in options if o not in MODEL_OPTIONS]
  if bad:
    raise ValueError(f"unknown model options {bad}; valid: {', '.join(MODEL_OPTIONS)}")
  if not callable(build):
    raise ValueError(f"build must be callable, got {build!r}")
  entry = Model(build, dict(hyperparameters or {}), classifier, tuple(options))
  return MODELS.register(name, entry, builtin=_builtin)


def register_dataset(name: str, load: Callable[..., Any], *, hyperparameters: dict | None = None,
                     num_classes: int | None = None,
                     image_shape: tuple[int, int, int] | None = None,
                     natural_clients: bool | None = False, argument: str = "",
                     check: Callable[[str], None] | None = None,
                     _builtin: bool = False) -> Dataset:
  """Registers a dataset (see `Dataset`)."""
  if not callable(load):
    raise ValueError(f"load must be callable, got {load!r}")
  if num_classes is not None and num_classes < 2:
    raise ValueError(f"num_classes must be >= 2, got {num_classes}")
  if image_shape is not None and (len(image_shape) != 3 or min(image_shape) < 1):
    raise ValueError(f"image_shape must be (H, W, C) with sizes >= 1, got {image_shape}")
  entry = Dataset(load, dict(hyperparameters or {}), num_classes,
                  None if image_shape is None else tuple(image_shape), natural_clients, argument,
                  check or (lambda argument: None))
  return DATASETS.register(name, entry, builtin=_builtin)


def register_grouping(name: str, group: Callable[..., list], *, uses_measure: bool = False,
                      needs_probabilities: bool = False, needs_representers: bool = True,
                      _builtin: bool = False) -> Grouping:
  """Registers a superclient grouping (see `Grouping`)."""
  if not callable(group):
    raise ValueError(f"group must be callable, got {group!r}")
  if not needs_representers and (uses_measure or needs_probabilities):
    raise ValueError("a grouping that needs no representers can neither use a measure nor "
                     "need probability vectors")
  entry = Grouping(group, uses_measure, needs_probabilities, needs_representers)
  return GROUPINGS.register(name, entry, builtin=_builtin)


def register_measure(name: str, score: Callable[[Any, Any], Any], *,
                     needs_probabilities: bool = False, _builtin: bool = False) -> Measure:
  """Registers a greedy measure (see `Measure`)."""
  if not callable(score):
    raise ValueError(f"score must be callable, got {score!r}")
  return MEASURES.register(name, Measure(score, needs_probabilities), builtin=_builtin)


def register_representation(name: str, extract: Callable[[Any], Any], *,
                            probabilities: bool = False, needs_classifier: bool = False,
                            needs_exemplars: bool = False,
                            _builtin: bool = False) -> Representation:
  """Registers a client representation (see `Representation`)."""
  if not callable(extract):
    raise ValueError(f"extract must be callable, got {extract!r}")
  entry = Representation(extract, probabilities, needs_classifier, needs_exemplars)
  return REPRESENTATIONS.register(name, entry, builtin=_builtin)


# ------------------------------------------------------------------ compatibility


def check_formation(grouping: str, measure: str, representation: str, *,
                    evaluator: str | None, has_classifier: bool, exemplars: int) -> None:
  """Refuses a superclient setting whose parts do not fit, from their declarations only.

  `evaluator` names the evaluator model (for messages), `has_classifier` says
  whether it declares a classifier, `exemplars` is the number of held-out
  exemplars per class. Raises ValueError with a plain message.
  """
  g = GROUPINGS.get(grouping)
  if not g.needs_representers:
    return
  r = REPRESENTATIONS.get(representation)
  m = MEASURES.get(measure) if g.uses_measure else None
  if g.needs_probabilities and not r.probabilities:
    raise ValueError(f"grouping {grouping} needs probability vectors, which representation "
                     f"{representation} does not yield; use a representation that does "
                     f"({', '.join(probability_representations())})")
  if m is not None and m.needs_probabilities and not r.probabilities:
    raise ValueError(f"measure {measure} needs probability vectors, which representation "
                     f"{representation} does not yield; use representation "
                     f"{' or '.join(probability_representations())} or a measure without "
                     f"that need ({', '.join(n for n, e in MEASURES.items() if not e.needs_probabilities)})")
  if r.needs_classifier and not has_classifier:
    raise ValueError(f"representation {representation} reads the evaluator's classifier "
                     f"layers, and model {evaluator} declares none; use a representation that "
                     f"needs no classifier ({', '.join(n for n, e in REPRESENTATIONS.items() if not e.needs_classifier)}) "
                     "or register the model with its classifier layers")
  if r.needs_exemplars and exemplars < 1:
    raise ValueError(f"representation {representation} scores held-out exemplars: hold out at "
                     "least 1 per class")


def probability_representations() -> list[str]:
  """The registered representations whose rows are probability vectors."""
  return [n for n, e in REPRESENTATIONS.items() if e.probabilities]


# ---------------------------------------------------------------------- built-ins


def _lenet(num_classes: int, *, dtype, conv_impl: str):
  from fedjax_seq.models.lenet import LeNet  # pylint: disable=import-outside-toplevel
  return LeNet(num_classes=num_classes, conv_impl=conv_impl, dtype=dtype)


def _mlp(num_classes: int, *, dtype, hidden: Sequence[int]):
  from fedjax_seq.models.lenet import MLP  # pylint: disable=import-outside-toplevel
  return MLP(num_classes=num_classes, hidden=tuple(int(h) for h in hidden), dtype=dtype)


register_model("lenet", _lenet, classifier=("fc1", "fc2", "fc3"),
               options=("dtype", "conv_impl"), _builtin=True)
register_model("mlp", _mlp, hyperparameters={"hidden": (200, 200)},
               classifier=lambda m: tuple(f"fc{i + 1}" for i in range(len(m.hidden) + 1)),
               options=("dtype",), _builtin=True)


def _lazy(module: str, name: str) -> Callable[..., Any]:
  """A function that imports `module` and calls its `name` (keeps this module JAX-free)."""

  def call(*args, **kwargs):
    import importlib  # pylint: disable=import-outside-toplevel
    return getattr(importlib.import_module(module), name)(*args, **kwargs)

  call.__name__ = name
  call.__qualname__ = f"{module}.{name}"
  return call


_SOURCES = "fedjax_seq.data.sources"
register_dataset("cifar10", _lazy(_SOURCES, "load_cifar10"), num_classes=10,
                 image_shape=(32, 32, 3), _builtin=True)
register_dataset("cifar100", _lazy(_SOURCES, "load_cifar100"), num_classes=100,
                 image_shape=(32, 32, 3), _builtin=True)
register_dataset("fashion_mnist", _lazy(_SOURCES, "load_fashion_mnist"), num_classes=10,
                 image_shape=(28, 28, 1), _builtin=True)
register_dataset("mnist", _lazy(_SOURCES, "load_mnist"), num_classes=10,
                 image_shape=(28, 28, 1), _builtin=True)
register_dataset("synthetic", _lazy(_SOURCES, "load_synthetic"),
                 hyperparameters={"train_size": 50000, "test_size": 10000, "height": 32,
                                  "width": 32, "channels": 3, "num_classes": 10}, _builtin=True)
def _is_file(path: str) -> None:
  if not os.path.isfile(os.path.expanduser(path)):
    raise ValueError(f"{path} is not a file")


def _is_leaf_dir(path: str) -> None:
  for split in ("train", "test"):
    if not os.path.isdir(os.path.join(os.path.expanduser(path), split)):
      raise ValueError(f"{os.path.join(path, split)} is not a directory (LEAF's layout: "
                       "DIR/train/*.json, DIR/test/*.json)")


register_dataset("npz", _lazy(_SOURCES, "load_npz"), natural_clients=None, argument="PATH",
                 check=_is_file, _builtin=True)
register_dataset("tfds", _lazy(_SOURCES, "load_tfds"), argument="NAME", _builtin=True)
register_dataset("leaf", _lazy(_SOURCES, "load_leaf"), natural_clients=True, argument="DIR",
                 check=_is_leaf_dir, _builtin=True)

_GROUPING = "fedjax_seq.superclients.grouping"
register_grouping("greedy", _lazy(_GROUPING, "greedy"), uses_measure=True, _builtin=True)
register_grouping("kmeans", _lazy(_GROUPING, "kmeans"), _builtin=True)
register_grouping("random", _lazy(_GROUPING, "random"), needs_representers=False, _builtin=True)
register_grouping("greedy_mixture", _lazy(_GROUPING, "greedy_mixture"),
                  needs_probabilities=True, _builtin=True)

register_measure("kullback", _lazy(_GROUPING, "kullback"), needs_probabilities=True,
                 _builtin=True)
register_measure("gini", _lazy(_GROUPING, "gini"), needs_probabilities=True, _builtin=True)
register_measure("cosine", _lazy(_GROUPING, "cosine"), _builtin=True)
register_measure("wasserstein", _lazy(_GROUPING, "wasserstein_rows"), _builtin=True)

_FORMATION = "fedjax_seq.superclients.formation"
register_representation("confidence", _lazy(_FORMATION, "confidence"), probabilities=True,
                        needs_exemplars=True, _builtin=True)
for _name in ("classifier_last", "classifier_last2", "classifier_all"):
  register_representation(_name, _lazy(_FORMATION, _name), needs_classifier=True, _builtin=True)
