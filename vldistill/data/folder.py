""""Bring your own": a folder of images and a file of captions.

The caption file may be Karpathy-style JSON (either form), JSON Lines (one
`{"image": ..., "caption": ...}` object per line, caption a string or a list), or CSV/TSV with
two columns, image path and caption (an optional `image,caption` header line); rows of the
same image are grouped. Give `data.train_json` alone and `data.val_fraction` /
`data.test_fraction` of its images are held out (a seeded draw, `data.split_seed`), or give
`data.val_json` and `data.test_json` too. Paths are relative to `data.image_root` (images) and
`data.ann_root` (caption files; default: the image folder).
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import UserError
from .examples import example_captions, write_images
from .registry import DATASETS
from .karpathy import read_karpathy_json
from .records import ImageCaptions, annotation_path, build_caption_dataset, group_by_image, image_root
from .splits import CaptionDataset

if TYPE_CHECKING:
    from ..config import DataConfig


def _read_jsonl(path: Path) -> list[ImageCaptions]:
    pairs = []
    for k, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{k}: not a JSON object ({err.msg})") from None
        if not isinstance(entry, dict) or "image" not in entry or "caption" not in entry:
            raise UserError(f"{path}:{k}: needs the keys \"image\" and \"caption\"")
        pairs.append((entry["image"], entry["caption"]))
    return group_by_image(pairs, str(path))


def _read_csv(path: Path) -> list[ImageCaptions]:
    delimiter = "\t" if path.suffix.lower() == ".tsv" else ","
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle, delimiter=delimiter) if any(c.strip() for c in row)]
    if rows and [c.strip().lower() for c in rows[0]] == ["image", "caption"]:
        rows = rows[1:]
    for k, row in enumerate(rows, start=1):
        if len(row) != 2:
            raise UserError(f"{path}: row {k} has {len(row)} columns; expected 2 (image path, "
                            "caption -- quote captions that contain the delimiter)")
    return group_by_image(((image.strip(), caption) for image, caption in rows), str(path))


_READERS = {".json": read_karpathy_json, ".jsonl": _read_jsonl, ".csv": _read_csv, ".tsv": _read_csv}


def read_caption_file(path: Path) -> list[ImageCaptions]:
    """Any supported caption file -> one group per image."""
    reader = _READERS.get(path.suffix.lower())
    if reader is None:
        raise UserError(f"{path}: unsupported caption file type {path.suffix!r}; use one of "
                        f"{', '.join(sorted(_READERS))}")
    return reader(path)


def hold_out(groups: list[ImageCaptions], val_fraction: float, test_fraction: float,
             seed: int) -> dict[str, list[ImageCaptions]]:
    """Split images (not captions) at random, at least one image each; files keep their order."""
    n = len(groups)
    n_val, n_test = max(1, round(n * val_fraction)), max(1, round(n * test_fraction))
    if n - n_val - n_test < 1:
        raise UserError(f"{n} captioned images are too few to hold out val and test images: "
                        "give data.val_json and data.test_json")
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed)).tolist()
    parts = {"test": order[:n_test], "val": order[n_test:n_test + n_val],
             "train": order[n_test + n_val:]}
    return {split: [groups[i] for i in sorted(idx)] for split, idx in parts.items()}


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
    base = str(root)
    train = read_caption_file(annotation_path(data_cfg, data_cfg.train_json, "train_json", base))
    given = [bool(data_cfg.val_json), bool(data_cfg.test_json)]
    if all(given):
        groups = {"train": train, **{split: read_caption_file(
            annotation_path(data_cfg, getattr(data_cfg, f"{split}_json"), f"{split}_json", base))
            for split in ("val", "test")}}
    elif any(given):
        raise UserError("folder dataset: give both data.val_json and data.test_json, or neither "
                        "(then data.val_fraction / data.test_fraction of train_json are held out)")
    else:
        groups = hold_out(train, data_cfg.val_fraction, data_cfg.test_fraction, data_cfg.split_seed)
    return build_caption_dataset(f"folder:{root.name}", groups, root, data_cfg, cache_dir)
