"""Grouping of clients into FedSeq superclients."""
