"""FedProx (mu = 0.01) on CIFAR-10 with the paper's settings.

Run: python main.py --config=configs/fedprox.py --workdir=runs/fedprox
"""

from configs import default


def get_config():
  c = default.get_config()
  c.algorithm.name = "fedprox"
  c.algorithm.mu = 0.01
  return c
