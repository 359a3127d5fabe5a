"""Extending vldistill: every registry drives the config and the tests, and what the README's
Extending section adds through the public API -- an image tower with options, a dataset with
options, a distillation algorithm (a matcher) with options, a loss, a similarity and methods
with options -- is each one registered function (plus its options dataclass) and its test,
and runs `vldistill run` on tiny data."""
from __future__ import annotations

import contextlib
import json
from dataclasses import dataclass

import pytest
import torch
from torch import nn

from vldistill.evaluation.augment import AUGMENTATIONS, augment
from vldistill.cli import main
from vldistill.config import ConfigError, doc
from vldistill.configio import OPTION_BLOCKS, load_config, with_overrides
from vldistill.data import DATASETS, CaptionDataset, CaptionSplit, TensorImages
from vldistill.algorithms.losses import LOSSES
from vldistill.algorithms.matching import MATCHERS, tesla_match
from vldistill.evaluation.methods import METHODS, register_distilled, register_method, train_on_set
from vldistill.models import IMAGE_TOWERS, TEXT_TOWERS, create_image_tower
from vldistill.options import option_help
from vldistill.registry import Registry
from vldistill.algorithms.similarity import SIMILARITIES, Similarity

from reliability_helpers import FAST, TINY
from test_datasets_real import check_dataset_builds
from test_matching import check_matcher

# (config key, registry, a value of that registry to write) -- every name choice in the config
CHOICES = [("data.name", DATASETS, "{}"), ("model.image_tower", IMAGE_TOWERS, "{}:x"),
           ("model.text_tower", TEXT_TOWERS, "{}:x"), ("distill.sim_kind", SIMILARITIES, "{}"),
           ("distill.loss", LOSSES, "{}"), ("distill.matching", MATCHERS, "{}"),
           ("eval.augment", AUGMENTATIONS, "{}"), ("eval.methods", METHODS, "[{}]")]


@pytest.mark.parametrize("key,registry,form", CHOICES, ids=[c[0] for c in CHOICES])
def test_every_registered_name_is_accepted_and_nothing_else(key, registry, form):
    for name in registry.names():
        value = load_config(None, [f"{key}={form.format(name)}"])
        assert name in str(value)
    with pytest.raises(ConfigError, match=f"unknown {registry.kind} .*known: {registry.names()[0]}"):
        load_config(None, [f"{key}={form.format('no-such-name')}"])


@pytest.mark.parametrize("block,registry", OPTION_BLOCKS.items(), ids=list(OPTION_BLOCKS))
def test_every_options_block_refuses_an_unknown_option_naming_the_allowed_ones(block, registry):
    for name in registry.names():
        allowed = ", ".join(option_help(registry.options_class(name)))
        with pytest.raises(ConfigError) as err:
            load_config(None, [f"{block}.{name}.no_such=1"])
        message = str(err.value)
        assert message.startswith(f"{block}.{name}: ") and "\n" not in message, message
        assert (f"no option 'no_such'; its options: {allowed}" if allowed else "takes no options") in message
    with pytest.raises(ConfigError, match=f"{block}: unknown {registry.kind} 'no-such-name'; known: "):
        load_config(None, [f"{block}.no-such-name.x=1"])


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




# ------------------------------------------------------------------ what the README adds
# Each component is defined as a user's module would define it; the tests register it through
# the public call (the decorator, applied inside `registered`) and take it out again, so it
# does not leak into the registry-driven tests of other modules.
@contextlib.contextmanager
def removed_after(registry: Registry, name: str):
    try:
        yield
    finally:
        registry.remove(name)


@contextlib.contextmanager
def registered(registry: Registry, name: str, obj, **kwargs):
    with removed_after(registry, name):
        registry.register(name, **kwargs)(obj)
        yield


def run_tiny(tmp_path, cache_dir, *overrides: str) -> dict:
    """`vldistill run` on the tiny config; returns results.json."""
    run_dir = tmp_path / "run"
    assert main(["run", str(TINY), f"run_dir={run_dir}", f"cache_dir={cache_dir}", *FAST, *overrides]) == 0
    return json.loads((run_dir / "results.json").read_text())


# an image tower with options
@dataclass
class MLPOptions:
    hidden: int = doc(32, "width of the hidden layer, the tower's output")

    def __post_init__(self) -> None:
        if self.hidden <= 0:
            raise ConfigError(f"hidden must be > 0, got {self.hidden}")


def mlp(arg, image_size, pretrained_path, *, hidden):          # model.image_tower=mlp
    tower = nn.Sequential(nn.Flatten(), nn.Linear(3 * image_size ** 2, hidden), nn.Tanh())
    tower.num_features = hidden                     # the heads are sized from the tower
    return tower


