"""A Hugging Face `datasets` dataset on disk: a `save_to_disk` folder (a DatasetDict or one
Dataset), or the local cache `load_dataset` wrote for a hub dataset (its `NAME-SPLIT*.arrow`
files), read memory-mapped through `datasets` -- nothing is downloaded.

The image column (`data.image_key`, default `image`) is an `Image` feature (encoded bytes, or a
path), raw bytes, or a path; the caption column (`data.caption_key`, default `caption`) a
string or a list of strings. Splits are the dataset's own: `train`, `validation` (or valid,
val, dev) and `test`; a missing val or test split is held out of train (`data.val_fraction`,
`data.test_fraction`, `data.split_seed`). Images stay in the dataset's Arrow files: rows are
read (and decoded) when a batch asks for them, or once into the decoded-pixel cache.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO, Sequence, TYPE_CHECKING, TypeVar

from ..errors import MissingFileError, UserError
from .examples import example_captions, write_images
from .records import ImageCaptions, build_caption_dataset, group_by_image, three_splits
from .registry import DATASETS
from .splits import CaptionDataset
from .stores import BadImageError, bad_image_message, check_image, named_bytes
from .tables import columns

if TYPE_CHECKING:
    from ..config import DataConfig

T = TypeVar("T")
SPLIT_NAMES = {"train": ("train",), "val": ("validation", "valid", "val", "dev"), "test": ("test", "testing")}
HF_COLUMNS = ("image", "caption")
_CACHED_ARROW = re.compile(r"-(?P<split>[A-Za-z]+)(?:-\d{5}-of-\d{5})?\.arrow$")


def named_splits(found: dict[str, T], source: str) -> dict[str, T | None]:
    """Hugging Face's split names -> ours (train required; val and test None when absent)."""
    picked = {ours: next((found[n] for n in names if n in found), None) for ours, names in SPLIT_NAMES.items()}
    if picked["train"] is None:
        raise UserError(f"{source}: no train split (found: {', '.join(sorted(found)) or 'none'})")
    return picked


def open_saved(folder: Path) -> dict[str, Any]:
    """The splits of a `save_to_disk` folder or of a `load_dataset` cache folder, by name."""
    import datasets
    if (folder / "dataset_dict.json").is_file() or (folder / "state.json").is_file():
        loaded = datasets.load_from_disk(str(folder))
        return dict(loaded) if isinstance(loaded, datasets.DatasetDict) else {"train": loaded}
    arrows = [p for p in sorted(folder.rglob("*.arrow")) if _CACHED_ARROW.search(p.name)]
    if len({p.parent for p in arrows}) > 1:
        raise UserError(f"data.image_root {str(folder)!r} holds several cached versions of a dataset "
                        f"(in {', '.join(sorted({str(p.parent) for p in arrows})[:3])}): point it at one")
    by_split: dict[str, list[Path]] = {}
    for path in arrows:
        by_split.setdefault(_CACHED_ARROW.search(path.name)["split"], []).append(path)
    if not by_split:
        raise MissingFileError(f"data.image_root {str(folder)!r} is neither a save_to_disk folder "
                               "(dataset_dict.json or state.json) nor a datasets cache (NAME-SPLIT.arrow)")
    return {split: datasets.concatenate_datasets([datasets.Dataset.from_file(str(p)) for p in paths])
            for split, paths in by_split.items()}


