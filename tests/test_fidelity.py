"""fidelity: reference pins each difference from the authors' code, written here from the
reference's equations (not its code), in float64 on tiny tensors."""
from __future__ import annotations

import math
import statistics
from pathlib import Path

import pytest
import torch

from vldistill.evaluation import evaluate
from vldistill.configio import load_config
from vldistill.data.splits import normalize_caption
from vldistill.evaluation.evaluate import SeedResult, train_on_set
from vldistill.fidelity import DIFFERENCES, difference_table
from vldistill.algorithms.losses import soft_contrastive_loss
from vldistill.evaluation.methods import summarize
from vldistill.algorithms.similarity import build_similarity
from vldistill.algorithms.synset import DistilledSet

REPO = Path(__file__).resolve().parents[1]
README = REPO / "README.md"


# ------------------------------------------------------------------ the modes themselves
@pytest.mark.parametrize("difference", DIFFERENCES, ids=lambda d: d.key)
def test_each_difference_follows_the_mode_and_an_explicit_value_wins(difference):
    section, name = difference.key.split(".")
    for mode in ("reference", "vldistill"):
        cfg = load_config(None, [f"fidelity={mode}"])
        assert getattr(getattr(cfg, section), name) == difference.value(cfg), mode
    reference = getattr(getattr(load_config(None, ["fidelity=reference"]), section), name)
    ours = getattr(getattr(load_config(None, ["fidelity=vldistill"]), section), name)
    assert reference != ours or difference.key == "distill.init_augment"   # (both off without augmentation)
    explicit = load_config(None, ["fidelity=reference", f"{difference.key}={ours}"])
    assert getattr(getattr(explicit, section), name) == ours


def test_readme_lists_every_difference_as_the_code_resolves_it():
    assert difference_table() in README.read_text()


def test_a_run_directory_keeps_its_mode(tmp_path, capsys):
    from reliability_helpers import run_cli
    (tmp_path / "config.yaml").write_text("fidelity: vldistill\n")
    code, err = run_cli(capsys, "config", tmp_path, "fidelity=reference")
    assert code == 2 and "fidelity" in err and "new run_dir" in err


# ------------------------------------------------------------------ WBCE with the reference's eps
def _wbce_reference(z: list[list[float]], s: list[list[float]], eps: float) -> tuple[float, list[list[float]]]:
    """The reference's loss and its gradient, entry by entry: l = -S log(p + eps) - (1 - S)
    log(1 - p + eps), p = sigmoid(z); positives S > 0.5; each half divided by count + eps."""
    b = len(z)
    pos = [(i, j) for i in range(b) for j in range(b) if s[i][j] > 0.5]
    neg = [(i, j) for i in range(b) for j in range(b) if s[i][j] <= 0.5]
    value, grad = 0.0, [[0.0] * b for _ in range(b)]
    for group in (pos, neg):
        for i, j in group:
            p = 1 / (1 + math.exp(-z[i][j]))
            value += 0.5 * (-s[i][j] * math.log(p + eps) - (1 - s[i][j]) * math.log(1 - p + eps)) / (len(group) + eps)
            dl_dp = -s[i][j] / (p + eps) + (1 - s[i][j]) / (1 - p + eps)
            grad[i][j] = 0.5 * dl_dp * p * (1 - p) / (len(group) + eps)
    return value, grad


@pytest.mark.parametrize("scale", [1.0, 15.0])       # |z| up to ~45: where eps matters
def test_wbce_with_eps_is_the_reference_formula_value_and_gradient(scale):
    g = torch.Generator().manual_seed(0)
    logits = (torch.randn(5, 5, generator=g, dtype=torch.float64) * scale).requires_grad_()
    target = torch.eye(5, dtype=torch.float64) + 0.3 * torch.rand(5, 5, generator=g, dtype=torch.float64)
    value = soft_contrastive_loss(logits, target, "wbce", eps=1e-6)
    value.backward()
    expected, grad = _wbce_reference(logits.tolist(), target.tolist(), 1e-6)
    assert float(value.detach()) == pytest.approx(expected, rel=1e-12)
    torch.testing.assert_close(logits.grad, torch.tensor(grad, dtype=torch.float64), rtol=1e-9, atol=1e-15)
    exact = float(soft_contrastive_loss(logits.detach(), target, "wbce"))
    assert (exact == pytest.approx(expected, rel=1e-4)) == (scale == 1.0)    # apart only when saturated


