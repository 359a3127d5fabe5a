"""Known ceilings: the closed forms against the real `recall_at_k` averaged over every tie-break
order, and their values on the embedded datasets' default test split."""
import itertools
import math

import pytest
import torch

from vldistill.evaluation.ceilings import chance, oracle, split_ceilings
from vldistill.config import DataConfig
from vldistill.data import build_dataset
from vldistill.data.shapes import make_shapes_split, _truth
from vldistill.algorithms.retrieval import METRICS, recall_at_k


def _split(n_images: int, scheme: str = "shapes", seed: int = 2):
    """A generated split's truth matrix, img2txt and txt2img."""
    part = make_shapes_split(n_images, 8, seed, scheme=scheme)
    img2txt = [list(range(5 * i, 5 * i + 5)) for i in range(n_images)]
    return _truth(part.scenes, part.picks, part.caption_image, scheme), img2txt, part.caption_image


def _relabelled(truth, img2txt, rows, cols):
    """The same split with images renumbered by `rows` and captions by `cols` (old -> new)."""
    scores = torch.zeros(truth.shape)
    scores[torch.tensor(rows)[:, None], torch.tensor(cols)[None, :]] = truth.float()
    new_img2txt = [[] for _ in rows]
    txt2img = torch.zeros(len(cols), dtype=torch.long)
    for i, caps in enumerate(img2txt):
        new_img2txt[rows[i]] = [cols[j] for j in caps]
        txt2img[[cols[j] for j in caps]] = rows[i]
    return scores, new_img2txt, txt2img


def test_oracle_is_recall_at_k_averaged_over_every_tie_break_order():
    """3 images with 2 captions each. recall_at_k breaks ties by index, so averaging it over every
    numbering of the captions (of the images) is the expectation of image->text (text->image)
    under uniformly random tie-breaking; each direction depends only on its own numbering."""
    truth, _, _ = _split(3, seed=9)
    keep = [0, 2, 5, 7, 10, 12]                 # two captions of each image
    truth, img2txt = truth[:, keep], [[0, 1], [2, 3], [4, 5]]
    assert truth.sum() == 11                    # five captions are true of another image too
    total = dict.fromkeys(METRICS, 0.0)
    for direction, orders in (("txt", [((0, 1, 2), c) for c in itertools.permutations(range(6))]),
                              ("img", [(r, tuple(range(6))) for r in itertools.permutations(range(3))])):
        for rows, cols in orders:
            for key, value in recall_at_k(*_relabelled(truth, img2txt, rows, cols)).items():
                if key.startswith(direction):
                    total[key] += value / len(orders)
    total["r_mean"] = sum(total.values()) / 6
    exact = oracle(truth, img2txt, torch.tensor([0, 0, 1, 1, 2, 2]))
    assert list(exact) == list(METRICS) and 0 < exact["txt_r1"] < 100 and 0 < exact["img_r1"] < 100
    assert all(exact[k] == pytest.approx(total[k], abs=1e-9) for k in METRICS)


def test_oracle_per_row_and_column_against_an_exhaustive_count():
    """A 6-image split, 30 captions: every placement of an image's own captions among those true
    of it (each placement stands for equally many orders), every rank of a caption's image among
    those it is true of, each scored by recall_at_k."""
    truth, img2txt, txt2img = _split(6, seed=20)
    txt = {k: 0.0 for k in (1, 5, 10)}
    for i, own in enumerate(img2txt):
        true = truth[i].nonzero().flatten().tolist()
        others = [j for j in true if j not in own]
        placements = list(itertools.combinations(range(len(true)), len(own)))
        for places in placements:
            order = [None] * len(true)          # best first
            for place, j in zip(places, own):
                order[place] = j
            rest = iter(others)
            order = [j if j is not None else next(rest) for j in order]
            scores = torch.zeros(1, truth.shape[1])
            scores[0, order] = torch.arange(len(order), 0, -1, dtype=torch.float)
            r = recall_at_k(scores, [own], torch.zeros(truth.shape[1], dtype=torch.long))
            for k in txt:
                txt[k] += r[f"txt_r{k}"] / len(placements) / len(img2txt)
    img = {k: 0.0 for k in (1, 5, 10)}
    for c, g in enumerate(txt2img.tolist()):
        true = truth[:, c].nonzero().flatten().tolist()
        for rank in range(len(true)):
            order = [i for i in true if i != g]
            order.insert(rank, g)
            scores = torch.zeros(truth.shape[0], 1)
            scores[order, 0] = torch.arange(len(order), 0, -1, dtype=torch.float)
            r = recall_at_k(scores, [[0] if i == g else [] for i in range(truth.shape[0])], torch.tensor([g]))
            for k in img:
                img[k] += r[f"img_r{k}"] / len(true) / len(txt2img)
    exact = oracle(truth, img2txt, txt2img)
    assert max(truth.sum(dim=1)) == 11 and max(truth.sum(dim=0)) == 3      # 1 - C(6, 5)/C(11, 5) at K=5
    assert all(exact[f"txt_r{k}"] == pytest.approx(txt[k], abs=1e-9) for k in txt)
    assert all(exact[f"img_r{k}"] == pytest.approx(img[k], abs=1e-9) for k in img)
    assert exact["r_mean"] == pytest.approx(sum(list(txt.values()) + list(img.values())) / 6, abs=1e-9)


def test_chance_is_the_oracle_when_everything_is_true():
    """Random scores rank like all-tied scores broken at random; and the closed forms by hand."""
    img2txt = [[0, 1, 2], [3], [], [4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14]]
    txt2img = torch.tensor([0, 0, 0, 1] + [3] * 11)
    random = chance(img2txt)
    assert random == pytest.approx(oracle(torch.ones(4, 15, dtype=torch.bool), img2txt, txt2img), abs=1e-12)
    assert random["img_r1"] == pytest.approx(25.0) and random["img_r5"] == 100.0
    assert random["txt_r1"] == pytest.approx(100 * (3 + 1 + 11) / 15 / 3)
    assert random["txt_r10"] == pytest.approx(100 * (1 - math.comb(12, 10) / math.comb(15, 10)
                                                     + 1 - math.comb(14, 10) / math.comb(15, 10) + 1) / 3)
    with pytest.raises(ValueError, match="false of its own image"):
        oracle(torch.eye(4, 15, dtype=torch.bool), img2txt, txt2img)


@pytest.mark.parametrize("name,r_mean,ir1,tr1", [("shapes", 22.772, 22.469, 1.835),
                                                  ("shapes-specific", 99.766, 99.3, 99.3)])
def test_ceilings_of_the_default_test_split(name, r_mean, ir1, tr1, tmp_path):
    """1,000 test images of seed 0. shapes: a caption such as "a picture with a red shape" is true
    of a third of the images, so even a perfect ranker finds little; shapes-specific: each caption
    names the whole scene and the oracle is near 100."""
    data = build_dataset(DataConfig(name=name, shapes_train=10, shapes_val=10), tmp_path)
    ceilings = split_ceilings(data.test)
    assert ceilings["oracle"]["r_mean"] == pytest.approx(r_mean, abs=1e-3)
    assert ceilings["oracle"]["img_r1"] == pytest.approx(ir1, abs=1e-3)
    assert ceilings["oracle"]["txt_r1"] == pytest.approx(tr1, abs=1e-3)
    assert ceilings["chance"]["img_r10"] == pytest.approx(1.0) and ceilings["chance"]["r_mean"] < 0.6
