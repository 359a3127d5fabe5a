"""open_clip's training CSV: one row per pair, the image path and caption columns named by its
`--csv-img-key` / `--csv-caption-key` (default `filepath` / `title`; here `data.image_key` /
`data.caption_key`), separated by `--csv-separator` (a tab; `data.csv_separator`); any other
columns are ignored.

`data.train_json` is the CSV open_clip reads as `--train-data`; `data.val_json` and
`data.test_json` two more (its `--val-data` and a test file), or neither: then
`data.val_fraction` / `data.test_fraction` of the images are held out. Image paths are absolute
or relative to `data.image_root` (default: the CSV's folder).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from .examples import example_captions, write_images
from .folder import given_splits
from .records import annotation_path, build_caption_dataset, image_root
from .registry import DATASETS
from .splits import CaptionDataset
from .tables import columns, read_delimited

if TYPE_CHECKING:
    from ..config import DataConfig

OPENCLIP_COLUMNS = ("filepath", "title")


def tiny_openclip(folder: Path) -> list[str]:
    """Six images and a tab-separated train.csv naming them by absolute path (`filepath`,
    `title`, and a column open_clip ignores); val and test held out of it."""
    names = write_images(folder / "images", [f"p{i}.png" for i in range(6)])
    rows = [f"{k}\t{folder / 'images' / name}\t{caption}\n"
            for k, (name, caption) in enumerate(zip(names, example_captions(6)))]
    (folder / "train.csv").write_text("uid\tfilepath\ttitle\n" + "".join(rows))
    return ["data.name=openclip", f"data.ann_root={folder}", "data.train_json=train.csv"]


@DATASETS.register("openclip", example=tiny_openclip)
def build_openclip(data_cfg: "DataConfig", cache_dir: Path) -> CaptionDataset:
    """open_clip's CSV (and its held-out CSVs) over the images it names."""
    cols = columns(data_cfg, *OPENCLIP_COLUMNS)
    separator = data_cfg.csv_separator or "\t"
    groups = given_splits(data_cfg, lambda path: read_delimited(path, cols, separator), data_cfg.image_root)
    train_csv = annotation_path(data_cfg, data_cfg.train_json, "train_json", data_cfg.image_root)
    root = image_root(data_cfg) if data_cfg.image_root else train_csv.parent
    return build_caption_dataset(f"openclip:{train_csv.stem}", groups, root, data_cfg, cache_dir)