# ------------------------------------------------------------------ captions
def test_caption_cleaners_on_commas_and_question_marks():
    text = "A man, in a hat? Yes: he (probably) waves!"
    assert normalize_caption(text, cleaner="reference") == "a man, in a hat? yes he probably waves"
    assert normalize_caption(text, cleaner="strict") == "a man in a hat yes he probably waves"
    assert load_config(None, ["fidelity=reference"]).data.caption_cleaner == "reference"


# ------------------------------------------------------------------ evaluation protocol
def _protocol_run(monkeypatch, tiny_data, overrides: list[str], n: int = 200):
    """train_on_set under a config, with the SGD step replaced by a recorder: returns the
    (epoch, image lr, batch indices) of every step, and the epochs scored."""
    cfg = load_config(None, ["model.convnet_width=8", "model.convnet_depth=2", *overrides])
    g = torch.Generator().manual_seed(0)
    images = torch.randn(n, 3, 16, 16, generator=g)
    texts = tiny_data.text["train"][:1].repeat(n, 1)
    synthetic = DistilledSet(images, texts, build_similarity("identity", n), 0.4, 0.3, {"loss": "wbce"})
    steps, scored, epoch = [], [], [0]

    def step(model, optimizer, batch, texts, target, kind, eps):
        steps.append((epoch[0], optimizer.param_groups[0]["lr"], optimizer.param_groups[1]["lr"],
                      batch.shape[0], eps))
        return 0.0

    class Selector:
        def __init__(self, *args):
            pass

        def observe(self, e):
            scored.append(e)

        def result(self):
            return None
    real_batches = evaluate.epoch_batches

    def batches(*args):
        epoch[0] += 1
        return real_batches(*args)
    monkeypatch.setattr(evaluate, "contrastive_step", step)
    monkeypatch.setattr(evaluate, "_EpochSelector", Selector)
    monkeypatch.setattr(evaluate, "epoch_batches", batches)
    train_on_set(cfg, tiny_data, synthetic, seed=5, device=torch.device("cpu"))
    return cfg, steps, scored


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler\\.step\\(\\)`")   # the SGD step is mocked
def test_reference_evaluation_schedule(monkeypatch, tiny_data):
    """101 epochs, lr x0.1 after epoch 51, scored after epochs 1, 11, ..., 101, each epoch
    ceil(200 / 128) = 2 batches of 128, the WBCE eps on."""
    cfg, steps, scored = _protocol_run(monkeypatch, tiny_data, ["fidelity=reference", "eval.batch_size=128"])
    assert cfg.eval.selection == "test" and cfg.eval.epochs == 101
    assert sorted({e for e, *_ in steps}) == list(range(1, 102)) and len(steps) == 2 * 101
    assert {(lr_img, lr_txt) for e, lr_img, lr_txt, *_ in steps if e <= 51} == {(0.4, 0.3)}
    assert {(round(lr_img, 12), round(lr_txt, 12)) for e, lr_img, lr_txt, *_ in steps if e > 51} == {(0.04, 0.03)}
    assert scored == list(range(1, 102, 10))
    assert {size for *_, size, _ in steps} == {128} and {eps for *_, eps in steps} == {1e-6}


@pytest.mark.filterwarnings("ignore:Detected call of `lr_scheduler\\.step\\(\\)`")
def test_ours_evaluation_schedule(monkeypatch, tiny_data):
    cfg, steps, scored = _protocol_run(monkeypatch, tiny_data, ["fidelity=vldistill", "eval.batch_size=128"])
    assert len({e for e, *_ in steps}) == 100 and scored == list(range(10, 101, 10))
    assert {lr for e, lr, *_ in steps if e <= 50} == {0.4} and {size for *_, size, _ in steps} == {128, 72}


def test_shuffle_head_batches_are_heads_of_fresh_shuffles():
    g = torch.Generator().manual_seed(4)
    got = evaluate.epoch_batches(200, 128, "shuffle_head", g)
    g = torch.Generator().manual_seed(4)
    expected = [torch.randperm(200, generator=g)[:128] for _ in range(2)]
    assert all(torch.equal(a, b) for a, b in zip(got, expected))
    partition = torch.cat(evaluate.epoch_batches(200, 128, "partition", torch.Generator().manual_seed(4)))
    assert sorted(partition.tolist()) == list(range(200))


def test_population_std_is_the_references():
    results = [SeedResult({k: v for k in ("img_r1", "img_r5", "img_r10", "txt_r1", "txt_r5", "txt_r10", "r_mean")},
                          {k: v for k in ("img_r1", "img_r5", "img_r10", "txt_r1", "txt_r5", "txt_r10", "r_mean")}, 1)
               for v in (1.0, 2.0, 4.0)]
    assert summarize(results, "test", std="population")["r_mean_std"] == pytest.approx(statistics.pstdev([1, 2, 4]))
    assert summarize(results, "val")["r_mean_std"] == pytest.approx(statistics.stdev([1, 2, 4]))


# ------------------------------------------------------------------ the initial pairs
def test_reference_init_draws_caption_entries(tiny_data):
    """Distinct random caption entries, each with its own image (so an image can start two
    pairs), in the generator's order."""
    got = tiny_data.real_entries(40, torch.Generator().manual_seed(2))
    g = torch.Generator().manual_seed(2)
    entries = torch.randperm(len(tiny_data.dataset.train.captions), generator=g)[:40]
    assert got[2] == entries.tolist()
    owners = tiny_data.dataset.train.caption_image[entries]
    torch.testing.assert_close(got[0], tiny_data.dataset.train.images.get_batch(owners))
    torch.testing.assert_close(got[1], tiny_data.text["train"][entries])
    assert len(set(owners.tolist())) < 40                      # some image starts two pairs here


def test_reference_init_takes_an_augmented_view_when_training_augments(tmp_path):
    from fixtures_real import karpathy_overrides, write_karpathy

    from vldistill.data import prepare_data
    write_karpathy(tmp_path, {"train": [2] * 4, "val": [1, 1], "test": [1, 1]})
    overrides = [*karpathy_overrides(tmp_path), "data.image_size=16", f"cache_dir={tmp_path / 'c'}",
                 "data.no_aug=false"]
    reference = load_config(None, ["fidelity=reference", *overrides])
    assert reference.distill.init_augment and reference.distill.init_draw == "captions"
    data = prepare_data(reference)
    plain = data.real_entries(4, torch.Generator().manual_seed(0))[0]
    torch.manual_seed(0)
    augmented = data.real_entries(4, torch.Generator().manual_seed(0), augment=True)[0]
    assert augmented.shape == plain.shape and not torch.allclose(augmented, plain)


# ------------------------------------------------------------------ the last reference-mode decisions
class _FreshViews:
    """An image source whose every training view is new random pixels: two views are equal only
    when one was reused."""

    def __len__(self) -> int:
        return 10

    def get_batch(self, indices: torch.Tensor, train: bool = False) -> torch.Tensor:
        return torch.rand(len(indices), 3, 2, 2)


def test_reference_init_reuses_a_recently_read_images_view(tiny_data):
    """The reference's loader caches its transformed image with functools.lru_cache(maxsize=K):
    a pair whose image was read among the last K distinct images gets that image's view."""
    import functools
    import itertools
    from dataclasses import replace
    data = replace(tiny_data, dataset=replace(tiny_data.dataset, train=replace(
        tiny_data.dataset.train, images=_FreshViews())))
    ids = [0, 1, 0, 2, 3, 4, 0, 1, 1, 5, 2, 4]
    for k in (0, 1, 3, 100):
        counter = itertools.count()
        read_image = functools.lru_cache(maxsize=k)(lambda path: next(counter))  # the reference's cache
        tokens = [read_image(f"images/{i}.jpg") for i in ids]
        views = data.views(torch.tensor(ids), cache=k)
        for a, b in itertools.combinations(range(len(ids)), 2):
            assert torch.equal(views[a], views[b]) == (tokens[a] == tokens[b]), (k, a, b)
    assert load_config(None, ["fidelity=reference"]).distill.init_view_cache == 100
    assert load_config(REPO / "configs/coco_repblend_100.yaml").distill.init_view_cache == 0  # its COCO loader has none


def test_without_a_repeat_the_cached_views_are_the_uncached_ones(tiny_data):
    """The cache changes nothing but the repeats: the same draws, in the same order."""
    ids = torch.arange(8)
    torch.manual_seed(0)
    plain = tiny_data.views(ids, cache=0)
    torch.manual_seed(0)
    torch.testing.assert_close(tiny_data.views(ids, cache=100), plain)


def test_repblend_randaugment_draws_from_its_nine_operations(monkeypatch):
    """RepBlend's data/__init__.py passes RandomAugment(2, 5, augs=[9 names]): LoRS's list without
    'AutoContrast' (whose function its randaugment.py comments out)."""
    from vldistill.config import RANDAUGMENTS
    from vldistill.data import images as images_module
    names = {"Identity": "identity", "AutoContrast": "autocontrast", "Brightness": "brightness",
             "Sharpness": "sharpness", "Equalize": "equalize", "ShearX": "shear_x", "ShearY": "shear_y",
             "TranslateX": "translate_x", "TranslateY": "translate_y", "Rotate": "rotate"}
    lors = ["Identity", "AutoContrast", "Brightness", "Sharpness", "Equalize", "ShearX", "ShearY",
            "TranslateX", "TranslateY", "Rotate"]
    repblend = [n for n in lors if n != "AutoContrast"]
    assert sorted(images_module.RANDAUGMENT) == sorted(RANDAUGMENTS)
    assert sorted(images_module.RANDAUGMENT["lors"]) == sorted(names[n] for n in lors)
    assert sorted(images_module.RANDAUGMENT["repblend"]) == sorted(names[n] for n in repblend)
    applied = []
    for name in images_module._OPS:
        monkeypatch.setitem(images_module._OPS, name, lambda img, m, name=name: applied.append(name) or img)
    transform = images_module.ImageTransform(8, ops=images_module.RANDAUGMENT["repblend"], op_probability=1.0)
    torch.manual_seed(0)
    for _ in range(300):
        transform.augmented(torch.zeros(3, 8, 8, dtype=torch.uint8))
    counts = {n: applied.count(n) for n in images_module.RANDAUGMENT["repblend"]}
    assert "autocontrast" not in applied and len(applied) == 600 and min(counts.values()) > 600 / 9 / 2
    for config in REPO.glob("configs/*repblend*.yaml"):
        assert load_config(config).data.randaugment == "repblend", config


def _reference_pre_caption(caption: str, max_words: int) -> str:
    """The reference loaders' pre_caption, from what it does: lower-case, . ! " ( ) * # : ; ~ to
    spaces, runs of whitespace to one space, stripped, the first max_words space-separated words."""
    import re
    text = re.sub(r"\s{2,}", " ", re.sub(r"[.!\"()*#:;~]", " ", caption.lower())).strip()
    return " ".join(text.split(" ")[:max_words])


@pytest.mark.parametrize("config, train_words, eval_words", [
    ("flickr30k_repblend_100", 60, 60), ("coco_repblend_100", 60, 30), ("flickr30k_lors_100", 30, 30)])
def test_paper_configs_keep_each_references_caption_lengths(config, train_words, eval_words, tmp_path):
    """RepBlend's flickr30k_train / flickr30k_retrieval_eval and coco_train default to 60 words,
    its coco_retrieval_eval to 30; LoRS's loaders keep 30."""
    import json
    from fixtures_real import karpathy_overrides, write_karpathy

    from vldistill.data import build_dataset
    write_karpathy(tmp_path, {"train": [1] * 3, "val": [1, 1], "test": [1, 1]})
    long = " ".join(f"Word{i}." for i in range(70))
    for split in ("train", "val", "test"):
        path = tmp_path / "ann" / f"{split}.json"
        entries = json.loads(path.read_text())
        entries[0]["caption"] = long if split == "train" else [long]
        path.write_text(json.dumps(entries))
    cfg = load_config(REPO / f"configs/{config}.yaml", [*karpathy_overrides(tmp_path), "data.image_size=16",
                                                          "data.num_workers=0", f"cache_dir={tmp_path / 'c'}"])
    ds = build_dataset(cfg.data, tmp_path / "c")
    assert ds.train.captions[0] == _reference_pre_caption(long, train_words)
    assert ds.val.captions[0] == ds.test.captions[0] == _reference_pre_caption(long, eval_words)


def test_expert_cycle_is_the_references_file_order():
    """The reference's order: files shuffled, each file's experts in turn, the files reshuffled
    after the last; all three references' buffer.py write one expert per file, as vldistill's
    store does, so a pass visits every expert once in a fresh shuffled order -- the cycle."""
    from types import SimpleNamespace

    from vldistill.distill.stage import Distiller
    import numpy as np
    experts = list(range(5))
    files, rng, reference = [[e] for e in experts], np.random.default_rng(0), []
    order = rng.permutation(len(files))
    for _ in range(3):                                  # the reference's file loop, three passes
        for f in order:
            reference += files[f]
        order = rng.permutation(len(files))
    state = SimpleNamespace(d=SimpleNamespace(expert_order="cycle"), experts=experts, expert_queue=[],
                            generator=torch.Generator().manual_seed(0))
    ours = [Distiller._next_expert(state) for _ in range(15)]
    for sequence in (reference, ours):
        passes = [sequence[i:i + 5] for i in range(0, 15, 5)]
        assert all(sorted(p) == experts for p in passes) and len({tuple(p) for p in passes}) > 1
    assert load_config(None, ["fidelity=reference"]).distill.expert_order == "cycle"
