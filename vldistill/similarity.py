"""Stable public path (a DESIGN contract); the code lives in `vldistill.algorithms.similarity`."""
from .algorithms.similarity import build_similarity

__all__ = ["build_similarity"]
