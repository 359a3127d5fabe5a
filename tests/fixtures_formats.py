"""One tiny captioned dataset, written in every format vldistill reads.

`make_tiny` draws small gradient images (PNG and JPEG, encoded once: every format stores the
same bytes, so decoded pixels must agree exactly) with one to three captions each, in three
splits. `write_format(name, tiny, root)` writes it in one format and returns the `data.*`
overrides that read it; `FORMATS` lists them all.
"""
from __future__ import annotations

import csv
import io
import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image

from fixtures_real import caption_pool

SPLITS = ("train", "val", "test")
HF_SPLIT = {"train": "train", "val": "validation", "test": "test"}


@dataclass
class Tiny:
    """split -> [(file name, encoded bytes, captions)], in order."""

    splits: dict[str, list[tuple[str, bytes, list[str]]]]

    def rows(self, split: str) -> list[tuple[str, str]]:
        """(image name, caption) per caption, in order."""
        return [(name, c) for name, _, caps in self.splits[split] for c in caps]


def encode(seed: int, fmt: str, size: tuple[int, int] = (20, 16)) -> bytes:
    rng = np.random.default_rng(seed)
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w] / max(w, h)
    pixels = rng.uniform(40, 215, 3) + xs[..., None] * rng.uniform(-60, 60, 3) + ys[..., None] * rng.uniform(-60, 60, 3)
    out = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format=fmt)
    return out.getvalue()


def make_tiny(counts: dict[str, int] | None = None) -> Tiny:
    counts = counts or {"train": 16, "val": 4, "test": 4}
    pool = iter(caption_pool(3 * sum(counts.values())))
    splits = {}
    for s, split in enumerate(SPLITS):
        items = []
        for i in range(counts[split]):
            ext = "png" if i % 2 else "jpg"
            items.append((f"{split}_{i:03d}.{ext}", encode(100 * s + i, "PNG" if i % 2 else "JPEG"),
                          [next(pool) for _ in range(1 + i % 3)]))
        splits[split] = items
    return Tiny(splits)


def _write_images(tiny: Tiny, folder: Path, splits=SPLITS, sub: dict[str, str] | None = None) -> None:
    for split in splits:
        for name, data, _ in tiny.splits[split]:
            path = folder / (sub or {}).get(split, "") / name
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(data)


def _csv(path: Path, rows: list[list[str]], delimiter: str = ",") -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle, delimiter=delimiter).writerows(rows)


def _jsonl(path: Path, objects: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(o) + "\n" for o in objects), encoding="utf-8")


def _explicit(ext: str) -> list[str]:
    return [f"data.train_json=train.{ext}", f"data.val_json=val.{ext}", f"data.test_json=test.{ext}"]


def write_karpathy(tiny: Tiny, root: Path, splits) -> list[str]:
    _write_images(tiny, root)
    for split in splits:
        if split == "train":       # one entry per caption, as the reference's train files
            entries = [{"image": n, "caption": c, "image_id": n} for n, c in tiny.rows(split)]
        else:
            entries = [{"image": n, "caption": caps} for n, _, caps in tiny.splits[split]]
        (root / f"{split}.json").write_text(json.dumps(entries))
    name = "karpathy" if len(splits) == 3 else "folder"       # karpathy needs all three files
    return [f"data.name={name}", f"data.image_root={root}", f"data.ann_root={root}", *_explicit("json")[:len(splits)]]


def write_jsonl(tiny: Tiny, root: Path, splits) -> list[str]:
    _write_images(tiny, root)
    for split in splits:
        _jsonl(root / f"{split}.jsonl", [{"image": n, "caption": caps} for n, _, caps in tiny.splits[split]])
    return ["data.name=folder", f"data.image_root={root}", *_explicit("jsonl")[:len(splits)]]


def write_csv(tiny: Tiny, root: Path, splits) -> list[str]:
    _write_images(tiny, root)
    for split in splits:
        _csv(root / f"{split}.csv", [[n, c] for n, c in tiny.rows(split)])        # two columns, no header
    return ["data.name=folder", f"data.image_root={root}", *_explicit("csv")[:len(splits)]]


def write_imagefolder(tiny: Tiny, root: Path, splits) -> list[str]:
    """Split folders train/ validation/ test/ with metadata.jsonl (caption lists); one split
    alone as a metadata.csv at the top, one row per caption."""
    sub = {split: HF_SPLIT[split] for split in splits} if len(splits) > 1 else None
    _write_images(tiny, root, splits, sub)
    for split in splits:
        if sub:
            _jsonl(root / sub[split] / "metadata.jsonl", [{"file_name": n, "text": caps, "source": "test"}
                                                          for n, _, caps in tiny.splits[split]])
        else:
            _csv(root / "metadata.csv", [["file_name", "text", "source"]]
                 + [[n, c, "test"] for n, c in tiny.rows(split)])
    return ["data.name=imagefolder", f"data.image_root={root}"]


