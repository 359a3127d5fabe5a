"""Checks every dataset passes when it is built, whatever its format.

`build_dataset` runs `check_dataset` on the three assembled `CaptionSplit`s, so a format added
later (any builder registered in `DATASETS`) is checked without doing anything. Refused, with
the first offending entries and their count:

- a caption that is not text, or blank (empty once normalized);
- an empty split (no image, or no caption);
- a caption repeated within one image (it would count twice in training and in text->image
  recall);
- an image listed in two splits, by its file path or by its content (the bytes of its file, or
  its pixels when it has no file): a test image seen in training inflates recall.

`data.accept` passes a check on purpose (blank captions are then dropped, duplicates and
overlaps kept); what was accepted is kept on the dataset (`CaptionDataset.checks`) and goes
into results.json and every set card. Non-text captions and empty splits are never accepted.

Content hashes of image files are SHA-256 of their bytes, computed once per file version: they
are cached under cache_dir keyed by the files' paths, sizes and modification times.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, replace
from itertools import combinations
from pathlib import Path
from typing import Sequence

import torch

from ..config import ACCEPTABLE_DATA_CHECKS as ACCEPTABLE
from ..errors import ProblemsError
from ..runtime.io import write_text
from .splits import CaptionDataset, CaptionSplit

log = logging.getLogger(__name__)

SPLIT_NAMES = ("train", "val", "test")
SHOWN = 3                       # offending entries a refusal names
DIGEST_FORMAT = 1


class DataCheckError(ProblemsError):
    """The dataset failed checks; one line per failed check, each naming data.accept or the fix."""


@dataclass
class Finding:
    """One failed check: how many entries, and the first few of them."""

    check: str                  # blank_captions | non_text_captions | duplicate_captions | split_overlap | empty_split
    split: str
    count: int
    examples: list[str]

    def line(self, accept_hint: bool) -> str:
        what = {"blank_captions": "blank captions", "non_text_captions": "captions that are not text",
                "duplicate_captions": "images with a caption repeated", "empty_split": "empty split",
                "split_overlap": "images also in an earlier split"}[self.check]
        hint = (f" (fix the data, or data.accept=[{self.check}] to "
                f"{'drop them' if self.check == 'blank_captions' else 'keep them'} on purpose)"
                if accept_hint else "")
        return f"{self.split}: {self.count} {what}, first: {'; '.join(self.examples)}{hint}"

    def record(self) -> dict:
        return {"split": self.split, "count": self.count, "examples": self.examples}


def _name(split: CaptionSplit, i: int) -> str:
    return split.image_names[i] if i < len(split.image_names) else f"image {i}"


def _caption_findings(name: str, split: CaptionSplit) -> list[Finding]:
    """Non-text, blank and repeated captions of one split; an empty split."""
    if split.n_images == 0 or not split.captions:
        return [Finding("empty_split", name, 1, [f"{split.n_images} images, {len(split.captions)} captions"])]
    owners = split.caption_image.tolist()
    found = []
    for check, bad in (("non_text_captions", lambda c: not isinstance(c, str)),
                       ("blank_captions", lambda c: isinstance(c, str) and not c.strip())):
        hits = [j for j, c in enumerate(split.captions) if bad(c)]
        if hits:
            found.append(Finding(check, name, len(hits),
                                 [f"{_name(split, owners[j])} caption {split.captions[j]!r}" for j in hits[:SHOWN]]))
    repeated: list[str] = []
    count = 0
    for image, caption_ids in enumerate(split.img2txt):
        counts = Counter(split.captions[j] for j in caption_ids if isinstance(split.captions[j], str))
        twice = [(c, k) for c, k in counts.items() if k > 1 and c.strip()]
        if twice:
            count += 1
            if len(repeated) < SHOWN:
                repeated.append(f"{_name(split, image)} {twice[0][0]!r} x{twice[0][1]}")
    if count:
        found.append(Finding("duplicate_captions", name, count, repeated))
    return found


def file_digests(paths: Sequence[str], cache_dir: Path | None = None, workers: int = 8) -> list[str]:
    """SHA-256 of each file's bytes (hex, 32 characters), read once per file version: cached under
    cache_dir/digests/, keyed by the paths, sizes and modification times."""
    stats = []
    for path in paths:
        stat = os.stat(path)
        stats.append((stat.st_size, stat.st_mtime_ns))
    key = hashlib.sha256(json.dumps([DIGEST_FORMAT, list(paths), stats]).encode()).hexdigest()[:24]
    cached = cache_dir / "digests" / f"{key}.json" if cache_dir is not None else None
    if cached is not None and cached.is_file():
        return json.loads(cached.read_text())

    def digest(path: str) -> str:
        h = hashlib.sha256()
        with open(path, "rb") as handle:
            while chunk := handle.read(1 << 20):
                h.update(chunk)
        return h.hexdigest()[:32]
    with ThreadPoolExecutor(max_workers=workers) as pool:       # hashlib releases the GIL
        digests = list(pool.map(digest, paths))
    if cached is not None:
        try:
            write_text(cached, json.dumps(digests))
        except OSError as err:          # a read-only cache only costs the next run a rehash
            log.warning("could not cache image digests at %s (%s)", cached, err)
    return digests


def content_keys(split: CaptionSplit, cache_dir: Path | None = None) -> list[str] | None:
    """What identifies each image's content: its file's bytes when it has a file, else its pixels
    (in-memory images); None when neither can be read (the content check is then skipped)."""
    if split.files:
        return file_digests(split.files, cache_dir)
    pixels = getattr(split.images, "pixels", None)
    if isinstance(pixels, torch.Tensor) and len(pixels) == split.n_images:
        return [hashlib.sha256(p.contiguous().numpy().tobytes()).hexdigest()[:32] for p in pixels]
    return None


def _overlap_findings(splits: dict[str, CaptionSplit], cache_dir: Path | None) -> list[Finding]:
    """Images of a later split that an earlier split lists too (same file path or same content)."""
    keys = {name: content_keys(s, cache_dir) for name, s in splits.items()}
    if any(k is None for k in keys.values()):
        log.info("data checks: some split's images have neither files nor pixels to hash; only "
                 "paths are compared across splits")
    found = []
    for first, second in combinations(splits, 2):
        a, b = splits[first], splits[second]
        by_path = {p: i for i, p in enumerate(a.files)}
        by_content = {k: i for i, k in enumerate(keys[first] or [])}
        hits = []
        for j in range(b.n_images):
            if b.files and b.files[j] in by_path:
                hits.append(f"{_name(b, j)} is {_name(a, by_path[b.files[j]])} (same path)")
            elif keys[second] is not None and keys[second][j] in by_content:
                hits.append(f"{_name(b, j)} = {_name(a, by_content[keys[second][j]])} (same content)")
        if hits:
            found.append(Finding("split_overlap", f"{second} vs {first}", len(hits), hits[:SHOWN]))
    return found


def find_problems(dataset: CaptionDataset, cache_dir: Path | None = None) -> list[Finding]:
    """Every failed check of the dataset, in split order."""
    splits = {name: getattr(dataset, name) for name in SPLIT_NAMES}
    found = [f for name, s in splits.items() for f in _caption_findings(name, s)]
    return found + _overlap_findings(splits, cache_dir)


def drop_blank_captions(split: CaptionSplit) -> CaptionSplit:
    """The split without its blank captions, and without the images left with none."""
    keep = torch.tensor([bool(c.strip()) for c in split.captions])
    owners = split.caption_image[keep]
    images = torch.unique(owners)                            # sorted: image order is kept
    if len(images) == split.n_images:
        return replace(split, captions=[c for c, k in zip(split.captions, keep.tolist()) if k],
                       caption_image=owners, truth_fn=None)
    remap = torch.full((split.n_images,), -1, dtype=torch.long)
    remap[images] = torch.arange(len(images))
    pick = images.tolist()
    return CaptionSplit(SubsetImages(split.images, images),
                        [c for c, k in zip(split.captions, keep.tolist()) if k], remap[owners],
                        [split.image_names[i] for i in pick] if split.image_names else [],
                        files=[split.files[i] for i in pick] if split.files else [])


@dataclass
class SubsetImages:
    """Some images of another `ImageSource`, in their order (picklable for DataLoader workers)."""

    source: object
    indices: torch.Tensor

    def __len__(self) -> int:
        return len(self.indices)

    def get_batch(self, indices: torch.Tensor, train: bool = False) -> torch.Tensor:
        return self.source.get_batch(self.indices[indices], train=train)


def check_dataset(dataset: CaptionDataset, accept: Sequence[str] = (),
                  cache_dir: Path | None = None) -> CaptionDataset:
    """The dataset once every check passes or is accepted (`data.accept`); refuses it with one
    line per failed check otherwise. Accepted findings are logged and kept in `dataset.checks`."""
    found = find_problems(dataset, cache_dir)
    refused = [f for f in found if f.check not in accept]
    if refused:
        raise DataCheckError([f"data: {f.line(accept_hint=f.check in ACCEPTABLE)}" for f in refused],
                             f"in the {dataset.name} data")
    if not found:
        return dataset
    for f in found:
        log.warning("data.accept=[%s]: %s", f.check, f.line(accept_hint=False))
    checks = {check: [f.record() for f in found if f.check == check] for check in dict.fromkeys(f.check for f in found)}
    if "blank_captions" in checks:
        dataset = replace(dataset, **{f.split: drop_blank_captions(getattr(dataset, f.split))
                                      for f in found if f.check == "blank_captions"})
    return replace(dataset, checks=checks)


__all__ = ["ACCEPTABLE", "DataCheckError", "Finding", "SubsetImages", "check_dataset", "content_keys",
           "drop_blank_captions", "file_digests", "find_problems"]
