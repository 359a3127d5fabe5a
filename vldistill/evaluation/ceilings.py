"""Known ceilings of Recall@K on a split: what a perfect ranker and what random scores get.

Computed exactly (closed form over rationals, no sampling), with the metric keys of
`vldistill.algorithms.retrieval.recall_at_k` (percent; img_* = text->image, txt_* = image->text).

- `oracle`: a ranker that scores an (image, caption) pair 1 if the caption is true of the image
  and 0 otherwise (the split's truth, `CaptionSplit.truth`), ties broken uniformly at random.
  Where captions are true of many images (the `shapes` dataset) even it retrieves little: a
  caption true of m images finds its own at rank <= K with probability min(K, m)/m.
- `chance`: random scores; needs only the split's sizes, so every dataset has it.
"""
from __future__ import annotations

from fractions import Fraction
from functools import lru_cache
from math import comb
from typing import Sequence

import torch

from ..data.splits import CaptionSplit
from ..algorithms.retrieval import METRICS

KS = (1, 5, 10)


@lru_cache(maxsize=None)
def _any_in_top(m: int, g: int, k: int) -> Fraction:
    """P(at least one of g marked items is among the first k of m items in a uniformly random
    order) = 1 - C(m - g, k) / C(m, k); 1 when k >= m - g + 1 (too few unmarked to fill k)."""
    if g <= 0:
        return Fraction(0)
    if k > m - g:
        return Fraction(1)
    return 1 - Fraction(comb(m - g, k), comb(m, k))


def _metrics(image_to_text: Sequence[tuple[int, int]], text_to_image: Sequence[tuple[int, int]],
             ks: Sequence[int]) -> dict[str, float]:
    """Mean over images of P(a correct caption in the top K) and over captions of P(its image in
    the top K), each item given as (m candidates tied at the top, g correct among them)."""
    def mean(queries: Sequence[tuple[int, int]], k: int) -> Fraction:
        return sum((_any_in_top(m, g, k) for m, g in queries), Fraction(0)) / len(queries)
    exact = {f"txt_r{k}": mean(image_to_text, k) for k in ks} | {f"img_r{k}": mean(text_to_image, k) for k in ks}
    exact["r_mean"] = sum(exact.values(), Fraction(0)) / len(exact)
    return {key: float(100 * exact[key]) for key in METRICS if key in exact}


def oracle(truth: torch.Tensor, img2txt: Sequence[Sequence[int]], txt2img: torch.Tensor,
           ks: Sequence[int] = KS) -> dict[str, float]:
    """Expected Recall@K (percent) of the perfect ranker under caption ambiguity.

    Args:
        truth: (n_images, n_captions) bool, caption c true of image i; every caption must be
            true of its own image.
        img2txt, txt2img: the split's ground truth, as `recall_at_k` takes them.
        ks: the K values.

    Returns:
        dict with the keys of `recall_at_k` (images without captions are left out of txt_*,
        as there).
    """
    truth = torch.as_tensor(truth, dtype=torch.bool)
    txt2img = torch.as_tensor(txt2img, dtype=torch.long)
    if not bool(truth[txt2img, torch.arange(len(txt2img))].all()):
        raise ValueError("the truth says some caption is false of its own image")
    true_of_image = truth.sum(dim=1).tolist()
    images_of_caption = truth.sum(dim=0).tolist()
    return _metrics([(true_of_image[i], len(caps)) for i, caps in enumerate(img2txt) if caps],
                    [(m, 1) for m in images_of_caption], ks)


def chance(img2txt: Sequence[Sequence[int]], ks: Sequence[int] = KS) -> dict[str, float]:
    """Expected Recall@K (percent) of random scores: every order of the candidates equally likely."""
    n_captions = sum(len(caps) for caps in img2txt)
    return _metrics([(n_captions, len(caps)) for caps in img2txt if caps],
                    [(len(img2txt), 1)] * n_captions, ks)


def split_ceilings(split: CaptionSplit, ks: Sequence[int] = KS) -> dict[str, dict[str, float]]:
    """`{"oracle": ..., "chance": ...}` of a split; oracle only where the dataset knows its truth."""
    img2txt = split.img2txt
    truth = split.truth()
    return ({} if truth is None else {"oracle": oracle(truth, img2txt, split.txt2img, ks)}) | {
        "chance": chance(img2txt, ks)}


__all__ = ["chance", "oracle", "split_ceilings"]
