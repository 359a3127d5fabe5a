"""vldistill: distill an image-text dataset into a few hundred synthetic pairs plus a learned
similarity matrix (LoRS on bi-trajectory matching, with TESLA's constant-memory gradient).

The library imports without the CLI; `vldistill.cli` is a thin layer on top.
"""
__version__ = "0.1.0"
