"""The embedded default dataset: procedural images of coloured shapes with captions.

Generated from a seed in seconds, nothing downloaded. Each image holds 1-3 objects (shape,
colour, size, position on a 3x3 grid) on a varied background; each image gets five captions
from templates that mention different subsets of the attributes ("there is a red circle"),
so that different images share a caption's meaning -- the false negatives that similarity
mining is meant to find.
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import torch

from ..io import read_tensors, write_tensors
from .registry import DATASETS
from .splits import CaptionDataset, CaptionSplit, TensorImages, normalize_caption

if TYPE_CHECKING:
    from ..config import DataConfig

log = logging.getLogger(__name__)

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230), "yellow": (240, 220, 40),
    "purple": (150, 60, 200), "orange": (250, 140, 30), "white": (245, 245, 245),
    "cyan": (40, 210, 220),
}
SIZES = {"small": 0.15, "large": 0.24}            # radius as a fraction of the image side
POSITIONS = ("in the top left", "at the top", "in the top right",
             "on the left", "in the center", "on the right",
             "in the bottom left", "at the bottom", "in the bottom right")
CAPTIONS_PER_IMAGE = 5
_SUPERSAMPLE = 2


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Boolean mask of a unit-radius shape; dx, dy are offsets from its centre in radii."""
    r = np.hypot(dx, dy)
    if shape == "circle":
        return r <= 1.0
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.8
    if shape == "triangle":
        return (dy <= 0.75) & (dy >= -1.0 + 1.9 * np.abs(dx))
    if shape == "star":
        theta = np.arctan2(dy, dx) + np.pi / 2
        return r <= 0.45 + 0.55 * np.abs(np.cos(2.5 * theta)) ** 3
    if shape == "cross":
        return ((np.abs(dx) <= 0.3) & (np.abs(dy) <= 1.0)) | ((np.abs(dy) <= 0.3) & (np.abs(dx) <= 1.0))
    if shape == "ring":
        return (r <= 1.0) & (r >= 0.55)
    raise ValueError(shape)


def _render_chunk(scenes: list[list[dict]], size: int, rng: np.random.Generator) -> np.ndarray:
    """Images (n, H, W, 3) uint8: tinted gradient backgrounds with noise, then the objects.

    Drawn at twice the size and averaged down (anti-aliasing); the background and noise are
    vectorized over the chunk, only the objects are drawn one by one.
    """
    n, big = len(scenes), size * _SUPERSAMPLE
    ys, xs = _grid(big)
    base = rng.uniform(20, 110, size=(n, 1, 1, 3)).astype(np.float32)
    tilt = rng.uniform(-30, 30, size=(2, n, 1, 1, 3)).astype(np.float32)
    img = base + xs[None, ..., None] * tilt[0] + ys[None, ..., None] * tilt[1]
    for k, objects in enumerate(scenes):
        for obj in objects:
            row, col = divmod(obj["position"], 3)
            cx = (col + 0.5) / 3 + rng.uniform(-0.04, 0.04)
            cy = (row + 0.5) / 3 + rng.uniform(-0.04, 0.04)
            radius = SIZES[obj["size"]] * rng.uniform(0.9, 1.1)
            rows = slice(max(0, int((cy - radius) * big)), int((cy + radius) * big) + 2)
            cols = slice(max(0, int((cx - radius) * big)), int((cx + radius) * big) + 2)
            mask = _shape_mask(obj["shape"], (xs[rows, cols] - cx) / radius,
                               (ys[rows, cols] - cy) / radius)
            colour = np.asarray(COLOURS[obj["colour"]], dtype=np.float32) * rng.uniform(0.85, 1.0)
            img[k, rows, cols][mask] = colour
    img = img.reshape(n, size, _SUPERSAMPLE, size, _SUPERSAMPLE, 3).mean(axis=(2, 4))
    img += rng.normal(0, 6, size=img.shape).astype(np.float32)
    return np.clip(img, 0, 255).astype(np.uint8)


@functools.lru_cache(maxsize=4)
def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = (np.mgrid[0:side, 0:side].astype(np.float32) + 0.5) / side
    return ys, xs


def _describe(o: dict) -> str:
    return f"{o['colour']} {o['shape']}"


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


_TEMPLATES = (
    lambda objs, o: f"{_a(o['size'])} {_describe(o)} {POSITIONS[o['position']]}",
    lambda objs, o: f"there is {_a(_describe(o))}",
    lambda objs, o: f"a {o['shape']} {POSITIONS[o['position']]}",
    lambda objs, o: f"something {o['colour']} {POSITIONS[o['position']]}",
    lambda objs, o: f"a {o['size']} {o['shape']}",
    lambda objs, o: f"a picture with {_a(o['colour'])} shape",
    lambda objs, o: (f"{_NUMBERS[len(objs)]} shapes: " + " and ".join(_describe(x) for x in objs)
                     if len(objs) > 1 else f"a single {_describe(o)}"),
    lambda objs, o: " and ".join(_a(_describe(x)) for x in objs),
)
_NUMBERS = {1: "one", 2: "two", 3: "three"}