@dataclass
class DatasetImages:
    """Encoded images in one column of a `datasets.Dataset`, by row (picklable: the Arrow
    files are memory-mapped again in each DataLoader worker, not copied)."""

    table: Any                  # datasets.Dataset: just the image column, not decoded
    column: str
    rows: list[int]
    label: str                  # "FOLDER[SPLIT]", for messages
    files_stamp: str            # the Arrow files' sizes and mtimes
    base: str                   # folder that relative string paths are under

    def __len__(self) -> int:
        return len(self.rows)

    def name(self, i: int) -> str:
        return f"{self.label}[{self.rows[i]}]"

    def _value(self, i: int) -> bytes | str | None:
        """Row i's encoded image, or the path of its file."""
        value = self.table[self.rows[i]][self.column]
        if isinstance(value, dict):                     # an Image feature: bytes, or a path
            value = value.get("bytes") or value.get("path")
        if isinstance(value, (bytes, bytearray)):
            return bytes(value)
        if isinstance(value, str) and value:
            return value if os.path.isabs(value) else os.path.join(self.base, value)
        return None

    def open(self, i: int) -> str | BinaryIO:
        value = self._value(i)
        if value is None:
            raise BadImageError(bad_image_message(self.name(i), "has no image in its row"))
        return value if isinstance(value, str) else named_bytes(value, self.name(i))

    def stamp(self, i: int) -> str | None:
        value = self._value(i)
        if not isinstance(value, str):
            return self.files_stamp
        try:                                            # a file the row points to: its own stamp
            stat = os.stat(value)
        except OSError:
            return None
        return f"{self.files_stamp}:{stat.st_size}:{stat.st_mtime_ns}"

    def check(self, i: int) -> str | None:
        try:
            return check_image(self.open(i))
        except BadImageError:
            return "has no image in its row"

    def select(self, positions: Sequence[int]) -> "DatasetImages":
        return DatasetImages(self.table, self.column, [self.rows[i] for i in positions], self.label,
                             self.files_stamp, self.base)


def _split_groups(table: Any, split: str, caption_key: str, source: str) -> list[ImageCaptions]:
    """One group per row, named `SPLIT/ROW` (rows are images, their captions one or a list)."""
    captions = list(table[caption_key])
    return group_by_image(((f"{split}/{row}", caps) for row, caps in enumerate(captions)), source)


def _stamp(table: Any) -> str:
    stats = [os.stat(f["filename"]) for f in table.cache_files]
    return ";".join(f"{s.st_size}:{s.st_mtime_ns}" for s in stats) or str(len(table))


def tiny_hf(folder: Path) -> list[str]:
    """Six images with a list of captions each, one table written by `save_to_disk` (val and
    test held out of it)."""
    import datasets
    names = write_images(folder / "images", [f"p{i}.png" for i in range(6)])
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Sequence(datasets.Value("string"))})
    table = datasets.Dataset.from_dict({"image": [str(folder / "images" / name) for name in names],
                                        "caption": [[caption] for caption in example_captions(6)]}, features)
    table.save_to_disk(str(folder / "saved"))
    return ["data.name=hf", f"data.image_root={folder / 'saved'}"]


@DATASETS.register("hf", example=tiny_hf)
def build_hf(data_cfg: "DataConfig", cache_dir: Path) -> CaptionDataset:
    """The train/validation/test splits of a dataset saved by `datasets` (image + caption columns)."""
    import datasets
    if not data_cfg.image_root:
        raise UserError("data.image_root is not set: give the folder save_to_disk wrote (or the "
                        "dataset's folder in the datasets cache)")
    folder = Path(data_cfg.image_root).expanduser()
    if not folder.is_dir():
        raise MissingFileError(f"data.image_root {str(folder)!r} is not a folder")
    cols = columns(data_cfg, *HF_COLUMNS)
    found = named_splits(open_saved(folder), str(folder))
    tables, stamps = {}, {}
    for ours, table in found.items():
        if table is None:
            continue
        missing = [c for c in cols if c not in table.column_names]
        if missing:
            raise UserError(f"{folder} [{ours}]: no column {missing[0]!r} (its columns: "
                            f"{', '.join(table.column_names)}): set data.image_key and data.caption_key")
        images = table.select_columns([cols.image])
        if isinstance(images.features[cols.image], datasets.Image):
            images = images.cast_column(cols.image, datasets.Image(decode=False))
        tables[ours], stamps[ours] = images, _stamp(table)
    groups = {ours: _split_groups(table, ours, cols.caption, f"{folder} [{ours}]") if table is not None else None
              for ours, table in found.items()}
    splits = three_splits(groups["train"], groups["val"], groups["test"], data_cfg)

    def locate(names: Sequence[str]) -> DatasetImages:
        split = names[0].split("/", 1)[0] if names else "train"      # held-out rows come from train
        rows = [int(n.rsplit("/", 1)[1]) for n in names]
        return DatasetImages(tables[split], cols.image, rows, f"{folder.name}[{split}]", stamps[split],
                             str(folder))
    return build_caption_dataset(f"hf:{folder.name}", splits, locate, data_cfg, cache_dir)
