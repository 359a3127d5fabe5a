"""Coreset selections against their plain definitions, and the coreset methods end to end."""
import pytest
import torch

from vldistill.evaluation.coresets import (SELECTORS, ExpertEmbeddings, best_captions, herding, kcenter,
                                select_coreset, selection_features)


def _points(seed, n=150, d=12):
    return torch.randn(n, d, generator=torch.Generator().manual_seed(seed))


def _direct_herding(x, n):
    """The definition: try every unchosen point, keep the one whose mean is nearest mu."""
    x = x.double()
    mu, chosen = x.mean(0), []
    for t in range(1, n + 1):
        best, best_gap = None, float("inf")
        for i in range(len(x)):
            if i in chosen:
                continue
            gap = float(((x[chosen + [i]].sum(0) / t - mu) ** 2).sum())
            if gap < best_gap:
                best, best_gap = i, gap
        chosen.append(best)
    return chosen


def _naive_kcenter(x, n, first):
    """The definition: recompute every point's distance to its nearest center at each step."""
    x = x.double()
    chosen = [first]
    for _ in range(n - 1):
        nearest = torch.cdist(x, x[chosen]).min(dim=1).values
        chosen.append(int(nearest.argmax()))
    return chosen


def _radius(x, chosen):
    return float(torch.cdist(x.double(), x[chosen].double()).min(dim=1).values.max())


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_herding_equals_direct_greedy(seed, backend):
    x = _points(seed)
    assert herding(x, 20, backend=backend) == _direct_herding(x, 20)


def test_herding_mean_gets_closer_than_random():
    x = _points(7, n=400)
    chosen = herding(x, 25)
    gap = float((x[chosen].mean(0) - x.mean(0)).norm())
    rand = [float((x[torch.randperm(400, generator=torch.Generator().manual_seed(s))[:25]].mean(0)
                   - x.mean(0)).norm()) for s in range(20)]
    assert len(set(chosen)) == 25
    assert gap < min(rand)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("backend", ["faiss", "torch"])
def test_kcenter_equals_naive_and_radius_never_grows(seed, backend):
    x = _points(seed)
    first = seed * 11 % len(x)
    chosen = kcenter(x, 30, first=first, backend=backend)
    assert chosen == _naive_kcenter(x, 30, first)
    assert len(set(chosen)) == 30
    radii = [_radius(x, chosen[:m]) for m in range(1, 31)]
    assert all(b <= a + 1e-9 for a, b in zip(radii, radii[1:]))
    assert radii[-1] < radii[0]
    # the greedy property: each new center was the farthest point from the earlier ones
    for m in range(1, 30):
        assert torch.cdist(x[chosen[m]][None].double(), x[chosen[:m]].double()).min() == pytest.approx(radii[m - 1])


def test_kcenter_with_duplicates_never_repeats_a_point():
    x = torch.cat([_points(1, n=5), _points(1, n=5)])          # every point twice
    chosen = kcenter(x, 10, first=0)
    assert sorted(chosen) == list(range(10))


def test_selection_spaces_and_best_caption():
    images = torch.nn.functional.normalize(torch.randn(4, 3, generator=torch.Generator().manual_seed(0)), dim=1)
    texts = torch.nn.functional.normalize(torch.randn(6, 3, generator=torch.Generator().manual_seed(1)), dim=1)
    emb = ExpertEmbeddings(images, texts, expert=0, epoch=1)
    img2txt = [[0, 1], [2], [3, 4, 5], []]
    joint = selection_features(emb, img2txt, "joint")
    assert joint.shape == (4, 6)
    torch.testing.assert_close(joint[:3].norm(dim=1), torch.ones(3))
    text = selection_features(emb, img2txt, "text")
    torch.testing.assert_close(text[0], torch.nn.functional.normalize(texts[0] + texts[1], dim=0))
    picked = best_captions(emb, img2txt, [0, 2])
    assert picked[0] == int(torch.tensor([0, 1])[(texts[[0, 1]] @ images[0]).argmax()])
    assert picked[1] in (3, 4, 5) and float(texts[picked[1]] @ images[2]) == pytest.approx(
        float((texts[[3, 4, 5]] @ images[2]).max()))


@pytest.mark.parametrize("method", sorted(SELECTORS))
def test_select_coreset_builds_real_pairs(method, tiny_data):
    train = tiny_data.dataset.train
    g = torch.Generator().manual_seed(0)
    emb = ExpertEmbeddings(torch.nn.functional.normalize(torch.randn(train.n_images, 8, generator=g), dim=1),
                           torch.nn.functional.normalize(torch.randn(len(train.captions), 8, generator=g), dim=1),
                           expert=0, epoch=1)
    synthetic = select_coreset(method, emb, tiny_data, 12, "joint", 0.05, torch.Generator().manual_seed(3))
    picked, captions = synthetic.card["image_indices"], synthetic.card["captions"]
    assert synthetic.n_pairs == 12 and len(set(picked)) == 12
    assert all(int(train.caption_image[c]) == i for c, i in zip(captions, picked))   # a real pair
    torch.testing.assert_close(synthetic.images, train.images.get_batch(torch.tensor(picked)).float())
    torch.testing.assert_close(synthetic.text_embeddings, tiny_data.text["train"][torch.tensor(captions)])
    assert synthetic.similarity.kind == "identity" and synthetic.lr_img == 0.05
