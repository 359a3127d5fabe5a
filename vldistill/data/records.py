"""From annotation records (an image + its captions) to `CaptionSplit`s.

Every real dataset (Karpathy JSON, COCO captions, a user's folder, Hugging Face data, open_clip
CSVs, webdataset shards) parses its annotations into `ImageCaptions` groups -- one per image,
any number of captions -- and hands them to `build_caption_dataset`, which normalizes captions,
drops images without captions, checks and loads the images (`images.load_images`, through the
format's `Locator`) and builds the caption <-> image maps. `three_splits` is the split rule they
share: the split files a user gives, or val/test fractions held out with a seed.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Sequence, TYPE_CHECKING

import torch

from ..errors import MissingFileError, UserError
from .images import CLIP_MEAN, CLIP_STD, load_images
from .splits import CaptionDataset, CaptionSplit, normalize_caption
from .stores import EncodedImages, ImageFiles

if TYPE_CHECKING:
    from ..config import DataConfig

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")

# a format's image names (as its annotations write them) -> their encoded images, in that order
Locator = Callable[[Sequence[str]], EncodedImages]


@dataclass
class ImageCaptions:
    """One image (path as written in the annotations) and its raw captions."""

    image: str
    captions: list[str] = field(default_factory=list)


def group_by_image(pairs: Iterable[tuple[str, str | list[str]]], source: str) -> list[ImageCaptions]:
    """(image, caption or list of captions) records -> one group per image, first-seen order."""
    groups: dict[str, ImageCaptions] = {}
    for k, (image, captions) in enumerate(pairs):
        if not isinstance(image, str) or not image:
            raise UserError(f"{source}: record {k} has no image path")
        captions = [captions] if isinstance(captions, str) else captions
        if not isinstance(captions, list) or not all(isinstance(c, str) for c in captions):
            raise UserError(f"{source}: record {k} ({image}): caption must be a string or a list "
                            "of strings")
        groups.setdefault(image, ImageCaptions(image)).captions.extend(captions)
    return list(groups.values())


def annotation_path(data_cfg: "DataConfig", name: str | None, key: str, base: str | None = None) -> Path:
    """An annotation file from the config: absolute, or relative to data.ann_root (or `base`)."""
    if not name:
        raise UserError(f"data.{key} is not set: give the annotation file of that split "
                        f"(data.name={data_cfg.name})")
    path = Path(name).expanduser()
    root = data_cfg.ann_root or base
    if not path.is_absolute() and root:
        path = Path(root).expanduser() / path
    if not path.is_file():
        raise MissingFileError(f"data.{key}: annotation file {str(path)!r} not found "
                               "(check data.ann_root and the file name)")
    return path


def image_root(data_cfg: "DataConfig") -> Path:
    if not data_cfg.image_root:
        raise UserError(f"data.image_root is not set: give the folder the annotation's image "
                        f"paths are relative to (data.name={data_cfg.name})")
    root = Path(data_cfg.image_root).expanduser()
    if not root.is_dir():
        raise MissingFileError(f"data.image_root {str(root)!r} is not a folder")
    return root


def files_under(root: Path) -> Locator:
    """Image names that are file paths, absolute or relative to `root`."""
    def locate(names: Sequence[str]) -> ImageFiles:
        return ImageFiles([name if Path(name).is_absolute() else str(root / name) for name in names])
    return locate


def hold_out(groups: list[ImageCaptions], fractions: dict[str, float],
             seed: int) -> dict[str, list[ImageCaptions]]:
    """Split images (not captions) at random, at least one image each; files keep their order.

    `fractions` maps each held-out split to its share, drawn in that order ("test" then "val"
    for a user's folder); the rest is "train".
    """
    n = len(groups)
    counts = {split: max(1, round(n * f)) for split, f in fractions.items()}
    if n - sum(counts.values()) < 1:
        raise UserError(f"{n} captioned images are too few to hold out {' and '.join(counts)} images: "
                        "give those splits explicitly (data.val_json and data.test_json, or the dataset's "
                        "own split)")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    parts, start = {}, 0
    for split, count in counts.items():
        parts[split], start = order[start:start + count], start + count
    parts["train"] = order[start:]
    return {split: [groups[i] for i in sorted(idx)] for split, idx in parts.items()}


def three_splits(train: list[ImageCaptions], val: list[ImageCaptions] | None,
                 test: list[ImageCaptions] | None, data_cfg: "DataConfig") -> dict[str, list[ImageCaptions]]:
    """The groups of each split: val and test as given, the missing ones held out of train
    (data.val_fraction / data.test_fraction, a seeded draw: data.split_seed)."""
    fractions = {split: getattr(data_cfg, f"{split}_fraction")
                 for split, given in (("test", test), ("val", val)) if given is None}
    drawn = hold_out(train, fractions, data_cfg.split_seed) if fractions else {"train": train}
    return {"train": drawn["train"], "val": drawn.get("val", val), "test": drawn.get("test", test)}


def build_split(groups: list[ImageCaptions], images: Path | Locator, data_cfg: "DataConfig", cache_dir: Path,
                split: str) -> CaptionSplit:
    """Normalize captions, drop caption-less and (if allowed) unreadable images, map the rest;
    `images`: the folder the groups' paths are relative to, or the format's `Locator`. A caption
    left blank by normalizing stays, for the data checks to refuse (or drop) by name."""
    locate = files_under(images) if isinstance(images, Path) else images
    words = data_cfg.max_words if split == "train" else data_cfg.max_words_eval or data_cfg.max_words
    normalized = [(g.image, [normalize_caption(c, words, data_cfg.caption_cleaner) for c in g.captions])
                  for g in groups]
    with_captions = [(image, caps) for image, caps in normalized if caps]
    if len(with_captions) < len(normalized):
        first = next(image for image, caps in normalized if not caps)
        log.warning("%s split: %d images have no caption and are left out (first: %s)",
                    split, len(normalized) - len(with_captions), first)
    if not with_captions:
        raise UserError(f"the {split} split has no image with a caption")
    store = locate([image for image, _ in with_captions])
    loaded = load_images(store, data_cfg, cache_dir, split, train=split == "train")
    kept = [with_captions[i] for i in loaded.kept]
    if not kept:
        raise UserError(f"the {split} split has no readable image left")
    captions = [c for _, caps in kept for c in caps]
    caption_image = torch.arange(len(kept)).repeat_interleave(
        torch.tensor([len(caps) for _, caps in kept]))
    return CaptionSplit(loaded.source, captions, caption_image, [image for image, _ in kept],
                        files=[store.name(i) for i in loaded.kept] if isinstance(store, ImageFiles) else [])


def build_caption_dataset(name: str, groups: dict[str, list[ImageCaptions]], images: Path | Locator,
                          data_cfg: "DataConfig", cache_dir: Path) -> CaptionDataset:
    """The three splits, CLIP-normalized at data.image_size (`images` as for `build_split`)."""
    splits = {split: build_split(groups[split], images, data_cfg, cache_dir, split) for split in SPLITS}
    for split, s in splits.items():
        log.info("%s %s: %d images, %d captions", name, split, s.n_images, len(s.captions))
    return CaptionDataset(name, splits["train"], splits["val"], splits["test"], CLIP_MEAN, CLIP_STD,
                          data_cfg.image_size)
