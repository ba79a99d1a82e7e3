"""FedSeq whose clients train with FedProx's proximal term (mu = 0.01).

Run: python main.py --config=configs/fedseq_prox.py --workdir=runs/fedseq_prox
Another mu: --config.algorithm.fedseq_prox.mu=0.1
"""

from configs import default


def get_config():
  c = default.get_config()
  c.algorithm.name = "fedseq_prox"
  return c
