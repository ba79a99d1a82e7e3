"""FedSeqInter: superclients continue each other's models (bank reset every S rounds).

Run: python main.py --config=configs/fedseq_inter.py --workdir=runs/fedseq_inter
"""

from configs import default


def get_config():
  c = default.get_config()
  c.algorithm.name = "fedseq_inter"
  return c
