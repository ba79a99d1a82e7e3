"""SCAFFOLD on CIFAR-10 with the paper's settings (controls by "option 1").

Run: python main.py --config=configs/scaffold.py --workdir=runs/scaffold
Option II (c_i from the model difference, no second pass over the batches):
--config.algorithm.scaffold.control=difference
"""

from configs import default


def get_config():
  c = default.get_config()
  c.algorithm.name = "scaffold"
  return c
