"""Numerical faults: a NaN/inf in the matching loss or in any gradient -- images, texts, each
similarity parameter, either lr -- skips the update; K in a row stop the run with the last
good checkpoint kept; nothing non-finite is ever checkpointed; learned lrs stay positive."""
from __future__ import annotations

import json
import math
import re

import pytest
import torch

import vldistill.distill.stage as distill_module
from reliability_helpers import FAST, run_cli, tiny_store
from vldistill.distill.stage import Distiller, NonFiniteError, run_distill
from vldistill.distill.divergence import DivergedError
from vldistill.algorithms.synset import DistilledSet
from vldistill.buffer.store import TrajectoryStore
from vldistill.algorithms.matching import MATCHERS, MatchResult

CPU = torch.device("cpu")
NAN = float("nan")


def fake_match(corrupt: str | None = None, grad_lr: tuple[float, float] = (0.5, 0.5)):
    """A stand-in for the matcher (tesla_match): small finite gradients everywhere, then one entry spoiled."""
    def match(student, images, texts, similarity, *args, **kwargs) -> MatchResult:
        images.grad = torch.full_like(images, 1e-3)
        texts.grad = torch.full_like(texts, 1e-3)
        for p in similarity.parameters():
            p.grad = torch.full_like(p, 1e-3)
        result = MatchResult(1.0, 0.5, 0.5, *grad_lr)
        if corrupt == "loss":
            result.loss = NAN
        elif corrupt in ("grad_lr_img", "grad_lr_txt"):
            setattr(result, corrupt, math.inf)
        elif corrupt in ("images", "texts"):
            getattr(locals()[corrupt], "grad").view(-1)[7] = NAN
        elif corrupt is not None:                    # similarity.K: its K-th parameter
            list(similarity.parameters())[int(corrupt.split(".")[1])].grad.view(-1)[0] = -math.inf
        return result
    return match


@pytest.fixture
def make_distiller(tiny_cfg, tiny_data, cache_dir):
    store = TrajectoryStore(tiny_store(cache_dir))

    def make(*overrides: str) -> Distiller:
        return Distiller(tiny_cfg(*FAST, *overrides), tiny_data, store, CPU)
    return make


def _state(distiller: Distiller) -> dict[str, torch.Tensor]:
    return {k: v.clone() for k, v in distiller.state_tensors().items()
            if k not in ("generator", "counters")}


CORRUPTIONS = ["loss", "images", "texts", "similarity.0", "similarity.1", "similarity.2",
               "grad_lr_img", "grad_lr_txt"]


@pytest.mark.parametrize("corrupt", [None, *CORRUPTIONS])
def test_any_non_finite_gradient_skips_the_whole_update(corrupt, make_distiller, monkeypatch):
    distiller = make_distiller()
    assert len(list(distiller.similarity.parameters())) == 3           # lowrank: w, L, R
    monkeypatch.setitem(MATCHERS._entries, "tesla", fake_match())
    distiller.step()                                                   # momentum buffers exist now
    before = _state(distiller)
    monkeypatch.setitem(MATCHERS._entries, "tesla", fake_match(corrupt))
    record = distiller.step()
    after = _state(distiller)
    changed = [k for k in before if not torch.equal(before[k], after[k])]
    if corrupt is None:                      # the control: a clean step moves every value and buffer
        assert not record["skipped"] and {"value.0", "value.1", "value.5", "momentum.3.0"} <= set(changed)
        return
    assert record["skipped"] and distiller.skipped == 1 and distiller.bad_in_a_row == 1
    assert changed == []                     # values, lrs, momentum buffers, best-window: untouched


def _run(cfg, tiny_data, cache_dir, tmp_path):
    return run_distill(cfg, tiny_data, TrajectoryStore(tiny_store(cache_dir)), tmp_path / "set",
                       tmp_path / "ckpt.safetensors", tmp_path / "metrics.jsonl", CPU)


