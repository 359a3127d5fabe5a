"""The embedded datasets: procedural images of coloured shapes with captions.

Generated from a seed in seconds, nothing downloaded. Each image holds 1-3 objects (shape,
colour, size, position on a 3x3 grid) on a varied background (`vldistill.data.scenes`). Two
caption schemes over the same scenes and pixels (same seed and sizes, same images):

- `shapes`: five captions per image from templates that mention different subsets of the
  attributes ("there is a red circle"), so that different images share a caption's meaning --
  the false negatives that similarity mining is meant to find.
- `shapes-specific`: five paraphrases per image that each name every object's size, colour,
  shape and position and the background, so a caption is true of its image and hardly any other.

Both know their truth: every caption keeps its template and the object it was written for,
and its claim is evaluated against every scene (`CaptionSplit.truth`).
"""
from __future__ import annotations

import functools
import hashlib
import json
import logging
from pathlib import Path
from typing import TYPE_CHECKING, Callable, NamedTuple

import numpy as np
import torch

from ..runtime.io import read_tensors, write_tensors
from .registry import DATASETS
from .scenes import (ATTRIBUTES, BACKGROUNDS, COLOURS, POSITIONS, SHAPES, ClaimKind, Scenes,
                     render, sample_objects, truth_matrix)
from .splits import CaptionDataset, CaptionSplit, TensorImages, normalize_caption

if TYPE_CHECKING:
    from ..config import DataConfig

log = logging.getLogger(__name__)

CAPTIONS_PER_IMAGE = 5
_NUMBERS = {1: "one", 2: "two", 3: "three"}


class Template(NamedTuple):
    text: Callable[[list[dict], dict, str], str]     # (objects, the chosen one, background) -> caption
    kind: ClaimKind                                  # what the caption claims


def _describe(o: dict) -> str:
    return f"{o['colour']} {o['shape']}"


def _a(word: str) -> str:
    return ("an " if word[0] in "aeiou" else "a ") + word


def _listing(phrases: list[str]) -> str:
    return phrases[0] if len(phrases) == 1 else ", ".join(phrases[:-1]) + " and " + phrases[-1]


def _full(o: dict) -> str:
    return f"{_a(o['size'])} {_describe(o)} {POSITIONS[o['position']]}"


def _reading_order(objects: list[dict]) -> list[dict]:
    return sorted(objects, key=lambda o: o["position"])


_GENERIC = (
    Template(lambda objs, o, bg: _full(o), ClaimKind(ATTRIBUTES)),
    Template(lambda objs, o, bg: f"there is {_a(_describe(o))}", ClaimKind(("colour", "shape"))),
    Template(lambda objs, o, bg: f"a {o['shape']} {POSITIONS[o['position']]}", ClaimKind(("shape", "position"))),
    Template(lambda objs, o, bg: f"something {o['colour']} {POSITIONS[o['position']]}",
             ClaimKind(("colour", "position"))),
    Template(lambda objs, o, bg: f"a {o['size']} {o['shape']}", ClaimKind(("size", "shape"))),
    Template(lambda objs, o, bg: f"a picture with {_a(o['colour'])} shape", ClaimKind(("colour",))),
    Template(lambda objs, o, bg: (f"{_NUMBERS[len(objs)]} shapes: " + " and ".join(_describe(x) for x in objs)
                                  if len(objs) > 1 else f"a single {_describe(o)}"),
             ClaimKind(("colour", "shape"), every_object=True, exact=True)),
    # "a red circle and a blue star": these objects are there (others may be too)
    Template(lambda objs, o, bg: " and ".join(_a(_describe(x)) for x in objs),
             ClaimKind(("colour", "shape"), every_object=True)),
)
_EVERYTHING = ClaimKind(ATTRIBUTES, every_object=True, exact=True, background=True)
_SPECIFIC = (       # at most 30 words for three objects: max_words=30 cuts none
    Template(lambda objs, o, bg: f"{_listing([_full(x) for x in objs])} on a {bg} background", _EVERYTHING),
    Template(lambda objs, o, bg: f"a {bg} background with {_listing([_full(x) for x in objs[::-1]])}",
             _EVERYTHING),
    Template(lambda objs, o, bg: (f"{_NUMBERS[len(objs)]} shape{'s' if len(objs) > 1 else ''} on {bg}: "
                                  + _listing([_full(x) for x in _reading_order(objs)])), _EVERYTHING),
    Template(lambda objs, o, bg: _listing([f"{POSITIONS[x['position']]} {_a(x['size'])} {_describe(x)}"
                                           for x in objs]) + f", the background is {bg}", _EVERYTHING),
    Template(lambda objs, o, bg: _listing([f"{_a(_describe(x))}, {x['size']}, {POSITIONS[x['position']]}"
                                           for x in _reading_order(objs)[::-1]]) + f" on {bg}", _EVERYTHING),
)
SCHEMES = {"shapes": _GENERIC, "shapes-specific": _SPECIFIC}     # dataset name -> its caption templates


