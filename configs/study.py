"""Presets for the superclient formation study (`python -m fedjax_seq.study`), the paper's grid.

The paper studies how superclients are formed (its Table IV and Figs. 3-8)
on CIFAR-10 with K = 500 clients and a LeNet evaluator, for three
superclient size constraints, two pre-training lengths of the evaluator and
three levels of heterogeneity. Here a preset selects the dataset and the
size constraint, as DATASET,MIN_EXAMPLES,MAX_CLIENTS:

  --config=configs/study.py:cifar10,400,7
  --config=configs/study.py:cifar10,800,11     (the default, and the paper's training setting)
  --config=configs/study.py:cifar10,1000,13

DATASET is cifar10, cifar100 (LeNet evaluator, lr 0.01, as the paper) or
fashion_mnist (MLP evaluator, lr 0.05, as configs/quickstart.py); the
(min_examples, max_clients) pair is one of (400, 7), (800, 11), (1000, 13).
Like configs/paper.py, a preset reproduces the published code's client
evaluation (the exemplars pass through the training augmentation); add
`,described` for un-augmented exemplars (the library's default).

The evaluator epochs {10, 20} are one study (both are pre-trained and
compared in the same run), alpha {0, 0.2, 0.5} one study each:

  for p in 400,7 800,11 1000,13; do for a in 0 0.2 0.5; do
    python -m fedjax_seq.study --config=configs/study.py:cifar10,$p \
        --config.data.alpha=$a --pretrain_epochs=10,20 \
        --workdir=runs/study/cifar10_${p/,/_}_alpha$a
  done; done

The pre-trained models depend on the data, the partition and the evaluator,
not on the size constraint, so the three presets of one alpha can share
them: run the first with --save_models (K = 500 LeNets: about 1.6 GB per
epochs value) and the others with --models_from=ITS_WORKDIR, e.g.

  python -m fedjax_seq.study --config=configs/study.py:cifar10,800,11 \
      --config.data.alpha=0.2 --pretrain_epochs=10,20 --save_models \
      --workdir=runs/study/cifar10_800_11_alpha0.2
  python -m fedjax_seq.study --config=configs/study.py:cifar10,400,7 \
      --config.data.alpha=0.2 --pretrain_epochs=10,20 \
      --models_from=runs/study/cifar10_800_11_alpha0.2 \
      --workdir=runs/study/cifar10_400_7_alpha0.2

With the sweep tool (`--program=study` runs the study module per point;
a point is finished once its study.json exists), the same grid as a sweep,
one workdir (one study) per point:

  python -m fedjax_seq.sweep --program=study --config=configs/study.py:cifar10,800,11 \
      --sweep=config.data.alpha=0,0.2,0.5 --study_flags="--pretrain_epochs=10,20" \
      --workdir=runs/study/cifar10_800_11

Each study writes study.md / study.csv (every grouping x measure x
representation x epochs combination, sorted by the superclients' mean KL
from uniform), the figures, and groupings/NAME.json, which a training run
reads with --config.fedseq.superclients_from=.
"""

from configs import default
from fedjax_seq.errors import InputError

DATASETS = ("cifar10", "cifar100", "fashion_mnist")
# The paper's superclient size constraints: (min_examples, max_clients).
CONSTRAINTS = ((400, 7), (800, 11), (1000, 13))
DEFAULT = "cifar10,800,11"


class PresetError(InputError, OSError):
  """A bad preset. An OSError too: ml_collections defers only OSErrors raised while loading
  a config file to the config's first use, where the command prints one `error:` line."""


def get_config(preset: str = DEFAULT):
  parts = [p.strip() for p in preset.split(",")]
  described = parts[-1:] == ["described"]
  if described:
    parts = parts[:-1]
  usage = (f"configs/study.py takes DATASET,MIN_EXAMPLES,MAX_CLIENTS[,described] with DATASET "
           f"in {', '.join(DATASETS)} and (MIN_EXAMPLES, MAX_CLIENTS) in "
           f"{', '.join(f'({m}, {k})' for m, k in CONSTRAINTS)}; got {preset!r}")
  if len(parts) != 3 or parts[0] not in DATASETS:
    raise PresetError(usage)
  try:
    constraint = (int(parts[1]), int(parts[2]))
  except ValueError:
    raise PresetError(usage) from None
  if constraint not in CONSTRAINTS:
    raise PresetError(usage)
  c = default.get_config()
  c.algorithm.name = "fedseq"
  c.data.name = parts[0]
  c.fedseq.min_examples, c.fedseq.max_clients = constraint
  c.fedseq.augment_exemplars = not described
  if parts[0] == "fashion_mnist":  # as configs/quickstart.py
    c.model.name = "mlp"
    c.fedseq.evaluator_model = "mlp"
    c.client.lr = 0.05
  return c
