"""Algorithms as values: client rules (rules.py) run by the averaging skeleton (fedavg.py) and
FedSeq's chains (fedseq.py, fedseq_inter.py); registry.py maps a name to its builder and config."""
