"""A superclient grouping of your own: deal clients out by their most likely class.

  python main.py --config=configs/examples/top_class_grouping.py --workdir=runs/top_class
  python -m fedjax_seq.study --config=configs/examples/top_class_grouping.py --workdir=runs/study \
      --groupings=top_class,greedy,random --representations=confidence --measures=kullback
"""

import itertools

import numpy as np

import fedjax_seq
from fedjax_seq.superclients.grouping import fill_groups


def top_class(representers, sizes, *, measure, max_clients, min_examples, num_classes, rng):
  """Cycle over the classes, taking a client whose estimated top class it is.

  `representers` are probability vectors (declared below), so argmax is the
  class a client most likely holds; consecutive members then differ.
  `fill_groups` applies max_clients / min_examples as the built-ins do.
  """
  del measure, num_classes  # declared unused: uses_measure=False
  top = representers.argmax(1)
  queues = [list(rng.permutation(np.flatnonzero(top == c))) for c in range(top.max() + 1)]
  turn = itertools.cycle(range(len(queues)))

  def pick(group):
    del group  # the next client depends on the turn only
    while True:
      queue = queues[next(turn)]
      if queue:
        return int(queue.pop())

  return fill_groups(pick, sizes, max_clients, min_examples)


fedjax_seq.register_grouping("top_class", top_class, needs_probabilities=True)


def get_config():
  c = fedjax_seq.default_config()
  c.algorithm.name = "fedseq"
  c.data.name, c.model.name = "fashion_mnist", "mlp"  # 500 one-class clients (alpha = 0)
  c.fedseq.update(grouping="top_class", pretrain_epochs=1)
  c.client.lr = 0.05
  c.rounds, c.eval_every = 10, 5
  return c
