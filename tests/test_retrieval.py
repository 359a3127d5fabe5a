"""Vectorized Recall@K against the per-row argsort definition."""
import pytest
import torch

from vldistill.algorithms.retrieval import recall_at_k, recall_at_k_loop


def _problem(seed, ties):
    g = torch.Generator().manual_seed(seed)
    n_img = int(torch.randint(3, 120, (1,), generator=g))
    owners = []
    for i in range(n_img):
        owners += [i] * int(torch.randint(0, 7, (1,), generator=g))     # 0..6 captions, some none
    perm = torch.randperm(len(owners), generator=g)
    txt2img = torch.tensor(owners)[perm]
    img2txt = [[] for _ in range(n_img)]
    for j, i in enumerate(txt2img.tolist()):
        img2txt[i].append(j)
    shape = (n_img, len(owners))
    scores = (torch.randint(0, 4, shape, generator=g).float() if ties
              else torch.randn(shape, generator=g))
    return scores, img2txt, txt2img


@pytest.mark.parametrize("seed", range(12))
@pytest.mark.parametrize("ties", [False, True])
def test_vectorized_equals_per_row_definition(seed, ties):
    scores, img2txt, txt2img = _problem(seed, ties)
    fast = recall_at_k(scores, img2txt, txt2img)
    slow = recall_at_k_loop(scores, img2txt, txt2img.tolist())
    assert fast == pytest.approx(slow, abs=1e-9)


def test_known_value():
    # 2 images, 3 captions: image 0 owns captions 0, 1; image 1 owns caption 2
    scores = torch.tensor([[0.1, 0.9, 0.5],
                           [0.8, 0.2, 0.3]])
    r = recall_at_k(scores, [[0, 1], [2]], torch.tensor([0, 0, 1]), ks=(1, 2))
    # image->text: image 0 top caption is 1 (its own) -> rank 0; image 1: order 0,2,1 -> rank 1
    assert r["txt_r1"] == pytest.approx(50.0) and r["txt_r2"] == pytest.approx(100.0)
    # text->image: caption 0 column (0.1, 0.8) -> image 0 rank 1; caption 1 -> rank 0; caption 2 -> rank 1
    assert r["img_r1"] == pytest.approx(100 / 3) and r["img_r2"] == pytest.approx(100.0)
    assert r["r_mean"] == pytest.approx((50 + 100 + 100 / 3 + 100) / 4)


@pytest.mark.parametrize("ties", [False, True])
def test_column_ranks_do_not_depend_on_the_chunking(ties):
    """Text->image ranks are counted over row chunks; a tie whose rows straddle a chunk
    boundary must rank exactly as in one pass (and as the loop)."""
    from vldistill.algorithms.retrieval import _column_ranks
    g = torch.Generator().manual_seed(3)
    n_img, n_cap = 203, 611
    scores = torch.randint(0, 3, (n_img, n_cap), generator=g).float() if ties else torch.randn(n_img, n_cap, generator=g)
    txt2img = torch.randint(n_img, (n_cap,), generator=g)
    ranks = {c: _column_ranks(scores, txt2img, chunk=c) for c in (1, 7, 16, 128, 1000)}
    assert all(torch.equal(r, ranks[1000]) for r in ranks.values())
    definition = torch.tensor([int(((scores[:, j] > scores[t, j]) | ((scores[:, j] == scores[t, j])
                                    & (torch.arange(n_img) > t))).sum()) for j, t in enumerate(txt2img.tolist())])
    assert torch.equal(ranks[16], definition)
