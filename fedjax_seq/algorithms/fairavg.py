"""FairAvg: FedAvg with uniform aggregation weights (the original's "uniform" policy)."""

from fedjax_seq.algorithms.fedavg import fedavg
from fedjax_seq.core.rounds import Algorithm


def fairavg(trainer, num_clients: int, fraction: float) -> Algorithm:
  return fedavg(trainer, num_clients, fraction, weighting="uniform")
