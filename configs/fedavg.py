"""FedAvg on CIFAR-10 with the paper's settings (K=500, C=0.2, E=1, B=64, LeNet).

Run: python main.py --config=configs/fedavg.py --workdir=runs/fedavg
"""

from configs import default


def get_config():
  c = default.get_config()
  c.algorithm.name = "fedavg"
  return c