def test_an_image_tower_with_options_is_one_registered_function(tmp_path, cache_dir, capsys):
    with registered(IMAGE_TOWERS, "mlp", mlp, options=MLPOptions):
        tower = create_image_tower("mlp", 16, hidden=8)
        assert tower(torch.randn(2, 3, 16, 16)).shape == (2, 8)
        with pytest.raises(ConfigError, match=r"^model.image_tower_args.mlp: hidden must be > 0, got 0$"):
            load_config(TINY, ["model.image_tower=mlp", "model.image_tower_args.mlp.hidden=0"])
        assert main(["config", str(TINY), "model.image_tower=mlp"]) == 0
        assert "hidden: 32  # width of the hidden layer, the tower's output" in capsys.readouterr().out
        results = run_tiny(tmp_path, cache_dir, "model.image_tower=mlp", "model.image_tower_args.mlp.hidden=16",
                           "eval.methods=[lors,random]")
    assert set(results["methods"]) == {"lors", "random"}
    manifest = json.loads((tmp_path / "run" / "buffer" / "manifest.json").read_text())
    assert manifest["image_tower"] == "mlp" and manifest["image_tower_args"] == {"hidden": 16}
    assert ["image_tower.1.weight", [16, 3 * 16 * 16]] in manifest["image_params"]     # built with it


# a dataset with options
@dataclass
class ColorsOptions:
    n_train: int = doc(40, "train images (val and test: a quarter as many each)")
    seed: int = doc(0, "the images and their captions are a pure function of it")

    def __post_init__(self) -> None:
        if self.n_train < 8:
            raise ConfigError(f"n_train must be >= 8, got {self.n_train}")


PALETTE = {"red": (220, 30, 30), "green": (30, 190, 60), "blue": (40, 60, 220), "yellow": (230, 210, 40)}
CORNERS = ["top left", "top right", "bottom left", "bottom right"]


