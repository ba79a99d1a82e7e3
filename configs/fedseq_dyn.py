"""FedSeq whose clients train with FedDyn's regulariser (alpha = 0.1).

Run: python main.py --config=configs/fedseq_dyn.py --workdir=runs/fedseq_dyn
Another alpha: --config.algorithm.fedseq_dyn.alpha=0.3
"""

from configs import default


def get_config():
  c = default.get_config()
  c.algorithm.name = "fedseq_dyn"
  return c
