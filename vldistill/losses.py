"""Stable public path (a DESIGN contract); the code lives in `vldistill.algorithms.losses`."""
from .algorithms.losses import soft_contrastive_loss

__all__ = ["soft_contrastive_loss"]
