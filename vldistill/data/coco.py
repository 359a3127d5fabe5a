"""COCO from its own caption annotations (captions_train2014.json style), read by pycocotools,
for users without the Karpathy files.

Each split names a caption file (`data.train_json`; `val_json` / `test_json` default to the
train file) and the image ids it takes (`data.train_ids` ...: a list, or a file with one id
per line or a JSON list; null takes every image of the file). Images of `captions_X.json` are
looked up in `data.image_root/X/` when that folder exists (COCO's own layout), else directly
in `data.image_root`.
"""
from __future__ import annotations

import contextlib
import io
import json
import logging
from pathlib import Path
from typing import Any, TYPE_CHECKING

from ..errors import UserError
from ..runtime.io import write_json
from .examples import example_captions, write_images
from .registry import DATASETS
from .records import SPLITS, ImageCaptions, annotation_path, build_caption_dataset, image_root
from .splits import CaptionDataset

if TYPE_CHECKING:
    from ..config import DataConfig

log = logging.getLogger(__name__)


def read_ids(value: Any, data_cfg: "DataConfig", key: str) -> list[int] | None:
    """`data.<split>_ids`: None, a list of ids, or a file of ids (one per line, or a JSON list)."""
    if value is None:
        return None
    if isinstance(value, str):
        path = annotation_path(data_cfg, value, key)
        text = path.read_text()
        value = json.loads(text) if text.lstrip().startswith("[") else text.split()
    try:
        return [int(v) for v in value]
    except (TypeError, ValueError):
        raise UserError(f"data.{key}: image ids must be integers (COCO image ids)") from None


def load_coco(path: Path):
    """pycocotools' index of one caption file (its progress prints go to the log)."""
    from pycocotools.coco import COCO
    chatter = io.StringIO()
    try:
        with contextlib.redirect_stdout(chatter):
            coco = COCO(str(path))
    except (json.JSONDecodeError, KeyError, TypeError, AssertionError) as err:
        raise UserError(f"{path}: not a COCO caption annotation file ({type(err).__name__}: {err})") from None
    log.debug("pycocotools: %s", chatter.getvalue().strip())
    if not coco.dataset.get("images"):
        raise UserError(f"{path}: no \"images\" in this COCO annotation file")
    return coco


def _image_folder(ann_file: Path, root: Path) -> str:
    """captions_train2014.json -> 'train2014/' when root has that folder, else ''."""
    stem = ann_file.stem
    sub = stem.split("_", 1)[1] if stem.startswith("captions_") else ""
    return f"{sub}/" if sub and (root / sub).is_dir() else ""


def coco_groups(coco, ids: list[int] | None, folder: str, source: str) -> list[ImageCaptions]:
    """The chosen images of one COCO file, each with all its captions, in id-list order."""
    ids = sorted(coco.imgs) if ids is None else ids
    unknown = [i for i in ids if i not in coco.imgs]
    if unknown:
        raise UserError(f"{source}: {len(unknown)} image ids are not in this file "
                        f"(first: {unknown[:3]})")
    return [ImageCaptions(folder + coco.imgs[i]["file_name"],
                          [a["caption"] for a in coco.imgToAnns.get(i, []) if "caption" in a])
            for i in ids]


def tiny_coco(folder: Path) -> list[str]:
    """A COCO caption file of 5 images in `folder` (ids 1-3 train, 4 val, 5 test)."""
    ids = range(1, 6)
    names = write_images(folder / "coco" / "train2014", [f"COCO_train2014_{i:012d}.jpg" for i in ids])
    captions = iter(example_captions(10))
    write_json(folder / "ann" / "captions_train2014.json", {
        "images": [{"id": i, "file_name": name} for i, name in zip(ids, names)],
        "annotations": [{"id": 10 * i + k, "image_id": i, "caption": next(captions)}
                        for i in ids for k in range(1 + i % 2)]})
    return ["data.name=coco", f"data.image_root={folder / 'coco'}", f"data.ann_root={folder / 'ann'}",
            "data.train_json=captions_train2014.json", "data.train_ids=[1,2,3]", "data.val_ids=[4]",
            "data.test_ids=[5]"]


@DATASETS.register("coco", example=tiny_coco)
def build_coco(data_cfg: "DataConfig", cache_dir: Path) -> CaptionDataset:
    """Three splits of COCO caption files, each restricted to its image ids."""
    root = image_root(data_cfg)
    indices: dict[Path, Any] = {}
    groups, chosen = {}, {}
    for split in SPLITS:
        key = f"{split}_json"
        path = annotation_path(data_cfg, getattr(data_cfg, key) or data_cfg.train_json, key)
        if path not in indices:
            indices[path] = load_coco(path)
        ids = read_ids(getattr(data_cfg, f"{split}_ids"), data_cfg, f"{split}_ids")
        if ids is None and split != "train" and not getattr(data_cfg, key):
            raise UserError(f"coco: the {split} split reads data.train_json, so data.{split}_ids "
                            f"must say which of its images are {split} images (or set data.{key})")
        groups[split] = coco_groups(indices[path], ids, _image_folder(path, root), str(path))
        chosen[split] = {(path, g.image) for g in groups[split]}
    for a, b in (("train", "val"), ("train", "test"), ("val", "test")):
        shared = chosen[a] & chosen[b]
        if shared:
            log.warning("coco: %d images are in both the %s and the %s split", len(shared), a, b)
    return build_caption_dataset("coco", groups, root, data_cfg, cache_dir)
