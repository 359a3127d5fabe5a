"""Benchmark: Recall@K at COCO-test scale, vectorized (`recall_at_k`) against the per-row loop
(`recall_at_k_loop`, the reference's argsort per row and per column), in one run; and exact
nearest-caption search (faiss flat index against the torch path) at caption-decoding scale.

The score matrix is 5,000 images x 25,010 captions (COCO's 5k test split: 5 captions per
image, a few with 6 or 7) from correlated random embeddings, noisy enough that r_mean is ~65
(TR@1 ~63, IR@1 ~31: where a CLIP model on COCO is), so ranks are spread as in real use.
Both Recall@K functions must return the same numbers (to 1e-9 %: they divide in different
orders); the script checks that before timing.

    python bench/bench_retrieval.py                       # CPU, 1 thread (steadier on a shared machine)
    python bench/bench_retrieval.py --threads 0           # torch's default thread count
    python bench/bench_retrieval.py --device cuda         # vectorized on the GPU (the loop stays numpy)
"""
from __future__ import annotations

import argparse
import time

import torch

from _machine import add_machine_args, apply_machine_args, time_interleaved, write_results
from vldistill.algorithms.neighbours import knn
from vldistill.algorithms.retrieval import recall_at_k, recall_at_k_loop


def coco_like_scores(n_images: int, n_captions: int, dim: int, seed: int):
    """Scores of correlated image and caption embeddings; every image owns >= 5 captions."""
    g = torch.Generator().manual_seed(seed)
    owners = torch.arange(n_images).repeat_interleave(5)
    extra = torch.randint(n_images, (n_captions - len(owners),), generator=g)
    txt2img = torch.cat([owners, extra])[torch.randperm(n_captions, generator=g)]
    images = torch.nn.functional.normalize(torch.randn(n_images, dim, generator=g), dim=1)
    noise = 5.0 / dim ** 0.5 * torch.randn(n_captions, dim, generator=g)    # r_mean ~65, like a CLIP
    texts = torch.nn.functional.normalize(images[txt2img] + noise, dim=1)
    img2txt: list[list[int]] = [[] for _ in range(n_images)]
    for j, i in enumerate(txt2img.tolist()):
        img2txt[i].append(j)
    return images @ texts.t(), img2txt, txt2img


def bench_recall(args, device: torch.device) -> dict:
    scores, img2txt, txt2img = coco_like_scores(args.images, args.captions, args.dim, args.seed)
    on_device = scores.to(device)
    fast = recall_at_k(on_device, img2txt, txt2img)
    start = time.perf_counter()
    slow = recall_at_k_loop(scores, img2txt, txt2img.tolist())
    loop_seconds = time.perf_counter() - start
    identical = fast.keys() == slow.keys() and all(abs(fast[k] - slow[k]) < 1e-9 for k in fast)
    if not identical:
        raise SystemExit(f"recall_at_k and recall_at_k_loop differ: {fast} vs {slow}")
    fast_seconds = time_interleaved({"vectorized": lambda: recall_at_k(on_device, img2txt, txt2img)},
                                    device, repeats=args.repeats)["vectorized"]
    print(f"Recall@K on {args.images} x {args.captions} scores: vectorized {fast_seconds:.3f} s, "
          f"per-row loop {loop_seconds:.1f} s ({loop_seconds / fast_seconds:.0f}x), "
          f"same numbers: {identical} (r_mean {fast['r_mean']:.2f})")
    return {"vectorized_s": fast_seconds, "loop_s": loop_seconds, "speedup": loop_seconds / fast_seconds,
            "identical": identical, "metrics": fast}


def bench_knn(args, device: torch.device) -> dict:
    g = torch.Generator().manual_seed(args.seed + 1)
    bank = torch.randn(args.bank, args.text_dim, generator=g)
    queries = torch.randn(args.queries, args.text_dim, generator=g)
    times = time_interleaved({name: (lambda name=name: knn(queries, bank, 5, backend=name))
                              for name in ("faiss", "torch")}, "cpu", repeats=args.repeats)
    same = torch.equal(knn(queries, bank, 5, backend="faiss").indices,
                       knn(queries, bank, 5, backend="torch").indices)
    print(f"top-5 cosine search, {args.queries} queries x {args.bank} captions x {args.text_dim} dims: "
          f"faiss {times['faiss']:.3f} s, torch {times['torch']:.3f} s, same neighbours: {same}")
    return {"faiss_s": times["faiss"], "torch_s": times["torch"], "same_neighbours": same}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=5_000)
    parser.add_argument("--captions", type=int, default=25_010)
    parser.add_argument("--dim", type=int, default=256, help="embedding width behind the scores")
    parser.add_argument("--bank", type=int, default=100_000, help="captions searched (knn part)")
    parser.add_argument("--queries", type=int, default=500, help="synthetic embeddings decoded (knn part)")
    parser.add_argument("--text-dim", type=int, default=384)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--seed", type=int, default=0)
    add_machine_args(parser)
    args = parser.parse_args(argv)
    device = apply_machine_args(args)
    results = {"recall_at_k": bench_recall(args, device), "knn": bench_knn(args, device)}
    settings = {k: getattr(args, k) for k in ("images", "captions", "dim", "bank", "queries",
                                               "text_dim", "repeats", "seed", "threads")}
    print(f"written {write_results('retrieval', results, device, settings)}")
    return results


if __name__ == "__main__":
    main()