def test_k_bad_iterations_stop_with_the_last_good_checkpoint(tiny_cfg, tiny_data, cache_dir, tmp_path,
                                                            monkeypatch):
    plan = iter([None, None, None, "loss", None, None, "images", "grad_lr_img", "loss"])
    good, bad = fake_match(), {c: fake_match(c) for c in CORRUPTIONS}

    def scripted(*args, **kwargs):
        corrupt = next(plan)
        return (bad[corrupt] if corrupt else good)(*args, **kwargs)
    monkeypatch.setitem(MATCHERS._entries, "tesla", scripted)
    cfg = tiny_cfg(*FAST, "distill.iterations=20", "distill.max_bad_steps=3")
    with pytest.raises(NonFiniteError, match=r"^3 iterations in a row .*distill\.lr_img .*resume") as caught:
        _run(cfg, tiny_data, cache_dir, tmp_path)
    assert "\n" not in str(caught.value)
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert [r["it"] for r in records if r["skipped"]] == [4, 7, 8, 9]
    # checkpoints at 2 and 6; not at 4 (its iteration was skipped) nor 8; nothing after the error
    info = json.loads((tmp_path / "ckpt.json").read_text())
    assert info["iteration"] == 6 and info["skipped"] == 1
    assert not (tmp_path / "set.safetensors").exists()


def test_a_set_gone_non_finite_is_never_checkpointed(make_distiller, tmp_path):
    distiller = make_distiller()
    path = tmp_path / "ckpt.safetensors"
    distill_module._checkpoint(distiller, path)
    good = path.read_bytes()
    with torch.no_grad():
        distiller.texts[3, 5] = math.inf
    with pytest.raises(NonFiniteError, match=r"refusing to write checkpoint .*value\.1"):
        distill_module._checkpoint(distiller, path)
    assert path.read_bytes() == good                 # the last good one stays, byte for byte


def test_real_divergence_stops_the_cli_with_one_line(tmp_path, cache_dir, capsys):
    """No stand-ins: lr_img=1e30 blows the images up after one update; the run stops, naming it."""
    run_dir = tmp_path / "run"
    code, err = run_cli(capsys, "distill", "configs/tiny.yaml", f"run_dir={run_dir}",
                        f"cache_dir={cache_dir}", f"buffer.dir={tiny_store(cache_dir)}",
                        "eval.methods=[lors]", *FAST, "distill.lr_img=1e30", "distill.iterations=8",
                        "distill.checkpoint_every=1", "distill.max_bad_steps=2",
                        "distill.max_growth=0")     # (the divergence guard would stop it first)
    assert code == 2 and err.startswith("vldistill: error: 2 iterations in a row") and "lr_img (1e+30)" in err
    from vldistill.distill.checkpoint import read_checkpoint
    checkpoint = run_dir / "checkpoints" / "lors.safetensors"
    state, info = read_checkpoint(checkpoint, json.loads(checkpoint.with_suffix(".json").read_text())["setup"])
    assert info["iteration"] == 1                    # the state before the failing iterations
    assert all(torch.isfinite(t).all() for t in state.values() if t.is_floating_point())


# ---------------------------------------------------------------- learned lrs
def test_linear_lr_is_clamped_at_min_lr_and_reported(make_distiller, monkeypatch):
    distiller = make_distiller("distill.lr_param=linear", "distill.min_lr=0.001")
    monkeypatch.setitem(MATCHERS._entries, "tesla", fake_match(grad_lr=(1e9, 1.0)))   # pushes lr_img << 0
    record = distiller.step()
    assert record["lr_event"] == "clamped" and not record["skipped"]
    assert distiller.lrs()[0] == pytest.approx(0.001) and 0.001 < distiller.lrs()[1] < 0.1


def test_log_lr_stays_positive_and_an_underflow_is_refused(make_distiller, monkeypatch):
    distiller = make_distiller("distill.lr_param=log")
    monkeypatch.setitem(MATCHERS._entries, "tesla", fake_match(grad_lr=(2e4, 2e4)))
    for _ in range(3):
        record = distiller.step()
        assert record["lr_event"] is None and all(0 < lr < 0.1 for lr in distiller.lrs())
    before = distiller.lrs()
    monkeypatch.setitem(MATCHERS._entries, "tesla", fake_match(grad_lr=(1e12, 1.0)))  # exp underflows to 0
    record = distiller.step()
    assert record["lr_event"] == "rejected" and distiller.lrs() == before


