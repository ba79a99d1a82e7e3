"""FedSeqInter with FedDyn clients (paper: alpha = 1).

Run: python main.py --config=configs/fedseq_inter_dyn.py --workdir=runs/fedseq_inter_dyn
"""

from configs import default


def get_config():
  c = default.get_config()
  c.algorithm.name = "fedseq_inter_dyn"
  c.algorithm.dyn_alpha = 1.0
  return c
