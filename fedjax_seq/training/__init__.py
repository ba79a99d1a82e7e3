"""fedjax_seq.training."""
