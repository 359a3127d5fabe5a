"""Extending vldistill: every registry drives the config and the tests, and a loss, a similarity,
a tower and a method registered through the public API (as the README's Extending section
shows) run end to end."""
from __future__ import annotations

import json

import pytest
import torch
from torch import nn

from vldistill.augment import AUGMENTATIONS, augment
from vldistill.cli import main
from vldistill.config import ConfigError
from vldistill.configio import load_config, with_overrides
from vldistill.data import DATASETS
from vldistill.losses import LOSSES
from vldistill.methods import METHODS, register_distilled, register_method, train_on_set
from vldistill.models import IMAGE_TOWERS, TEXT_TOWERS
from vldistill.similarity import SIMILARITIES, Similarity

from reliability_helpers import FAST, TINY

# (config key, registry, a value of that registry to write) -- every name choice in the config
CHOICES = [("data.name", DATASETS, "{}"), ("model.image_tower", IMAGE_TOWERS, "{}:x"),
           ("model.text_tower", TEXT_TOWERS, "{}:x"), ("distill.sim_kind", SIMILARITIES, "{}"),
           ("distill.loss", LOSSES, "{}"), ("eval.augment", AUGMENTATIONS, "{}"),
           ("eval.methods", METHODS, "[{}]")]


@pytest.mark.parametrize("key,registry,form", CHOICES, ids=[c[0] for c in CHOICES])
def test_every_registered_name_is_accepted_and_nothing_else(key, registry, form):
    for name in registry.names():
        value = load_config(None, [f"{key}={form.format(name)}"])
        assert name in str(value)
    with pytest.raises(ConfigError, match=f"unknown {registry.kind} .*known: {registry.names()[0]}"):
        load_config(None, [f"{key}={form.format('no-such-name')}"])


def test_every_shipped_config_chooses_registered_names():
    from pathlib import Path
    for path in sorted((Path(__file__).parents[1] / "configs").glob("*.yaml")):
        cfg = load_config(path)
        assert cfg.data.name in DATASETS and cfg.distill.loss in LOSSES, path.name
        assert cfg.model.image_tower.partition(":")[0] in IMAGE_TOWERS, path.name
        assert all(m in METHODS for m in cfg.eval.methods), path.name


@pytest.mark.parametrize("name", AUGMENTATIONS.names())
def test_every_augmentation_keeps_shapes_and_follows_its_generator(name):
    images = torch.randn(5, 3, 16, 16)
    first = augment(images, name, torch.Generator().manual_seed(3))
    again = augment(images, name, torch.Generator().manual_seed(3))
    assert first.shape == images.shape and first.dtype == images.dtype and torch.equal(first, again)
    if name != "none":          # a real augmentation moves some image for some draw
        assert any(not torch.equal(augment(images, name, torch.Generator().manual_seed(s)), images)
                   for s in range(5))


# ------------------------------------------------------------------ one of each, end to end
class Marker(nn.Module):
    """A tower that counts its forward calls, to show the registered builder was used."""

    calls = 0

    def __init__(self, image_size: int):
        super().__init__()
        self.linear = nn.Linear(3 * image_size * image_size, 32)
        self.num_features = 32

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        Marker.calls += 1
        return torch.tanh(self.linear(x.flatten(1)))


class ScaledIdentity(Similarity):
    """S = diag(w), w learned per pair (init 1)."""

    kind = "throwaway-diag"

    def __init__(self, n: int):
        super().__init__(n)
        self.weight = nn.Parameter(torch.ones(n))

    def params(self, indices=None):
        return [self.weight if indices is None else self.weight[indices]]

    def matrix_from(self, params, b):
        return torch.diag(params[0])


@pytest.fixture
def throwaway():
    """A loss, a similarity, a tower and two methods registered through the public API."""
    @LOSSES.register("throwaway-l2")
    def l2(logits, target, eps=0.0):
        return ((torch.sigmoid(logits) - target) ** 2).sum(dim=1).mean()

    SIMILARITIES.add("throwaway-diag", lambda n, rank, alpha: ScaledIdentity(n))

    @IMAGE_TOWERS.register("throwaway-mlp")
    def mlp(arg, image_size, pretrained_path, **kw):
        return Marker(image_size)

    @register_distilled("throwaway-distilled")
    def distilled(cfg):
        return with_overrides(cfg, ["distill.sim_kind=throwaway-diag", "distill.loss=throwaway-l2"])

    @register_method("throwaway-first-pairs")
    def first_pairs(ctx, tower, seed):
        from vldistill.evaluate import random_pairs
        return train_on_set(ctx.cfg, ctx.data, random_pairs(ctx.cfg, ctx.data, 0, ctx.n_pairs), seed,
                            ctx.device, tower)
    yield
    for registry, name in ((LOSSES, "throwaway-l2"), (SIMILARITIES, "throwaway-diag"),
                           (IMAGE_TOWERS, "throwaway-mlp"), (METHODS, "throwaway-distilled"),
                           (METHODS, "throwaway-first-pairs")):
        registry.remove(name)


def test_registered_loss_similarity_tower_and_methods_run_end_to_end(throwaway, tmp_path, cache_dir):
    run_dir = tmp_path / "run"
    Marker.calls = 0
    code = main(["run", str(TINY), f"run_dir={run_dir}", f"cache_dir={cache_dir}", *FAST,
                 "model.image_tower=throwaway-mlp",
                 "eval.methods=[throwaway-distilled,throwaway-first-pairs,random]"])
    assert code == 0 and Marker.calls > 0
    results = json.loads((run_dir / "results.json").read_text())
    assert set(results["methods"]) == {"throwaway-distilled", "throwaway-first-pairs", "random"}
    card = json.loads((run_dir / "throwaway-distilled" / "set.json").read_text())
    assert card["similarity"]["kind"] == "throwaway-diag" and card["loss"] == "throwaway-l2"
    assert card["image_tower"] == "throwaway-mlp"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    grads = [r for r in records if r.get("method") == "throwaway-distilled"]
    assert len(grads) == load_config(TINY).distill.iterations and all(r["loss"] > 0 for r in grads)
