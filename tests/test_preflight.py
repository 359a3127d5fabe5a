"""The pre-flight check: a mistake the config and the dataset's sizes can show stops every command
before its first expensive step, in seconds, with one line per problem naming the key."""
from __future__ import annotations

import time

import pytest
import torch
from reliability_helpers import FAST, TINY, run_cli, tiny_store

import vldistill.pipeline as pipeline
from vldistill.configio import load_config
from vldistill.models.batchnorm import MIN_VALUES, batchnorm_positions, check_batchnorm
from vldistill.models.student import build_student
from vldistill.preflight import PreflightError, preflight

OTHER_TOWER = ["eval.towers.conv2.image_tower=convnet",             # a tower asking for a set not made
               "eval.towers.conv2.methods=[lors,lors-identity]"]


@pytest.fixture
def no_stage_runs(monkeypatch):
    """Any stage starting fails the test: the pre-flight must stop the command before."""
    def forbidden(*args, **kwargs):
        raise AssertionError("a stage ran")
    for name in ("stage_buffer", "stage_distill", "stage_eval", "prepare_data"):
        monkeypatch.setattr(pipeline, name, forbidden)


def test_config_mistakes_are_all_caught_before_any_stage_in_seconds(tmp_path, cache_dir, capsys, no_stage_runs):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    start = time.perf_counter()
    code, err = run_cli(capsys, "run", TINY, f"run_dir={blocker / 'run'}", f"cache_dir={cache_dir}",
                        "eval.methods=[lors,random]", *OTHER_TOWER, "distill.n_pairs=400")
    seconds = time.perf_counter() - start
    assert code == 2
    assert err.splitlines() == [
        "vldistill: error: 3 problems found before anything ran:",
        f"vldistill: error: run_dir: {str(blocker)!r} is a file, not a folder, so "
        f"{str(blocker / 'run')!r} cannot be created",
        "vldistill: error: eval.towers.conv2.methods: asks for 'lors-identity', which this run does "
        "not distill (the distilled methods of eval.methods: lors): add it to eval.methods or drop it here",
        "vldistill: error: distill.n_pairs: 400 pairs (lors) but the shapes train split has 300 images: "
        "lower it"]
    assert seconds < 30, seconds                # (the tiny data is cached; a loaded 2-core CPU)


@pytest.mark.parametrize("command", ["run", "buffer", "distill", "eval"])
def test_every_command_checks_before_its_first_step(command, tmp_path, cache_dir, capsys, no_stage_runs):
    code, err = run_cli(capsys, command, TINY, f"run_dir={tmp_path / 'run'}", f"cache_dir={cache_dir}",
                        f"buffer.dir={tiny_store(cache_dir)}", "eval.methods=[lors,random]", *OTHER_TOWER, *FAST)
    assert code == 2 and "eval.towers.conv2.methods: asks for 'lors-identity'" in err, err
    assert not (tmp_path / "run").exists()


def test_sweep_budgets_are_checked_against_the_split(tmp_path, cache_dir, capsys, no_stage_runs):
    code, err = run_cli(capsys, "sweep", TINY, f"run_dir={tmp_path / 'run'}", f"cache_dir={cache_dir}",
                        "sweep.n_pairs=[10,1000]", "eval.methods=[lors,random]")
    assert code == 2 and err == ("vldistill: error: sweep.n_pairs: 1000 pairs (lors) but the shapes "
                                 "train split has 300 images: lower it"), err


def test_what_distill_and_eval_read_must_exist(tmp_path, cache_dir, capsys, no_stage_runs):
    common = [TINY, f"run_dir={tmp_path / 'run'}", f"cache_dir={cache_dir}", f"buffer.dir={tmp_path / 'none'}"]
    code, err = run_cli(capsys, "distill", *common, "eval.methods=[lors]")
    assert code == 2 and err.startswith(f"vldistill: error: buffer.dir: lors: no trajectory store at "
                                        f"{str(tmp_path / 'none')!r}"), err
    code, err = run_cli(capsys, "eval", *common, "eval.methods=[lors,herding]")
    assert code == 2 and err.splitlines()[1:] == [
        f"vldistill: error: eval.methods: asks for lors, whose set {str(tmp_path / 'run' / 'set.safetensors')!r} "
        "does not exist: distill it first (`vldistill distill`) or drop it",
        f"vldistill: error: buffer.dir: herding: no trajectory store at {str(tmp_path / 'none')!r} "
        "(manifest.json missing): run `vldistill buffer CONFIG` first or fix buffer.dir"], err


def test_memory_that_cannot_fit_is_found_before_the_experts(tiny_cfg, monkeypatch):
    import vldistill.distill.memory as memory
    monkeypatch.setattr(memory, "device_memory", lambda device: (2**20, 2**30))
    with pytest.raises(PreflightError) as caught:
        preflight(tiny_cfg(), "run")
    assert [p.key for p in caught.value.problems] == ["distill.mini_batch"] * 2      # lors, lors-identity
    assert "distillation needs about" in str(caught.value) and "1 MiB available" in str(caught.value)
    assert preflight(tiny_cfg(), "buffer") is not None          # experts alone do not distill


# ---------------------------------------------------------------- batch norm
def _resnet(tiny_cfg, *overrides):
    cfg = tiny_cfg("model.image_tower=timm:resnet10t", *overrides)
    return cfg, build_student(cfg.model, cfg.data.image_size, 8)


def test_batch_norm_refuses_a_batch_it_cannot_normalise(tiny_cfg):
    cfg, model = _resnet(tiny_cfg)                 # 16 px: the last blocks run at 1 x 1
    layer, positions = batchnorm_positions(model, 16, 8)
    assert positions == 1 and layer == "image_tower.layer3.0.bn1"     # the first at 1 x 1
    model.train()
    with pytest.raises(ValueError, match="Expected more than 1 value per channel"):   # what it saves
        model(torch.randn(1, 3, 16, 16), torch.randn(1, 8))
    with pytest.raises(Exception, match=r"^distill.mini_batch: a training batch of 1 reaches batch-norm "
                                        r"layer .image_tower.layer3.0.bn1. at 1 position\(s\) per channel"):
        check_batchnorm(model, 16, 8, {"distill.mini_batch": 1})
    check_batchnorm(model, 16, 8, {"distill.mini_batch": MIN_VALUES})
    # the pre-flight finds every batch: 21 pairs in batches of 10 leave one of 1
    with pytest.raises(PreflightError) as caught:
        preflight(tiny_cfg("model.image_tower=timm:resnet10t", "distill.n_pairs=21",
                           "eval.batch_size=10", "eval.methods=[lors]"), "run")
    assert [p.key for p in caught.value.problems] == ["eval.batch_size"]
    # frozen batch norm (running statistics) normalises any batch
    _, frozen = _resnet(tiny_cfg, "model.batchnorm=frozen")
    assert batchnorm_positions(frozen, 16, 8) is None
