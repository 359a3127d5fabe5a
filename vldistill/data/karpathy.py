"""Flickr30k and COCO with the Karpathy splits, in the JSON the reference code reads.

train: a list of `{"image": relpath, "caption": str, "image_id": any}`, one entry per caption;
val/test: a list of `{"image": relpath, "caption": [str, ...]}`, any number of captions per
image (COCO test has 5,000 images and 25,010 captions). Image paths are relative to
`data.image_root`; file names (`data.train_json` ...) relative to `data.ann_root`.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from .registry import DATASETS
from .records import SPLITS, ImageCaptions, annotation_path, build_caption_dataset, group_by_image, image_root
from .splits import CaptionDataset

if TYPE_CHECKING:
    from ..config import DataConfig


def read_karpathy_json(path: Path) -> list[ImageCaptions]:
    """One Karpathy-style JSON file -> one group per image (either the train or the eval form)."""
    try:
        entries = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as err:
        raise UserError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(entries, list):
        raise UserError(f"{path}: expected a JSON list of {{\"image\", \"caption\"}} entries")
    pairs = []
    for k, entry in enumerate(entries):
        if not isinstance(entry, dict) or "image" not in entry or "caption" not in entry:
            raise UserError(f"{path}: entry {k} needs the keys \"image\" and \"caption\"")
        pairs.append((entry["image"], entry["caption"]))
    return group_by_image(pairs, str(path))


@DATASETS.register("karpathy")
def build_karpathy(data_cfg: "DataConfig", cache_dir: Path) -> CaptionDataset:
    """The three Karpathy files of data.ann_root over the images of data.image_root."""
    root = image_root(data_cfg)
    files = {split: annotation_path(data_cfg, getattr(data_cfg, f"{split}_json"), f"{split}_json")
             for split in SPLITS}
    groups = {split: read_karpathy_json(path) for split, path in files.items()}
    stem = files["train"].stem.removesuffix("_train").removesuffix("train")
    return build_caption_dataset(stem or "karpathy", groups, root, data_cfg, cache_dir)
