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
from ..runtime.io import write_json
from .examples import example_captions, write_images
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


def tiny_karpathy(folder: Path) -> list[str]:
    """Three Karpathy files of 3 / 2 / 2 images with one or two captions each, in `folder`."""
    captions = iter(example_captions(16))
    for s, (split, n) in enumerate({"train": 3, "val": 2, "test": 2}.items()):
        names = write_images(folder / "images", [f"{split}/{i}.{'png' if i % 2 else 'jpg'}" for i in range(n)],
                             first_seed=10 * s)
        groups = [(name, [next(captions) for _ in range(1 + i % 2)]) for i, name in enumerate(names)]
        entries = ([{"image": name, "caption": c, "image_id": i} for i, (name, caps) in enumerate(groups)
                    for c in caps] if split == "train" else
                   [{"image": name, "caption": caps} for name, caps in groups])
        write_json(folder / "ann" / f"{split}.json", entries)
    return ["data.name=karpathy", f"data.image_root={folder / 'images'}", f"data.ann_root={folder / 'ann'}",
            "data.train_json=train.json", "data.val_json=val.json", "data.test_json=test.json"]


@DATASETS.register("karpathy", example=tiny_karpathy)
def build_karpathy(data_cfg: "DataConfig", cache_dir: Path) -> CaptionDataset:
    """The three Karpathy files of data.ann_root over the images of data.image_root."""
    root = image_root(data_cfg)
    files = {split: annotation_path(data_cfg, getattr(data_cfg, f"{split}_json"), f"{split}_json")
             for split in SPLITS}
    groups = {split: read_karpathy_json(path) for split, path in files.items()}
    stem = files["train"].stem.removesuffix("_train").removesuffix("train")
    return build_caption_dataset(stem or "karpathy", groups, root, data_cfg, cache_dir)
