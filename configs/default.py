"""Every config field with the paper's default (CIFAR-10, LeNet, FedAvg).

Run: python main.py --config=configs/default.py --workdir=runs/default
Named configs import this and override a few fields; any field can be
overridden from the command line, e.g. --config.data.alpha=0.2.
"""

import ml_collections


def get_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0                  # root of every random choice (partition, init, rounds)
  c.rounds = 10000            # communication rounds (paper: 10,000 CIFAR-10, 20,000 CIFAR-100)
  c.eval_every = 100          # evaluate on the test set every N rounds (and at the last round)
  c.eval_batch_size = 500     # test-set batch size (memory only; results do not depend on it)

  c.algorithm = ml_collections.ConfigDict()
  c.algorithm.name = "fedavg"  # fedavg | fairavg | fedprox | scaffold | feddyn
  c.algorithm.mu = 0.01        # FedProx proximal coefficient (paper: 0.01)
  c.algorithm.dyn_alpha = 0.1  # FedDyn regularisation alpha (paper: 0.1)
  c.algorithm.dyn_variant = "paper"  # FedDyn: paper | original (the FedSeq code's client)

  c.data = ml_collections.ConfigDict()
  c.data.name = "cifar10"      # cifar10 | cifar100 | fashion_mnist | mnist | synthetic
  c.data.dir = ""              # CIFAR archives / IDX files / TFDS data_dir ("" = the dataset's default)
  c.data.num_clients = 500     # K
  c.data.alpha = 0.0           # 0: pathological shards (~1 class per client); >0: Dirichlet(alpha)
  c.data.iid = False           # True: uniform random split (overrides alpha)
  c.data.max_iter_dirichlet = 100  # Dirichlet redraws; the most balanced client sizes are kept
  c.data.rebalance = False     # Dirichlet only: move examples so every client has N//K
  c.data.exemplars_per_class = 10  # held out of the test set (FedSeq's exemplar set)
  c.data.augment = True        # the dataset's standard augmentation (CIFAR: crop pad 4 + flip)
  c.data.synthetic = ml_collections.ConfigDict()
  c.data.synthetic.train_size = 50000
  c.data.synthetic.test_size = 10000
  c.data.synthetic.height = 32
  c.data.synthetic.width = 32
  c.data.synthetic.channels = 3
  c.data.synthetic.num_classes = 10

  c.model = ml_collections.ConfigDict()
  c.model.name = "lenet"       # lenet | mlp
  c.model.conv_impl = "auto"   # auto | xla | im2col (auto: im2col on CPU)
  c.model.compute_dtype = "float32"  # float32 | bfloat16 (matmuls/convs; params stay float32)

  c.client = ml_collections.ConfigDict()
  c.client.fraction = 0.2      # C: max(int(C*K), 1) clients per round
  c.client.local_epochs = 1    # E
  c.client.batch_size = 64     # B
  c.client.lr = 0.01
  c.client.momentum = 0.0
  c.client.weight_decay = 4e-4

  c.engine = ml_collections.ConfigDict()
  c.engine.strategy = "auto"   # auto | vmap | loop (auto: loop on CPU, vmap on GPU/TPU)
  c.engine.unroll = "auto"     # local-step loop unroll: auto (full on CPU) or an int
  return c
