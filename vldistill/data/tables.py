"""Caption tables with named columns: JSON Lines objects and CSV/TSV files with a header row.

The formats people hold name the same two columns differently -- a folder's own `image` /
`caption`, Hugging Face imagefolder's `file_name` / `text`, open_clip's `filepath` / `title` --
so the readers take the names (`Columns`); `data.image_key` / `data.caption_key` override a
format's defaults. Other columns are ignored. Rows of the same image are grouped.
"""
from __future__ import annotations

import csv
import json
from pathlib import Path
from typing import NamedTuple, TYPE_CHECKING

from ..errors import UserError
from .records import ImageCaptions, group_by_image

if TYPE_CHECKING:
    from ..config import DataConfig


class Columns(NamedTuple):
    """The image column and the caption column (a string, or a list of strings in JSON)."""

    image: str
    caption: str


def columns(data_cfg: "DataConfig", image: str, caption: str) -> Columns:
    """The format's default column names, unless the config names others."""
    return Columns(data_cfg.image_key or image, data_cfg.caption_key or caption)


def _unknown_columns(path: Path, cols: Columns, found: list[str]) -> UserError:
    return UserError(f"{path}: no column {cols.image!r} and {cols.caption!r} (its columns: "
                     f"{', '.join(map(repr, found)) or 'none'}): set data.image_key and data.caption_key "
                     "to the image path and caption columns")


def read_jsonl(path: Path, cols: Columns) -> list[ImageCaptions]:
    """One JSON object per line, holding at least the two columns."""
    pairs = []
    for k, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            entry = json.loads(line)
        except json.JSONDecodeError as err:
            raise UserError(f"{path}:{k}: not a JSON object ({err.msg})") from None
        if not isinstance(entry, dict) or cols.image not in entry or cols.caption not in entry:
            raise UserError(f"{path}:{k}: needs the keys {cols.image!r} and {cols.caption!r} (set "
                            "data.image_key / data.caption_key to the names this file uses)")
        pairs.append((entry[cols.image], entry[cols.caption]))
    return group_by_image(pairs, str(path))


def read_delimited(path: Path, cols: Columns, delimiter: str, headerless: bool = False) -> list[ImageCaptions]:
    """CSV/TSV rows. A header row naming both columns picks them out of any others; without
    one, `headerless` files are read as exactly two columns, image path and caption."""
    with open(path, newline="", encoding="utf-8") as handle:
        rows = [row for row in csv.reader(handle, delimiter=delimiter) if any(c.strip() for c in row)]
    header = [c.strip().lower() for c in rows[0]] if rows else []
    wanted = (cols.image.lower(), cols.caption.lower())         # header names, in any case
    if all(name in header for name in wanted):
        at = (header.index(wanted[0]), header.index(wanted[1]))
        pairs = []
        for k, row in enumerate(rows[1:], start=2):
            if len(row) != len(header):
                raise UserError(f"{path}: row {k} has {len(row)} columns, the header {len(header)} "
                                "(quote fields that contain the delimiter)")
            pairs.append((row[at[0]].strip(), row[at[1]]))
        return group_by_image(pairs, str(path))
    if not headerless:
        raise _unknown_columns(path, cols, [c.strip() for c in rows[0]] if rows else [])
    for k, row in enumerate(rows, start=1):
        if len(row) != 2:
            raise UserError(f"{path}: row {k} has {len(row)} columns; expected 2 (image path, "
                            "caption -- quote captions that contain the delimiter), or a header row "
                            f"naming the columns {cols.image!r} and {cols.caption!r}")
    return group_by_image(((image.strip(), caption) for image, caption in rows), str(path))


__all__ = ["Columns", "columns", "read_delimited", "read_jsonl"]
