"""The whole pipeline on the tiny config, in-process, through the CLI's main()."""
import json
from pathlib import Path

import pytest
import torch

from vldistill.cli import main
from vldistill.configio import load_config
from vldistill.buffer.store import TrajectoryStore
from vldistill.algorithms.retrieval import METRICS
from vldistill.algorithms.synset import DistilledSet

CONFIGS = Path(__file__).resolve().parents[1] / "configs"


def test_run_writes_results_for_every_method(tmp_path, cache_dir, capsys):
    run_dir = tmp_path / "run"
    code = main(["run", "configs/tiny.yaml", f"run_dir={run_dir}", f"cache_dir={cache_dir}"])
    assert code == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["dataset"] == "shapes" and results["n_pairs"] == 20
    assert set(results["methods"]) == {"lors", "lors-identity", "random", "full"}
    for summary in results["methods"].values():
        for key in METRICS:
            assert 0.0 <= summary[key] <= 100.0
        assert summary["n_seeds"] == 2 and summary["r_mean_std"] >= 0.0
        assert summary["r_mean"] == pytest.approx(sum(summary[k] for k in METRICS[:-1]) / 6)
    ceilings = results["ceilings"]          # the test split's: shapes knows its truth
    assert set(ceilings) == {"oracle", "chance"} and all(list(c) == list(METRICS) for c in ceilings.values())
    assert ceilings["chance"]["r_mean"] < ceilings["oracle"]["r_mean"] < 100
    table = capsys.readouterr().out
    assert "| lors |" in table and "| full |" in table
    assert "| oracle (perfect ranker) |" in table and "| chance |" in table
    # the sets load back and lors-identity really has the identity similarity
    lors = DistilledSet.load(run_dir)
    identity = DistilledSet.load(run_dir / "lors-identity" / "set")
    assert lors.images.shape == (20, 3, 16, 16) and lors.text_embeddings.shape == (20, 384)
    assert lors.similarity.kind == "lowrank" and identity.similarity.kind == "identity"
    torch.testing.assert_close(identity.similarity_matrix(), torch.eye(20))
    assert (run_dir / "report" / "lors_grid.png").is_file()
    # one metrics record per distill iteration and method
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    assert sum(r["stage"] == "distill" for r in records) == 2 * 4


def test_buffer_keeps_only_usable_epochs(tiny_cfg, tiny_data):
    from vldistill.buffer.experts import run_buffer
    cfg = tiny_cfg("buffer.epochs=4", "distill.max_start_epoch=2", "distill.expert_epochs=1")
    store = run_buffer(cfg, tiny_data, torch.device("cpu"), TrajectoryStore(cfg.run_dir))
    manifest = store.manifest()
    assert manifest["epochs"] == [0, 1, 2]
    assert store.load(0, 2).image.shape == (manifest_numel(manifest["image_params"]),)
    with pytest.raises(Exception, match="no epoch 3"):
        store.load(0, 3)
    history = store.expert_metrics(0)["history"]
    assert [h["epoch"] for h in history] == [1, 2, 3, 4]          # trained 4, stored 0..2


def manifest_numel(layout):
    total = 0
    for _, shape in layout:
        n = 1
        for s in shape:
            n *= s
        total += n
    return total


def test_user_error_is_one_line(tmp_path, capsys):
    code = main(["run", "configs/tiny.yaml", f"run_dir={tmp_path}", "distill.rnak=3"])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert err == "vldistill: error: unknown config key 'distill.rnak'; did you mean 'distill.rank'?"


def _leaves(node: dict, prefix: str = "") -> dict:
    out = {}
    for key, value in node.items():
        if isinstance(value, dict) and value:
            out |= _leaves(value, f"{prefix}{key}.")
        else:
            out[prefix + key] = value
    return out


@pytest.mark.parametrize("path", sorted(CONFIGS.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_loads_with_each_written_key_in_effect(path):
    """A config in configs/ that no longer validates, or a key whose value is silently replaced
    (by a default or a mode), would only show when a user runs it."""
    import yaml
    from omegaconf import OmegaConf
    written = _leaves(yaml.safe_load(path.read_text()))
    loaded = OmegaConf.structured(load_config(path))
    for key, value in written.items():
        actual = OmegaConf.select(loaded, key)
        actual = OmegaConf.to_container(actual) if OmegaConf.is_config(actual) else actual
        assert actual == value, f"{path.name}: {key} is {actual!r}, the file says {value!r}"


def test_eval_every_scores_the_set_during_distillation(tmp_path, cache_dir):
    """distill.eval_every: the set is evaluated at iteration 0 and every k after it (the
    reference's eval_it), logged for the curves; the final set is the same as without it."""
    run_dir = tmp_path / "run"
    from reliability_helpers import FAST, tiny_store
    common = ["distill", "configs/tiny.yaml", f"cache_dir={cache_dir}", f"buffer.dir={tiny_store(cache_dir)}",
              *FAST, "eval.methods=[lors]", "eval.num_eval=1", "eval.epochs=2"]
    assert main([*common, f"run_dir={run_dir}", "distill.eval_every=2"]) == 0
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    scored = [r for r in records if r["stage"] == "distill_eval"]
    assert [r["it"] for r in scored] == [0, 2, 4] and all(0 <= r["r_mean"] <= 100 for r in scored)
    assert main([*common, f"run_dir={tmp_path / 'plain'}"]) == 0
    assert (run_dir / "set.safetensors").read_bytes() == (tmp_path / "plain" / "set.safetensors").read_bytes()


@pytest.mark.slow
def test_pretrained_demo_config_runs_end_to_end_at_tiny_size(tmp_path, cache_dir):
    """configs/demo_pretrained.yaml (EfficientNet-Lite0 from the packaged ImageNet weights, LoRS
    fine-tuning it and RepBlend on its frozen features, the frozen-feature evaluation tower) on a
    few dozen images: every method of the config gets a row on both towers. (Mini-batch 8: batch
    statistics of 4 images at 1x1 spatial size blow the student step up.)"""
    run_dir = tmp_path / "run"
    code = main(["run", str(CONFIGS / "demo_pretrained.yaml"), f"run_dir={run_dir}", f"cache_dir={cache_dir}",
                 "data.shapes_train=40", "data.shapes_val=10", "data.shapes_test=10", "data.image_size=32",
                 "buffer.batch_size=20", "distill.n_pairs=8", "distill.mini_batch=8", "distill.rank=2",
                 "distill.iterations=2", "distill.syn_steps=2", "eval.num_eval=1", "eval.epochs=2",
                 "eval.val_every=1", "eval.full_epochs=1"])
    assert code == 0
    results = json.loads((run_dir / "results.json").read_text())
    methods = load_config(CONFIGS / "demo_pretrained.yaml").eval.methods
    assert set(results["methods"]) == set(methods) == set(results["towers"]["effnet-frozen"]["methods"])
    assert (run_dir / "buffer-heads" / "expert_000.safetensors").is_file()     # RepBlend's own experts
