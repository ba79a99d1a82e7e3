"""FedSeq (greedy superclients on confidence vectors, KL measure) on CIFAR-10, paper settings.

Run: python main.py --config=configs/fedseq.py --workdir=runs/fedseq
"""

from configs import default


def get_config():
  c = default.get_config()
  c.algorithm.name = "fedseq"
  return c
