"""Tiny on-disk datasets for the real-data tests: generated JPEG/PNG files plus annotation
files in the formats vldistill reads (Karpathy JSON, COCO captions, CSV/JSONL).

Captions come from the real Karpathy files in ../shared/data/karpathy/ when that folder exists,
else from a small list of our own, so the tests run anywhere.
"""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from PIL import Image

KARPATHY = Path(__file__).resolve().parents[2] / "shared" / "data" / "karpathy"

_OWN_CAPTIONS = [
    "A dog runs across a grassy field.", "Two children play with a red ball.",
    "A man rides a bicycle down the street.", "A woman reads a book on a bench.",
    "A group of people stand near a fountain.", "A cat sleeps on a sunny windowsill.",
    "A boy jumps into a swimming pool.", "Cars wait at a traffic light in the rain.",
]


def caption_pool(n: int) -> list[str]:
    """n real captions (Flickr30k val when present), cycled if needed."""
    path = KARPATHY / "flickr30k_val.json"
    if path.is_file():
        captions = [c for entry in json.loads(path.read_text())[:40] for c in entry["caption"]]
    else:
        captions = _OWN_CAPTIONS
    return [captions[i % len(captions)] for i in range(n)]


def write_image(path: Path, seed: int, size: tuple[int, int] = (40, 32)) -> Path:
    """A small smooth colour image; .png or .jpg by the path's suffix."""
    rng = np.random.default_rng(seed)
    w, h = size
    ys, xs = np.mgrid[0:h, 0:w] / max(w, h)
    base = rng.uniform(40, 215, size=3)
    tilt = rng.uniform(-60, 60, size=(2, 3))
    pixels = base + xs[..., None] * tilt[0] + ys[..., None] * tilt[1]
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path)
    return path


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


def make_tiny_bert(folder: Path, captions: list[str], kind: str = "bert") -> Path:
    """A randomly initialized BERT (or DistilBERT) with a vocabulary built from `captions`,
    saved with save_pretrained() as a real checkpoint folder would be."""
    import re

    from transformers import (BertConfig, BertModel, BertTokenizerFast, DistilBertConfig,
                              DistilBertModel)
    words = sorted({w for c in captions for w in re.findall(r"[a-z0-9]+", c.lower())})
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words]))
    tokenizer = BertTokenizerFast(str(folder / "vocab.txt"))   # positional: vocab_file (v4), vocab (v5)
    if tokenizer.unk_token_id in tokenizer(words[0])["input_ids"]:
        raise AssertionError("the tiny BERT's tokenizer ignored its vocabulary (a transformers API change?)")
    size = dict(vocab_size=len(words) + 5, max_position_embeddings=64)
    if kind == "bert":
        model = BertModel(BertConfig(hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, **size))
    else:
        model = DistilBertModel(DistilBertConfig(dim=32, n_layers=2, n_heads=2, hidden_dim=64, **size))
    model.save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return folder
