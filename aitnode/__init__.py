"""aitnode: a proof-of-authority node for a compute-backed chain."""

__version__ = "0.1.0"
