"""FedSeqInter with FedProx clients (paper: mu = 1).

Run: python main.py --config=configs/fedseq_inter_prox.py --workdir=runs/fedseq_inter_prox
Another mu: --config.algorithm.fedseq_inter_prox.mu=0.01
"""

from configs import default


def get_config():
  c = default.get_config()
  c.algorithm.name = "fedseq_inter_prox"
  return c
