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
  c.checkpoint_every = 100    # checkpoint every N rounds (and at the end); the last 3 are kept
  c.compare_with = ""         # e.g. "fedavg": afterwards run these on the same clients, in WORKDIR/NAME

  c.algorithm = ml_collections.ConfigDict()
  c.algorithm.name = "fedavg"  # fedavg | fairavg | fedprox | scaffold | feddyn | fedseq |
  # fedseq_prox | fedseq_dyn | fedseq_inter | fedseq_inter_prox | fedseq_inter_dyn | centralized
  c.algorithm.mu = 0.01        # FedProx proximal coefficient (paper: 0.01)
  c.algorithm.dyn_alpha = 0.1  # FedDyn regularisation alpha (paper: 0.1)
  c.algorithm.dyn_variant = "paper"  # FedDyn: paper | original (the FedSeq code's client)
  c.algorithm.centralized_variant = "paper"  # paper: constant lr, reduced test set | original: cosine lr, full test set

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

  c.fedseq = ml_collections.ConfigDict()  # superclients (FedSeq family only)
  c.fedseq.max_clients = 11      # at most this many clients per superclient
  c.fedseq.min_examples = 800    # close a superclient once it holds this many examples
  c.fedseq.grouping = "greedy"   # greedy | kmeans | random
  c.fedseq.measure = "kullback"  # greedy's measure: kullback | gini | cosine | wasserstein
  c.fedseq.representation = "confidence"  # confidence | classifier_last | classifier_last2 | classifier_all
  c.fedseq.pca_variance = 0.9    # variance kept by PCA of classifier_* representations
  c.fedseq.pretrain_epochs = 10  # client evaluation: local epochs of each client's own model
  c.fedseq.evaluator_model = "lenet"  # model trained in client evaluation
  c.fedseq.pretrain_chunk = 50   # clients pre-trained per vmapped chunk (memory bound)
  c.fedseq.sequential_rounds = 1  # E_S: passes over a superclient's members per round
  c.fedseq.shuffle = True        # shuffle members at every pass
  c.fedseq.dropout = 0.0         # fraction of members dropped at every pass
  c.fedseq.aggregation_period = "num_superclients"  # FedSeqInter: num_superclients | fraction_superclients | never
  # Behaviours of the published code (README: "The paper and the published code"):
  c.fedseq.inter_variant = "paper"   # FedSeqInter bank: paper | original (one shared model until the first reset)
  c.fedseq.dropout_variant = "paper"  # paper: distinct members | original: indices drawn with replacement
  c.fedseq.augment_exemplars = False  # confidence vectors on augmented exemplars (the original: True)
  c.fedseq.superclients_from = ""  # a grouping file written by `python -m fedjax_seq.study`: train on it, skip formation

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
  c.client.max_steps = 0       # >0: cap every client's local steps (ragged clients); 0: E full epochs

  c.mesh = ml_collections.ConfigDict()
  c.mesh.num_devices = 0       # devices of the `clients` mesh axis (0: all local); vmap strategy only

  c.engine = ml_collections.ConfigDict()
  c.engine.strategy = "auto"   # auto | vmap | loop (auto: loop on CPU, vmap on GPU/TPU)
  c.engine.unroll = "auto"     # local-step loop unroll: auto (lax.conv models on CPU) or an int
  c.engine.chunk = 0           # vmap strategy: participants vmapped per chunk (0: the whole cohort)
  c.engine.client_state = "device"  # per-client state (SCAFFOLD/FedDyn): device | host (only a round's rows move)
  return c
