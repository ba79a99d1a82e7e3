"""FairAvg (uniform aggregation weights) on CIFAR-10 with the paper's settings.

Run: python main.py --config=configs/fairavg.py --workdir=runs/fairavg
"""

from configs import default


def get_config():
  c = default.get_config()
  c.algorithm.name = "fairavg"
  return c
