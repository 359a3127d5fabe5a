"""Stable public path (a DESIGN contract); the code lives in `vldistill.algorithms.retrieval`."""
from .algorithms.retrieval import recall_at_k

__all__ = ["recall_at_k"]