def _draw_generic(objects: list[dict], rng: np.random.Generator) -> list[tuple[int, int]]:
    """(template, object) of each of an image's `shapes` captions."""
    chosen = rng.permutation(len(_GENERIC))[:CAPTIONS_PER_IMAGE]
    return [(int(t), int(rng.integers(len(objects)))) for t in chosen]


class ShapesSplit(NamedTuple):
    pixels: torch.Tensor            # (N, 3, H, W) uint8
    captions: list[str]
    caption_image: torch.Tensor     # (N * CAPTIONS_PER_IMAGE,) the image of each caption
    scenes: Scenes
    picks: np.ndarray               # (n_captions, 2): each caption's template and the object it names
    complete: bool                  # no caption was cut to max_words (else its truth is unknown)


def make_shapes_split(n_images: int, size: int, seed: int, max_words: int = 30,
                      scheme: str = "shapes") -> ShapesSplit:
    """Pixels, captions (5 per image, of the caption `scheme`), caption -> image indices, and
    what the truth needs. The pixels do not depend on the scheme."""
    rng = np.random.default_rng(seed)
    drawn = [sample_objects(rng) for _ in range(n_images)]
    generic = [_draw_generic(objects, rng) for objects in drawn]    # drawn always: rendering's draws follow
    pixels, backgrounds = render(drawn, size, rng)
    templates = SCHEMES[scheme]
    picks = ([pair for image_picks in generic for pair in image_picks] if templates is _GENERIC
             else [(t, 0) for t in range(len(templates))] * n_images)      # every paraphrase once
    caption_image = torch.arange(n_images).repeat_interleave(CAPTIONS_PER_IMAGE)
    texts = [templates[t].text(drawn[i], drawn[i][k], BACKGROUNDS[backgrounds[i]])
             for i, (t, k) in zip(caption_image.tolist(), picks)]
    complete = all(len(normalize_caption(text, len(text)).split()) <= max_words for text in texts)
    return ShapesSplit(torch.from_numpy(pixels).permute(0, 3, 1, 2).contiguous(),
                       [normalize_caption(text, max_words) for text in texts], caption_image,
                       Scenes.of(drawn, backgrounds), np.asarray(picks, np.int64).reshape(-1, 2), complete)


def _truth(scenes: Scenes, picks: np.ndarray, caption_image: torch.Tensor, scheme: str) -> torch.Tensor:
    templates = SCHEMES[scheme]
    return truth_matrix(scenes, [templates[t].kind.claim(scenes, i, k)
                                 for i, (t, k) in zip(caption_image.tolist(), picks.tolist())])


def _dataset(scheme: str, parts: dict[str, ShapesSplit], mean: tuple, std: tuple, size: int) -> CaptionDataset:
    splits = {name: CaptionSplit(TensorImages(p.pixels, mean, std), p.captions, p.caption_image,
                                 [f"{name}/{i:05d}" for i in range(len(p.pixels))],
                                 functools.partial(_truth, p.scenes, p.picks, p.caption_image, scheme)
                                 if p.complete else None)
              for name, p in parts.items()}
    return CaptionDataset(scheme, splits["train"], splits["val"], splits["test"], mean, std, size)


