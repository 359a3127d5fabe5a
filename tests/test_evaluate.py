"""The evaluation protocol: epoch selection and its labels, coreset methods, cross-architecture
towers, `vldistill eval CONFIG set=PATH` and `vldistill compare` over two runs."""
import json

import pytest
import torch
from torch import nn

from vldistill.evaluation import evaluate, methods
from vldistill.cli import main
from vldistill.evaluation.evaluate import _EpochSelector, eval_towers
from vldistill.evaluation.methods import EvalContext, evaluate_all, summarize
from vldistill.buffer.store import Snapshot, TrajectoryStore, store_manifest
from vldistill.models.student import FunctionalStudent, build_student
from vldistill.reporting.report import TEST_MARK
from vldistill.algorithms.retrieval import METRICS
from vldistill.algorithms.similarity import build_similarity
from vldistill.algorithms.synset import DistilledSet

QUICK = ["eval.num_eval=2", "eval.epochs=2", "eval.val_every=1", "eval.full_epochs=1"]


def make_set(data, path, kind="lowrank", n=12, seed=0, card=None):
    """A saved set of random real pairs with a non-trivial similarity, as distill would save it."""
    g = torch.Generator().manual_seed(seed)
    images, texts, captions = data.real_pairs(n, g)
    torch.manual_seed(seed)
    similarity = build_similarity(kind, n, 3, 1.0)
    if kind == "lowrank":
        with torch.no_grad():
            similarity.right.normal_(0, 0.3)
    base = {"dataset": "shapes", "dataset_fingerprint": data.dataset.fingerprint,
            "image_tower": "convnet", "text_tower": "minilm", "image_size": data.dataset.image_size,
            "mean": list(data.dataset.mean), "std": list(data.dataset.std), "loss": "infonce",
            "init_captions": captions}
    synthetic = DistilledSet(images + 0.1 * torch.randn(images.shape, generator=g),
                             texts + 0.01 * torch.randn(texts.shape, generator=g), similarity,
                             0.05, 0.05, base | (card or {}))
    synthetic.save(path)
    return synthetic


def untrained_store(cfg, data, directory):
    """A trajectory store whose one expert is a seeded, untrained student (no training time)."""
    student = build_student(cfg.model, data.dataset.image_size, data.text_dim, seed=3)
    store = TrajectoryStore(directory)
    store.write_manifest(store_manifest(cfg, data, student) | {"epochs": [0, 1]})
    snap = Snapshot(*FunctionalStudent(student).flat_params())
    store.write_expert(0, {0: snap, 1: Snapshot(snap.image.clone(), snap.text.clone())}, {})
    return store


# ------------------------------------------------------------------ epoch selection
class _Scripted(nn.Module):
    def __init__(self):
        super().__init__()
        self.epoch = nn.Parameter(torch.zeros(()))


class _Data:
    text = {"val": None, "test": None}

    def split(self, name):
        return name


@pytest.mark.parametrize("selection, chosen, selected_test", [("val", 2, 5.0), ("test", 1, 50.0)])
def test_selector_reports_test_numbers_at_the_epoch_chosen_on_its_split(monkeypatch, selection, chosen,
                                                                       selected_test):
    scores = {"val": {1: 10.0, 2: 30.0, 3: 30.0}, "test": {1: 50.0, 2: 5.0, 3: 40.0}}
    monkeypatch.setattr(evaluate, "retrieval_metrics",
                        lambda model, split, text, device: {"r_mean": scores[split][int(model.epoch)]})
    model = _Scripted()
    selector = _EpochSelector(model, _Data(), selection, torch.device("cpu"))
    for epoch in (1, 2, 3):
        with torch.no_grad():
            model.epoch.fill_(epoch)
        selector.observe(epoch)
    result = selector.result()
    assert result.epoch == chosen                       # val tie at epochs 2, 3 keeps the earlier
    assert result.selected["r_mean"] == selected_test
    assert result.final["r_mean"] == 40.0               # the last epoch, whatever was selected


def test_summary_is_mean_and_sample_std_with_its_label():
    results = [evaluate.SeedResult({k: v for k in METRICS}, {k: v + 1 for k in METRICS}, e, v)
               for v, e in ((10.0, 2), (14.0, 4))]
    s = summarize(results, "val", seeds=[7, 8])
    assert s["r_mean"] == 12.0 and s["r_mean_std"] == pytest.approx(2 ** 0.5 * 2)
    assert s["final"]["r_mean"] == 13.0 and s["final"]["img_r1_std"] == pytest.approx(2 ** 0.5 * 2)
    assert s["selection"] == "epoch chosen on val" and s["selected_epochs"] == [2, 4]
    assert [p["seed"] for p in s["per_seed"]] == [7, 8]
    assert "TEST" in summarize(results, "test")["selection"]


# ------------------------------------------------------------------ eval set=PATH, labels, compare
def _eval(tmp_path, cache_dir, run, set_path, *overrides):
    return main(["eval", "configs/tiny.yaml", f"run_dir={tmp_path / run}", f"cache_dir={cache_dir}",
                 f"set={set_path}", *QUICK, *overrides])


