"""fedjax_seq as a library: the default config, and an experiment built from a config.

  config = fedjax_seq.default_config()
  exp = fedjax_seq.build(config)
  state = exp.state
  for r in range(1, 11):
    state, metrics = exp.round(state, r)
  accuracy, loss = exp.evaluate(state)

Importing this module is cheap (no JAX): config files import it at flag
parsing time, and `main.py --help` should stay instant.
"""

from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING, Any, Callable

import ml_collections

from fedjax_seq import registry as seams
from fedjax_seq.algorithms import registry

if TYPE_CHECKING:
  import jax
  from fedjax_seq.data.arrays import FederatedArrays
  from fedjax_seq.core.rounds import Algorithm
  from fedjax_seq.data.federated import FedData


def default_config() -> ml_collections.ConfigDict:
  """Every config field with the paper's default (CIFAR-10, LeNet, FedAvg), commented."""
  c = ml_collections.ConfigDict()
  c.seed = 0                  # root of every random choice (partition, init, rounds)
  c.rounds = 10000            # communication rounds (paper: 10,000 CIFAR-10, 20,000 CIFAR-100)
  c.eval_every = 100          # evaluate on the test set every N rounds (and at the last round)
  c.eval_batch_size = 500     # test-set batch size (memory only; results do not depend on it)
  c.checkpoint_every = 100    # checkpoint every N rounds (and at the end); the last 3 are kept
  c.compare_with = ""         # e.g. "fedavg": afterwards run these on the same clients, in WORKDIR/NAME

  c.algorithm = ml_collections.ConfigDict()
  c.algorithm.name = "fedavg"  # a name of fedjax_seq/algorithms/registry.py (`main.py --help` lists them)
  # Each algorithm's own hyperparameters, with the paper's values, as its section
  # config.algorithm.NAME (e.g. fedprox.mu 0.01, fedseq_inter_prox.mu 1, feddyn.alpha 0.1,
  # feddyn.variant paper | original, scaffold.control gradient | difference,
  # centralized.variant paper | original): see the registry and docs/algorithms.md.
  for name, entry in registry.ALGORITHMS.items():
    if entry.hyperparameters:
      c.algorithm[name] = ml_collections.ConfigDict(dict(entry.hyperparameters))

  c.server = ml_collections.ConfigDict()  # the server's step (fedjax_seq/core/server.py)
  c.server.optimizer = "sgd"   # sgd | momentum (FedAvgM) | adam | yogi | adagrad (FedOpt, ICLR 2021)
  c.server.lr = 1.0            # server lr; sgd with lr 1 takes the average as is (FedAvg)
  c.server.momentum = 0.9      # momentum: FedAvgM's beta
  c.server.b1 = 0.9            # adam | yogi | adagrad: first-moment decay (that paper: 0.9)
  c.server.b2 = 0.99           # adam | yogi: second-moment decay (that paper: 0.99)
  c.server.eps = 1e-3          # adam | yogi | adagrad: adaptivity tau, added to sqrt(v)

  c.data = ml_collections.ConfigDict()
  c.data.name = "cifar10"      # a registered dataset (`main.py --help`), or npz:PATH | tfds:NAME | leaf:DIR
  c.data.dir = ""              # CIFAR archives / IDX files / TFDS data_dir ("" = the dataset's default)
  c.data.num_clients = 500     # K (not for data with natural client ids)
  c.data.alpha = 0.0           # 0: pathological shards (~1 class per client); >0: Dirichlet(alpha)
  c.data.iid = False           # True: uniform random split (overrides alpha; not for natural ids)
  c.data.max_iter_dirichlet = 100  # Dirichlet redraws; the most balanced client sizes are kept
  c.data.rebalance = False     # Dirichlet only: move examples so every client has N//K
  c.data.exemplars_per_class = 10  # held out of the test set (FedSeq's exemplar set)
  c.data.augment = True        # the dataset's standard augmentation (CIFAR: crop pad 4 + flip)
  # Each dataset's own settings as its section config.data.NAME (synthetic: sizes, shape, classes).
  for name, entry in seams.DATASETS.items():
    if entry.hyperparameters:
      c.data[name] = ml_collections.ConfigDict(dict(entry.hyperparameters))

  c.fedseq = ml_collections.ConfigDict()  # superclients (FedSeq family only)
  c.fedseq.max_clients = 11      # at most this many clients per superclient
  c.fedseq.min_examples = 800    # close a superclient once it holds this many examples
  c.fedseq.grouping = "greedy"   # a registered grouping: greedy | kmeans | random | greedy_mixture | yours
  c.fedseq.measure = "kullback"  # greedy's measure: kullback | gini | cosine | wasserstein | yours
  c.fedseq.representation = "confidence"  # confidence | classifier_last | classifier_last2 | classifier_all
  c.fedseq.pca_variance = 0.9    # variance kept by PCA of classifier_* representations
  c.fedseq.pretrain_epochs = 10  # client evaluation: local epochs of each client's own model
  c.fedseq.evaluator_model = ""  # model trained in client evaluation ("": the training model)
  c.fedseq.pretrain_chunk = 50   # clients pre-trained per vmapped chunk (memory bound)
  c.fedseq.sequential_rounds = 1  # E_S: passes over a superclient's members per round
  c.fedseq.shuffle = True        # shuffle members at every pass
  c.fedseq.dropout = 0.0         # fraction of members dropped at every pass
  c.fedseq.aggregation_period = "num_superclients"  # FedSeqInter: num_superclients | fraction_superclients | never
  # Behaviours of the published code (docs/paper.md):
  c.fedseq.inter_variant = "paper"   # FedSeqInter bank: paper | original (one shared model until the first reset)
  c.fedseq.dropout_variant = "paper"  # paper: distinct members | original: indices drawn with replacement
  c.fedseq.augment_exemplars = False  # confidence vectors on augmented exemplars (the original: True)
  c.fedseq.superclients_from = ""  # a grouping file written by `python -m fedjax_seq.study`: train on it, skip formation

  c.model = ml_collections.ConfigDict()
  c.model.name = "lenet"       # a registered model: lenet | mlp | yours (`main.py --help`)
  c.model.conv_impl = "auto"   # auto | xla | im2col (auto: im2col on CPU); models with layers.Conv
  c.model.compute_dtype = "float32"  # float32 | bfloat16 (matmuls/convs; params stay float32)
  # Each model's own settings as its section config.model.NAME (mlp: hidden sizes).
  for name, entry in seams.MODELS.items():
    if entry.hyperparameters:
      c.model[name] = ml_collections.ConfigDict(dict(entry.hyperparameters))

  c.client = ml_collections.ConfigDict()
  c.client.fraction = 0.2      # C: max(int(C*K), 1) clients per round
  c.client.local_epochs = 1    # E
  c.client.batch_size = 64     # B
  c.client.lr = 0.01           # local SGD learning rate
  c.client.momentum = 0.0      # local SGD momentum (PyTorch semantics)
  c.client.weight_decay = 4e-4  # L2 coefficient added to the gradient (PyTorch semantics)
  c.client.max_steps = 0       # >0: cap every client's local steps (ragged clients); 0: E full epochs

  c.mesh = ml_collections.ConfigDict()
  c.mesh.num_devices = 0       # devices of the `clients` mesh axis (0: all local); vmap strategy only

  c.engine = ml_collections.ConfigDict()
  c.engine.strategy = "auto"   # auto | vmap | loop (auto: vmap; on CPU loop: conv/ragged)
  c.engine.unroll = "auto"     # local-step loop unroll: auto (lax.conv models on CPU) or an int
  c.engine.chunk = 0           # vmap strategy: participants vmapped per chunk (0: the whole cohort)
  c.engine.client_state = "device"  # per-client state (SCAFFOLD/FedDyn): device | host (only a round's rows move)
  return c


