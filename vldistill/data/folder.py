""""Bring your own": a folder of images and a file of captions.

The caption file may be Karpathy-style JSON (either form), JSON Lines (one
`{"image": ..., "caption": ...}` object per line, caption a string or a list), or CSV/TSV:
two columns, image path and caption, or a header row naming the `image` and `caption` columns
among others (`data.image_key` / `data.caption_key` name other columns, in JSON Lines too);
rows of the same image are grouped. Give `data.train_json` alone and `data.val_fraction` /
`data.test_fraction` of its images are held out (a seeded draw, `data.split_seed`), or give
`data.val_json` and `data.test_json` too. Paths are relative to `data.image_root` (images) and
`data.ann_root` (caption files; default: the image folder).
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import UserError
from .examples import example_captions, write_images
from .karpathy import read_karpathy_json
from .records import ImageCaptions, annotation_path, build_caption_dataset, image_root, three_splits
from .registry import DATASETS
from .splits import CaptionDataset
from .tables import Columns, columns, read_delimited, read_jsonl

if TYPE_CHECKING:
    from ..config import DataConfig

FOLDER_COLUMNS = ("image", "caption")


def read_caption_file(path: Path, cols: Columns = Columns(*FOLDER_COLUMNS)) -> list[ImageCaptions]:
    """Any supported caption file -> one group per image."""
    suffix = path.suffix.lower()
    if suffix == ".json":
        return read_karpathy_json(path)
    if suffix == ".jsonl":
        return read_jsonl(path, cols)
    if suffix in (".csv", ".tsv"):
        return read_delimited(path, cols, "\t" if suffix == ".tsv" else ",", headerless=True)
    raise UserError(f"{path}: unsupported caption file type {path.suffix!r}; use one of "
                    ".csv, .json, .jsonl, .tsv")


def given_splits(data_cfg: "DataConfig", read, base: str | None = None) -> dict[str, list[ImageCaptions]]:
    """data.train_json, and data.val_json + data.test_json or neither (then held out), each
    read by `read(path)`."""
    def load(split: str) -> list[ImageCaptions]:
        key = f"{split}_json"
        return read(annotation_path(data_cfg, getattr(data_cfg, key), key, base))
    given = [bool(data_cfg.val_json), bool(data_cfg.test_json)]
    if any(given) and not all(given):
        raise UserError(f"{data_cfg.name} dataset: give both data.val_json and data.test_json, or "
                        "neither (then data.val_fraction / data.test_fraction of train_json are held out)")
    train = load("train")
    return three_splits(train, load("val") if all(given) else None, load("test") if all(given) else None,
                        data_cfg)


def tiny_folder(folder: Path) -> list[str]:
    """Six images and one JSON Lines caption file in `folder` (val and test held out of it)."""
    names = write_images(folder, [f"p{i}.png" for i in range(6)])
    (folder / "c.jsonl").write_text("".join(json.dumps({"image": name, "caption": caption}) + "\n"
                                            for name, caption in zip(names, example_captions(6))))
    return ["data.name=folder", f"data.image_root={folder}", "data.train_json=c.jsonl"]


@DATASETS.register("folder", example=tiny_folder)
def build_folder(data_cfg: "DataConfig", cache_dir: Path) -> CaptionDataset:
    """A user's captioned images: one caption file (held-out val/test) or one per split."""
    root = image_root(data_cfg)
    cols = columns(data_cfg, *FOLDER_COLUMNS)
    groups = given_splits(data_cfg, lambda path: read_caption_file(path, cols), str(root))
    return build_caption_dataset(f"folder:{root.name}", groups, root, data_cfg, cache_dir)
