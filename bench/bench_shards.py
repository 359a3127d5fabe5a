"""Benchmark: reading 20,000 generated 64-px images from webdataset shards and from a folder.

The same JPEGs (one caption each) are written as a folder with captions.csv and as
img2dataset-style shards with 1,000 and with 100 samples each (20 and 200 shards). Each source
is then read in a fresh process, with data.cache_images=false (images are decoded from their
store every time, never held):
  build     build_dataset: the folder checks every file; the shards take one webdataset pass
            (captions, a check of each image, the index). Seconds.
  in order  every training image in index order through `ordered_batches` in N workers: what the
            frozen-backbone feature cache, coresets and evaluation do. Images/s.
  shuffled  the experts' mini-batches: `pair_batches` over a random permutation (batch 128) in
            N workers; shards are read by their index, one pread per image. Images/s.
  RSS       the reading process's resident set right after the imports, after the build (the
            index and captions) and after reading, its peak (ru_maxrss), and its largest worker's
            peak.
Memory should not grow with the number of shards (20 vs 200).

    python bench/bench_shards.py                              # 20,000 images, 2 workers
    python bench/bench_shards.py --images 2000 --workers 1
"""
from __future__ import annotations

import argparse
import io
import json
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _machine import describe, write_results

MB = 1024          # ru_maxrss and VmRSS are in KiB on Linux


def rss_mb() -> float:
    """The resident set now (Linux /proc), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / MB
    return float("nan")


def make_images(n: int, root: Path, per_shard: list[int]) -> None:
    """n 64-px JPEGs (a smooth gradient plus noise: realistic JPEG sizes), as a folder and as
    shards of each size in `per_shard`."""
    import numpy as np
    import webdataset as wds
    from PIL import Image
    rng = np.random.default_rng(0)
    ys, xs = np.mgrid[0:64, 0:64] / 64.0
    folder = root / "folder"
    folder.mkdir(parents=True)
    encoded = []
    for i in range(n):
        pixels = rng.uniform(40, 215, 3) + xs[..., None] * rng.uniform(-80, 80, 3) \
            + ys[..., None] * rng.uniform(-80, 80, 3) + rng.normal(0, 12, (64, 64, 3))
        out = io.BytesIO()
        Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(out, format="JPEG", quality=90)
        encoded.append((f"{i:09d}", out.getvalue(), f"a generated picture number {i}"))
    for key, data, _ in encoded:
        (folder / f"{key}.jpg").write_bytes(data)
    (folder / "captions.csv").write_text("".join(f"{key}.jpg,{caption}\n" for key, _, caption in encoded))
    for size in per_shard:
        out = root / f"shards{size}"
        out.mkdir()
        for start in range(0, n, size):
            with wds.TarWriter(str(out / f"{start // size:05d}.tar"), encoder=False) as writer:
                for key, data, caption in encoded[start:start + size]:
                    writer.write({"__key__": key, "jpg": data, "txt": caption.encode(),
                                  "json": json.dumps({"key": key, "caption": caption}).encode()})


def measure(source: Path, workers: int, shuffled: int) -> dict:
    """One source read in this process (run by the parent in a fresh interpreter)."""
    import torch

    from vldistill.configio import load_config
    from vldistill.data import build_dataset
    from vldistill.data.splits import ordered_batches
    from vldistill.algorithms.training import pair_batches
    rss_after_imports = rss_mb()
    name = ["data.name=folder", f"data.image_root={source}", "data.train_json=captions.csv"] \
        if (source / "captions.csv").is_file() else ["data.name=webdataset", f"data.image_root={source}"]
    cfg = load_config(None, [*name, "data.image_size=64", "data.cache_images=false", f"data.num_workers={workers}",
                             "data.val_fraction=0.01", "data.test_fraction=0.01"])
    with tempfile.TemporaryDirectory() as cache:
        start = time.perf_counter()
        train = build_dataset(cfg.data, Path(cache)).train
        build_s = time.perf_counter() - start
        rss_after_build = rss_mb()
        start, seen = time.perf_counter(), 0
        for batch in ordered_batches(train.images, 256):
            seen += len(batch)
        in_order = seen / (time.perf_counter() - start)
        text = torch.zeros(len(train.captions), 1)
        start, seen = time.perf_counter(), 0
        for _, images, _ in pair_batches(train, text, 128, seed=0, train=False, num_workers=workers):
            seen += len(images)
            if seen >= shuffled:
                break
        shuffled_rate = seen / (time.perf_counter() - start)
    return {"images": train.n_images, "build_s": build_s, "in_order_per_s": in_order,
            "shuffled_per_s": shuffled_rate, "rss_after_imports_mb": rss_after_imports,
            "rss_after_build_mb": rss_after_build, "rss_after_reading_mb": rss_mb(),
            "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / MB,
            "peak_worker_rss_mb": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / MB}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=20_000)
    parser.add_argument("--per-shard", default="1000,100", help="samples per shard, one source each")
    parser.add_argument("--workers", type=int, default=2, help="data.num_workers of every reader")
    parser.add_argument("--shuffled", type=int, default=5_000, help="images read in shuffled batches")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:                                     # the reading process: one JSON line back
        print(json.dumps(measure(Path(args.child), args.workers, args.shuffled)))
        return {}
    print(describe("cpu"))
    per_shard = [int(s) for s in args.per_shard.split(",")]
    rows = {}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        start = time.perf_counter()
        make_images(args.images, root, per_shard)
        print(f"wrote {args.images} images as a folder and as shards of {per_shard} in "
              f"{time.perf_counter() - start:.0f} s")
        sources = {"folder": root / "folder"} | {
            f"shards x{-(-args.images // s)}": root / f"shards{s}" for s in per_shard}
        for label, path in sources.items():
            out = subprocess.run([sys.executable, __file__, "--child", str(path), "--workers", str(args.workers),
                                  "--shuffled", str(args.shuffled)], capture_output=True, text=True, check=True)
            rows[label] = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"{args.workers} workers; {args.shuffled} images in shuffled batches of 128; decoded every time")
    print(f"{'source':<14}{'train images':>13}{'build s':>9}{'in order/s':>12}{'shuffled/s':>12}"
          f"  RSS MB: {'imports':>8}{'built':>7}{'read':>7}{'peak':>7}{'worker peak':>13}")
    for label, r in rows.items():
        print(f"{label:<14}{r['images']:>13}{r['build_s']:>9.1f}{r['in_order_per_s']:>12.0f}"
              f"{r['shuffled_per_s']:>12.0f}          {r['rss_after_imports_mb']:>8.0f}{r['rss_after_build_mb']:>7.0f}"
              f"{r['rss_after_reading_mb']:>7.0f}{r['peak_rss_mb']:>7.0f}{r['peak_worker_rss_mb']:>13.0f}")
    write_results("shards", rows, settings={"images": args.images, "per_shard": per_shard,
                                            "workers": args.workers, "shuffled": args.shuffled})
    return rows


if __name__ == "__main__":
    main()