@dataclasses.dataclass(frozen=True)
class Experiment:
  """A built experiment: what `main.py` runs, with rounds keyed as main.py keys them.

  A round donates its input state: keep only the state it returns.
  """
  config: ml_collections.ConfigDict
  data: FedData       # device-resident clients
  model: Any          # a flax module
  algorithm: Algorithm
  init_params: Any
  strategy: str       # "vmap" or "loop", as resolved for this backend
  image_shape: tuple[int, ...]
  partition: str      # how the start-up line describes the clients
  superclients: dict | None  # FedSeq family: what superclients.json records
  round_fn: Callable = dataclasses.field(repr=False)        # (state, data, key) -> (state, metrics)
  evaluate_params: Callable = dataclasses.field(repr=False)  # server params -> (accuracy, loss)

  @property
  def state(self):
    """A fresh initial state (a new one per access, since rounds consume theirs)."""
    import jax
    import jax.numpy as jnp
    return self.algorithm.init(jax.tree.map(jnp.copy, self.init_params))

  def round(self, state, round_index: int) -> tuple[Any, dict[str, jax.Array]]:
    """Round `round_index` (from 1): (new state, {"train_loss": ...}), as main.py's round."""
    from fedjax_seq.training.experiment import round_key
    return self.round_fn(state, self.data, round_key(self.config.seed, round_index))

  def evaluate(self, state) -> tuple[float, float]:
    """(test accuracy, mean test cross-entropy) of a state's server model."""
    from fedjax_seq.core.sharding import localize
    return self.evaluate_params(localize(state.params))


def build(config: ml_collections.ConfigDict, stream=None, *, model=None,
          data: FederatedArrays | None = None) -> Experiment:
  """Loads the data, forms superclients (FedSeq family) and builds the round.

  model: None (the config's `model.name`), or any flax module mapping a
    float32 batch of normalised images (B, H, W, C) to logits. FedSeq's
    evaluator is then this model too unless `fedseq.evaluator_model` names a
    registered one; with no declared classifier it supports the
    representations that need none (`confidence`).
  data: None (the config's `data.name`), or a `FederatedArrays`; with
    `client_ids` its clients are the distinct ids (a natural partition).

  Raises fedjax_seq.errors.InputError on a bad config. `stream` (e.g.
  sys.stderr) receives superclient formation's progress; None is silent.
  """
  from fedjax_seq.training import experiment as experiment_lib
  return experiment_lib.build(config, stream, model=model, data=data)
