"""fedjax_seq.data."""