def _sample_objects(rng: np.random.Generator) -> list[dict]:
    n = int(rng.integers(1, 4))
    cells = rng.permutation(9)[:n]
    return [{"shape": SHAPES[rng.integers(len(SHAPES))],
             "colour": list(COLOURS)[rng.integers(len(COLOURS))],
             "size": list(SIZES)[rng.integers(len(SIZES))],
             "position": int(c)} for c in cells]


def _captions(objects: list[dict], rng: np.random.Generator, max_words: int) -> list[str]:
    chosen = rng.permutation(len(_TEMPLATES))[:CAPTIONS_PER_IMAGE]
    return [normalize_caption(_TEMPLATES[t](objects, objects[rng.integers(len(objects))]), max_words)
            for t in chosen]


def make_shapes_split(n_images: int, size: int, seed: int, max_words: int = 30):
    """Pixels (N, 3, H, W) uint8, captions (5 per image), and caption -> image indices."""
    rng = np.random.default_rng(seed)
    scenes = [_sample_objects(rng) for _ in range(n_images)]
    captions = [c for objects in scenes for c in _captions(objects, rng, max_words)]
    chunk = 1000
    pixels = np.concatenate([_render_chunk(scenes[i:i + chunk], size, rng)
                             for i in range(0, n_images, chunk)] or
                            [np.empty((0, size, size, 3), np.uint8)])
    caption_image = torch.arange(n_images).repeat_interleave(CAPTIONS_PER_IMAGE)
    return torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(), captions, caption_image


def build_shapes(n_train: int, n_val: int, n_test: int, image_size: int = 32, seed: int = 0,
                 max_words: int = 30) -> CaptionDataset:
    """The three splits, each from its own derived seed so sizes can change independently."""
    parts = {}
    for offset, (split, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test))):
        parts[split] = make_shapes_split(n, image_size, seed * 1000 + offset, max_words)
    train_pixels = parts["train"][0].float() / 255.0
    mean = tuple(train_pixels.mean(dim=(0, 2, 3)).tolist())
    std = tuple(train_pixels.std(dim=(0, 2, 3)).tolist())
    splits = {name: CaptionSplit(TensorImages(pix, mean, std), caps, owner,
                                 [f"{name}/{i:05d}" for i in range(len(pix))])
              for name, (pix, caps, owner) in parts.items()}
    return CaptionDataset("shapes", splits["train"], splits["val"], splits["test"], mean, std,
                          image_size)


SHAPES_FORMAT = 1       # bump when the generator changes, so stale caches are not read


@DATASETS.register("shapes")
def cached_shapes(data_cfg: "DataConfig", cache_dir: Path) -> CaptionDataset:
    """The embedded dataset; generated once per (sizes, seed), then read from the cache."""
    spec = {"format": SHAPES_FORMAT, "train": data_cfg.shapes_train, "val": data_cfg.shapes_val,
            "test": data_cfg.shapes_test, "size": data_cfg.image_size, "seed": data_cfg.shapes_seed,
            "max_words": data_cfg.max_words}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / "shapes" / f"{key}.safetensors"
    if path.is_file():
        tensors = read_tensors(path)
        meta = json.loads(bytes(tensors.pop("meta").tolist()).decode())
        mean, std = tuple(meta["mean"]), tuple(meta["std"])
        splits = {name: CaptionSplit(TensorImages(tensors[f"{name}.pixels"], mean, std),
                                     meta["captions"][name], tensors[f"{name}.caption_image"],
                                     [f"{name}/{i:05d}" for i in range(len(tensors[f"{name}.pixels"]))])
                  for name in ("train", "val", "test")}
        return CaptionDataset("shapes", splits["train"], splits["val"], splits["test"], mean, std,
                              data_cfg.image_size)
    log.info("generating the shapes dataset (%d/%d/%d images)", data_cfg.shapes_train,
             data_cfg.shapes_val, data_cfg.shapes_test)
    dataset = build_shapes(data_cfg.shapes_train, data_cfg.shapes_val, data_cfg.shapes_test,
                           data_cfg.image_size, data_cfg.shapes_seed, data_cfg.max_words)
    splits = {"train": dataset.train, "val": dataset.val, "test": dataset.test}
    meta = {"mean": dataset.mean, "std": dataset.std,
            "captions": {name: split.captions for name, split in splits.items()}}
    tensors = {f"{name}.{field}": value for name, split in splits.items()
               for field, value in (("pixels", split.images.pixels),
                                    ("caption_image", split.caption_image))}
    tensors["meta"] = torch.tensor(list(json.dumps(meta).encode()), dtype=torch.uint8)
    write_tensors(path, tensors)
    return dataset
