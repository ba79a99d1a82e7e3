"""fedjax_seq.core."""
