"""Tiny instances of the file-backed datasets, written on request.

Each dataset registers a function that writes a few images and their annotation files into a
folder and returns the `data.*` overrides that read them (`DATASETS.register(..., example=fn)`),
so the registry-driven tests build every registered dataset the same way, and a format's
files can be seen in a few lines.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
from PIL import Image

CAPTIONS = ["A dog runs across a grassy field.", "Two children play with a red ball.",
            "A man rides a bicycle down the street.", "A woman reads a book on a bench.",
            "A group of people stand near a fountain.", "A cat sleeps on a sunny windowsill.",
            "A boy jumps into a swimming pool.", "Cars wait at a traffic light in the rain."]


def example_captions(n: int) -> list[str]:
    """n everyday captions, cycled."""
    return [CAPTIONS[i % len(CAPTIONS)] for i in range(n)]


def write_image(path: Path, seed: int, size: tuple[int, int] = (40, 32)) -> Path:
    """A small smooth colour image; .png or .jpg by the path's suffix."""
    rng = np.random.default_rng(seed)
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w] / max(w, h)
    base = rng.uniform(40, 215, size=3)
    tilt = rng.uniform(-60, 60, size=(2, 3))
    pixels = base + xs[..., None] * tilt[0] + ys[..., None] * tilt[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


def write_images(folder: Path, names: list[str], first_seed: int = 0) -> list[str]:
    """`write_image` for each relative name under `folder`, seeds counting from `first_seed`;
    returns the names."""
    for i, name in enumerate(names):
        write_image(folder / name, seed=first_seed + i)
    return names


__all__ = ["CAPTIONS", "example_captions", "write_image", "write_images"]
