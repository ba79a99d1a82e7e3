"""FedProx (mu = 0.01) on CIFAR-10 with the paper's settings.

Run: python main.py --config=configs/fedprox.py --workdir=runs/fedprox
Another mu: --config.algorithm.fedprox.mu=0.1
"""

from configs import default


def get_config():
  c = default.get_config()
  c.algorithm.name = "fedprox"
  return c
