"""Tiny on-disk datasets for the real-data tests: generated JPEG/PNG files plus annotation
files in the formats vldistill reads (Karpathy JSON, COCO captions, CSV/JSONL).

Captions come from the real Karpathy files in ../shared/data/karpathy/ when that folder exists,
else from a small list of our own, so the tests run anywhere.
"""
from __future__ import annotations

import json
from pathlib import Path

from vldistill.data.examples import CAPTIONS as _OWN_CAPTIONS
from vldistill.data.examples import write_image  # noqa: F401  (the tests' images)
from vldistill.models.examples import tiny_bert as make_tiny_bert  # noqa: F401

KARPATHY = Path(__file__).resolve().parents[2] / "shared" / "data" / "karpathy"



def caption_pool(n: int) -> list[str]:
    """n real captions (Flickr30k val when present), cycled if needed."""
    path = KARPATHY / "flickr30k_val.json"
    if path.is_file():
        captions = [c for entry in json.loads(path.read_text())[:40] for c in entry["caption"]]
    else:
        captions = _OWN_CAPTIONS
    return [captions[i % len(captions)] for i in range(n)]


def image_names(prefix: str, n: int) -> list[str]:
    """Relative paths, alternating JPEG and PNG."""
    return [f"{prefix}/{prefix}_{i:03d}.{'jpg' if i % 2 == 0 else 'png'}" for i in range(n)]


def write_karpathy(root: Path, caption_counts: dict[str, list[int]]) -> dict[str, list]:
    """Images under root/images/ and root/ann/{split}.json in the Karpathy format.

    caption_counts[split][i] is the number of captions of image i. Train entries are written
    one per caption, interleaved across images (caption k of every image, then k+1, ...), as
    the real files are not grouped either. Returns the entries written per split.
    """
    pool = iter(caption_pool(sum(sum(c) for c in caption_counts.values())))
    written = {}
    for s, (split, counts) in enumerate(caption_counts.items()):
        names = image_names(split, len(counts))
        for i, name in enumerate(names):
            write_image(root / "images" / name, seed=100 * s + i)
        caps = [[next(pool) for _ in range(c)] for c in counts]
        if split == "train":
            entries = [{"image": names[i], "caption": caps[i][k], "image_id": i}
                       for k in range(max(counts)) for i in range(len(names)) if k < counts[i]]
        else:
            entries = [{"image": name, "caption": c} for name, c in zip(names, caps)]
        (root / "ann").mkdir(parents=True, exist_ok=True)
        (root / "ann" / f"{split}.json").write_text(json.dumps(entries))
        written[split] = caps
    return written


def karpathy_overrides(root: Path) -> list[str]:
    return ["data.name=karpathy", f"data.image_root={root / 'images'}", f"data.ann_root={root / 'ann'}",
            "data.train_json=train.json", "data.val_json=val.json", "data.test_json=test.json"]


def truncate(path: Path, keep: float = 0.5) -> Path:
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * keep)])
    return path