@pytest.mark.parametrize("param, extra", [("linear", ["distill.max_lr=1.0"]), ("log", [])])
def test_exploding_lr_update_is_refused_not_trained_on(param, extra, make_distiller, monkeypatch):
    distiller = make_distiller(f"distill.lr_param={param}", *extra)
    monkeypatch.setitem(MATCHERS._entries, "tesla", fake_match())
    distiller.step()
    lr_before = distiller.lrs()
    buffer_before = distiller.optimizer.state[distiller.lr_raw]["momentum_buffer"].clone()
    images_before = distiller.images.detach().clone()
    monkeypatch.setitem(MATCHERS._entries, "tesla", fake_match(grad_lr=(-1e12, 0.5)))
    record = distiller.step()
    assert record["lr_event"] == "rejected" and not record["skipped"]
    assert distiller.lrs() == lr_before              # linear: above max_lr; log: exp overflows to inf
    assert torch.equal(distiller.optimizer.state[distiller.lr_raw]["momentum_buffer"], buffer_before)
    assert not torch.equal(distiller.images.detach(), images_before)    # the rest of the update went in


# ---------------------------------------------------------------- finite divergence
def test_a_loss_that_grows_past_the_bound_stops_before_the_update(tiny_cfg, tiny_data, cache_dir, tmp_path,
                                                                  monkeypatch):
    """Stand-in matcher: the matching loss is 1, 2, then 50; with max_growth=20 the third
    iteration stops the run before its update, and the set after the second one is saved."""
    losses, good = iter([1.0, 2.0, 50.0]), fake_match()

    def scripted(*args, **kwargs):
        result = good(*args, **kwargs)
        result.loss = next(losses)
        return result
    monkeypatch.setitem(MATCHERS._entries, "tesla", scripted)
    cfg = tiny_cfg(*FAST, "distill.iterations=10", "distill.max_growth=20")
    with pytest.raises(DivergedError, match=r"^distillation diverged at iteration 3: the matching loss grew "
                                            r"to 50, 50 times its start \(distill.max_growth=20\); lower "
                                            r"distill.lr_lr .* the last checkpoint is kept$"):
        _run(cfg, tiny_data, cache_dir, tmp_path)
    saved = DistilledSet.load(tmp_path / "set_last_good")
    second = Distiller(cfg, tiny_data, TrajectoryStore(tiny_store(cache_dir)), CPU)
    monkeypatch.setitem(MATCHERS._entries, "tesla", good)
    second.step(), second.step()
    assert torch.equal(saved.images, second.images.detach())        # two updates, not three
    record = json.loads((tmp_path / "metrics.jsonl").read_text().splitlines()[-1])
    assert record["it"] == 3 and record["diverged"] == "loss" and record["growth"]["loss"] == 50.0


def test_a_real_divergence_stops_with_the_last_good_set_saved(tmp_path, cache_dir, capsys):
    """No stand-ins: at lr_img=300 the tiny set's images grow to about 4, 6, 7 times their start
    RMS in the first three iterations; a bound of 6.5 stops the run at the third, whose set is
    never written anywhere."""
    run_dir = tmp_path / "run"
    common = ["distill", "configs/tiny.yaml", f"run_dir={run_dir}", f"cache_dir={cache_dir}",
              f"buffer.dir={tiny_store(cache_dir)}", "eval.methods=[lors]", *FAST,
              "distill.iterations=40", "distill.checkpoint_every=2", "distill.lr_img=300"]
    code, err = run_cli(capsys, *common, "distill.max_growth=6.5")
    found = re.match(r"vldistill: error: distillation diverged at iteration (\d+): the synthetic images' RMS "
                     r"grew to \S+, (\S+) times its start \(distill.max_growth=6.5\); lower distill.lr_img "
                     r"\(lr_img 300, lr_txt 1, lr_lr 1e-05\)\. The set before that update is saved at "
                     r"'(.*)'; the last checkpoint is kept$", err)
    assert code == 2 and found, err
    stopped, growth = int(found.group(1)), float(found.group(2))
    assert stopped == 3 and growth > 6.5 and found.group(3) == str(run_dir / "set_last_good.safetensors")
    last_good = DistilledSet.load(run_dir / "set_last_good")
    # the same run told to stop one iteration earlier ends with exactly that set
    code, err = run_cli(capsys, *common, f"run_dir={tmp_path / 'shorter'}", f"distill.iterations={stopped - 1}")
    assert code == 0, err
    assert torch.equal(DistilledSet.load(tmp_path / "shorter" / "set").images, last_good.images)
    checkpoint = json.loads((run_dir / "checkpoints" / "lors.json").read_text())
    assert checkpoint["iteration"] == 2                                     # the last good one stays
