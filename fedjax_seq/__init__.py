"""fedjax_seq: vectorized federated learning in JAX (FedSeq and its baselines)."""

__version__ = "0.1.0"
