"""FedSeqInter with FedDyn clients (paper: alpha = 1).

Run: python main.py --config=configs/fedseq_inter_dyn.py --workdir=runs/fedseq_inter_dyn
Another alpha: --config.algorithm.fedseq_inter_dyn.alpha=0.1
"""

from configs import default


def get_config():
  c = default.get_config()
  c.algorithm.name = "fedseq_inter_dyn"
  return c
