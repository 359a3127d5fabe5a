"""From annotation records (image path + its captions) to `CaptionSplit`s of image files.

Every file-backed dataset (Karpathy JSON, COCO captions, a user's folder) parses its
annotations into `ImageCaptions` groups -- one per image, any number of captions -- and hands
them to `build_caption_dataset`, which normalizes captions, drops images without captions,
checks and loads the images (`images.load_images`) and builds the caption <-> image maps.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, TYPE_CHECKING

import torch

from ..errors import MissingFileError, UserError
from .images import CLIP_MEAN, CLIP_STD, load_images
from .splits import CaptionDataset, CaptionSplit, normalize_caption

if TYPE_CHECKING:
    from ..config import DataConfig

log = logging.getLogger(__name__)

SPLITS = ("train", "val", "test")


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


def build_split(groups: list[ImageCaptions], root: Path, data_cfg: "DataConfig", cache_dir: Path,
                split: str) -> CaptionSplit:
    """Normalize captions, drop caption-less and (if allowed) unreadable images, map the rest.
    A caption left blank by normalizing stays, for the data checks to refuse (or drop) by name."""
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
    paths = [Path(image) if Path(image).is_absolute() else root / image for image, _ in with_captions]
    loaded = load_images(paths, data_cfg, cache_dir, split, train=split == "train")
    kept = [with_captions[i] for i in loaded.kept]
    if not kept:
        raise UserError(f"the {split} split has no readable image left")
    captions = [c for _, caps in kept for c in caps]
    caption_image = torch.arange(len(kept)).repeat_interleave(
        torch.tensor([len(caps) for _, caps in kept]))
    return CaptionSplit(loaded.source, captions, caption_image, [image for image, _ in kept],
                        files=[str(paths[i]) for i in loaded.kept])


def build_caption_dataset(name: str, groups: dict[str, list[ImageCaptions]], root: Path, data_cfg: "DataConfig",
                          cache_dir: Path) -> CaptionDataset:
    """The three splits over image files, CLIP-normalized at data.image_size."""
    splits = {split: build_split(groups[split], root, data_cfg, cache_dir, split) for split in SPLITS}
    for split, s in splits.items():
        log.info("%s %s: %d images, %d captions", name, split, s.n_images, len(s.captions))
    return CaptionDataset(name, splits["train"], splits["val"], splits["test"], CLIP_MEAN, CLIP_STD,
                          data_cfg.image_size)
