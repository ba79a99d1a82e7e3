"""FedDyn (alpha = 0.1, the paper's form) on CIFAR-10 with the paper's settings.

Run: python main.py --config=configs/feddyn.py --workdir=runs/feddyn
The original FedSeq code's client: --config.algorithm.feddyn.variant=original
"""

from configs import default


def get_config():
  c = default.get_config()
  c.algorithm.name = "feddyn"
  return c
