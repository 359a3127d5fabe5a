"""Caption datasets by name, and the prepared data every stage works from.

`build_dataset(data_cfg, cache_dir)` turns a `DataConfig` into a `CaptionDataset`;
`prepare_data(cfg)` adds the frozen text tower's embedding of every caption (cached).
Register another dataset with `@register_dataset("name")`.
"""
from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

from ..errors import UnknownNameError, UserError
from ..io import read_tensors, write_tensors
from .shapes import build_shapes
from .splits import CaptionDataset, CaptionSplit, TensorImages, normalize_caption
from .text_cache import default_cache_dir, embed_captions

log = logging.getLogger(__name__)

_DATASETS: dict[str, Callable[..., CaptionDataset]] = {}


def register_dataset(name: str):
    """Decorator: `fn(data_cfg, cache_dir) -> CaptionDataset` becomes `data.name: NAME`."""
    def wrap(fn: Callable[..., CaptionDataset]):
        _DATASETS[name] = fn
        return fn
    return wrap


def list_datasets() -> list[str]:
    return sorted(_DATASETS)


def build_dataset(data_cfg, cache_dir: str | Path | None = None) -> CaptionDataset:
    if data_cfg.name not in _DATASETS:
        raise UnknownNameError(f"unknown dataset {data_cfg.name!r}; known: {', '.join(list_datasets())}")
    return _DATASETS[data_cfg.name](data_cfg, Path(cache_dir) if cache_dir else default_cache_dir())


SHAPES_FORMAT = 1       # bump when the generator changes, so stale caches are not read


@register_dataset("shapes")
def _shapes(data_cfg, cache_dir: Path) -> CaptionDataset:
    """The embedded dataset; generated once per (sizes, seed), then read from the cache."""
    spec = {"format": SHAPES_FORMAT, "train": data_cfg.shapes_train, "val": data_cfg.shapes_val,
            "test": data_cfg.shapes_test, "size": data_cfg.image_size, "seed": data_cfg.shapes_seed,
            "max_words": data_cfg.max_words}
    key = hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / "shapes" / f"{key}.safetensors"
    if path.is_file():
        tensors = read_tensors(path)
        meta = json.loads(bytes(tensors.pop("meta").tolist()).decode())
        mean, std = tuple(meta["mean"]), tuple(meta["std"])
        splits = {name: CaptionSplit(TensorImages(tensors[f"{name}.pixels"], mean, std),
                                     meta["captions"][name], tensors[f"{name}.caption_image"],
                                     [f"{name}/{i:05d}" for i in range(len(tensors[f"{name}.pixels"]))])
                  for name in ("train", "val", "test")}
        return CaptionDataset("shapes", splits["train"], splits["val"], splits["test"], mean, std,
                              data_cfg.image_size)
    log.info("generating the shapes dataset (%d/%d/%d images)", data_cfg.shapes_train,
             data_cfg.shapes_val, data_cfg.shapes_test)
    dataset = build_shapes(data_cfg.shapes_train, data_cfg.shapes_val, data_cfg.shapes_test,
                           data_cfg.image_size, data_cfg.shapes_seed, data_cfg.max_words)
    splits = {"train": dataset.train, "val": dataset.val, "test": dataset.test}
    meta = {"mean": dataset.mean, "std": dataset.std,
            "captions": {name: split.captions for name, split in splits.items()}}
    tensors = {f"{name}.{field}": value for name, split in splits.items()
               for field, value in (("pixels", split.images.pixels),
                                    ("caption_image", split.caption_image))}
    tensors["meta"] = torch.tensor(list(json.dumps(meta).encode()), dtype=torch.uint8)
    write_tensors(path, tensors)
    return dataset


@dataclass
class PreparedData:
    """A dataset plus the frozen text embedding of every caption of every split."""

    dataset: CaptionDataset
    text: dict[str, torch.Tensor]         # split name -> (n_captions, text_dim)
    text_tower: str

    @property
    def text_dim(self) -> int:
        return self.text["train"].shape[1]

    def split(self, name: str) -> CaptionSplit:
        return getattr(self.dataset, name)

    def real_pairs(self, n: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """n distinct random training images, each with one of its captions drawn at random.

        Returns images (n, 3, H, W), their captions' text embeddings (n, d) and caption indices.
        """
        train = self.dataset.train
        if n > train.n_images:
            raise UserError(f"{n} pairs requested but the training split has {train.n_images} images")
        image_ids = torch.randperm(train.n_images, generator=generator)[:n]
        img2txt = train.img2txt
        captions = []
        for i in image_ids.tolist():
            if not img2txt[i]:
                raise UserError(f"training image {train.image_names[i] if train.image_names else i} "
                                "has no caption")
            captions.append(img2txt[i][int(torch.randint(len(img2txt[i]), (1,), generator=generator))])
        images = train.images.get_batch(image_ids).float()
        return images, self.text["train"][torch.tensor(captions)].clone(), captions


def prepare_data(cfg, device: str = "cpu") -> PreparedData:
    """Build the configured dataset and embed its captions (once; later runs read the cache)."""
    from ..models.text_towers import create_text_tower
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    dataset = build_dataset(cfg.data, cache_dir)
    tower = create_text_tower(cfg.model.text_tower, device)
    text = {name: embed_captions(tower, getattr(dataset, name).captions, cache_dir,
                                 cfg.model.text_batch_size)
            for name in ("train", "val", "test")}
    return PreparedData(dataset, text, cfg.model.text_tower)


from . import coco, folder, karpathy  # noqa: E402,F401  registers the file-backed datasets

__all__ = ["CaptionDataset", "CaptionSplit", "PreparedData", "TensorImages", "build_dataset",
           "list_datasets", "normalize_caption", "prepare_data", "register_dataset"]
