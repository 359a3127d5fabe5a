"""Text-embedding cache: every unique caption is encoded once per text tower, kept on disk.

The reference runs BERT on every batch; here the frozen tower runs once per unique caption
and the matrix is stored under a key of (tower identity, caption list), so a second run --
or the buffer, distill and eval stages of one run -- reads it back in milliseconds.
"""
from __future__ import annotations

import hashlib
import logging
import os
from pathlib import Path

import torch
from safetensors import safe_open

from ..runtime.io import read_tensors, write_tensors
from ..models.text_towers import TextTower

log = logging.getLogger(__name__)


def default_cache_dir() -> Path:
    return Path(os.environ.get("VLDISTILL_CACHE", Path.home() / ".cache" / "vldistill"))


def cache_key(identity: str, unique_captions: list[str]) -> str:
    h = hashlib.sha256(identity.encode())
    for caption in unique_captions:
        h.update(b"\0" + caption.encode())
    return h.hexdigest()[:24]


def cache_path(tower: TextTower, unique_captions: list[str], cache_dir: str | Path | None = None) -> Path:
    """Where the embeddings of these (sorted, unique) captions by this tower are cached."""
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    return directory / "text" / f"{cache_key(tower.identity, unique_captions)}.safetensors"


def cached_dim(tower: TextTower, captions: list[str], cache_dir: str | Path | None = None) -> int | None:
    """The width of these captions' cached embeddings, read from the file's header without loading
    the tower; None when they are not cached yet."""
    path = cache_path(tower, sorted(set(captions)), cache_dir)
    if not path.is_file():
        return None
    with safe_open(str(path), framework="pt") as handle:
        return int(handle.get_slice("embeddings").get_shape()[1])


def embed_captions(tower: TextTower, captions: list[str], cache_dir: str | Path | None = None,
                   batch_size: int = 256) -> torch.Tensor:
    """Embeddings (len(captions), dim), one row per caption entry, from the cache when present."""
    unique = sorted(set(captions))
    path = cache_path(tower, unique, cache_dir)
    if path.is_file():
        table = read_tensors(path)["embeddings"]
    else:
        log.info("encoding %d unique captions with %s (cached at %s)", len(unique),
                 tower.identity, path)
        table = tower.encode(unique, batch_size=batch_size).float()
        write_tensors(path, {"embeddings": table}, metadata={"tower": tower.identity})
    row = {caption: i for i, caption in enumerate(unique)}
    return table[torch.tensor([row[c] for c in captions], dtype=torch.long)]