def _generate(n_train: int, n_val: int, n_test: int, image_size: int, seed: int, max_words: int,
              scheme: str) -> tuple[dict[str, ShapesSplit], tuple, tuple]:
    """The three splits, each from its own derived seed so sizes can change independently, and
    the train images' channel mean and std."""
    parts = {split: make_shapes_split(n, image_size, seed * 1000 + offset, max_words, scheme)
             for offset, (split, n) in enumerate((("train", n_train), ("val", n_val), ("test", n_test)))}
    train_pixels = parts["train"].pixels.float() / 255.0
    return (parts, tuple(train_pixels.mean(dim=(0, 2, 3)).tolist()),
            tuple(train_pixels.std(dim=(0, 2, 3)).tolist()))


def build_shapes(n_train: int, n_val: int, n_test: int, image_size: int = 32, seed: int = 0,
                 max_words: int = 30, scheme: str = "shapes") -> CaptionDataset:
    """The embedded dataset `scheme` (a key of SCHEMES, which names its captions), generated."""
    return _dataset(scheme, *_generate(n_train, n_val, n_test, image_size, seed, max_words, scheme),
                    image_size)


SHAPES_FORMAT = 2       # bump when the generator or what is stored changes, so stale caches are not read


def cached_shapes(data_cfg: "DataConfig", cache_dir: Path, scheme: str = "shapes") -> CaptionDataset:
    """An embedded dataset; generated once per (scheme, sizes, seed), then read from the cache."""
    spec = {"format": SHAPES_FORMAT, "train": data_cfg.shapes_train, "val": data_cfg.shapes_val,
            "test": data_cfg.shapes_test, "size": data_cfg.image_size, "seed": data_cfg.shapes_seed,
            "max_words": data_cfg.max_words, "captions": scheme}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / "shapes" / f"{key}.safetensors"
    if path.is_file():
        tensors = read_tensors(path)
        meta = json.loads(bytes(tensors.pop("meta").tolist()).decode())
        parts = {name: ShapesSplit(tensors[f"{name}.pixels"], meta["captions"][name],
                                   tensors[f"{name}.caption_image"],
                                   Scenes(tensors[f"{name}.objects"].long().numpy(),
                                          tensors[f"{name}.backgrounds"].long().numpy()),
                                   tensors[f"{name}.picks"].long().numpy(), meta["complete"][name])
                 for name in ("train", "val", "test")}
        return _dataset(scheme, parts, tuple(meta["mean"]), tuple(meta["std"]), data_cfg.image_size)
    log.info("generating the %s dataset (%d/%d/%d images)", scheme, data_cfg.shapes_train,
             data_cfg.shapes_val, data_cfg.shapes_test)
    parts, mean, std = _generate(data_cfg.shapes_train, data_cfg.shapes_val, data_cfg.shapes_test,
                                 data_cfg.image_size, data_cfg.shapes_seed, data_cfg.max_words, scheme)
    meta = {"mean": mean, "std": std, "captions": {name: p.captions for name, p in parts.items()},
            "complete": {name: p.complete for name, p in parts.items()}}
    tensors = {f"{name}.{field}": torch.as_tensor(value)
               for name, p in parts.items()
               for field, value in (("pixels", p.pixels), ("caption_image", p.caption_image),
                                    ("objects", p.scenes.objects), ("backgrounds", p.scenes.backgrounds),
                                    ("picks", p.picks))}
    tensors["meta"] = torch.tensor(list(json.dumps(meta).encode()), dtype=torch.uint8)
    write_tensors(path, tensors)
    return _dataset(scheme, parts, mean, std, data_cfg.image_size)


def tiny_shapes(folder: Path, scheme: str = "shapes") -> list[str]:
    """A few images of an embedded dataset (nothing is written)."""
    return [f"data.name={scheme}", "data.shapes_train=6", "data.shapes_val=2", "data.shapes_test=2"]


for _name in SCHEMES:
    DATASETS.add(_name, functools.partial(cached_shapes, scheme=_name),
                 example=functools.partial(tiny_shapes, scheme=_name))
