"""FedSeq whose clients train with FedDyn's regulariser (alpha = 0.1).

Run: python main.py --config=configs/fedseq_dyn.py --workdir=runs/fedseq_dyn
"""

from configs import default


def get_config():
  c = default.get_config()
  c.algorithm.name = "fedseq_dyn"
  c.algorithm.dyn_alpha = 0.1
  return c