def colors(data_cfg, cache_dir, *, n_train, seed) -> CaptionDataset:     # data.name=colors
    """Grainy squares of one colour with a white quarter, each captioned with both."""
    size, half, names = data_cfg.image_size, data_cfg.image_size // 2, list(PALETTE)
    generator = torch.Generator().manual_seed(seed)

    def split(n: int) -> CaptionSplit:
        colour = torch.randint(len(names), (n,), generator=generator).tolist()
        corner = torch.randint(4, (n,), generator=generator).tolist()
        pixels = torch.tensor([PALETTE[names[c]] for c in colour], dtype=torch.uint8)
        pixels = pixels[:, :, None, None].repeat(1, 1, size, size)             # (n, 3, size, size)
        grain = torch.randint(20, pixels.shape, generator=generator, dtype=torch.uint8)
        pixels = pixels - grain          # grain: no two images equal, so the splits share no content
        for i, k in enumerate(corner):
            pixels[i, :, k // 2 * half:(k // 2 + 1) * half, k % 2 * half:(k % 2 + 1) * half] = 255
        captions = [f"a {names[c]} square white at the {CORNERS[k]}" for c, k in zip(colour, corner)]
        return CaptionSplit(TensorImages(pixels, (0.5,) * 3, (0.5,) * 3), captions, torch.arange(n))
    return CaptionDataset("colors", split(n_train), split(n_train // 4), split(n_train // 4),
                          (0.5,) * 3, (0.5,) * 3, size)


def test_a_dataset_with_options_is_one_registered_function(tmp_path, cache_dir):
    with registered(DATASETS, "colors", colors, options=ColorsOptions):
        check_dataset_builds("colors", tmp_path)            # the test every registered dataset gets
        with pytest.raises(ConfigError, match=r"^data.dataset_args.colors: n_train must be >= 8, got 4$"):
            load_config(TINY, ["data.name=colors", "data.dataset_args.colors.n_train=4"])
        results = run_tiny(tmp_path, cache_dir, "data.name=colors", "data.dataset_args.colors.n_train=48",
                           "eval.methods=[lors,random]")
    assert results["dataset"] == "colors" and set(results["methods"]) == {"lors", "random"}
    config = (tmp_path / "run" / "config.yaml").read_text()
    assert "dataset_args:\n    colors:\n      n_train: 48\n      seed: 0\n" in config


# a distillation algorithm with options: TESLA, each synthetic image's gradient clipped
@dataclass
class ClippedOptions:
    max_norm: float = doc(1.0, "each synthetic image's gradient is scaled down to at most this norm")

    def __post_init__(self) -> None:
        if self.max_norm <= 0:
            raise ConfigError(f"max_norm must be > 0, got {self.max_norm}")


def tesla_clipped(student, images, texts, similarity, *args, max_norm, **kwargs):   # distill.matching=
    result = tesla_match(student, images, texts, similarity, *args, **kwargs)
    norms = images.grad.flatten(1).norm(dim=1).clamp(min=max_norm)              # (N,)
    images.grad.mul_((max_norm / norms).view(-1, 1, 1, 1))
    tesla_clipped.norms.append(float(images.grad.flatten(1).norm(dim=1).max()))
    return result


tesla_clipped.norms = []


def lors_clipped(cfg):                                  # eval.methods=[lors-clipped]: a row of its own
    return with_overrides(cfg, ["distill.matching=tesla-clipped"])


def test_a_distillation_algorithm_with_options_is_one_registered_function(tmp_path, cache_dir):
    with registered(MATCHERS, "tesla-clipped", tesla_clipped, options=ClippedOptions), \
            removed_after(METHODS, "lors-clipped"):
        register_distilled("lors-clipped")(lors_clipped)
        check_matcher("tesla-clipped")                      # the test every registered matcher gets
        with pytest.raises(ConfigError, match=r"^distill.matching_args.tesla-clipped: max_norm must be > 0"):
            load_config(TINY, ["distill.matching=tesla-clipped", "distill.matching_args.tesla-clipped.max_norm=0"])
        tesla_clipped.norms.clear()
        results = run_tiny(tmp_path, cache_dir, "distill.matching_args.tesla-clipped.max_norm=1e-3",
                           "eval.methods=[lors-clipped,lors]")
    assert set(results["methods"]) == {"lors-clipped", "lors"}
    assert len(tesla_clipped.norms) == load_config(TINY).distill.iterations       # lors-clipped's set only
    assert max(tesla_clipped.norms) <= 1e-3 * (1 + 1e-5)


# a loss, a similarity, a distilled method and a baseline, the methods with options
class Diagonal(Similarity):
    """S = diag(w), w learned per pair (init 1)."""

    kind = "throwaway-diag"

    def __init__(self, n: int):
        super().__init__(n)
        self.weight = nn.Parameter(torch.ones(n))

    def params(self, indices=None):
        return [self.weight if indices is None else self.weight[indices]]

    def matrix_from(self, params, b):
        return torch.diag(params[0])


def l2(logits, target, eps=0.0):
    return ((torch.sigmoid(logits) - target) ** 2).sum(dim=1).mean()


@dataclass
class DistilledOptions:
    loss: str = doc("kl", "the loss its set is distilled with")


def distilled(cfg, *, loss):
    return with_overrides(cfg, ["distill.sim_kind=throwaway-diag", f"distill.loss={loss}"])


@dataclass
class FirstPairsOptions:
    draw: int = doc(0, "the seed of the one draw of real pairs every evaluation seed trains on")


def first_pairs(ctx, tower, seed, *, draw):
    from vldistill.evaluation.evaluate import random_pairs
    first_pairs.draws.append(draw)
    return train_on_set(ctx.cfg, ctx.data, random_pairs(ctx.cfg, ctx.data, draw, ctx.n_pairs), seed,
                        ctx.device, tower)


first_pairs.draws = []


@pytest.fixture
def throwaway():
    """A loss, a similarity and two methods with options, registered through the public API."""
    LOSSES.register("throwaway-l2")(l2)
    SIMILARITIES.add("throwaway-diag", lambda n, rank, alpha: Diagonal(n))
    register_distilled("throwaway-distilled", options=DistilledOptions)(distilled)
    register_method("throwaway-first-pairs", options=FirstPairsOptions)(first_pairs)
    yield
    for registry, name in ((LOSSES, "throwaway-l2"), (SIMILARITIES, "throwaway-diag"),
                           (METHODS, "throwaway-distilled"), (METHODS, "throwaway-first-pairs")):
        registry.remove(name)


def test_registered_loss_similarity_and_methods_with_options_run_end_to_end(throwaway, tmp_path, cache_dir):
    first_pairs.draws.clear()
    results = run_tiny(tmp_path, cache_dir, "eval.methods=[throwaway-distilled,throwaway-first-pairs,random]",
                       "eval.method_args.throwaway-first-pairs.draw=7",
                       "eval.method_args.throwaway-distilled.loss=throwaway-l2")
    run_dir = tmp_path / "run"
    assert set(results["methods"]) == {"throwaway-distilled", "throwaway-first-pairs", "random"}
    assert set(first_pairs.draws) == {7}
    card = json.loads((run_dir / "throwaway-distilled" / "set.json").read_text())
    assert card["similarity"]["kind"] == "throwaway-diag" and card["loss"] == "throwaway-l2"
    records = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines()]
    grads = [r for r in records if r.get("method") == "throwaway-distilled"]
    assert len(grads) == load_config(TINY).distill.iterations and all(r["loss"] > 0 for r in grads)
    with pytest.raises(ConfigError, match="eval.method_args.throwaway-first-pairs: .* no option 'seed'; "
                                          "its options: draw"):
        load_config(TINY, ["eval.method_args.throwaway-first-pairs.seed=1"])
