"""Benchmark: what the data checks cost on image files (`vldistill.data.checks`).

Writes N photo-sized JPEGs (500 x 375, noise plus a gradient: 100-200 KB each, as Flickr30k's
are), then times, on the same files:

- `check_image_file` over every file: what building a dataset already did before the checks
  (header and tail of each file);
- the overlap check of a train split against a test split of a tenth its size, on a first
  build (`file_digests`: SHA-256 of every file's bytes, 8 threads) and on a later build (the
  cached digests: only a stat per file).

The files are freshly written, so they are in the page cache: the first-build figure is the
hashing itself, not a cold disk (a cold disk adds reading every byte once, at its speed).

    python bench/bench_data_checks.py --files 3000
"""
from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from _machine import describe, write_results
from vldistill.data.checks import _overlap_findings
from vldistill.data.images import check_image_file
from vldistill.data.splits import CaptionSplit, TensorImages


def write_photos(folder: Path, n: int) -> list[str]:
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:375, 0:500]
    paths = []
    for i in range(n):
        base = rng.uniform(40, 215, 3) + xs[..., None] * rng.uniform(-0.2, 0.2, 3)
        pixels = np.clip(base + ys[..., None] * rng.uniform(-0.2, 0.2, 3)
                         + rng.normal(0, 12, (375, 500, 3)), 0, 255).astype(np.uint8)
        path = folder / f"{i:05d}.jpg"
        Image.fromarray(pixels).save(path, quality=90)
        paths.append(str(path))
    return paths


def split_of(files: list[str]) -> CaptionSplit:
    empty = TensorImages(torch.zeros(len(files), 3, 1, 1, dtype=torch.uint8), (0.5,) * 3, (0.5,) * 3)
    return CaptionSplit(empty, ["a"] * len(files), torch.arange(len(files)), files, files=files)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--files", type=int, default=3000)
    args = parser.parse_args()
    print(describe())
    with tempfile.TemporaryDirectory() as tmp:
        folder, cache = Path(tmp) / "images", Path(tmp) / "cache"
        folder.mkdir()
        paths = write_photos(folder, args.files)
        megabytes = sum(Path(p).stat().st_size for p in paths) / 2**20
        timings = {}
        start = time.perf_counter()
        for p in paths:
            check_image_file(p)
        timings["check_image_file_s"] = time.perf_counter() - start
        n_test = args.files // 10
        splits = {"train": split_of(paths[n_test:]), "test": split_of(paths[:n_test])}
        for build in ("first_build_s", "later_build_s"):
            start = time.perf_counter()
            _overlap_findings(splits, cache)
            timings[f"overlap_check_{build}"] = time.perf_counter() - start
    results = {"files": args.files, "megabytes": round(megabytes, 1),
               **{k: round(v, 3) for k, v in timings.items()},
               "hash_mb_per_s": round(megabytes / timings["overlap_check_first_build_s"], 1)}
    for key, value in results.items():
        print(f"{key:>26}: {value}")
    print(f"results: {write_results('data_checks', results, settings=vars(args))}")


if __name__ == "__main__":
    main()
