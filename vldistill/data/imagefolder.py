"""Hugging Face's `imagefolder` layout: images beside a `metadata.jsonl` or `metadata.csv` whose
`file_name` column names each image (relative to the metadata file) and whose text column
(`text` by default; `data.caption_key`) holds its caption, or a list of them in JSON Lines.

`data.image_root` is the dataset's folder: its metadata file is one split, held out into
train/val/test by `data.val_fraction` / `data.test_fraction`; or split folders `train/`,
`validation/` (or valid, val, dev) and `test/` each hold their own metadata (a missing val or
test folder is held out of train). Other columns are ignored, as `datasets` would keep them.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import TYPE_CHECKING

from ..errors import MissingFileError, UserError
from .examples import example_captions, write_images
from .hf import SPLIT_NAMES, named_splits
from .records import ImageCaptions, build_caption_dataset, image_root, three_splits
from .registry import DATASETS
from .splits import CaptionDataset
from .tables import Columns, columns, read_delimited, read_jsonl

if TYPE_CHECKING:
    from ..config import DataConfig

IMAGEFOLDER_COLUMNS = ("file_name", "text")
METADATA = ("metadata.jsonl", "metadata.csv")


def _metadata(folder: Path) -> Path | None:
    found = [folder / name for name in METADATA if (folder / name).is_file()]
    if len(found) > 1:
        raise UserError(f"{folder} holds both {' and '.join(METADATA)}: keep one")
    return found[0] if found else None


def read_metadata(path: Path, root: Path, cols: Columns) -> list[ImageCaptions]:
    """One metadata file -> groups whose image paths are relative to `root`."""
    groups = read_jsonl(path, cols) if path.suffix == ".jsonl" else read_delimited(path, cols, ",")
    prefix = path.parent.relative_to(root)
    return [ImageCaptions(str(prefix / g.image), g.captions) for g in groups]


def tiny_imagefolder(folder: Path) -> list[str]:
    """Six images and their metadata.jsonl (`file_name`, `text`) at the top: one split, val and
    test held out of it."""
    names = write_images(folder, [f"p{i}.png" for i in range(6)])
    (folder / "metadata.jsonl").write_text("".join(json.dumps({"file_name": name, "text": caption}) + "\n"
                                                   for name, caption in zip(names, example_captions(6))))
    return ["data.name=imagefolder", f"data.image_root={folder}"]


@DATASETS.register("imagefolder", example=tiny_imagefolder)
def build_imagefolder(data_cfg: "DataConfig", cache_dir: Path) -> CaptionDataset:
    """An imagefolder dataset: one metadata file, or one per split folder."""
    root = image_root(data_cfg)
    cols = columns(data_cfg, *IMAGEFOLDER_COLUMNS)
    names = [name for names in SPLIT_NAMES.values() for name in names]
    found = {name: meta for name in names if (meta := _metadata(root / name)) is not None}
    top = _metadata(root)
    if top is not None and found:
        raise UserError(f"{root} has a metadata file at its top and in split folders "
                        f"({', '.join(found)}): keep one layout")
    if top is not None:
        found = {"train": top}
    if not found:
        raise MissingFileError(f"no {' or '.join(METADATA)} in data.image_root {str(root)!r} or in its "
                               f"split folders ({', '.join(names)})")
    picked = named_splits(found, str(root))
    groups = {split: read_metadata(path, root, cols) if path is not None else None
              for split, path in picked.items()}
    splits = three_splits(groups["train"], groups["val"], groups["test"], data_cfg)
    return build_caption_dataset(f"imagefolder:{root.name}", splits, root, data_cfg, cache_dir)
