"""SCAFFOLD on CIFAR-10 with the paper's settings (controls by "option 1").

Run: python main.py --config=configs/scaffold.py --workdir=runs/scaffold
"""

from configs import default


def get_config():
  c = default.get_config()
  c.algorithm.name = "scaffold"
  return c