def _hf_table(tiny: Tiny, split: str):
    import datasets
    features = datasets.Features({"image": datasets.Image(), "caption": datasets.Sequence(datasets.Value("string")),
                                  "sentids": datasets.Sequence(datasets.Value("int32"))})
    items = tiny.splits[split]
    return datasets.Dataset.from_dict({"image": [{"bytes": data, "path": None} for _, data, _ in items],
                                       "caption": [caps for _, _, caps in items],
                                       "sentids": [list(range(len(caps))) for _, _, caps in items]}, features)


def write_hf(tiny: Tiny, root: Path, splits) -> list[str]:
    import datasets
    if len(splits) == 1:
        _hf_table(tiny, "train").save_to_disk(str(root))
    else:
        datasets.DatasetDict({HF_SPLIT[s]: _hf_table(tiny, s) for s in splits}).save_to_disk(str(root))
    return ["data.name=hf", f"data.image_root={root}"]


def write_hf_cache(tiny: Tiny, root: Path, splits) -> list[str]:
    """The cache `datasets.load_dataset` writes (as for a hub dataset), built offline from an
    imagefolder: NAME-SPLIT.arrow files whose image column holds the files' paths."""
    import datasets
    if len(splits) != 3:
        raise ValueError("a one-split imagefolder has a row per caption; hf reads a row per image")
    write_imagefolder(tiny, root / "src", splits)
    datasets.load_dataset("imagefolder", data_dir=str(root / "src"), cache_dir=str(root / "cache"))
    return ["data.name=hf", f"data.image_root={root / 'cache' / 'imagefolder'}", "data.caption_key=text"]


def write_openclip(tiny: Tiny, root: Path, splits) -> list[str]:
    _write_images(tiny, root / "images")
    for split in splits:      # absolute paths, extra columns, tab-separated: as open_clip users write them
        _csv(root / f"{split}.csv", [["uid", "filepath", "title"]]
             + [[str(k), str(root / "images" / n), c] for k, (n, c) in enumerate(tiny.rows(split))], "\t")
    return ["data.name=openclip", f"data.ann_root={root}", *_explicit("csv")[:len(splits)]]


def write_shard(path: Path, items: list[tuple[str, bytes, list[str]]], start: int) -> None:
    """img2dataset's layout: KEY.jpg|png, KEY.txt (one caption) and KEY.json; an image with
    several captions carries them as the .json's caption list, without a .txt."""
    import webdataset as wds
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path), encoder=False) as writer:
        for k, (name, data, caps) in enumerate(items):
            key = f"{start + k:09d}"
            sample = {"__key__": key, name.rsplit(".", 1)[1]: data,
                      "json": json.dumps({"key": key, "status": "success",
                                          "caption": caps[0] if len(caps) == 1 else caps}).encode()}
            if len(caps) == 1:
                sample["txt"] = caps[0].encode()
            writer.write(sample)


def write_webdataset(tiny: Tiny, root: Path, splits) -> list[str]:
    train = tiny.splits["train"]
    half = len(train) // 2
    write_shard(root / "00000.tar", train[:half], 0)
    write_shard(root / "00001.tar", train[half:], half)
    if len(splits) == 1:
        return ["data.name=webdataset", f"data.image_root={root}"]
    write_shard(root / "00002.tar", tiny.splits["val"], 1000)
    write_shard(root / "00003.tar", tiny.splits["test"], 2000)
    return ["data.name=webdataset", f"data.image_root={root}", 'data.train_json="{00000..00001}.tar"',
            "data.val_json=00002.tar", "data.test_json=00003.tar"]


FORMATS = {"karpathy": write_karpathy, "jsonl": write_jsonl, "csv": write_csv, "imagefolder": write_imagefolder,
           "hf": write_hf, "hf-cache": write_hf_cache, "openclip": write_openclip, "webdataset": write_webdataset}


def write_format(name: str, tiny: Tiny, root: Path, splits=SPLITS) -> list[str]:
    """`tiny` in format `name` under `root` (all three splits, or `("train",)` alone)."""
    root.mkdir(parents=True, exist_ok=True)
    return FORMATS[name](tiny, root, tuple(splits))