def test_eval_set_labels_selection_and_compare_prints_one_table(tmp_path, cache_dir, tiny_data, capsys):
    make_set(tiny_data, tmp_path / "a" / "set", seed=1)
    make_set(tiny_data, tmp_path / "b" / "set", kind="identity", seed=2)
    assert _eval(tmp_path, cache_dir, "run_val", tmp_path / "a" / "set", "eval.methods=[lors,random]") == 0
    assert _eval(tmp_path, cache_dir, "run_test", tmp_path / "b" / "set", "eval.selection=test") == 0
    val = json.loads((tmp_path / "run_val" / "results.json").read_text())
    test = json.loads((tmp_path / "run_test" / "results.json").read_text())
    assert set(val["methods"]) == {"lors", "random"} and val["n_pairs"] == 12
    assert set(test["methods"]) == {"lors-identity"}      # identity similarity: LoRS with S = I
    assert all(s["selection"] == "epoch chosen on val" for s in val["methods"].values())
    assert test["methods"]["lors-identity"]["selection"].startswith("best epoch on TEST")
    assert test["eval"]["selection"] == "test"
    capsys.readouterr()
    assert main(["compare", str(tmp_path / "run_val"), str(tmp_path / "run_test")]) == 0
    out = capsys.readouterr().out
    table = [line for line in out.splitlines() if line.startswith("|")]
    assert sum(line.startswith("| run |") for line in table) == 1        # one table, one header
    rows = {tuple(c.strip() for c in line.strip("|").split("|"))[:6] for line in table[2:]}
    assert rows == {(str(tmp_path / "run_val"), "shapes", "12", "convnet (distilled on)", "lors", "val"),
                    (str(tmp_path / "run_val"), "shapes", "12", "convnet (distilled on)", "random", "val"),
                    (str(tmp_path / "run_test"), "shapes", "12", "convnet (distilled on)", "lors-identity",
                     f"TEST {TEST_MARK}")}
    assert "epoch chosen on the TEST split" in out
    # the set files were read, not rewritten
    assert "metrics" not in json.loads((tmp_path / "a" / "set.json").read_text())


def test_eval_set_refuses_another_text_space_and_another_set_under_one_name(tmp_path, cache_dir,
                                                                            tiny_data, capsys):
    make_set(tiny_data, tmp_path / "other" / "set", card={"text_tower": "hf:/somewhere/bert"})
    assert _eval(tmp_path, cache_dir, "r", tmp_path / "other" / "set") == 2
    assert capsys.readouterr().err.strip().startswith("vldistill: error: this set was distilled with text_tower=")
    make_set(tiny_data, tmp_path / "one" / "set", seed=1)
    make_set(tiny_data, tmp_path / "two" / "set", seed=2)
    assert _eval(tmp_path, cache_dir, "r", tmp_path / "one" / "set", "eval.num_eval=1") == 0
    assert _eval(tmp_path, cache_dir, "r", tmp_path / "two" / "set", "eval.num_eval=1") == 2
    assert "holds lors results of the set" in capsys.readouterr().err


# ------------------------------------------------------------------ coresets and towers
def test_coreset_methods_use_the_store_and_the_sets_pair_count(tiny_cfg, tiny_data, tmp_path):
    cfg = tiny_cfg(*QUICK, "eval.num_eval=1", "eval.coreset_space=joint")
    store = untrained_store(cfg, tiny_data, tmp_path / "buffer")
    synthetic = make_set(tiny_data, tmp_path / "s" / "set", n=15)
    ctx = EvalContext(cfg, tiny_data, torch.device("cpu"), {"lors": synthetic}, store)
    picked = {m: methods.coreset_for(ctx, m, seed=5) for m in ("herding", "kcenter")}
    assert all(s.n_pairs == 15 and s.card["coreset_space"] == "joint" for s in picked.values())
    assert picked["herding"].card["image_indices"] == methods.coreset_for(ctx, "herding", 6).card["image_indices"]
    summaries = {m: methods.evaluate_method(ctx, m) for m in ("herding", "kcenter")}
    assert set(summaries) == {"herding", "kcenter"}
    assert all(0 <= s["r_mean"] <= 100 and s["n_seeds"] == 1 for s in summaries.values())
    with pytest.raises(Exception, match="needs a trajectory store"):
        methods.coreset_for(EvalContext(cfg, tiny_data, torch.device("cpu"), {}, None), "herding", 0)


