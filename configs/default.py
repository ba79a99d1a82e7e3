"""Every config field with the paper's default (CIFAR-10, LeNet, FedAvg).

Run: python main.py --config=configs/default.py --workdir=runs/default
The fields, their defaults and a comment on each live in
fedjax_seq/api.py (`fedjax_seq.default_config()`), so library users get the
same config. Named configs import this and override a few fields; any field
can be overridden from the command line, e.g. --config.data.alpha=0.2.
"""

import ml_collections

from fedjax_seq.api import default_config


def get_config() -> ml_collections.ConfigDict:
  """A fresh copy of every field with its default."""
  return default_config()
