"""FedSeqInter with FedProx clients (paper: mu = 1).

Run: python main.py --config=configs/fedseq_inter_prox.py --workdir=runs/fedseq_inter_prox
"""

from configs import default


def get_config():
  c = default.get_config()
  c.algorithm.name = "fedseq_inter_prox"
  c.algorithm.mu = 1.0
  return c
