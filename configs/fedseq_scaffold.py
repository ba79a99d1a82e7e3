"""FedSeq whose members train with SCAFFOLD's control variates (each member its own c_i).

Run: python main.py --config=configs/fedseq_scaffold.py --workdir=runs/fedseq_scaffold
Each member uses its own c_i and the server's c and refreshes c_i at the model
it received (option I; --config.algorithm.fedseq_scaffold.control=difference for option II).
"""

from configs import default


def get_config():
  c = default.get_config()
  c.algorithm.name = "fedseq_scaffold"
  return c
