"""Centralized upper bound: one model on all training data (one round = E epochs), same B and lr.

Run: python main.py --config=configs/centralized.py --workdir=runs/centralized
"""

from configs import default


def get_config():
  c = default.get_config()
  c.algorithm.name = "centralized"
  c.rounds = 100  # epochs over the whole training set
  c.eval_every = 1
  return c