def test_cross_architecture_towers_each_train_with_their_own_recipe(tiny_cfg, tiny_data, tmp_path,
                                                                    monkeypatch):
    cfg = tiny_cfg(*QUICK, "eval.num_eval=1", "eval.methods=[lors,random]", "eval.lr=0.03",
                   "eval.towers.timm:resnet10t.lr=0.007", "eval.towers.timm:resnet10t.epochs=1",
                   "eval.towers.timm:resnet10t.augment=flip_crop",
                   "eval.towers.timm:resnet10t.methods=[lors]")
    towers = eval_towers(cfg)
    assert [t.label for t in towers] == ["convnet", "timm:resnet10t"] and towers[0].distilled_on
    seen = []
    real_sgd = evaluate.sgd_for_student

    def spy(model, lr_image, lr_text, *args):
        seen.append((type(model.image_tower).__name__, lr_image, lr_text))
        return real_sgd(model, lr_image, lr_text, *args)
    monkeypatch.setattr(evaluate, "sgd_for_student", spy)
    synthetic = make_set(tiny_data, tmp_path / "s" / "set")
    results = evaluate_all(EvalContext(cfg, tiny_data, torch.device("cpu"), {"lors": synthetic}))
    assert set(results["methods"]) == {"lors", "random"}
    transfer = results["towers"]["timm:resnet10t"]
    assert set(transfer["methods"]) == {"lors"}
    assert transfer["settings"]["lr"] == 0.007
    assert transfer["settings"]["epochs"] == 1 and transfer["settings"]["augment"] == "flip_crop"
    assert seen == [("ConvNet", 0.03, 0.03), ("ConvNet", 0.03, 0.03), ("ResNet", 0.007, 0.007)]


def test_a_tower_key_may_not_shadow_the_distilled_on_tower(tiny_cfg):
    with pytest.raises(Exception, match="give this entry another name"):
        eval_towers(tiny_cfg("eval.towers.convnet.lr=0.1"))
    relabelled = eval_towers(tiny_cfg("eval.towers.wide.image_tower=convnet", "eval.towers.wide.lr=0.2"))
    assert relabelled[1].label == "wide" and relabelled[1].image_tower == "convnet"
    assert relabelled[1].epochs == relabelled[0].epochs             # unset: eval.*


def test_flip_crop_returns_flipped_shifted_crops_of_each_image():
    from vldistill.evaluation.augment import augment
    images = torch.randn(6, 3, 8, 8, generator=torch.Generator().manual_seed(0))
    out = augment(images, "flip_crop", torch.Generator().manual_seed(1))
    assert out.shape == images.shape
    pad = 1                                                      # 8 // 8
    for x, y in zip(images, out):
        candidates = []
        for source in (x, x.flip(-1)):
            padded = torch.nn.functional.pad(source[None], (pad,) * 4, mode="reflect")[0]
            candidates += [padded[:, dy:dy + 8, dx:dx + 8] for dy in range(3) for dx in range(3)]
        assert any(torch.equal(y, c) for c in candidates)
    assert not torch.equal(out, images)                         # something moved
    assert torch.equal(augment(images, "none", torch.Generator()), images)
    with pytest.raises(Exception, match="unknown augmentation"):
        augment(images, "mixup", torch.Generator())


def test_a_missing_tower_checkpoint_is_refused_before_training(tiny_cfg, tmp_path):
    cfg = tiny_cfg(f"eval.towers.timm:resnet18.pretrained_path={tmp_path / 'nope.pth'}")
    with pytest.raises(Exception, match="eval.towers.timm:resnet18.pretrained_path .* not found"):
        eval_towers(cfg)


@pytest.mark.parametrize("name", methods.METHODS.names())
def test_every_registered_method_evaluates_one_seed(name, tiny_cfg, tiny_data, tmp_path):
    """Each method (distilled ones on a saved set of their own) gives a summary whose r_mean is
    the mean of its six recalls."""
    cfg = tiny_cfg(*QUICK, "eval.num_eval=1", "eval.full_epochs=1")
    sets = {name: make_set(tiny_data, tmp_path / name / "set", n=10)} if methods.METHODS.get(name).distilled else {}
    ctx = EvalContext(cfg, tiny_data, torch.device("cpu"), sets, untrained_store(cfg, tiny_data, tmp_path / "b"))
    summary = methods.evaluate_method(ctx, name)
    assert summary["n_seeds"] == 1 and all(0 <= summary[k] <= 100 for k in METRICS)
    assert summary["r_mean"] == pytest.approx(sum(summary[k] for k in METRICS[:-1]) / 6)


def test_a_diverged_model_is_refused_with_what_to_fix_instead_of_scored(tiny_cfg, tiny_data):
    """NaN features rank as garbage (or divide by zero); retrieval_metrics names the cause."""
    from vldistill.errors import NonFiniteError
    from vldistill.algorithms.training import retrieval_metrics
    from vldistill.algorithms.retrieval import recall_at_k
    model = build_student(tiny_cfg().model, tiny_data.dataset.image_size, tiny_data.text_dim, seed=0)
    split, text = tiny_data.split("val"), tiny_data.text["val"]
    with torch.no_grad():
        images = model.encode_image(split.images.get_batch(torch.arange(split.n_images)))
        expected = recall_at_k(images @ model.encode_text(text).t(), split.img2txt, split.txt2img)
    assert retrieval_metrics(model, split, text, torch.device("cpu")) == pytest.approx(expected)
    with torch.no_grad():
        next(model.text_head.parameters()).fill_(float("nan"))
    with pytest.raises(NonFiniteError, match="diverged; lower its lr"):
        retrieval_metrics(model, split, text, torch.device("cpu"))
