"""The prepared data every stage works from: a dataset plus the frozen text tower's embedding
of every caption of every split (computed once per tower and caption list, then cached)."""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import UserError
from ..registry import tower_family
from .registry import build_dataset
from .splits import CaptionDataset, CaptionSplit
from .text_cache import default_cache_dir, embed_captions

if TYPE_CHECKING:
    from ..config import Config
    from ..models.text_towers import TextTower


@dataclass
class PreparedData:
    """A dataset plus the frozen text embedding of every caption of every split."""

    dataset: CaptionDataset
    text: dict[str, torch.Tensor]         # split name -> (n_captions, text_dim)
    text_tower: str
    tower: "TextTower | None" = field(default=None, repr=False)    # the tower itself (loads lazily)

    @property
    def text_dim(self) -> int:
        return self.text["train"].shape[1]

    def split(self, name: str) -> CaptionSplit:
        return getattr(self.dataset, name)

    def real_pairs(self, n: int, generator: torch.Generator, augment: bool = False,
                   view_cache: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """n distinct random training images, each with one of its captions drawn at random.

        Returns images (n, 3, H, W) (`augment`: one training-augmented view each, drawn from
        torch's global generator; `view_cache`: see `views`), their captions' text embeddings
        (n, d) and caption indices.
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
        return self._pairs(image_ids, captions, augment, view_cache)

    def real_entries(self, n: int, generator: torch.Generator, augment: bool = False,
                     view_cache: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        """n distinct random training caption entries with their images, as the reference code
        draws its initial pairs: an image with several captions can come twice. As `real_pairs`."""
        train = self.dataset.train
        if n > len(train.captions):
            raise UserError(f"{n} pairs requested but the training split has {len(train.captions)} captions")
        captions = torch.randperm(len(train.captions), generator=generator)[:n]
        return self._pairs(train.caption_image[captions], captions.tolist(), augment, view_cache)

    def _pairs(self, image_ids: torch.Tensor, captions: list[int], augment: bool,
               view_cache: int = 0) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
        images = self.views(image_ids, view_cache) if augment else \
            self.dataset.train.images.get_batch(image_ids).float()
        return images, self.text["train"][torch.tensor(captions)].clone(), captions

    def views(self, image_ids: torch.Tensor, cache: int = 0) -> torch.Tensor:
        """One training-augmented view per id, in order. `cache` > 0 keeps the views of the last
        `cache` distinct images read (least recently read dropped first), so an id read again
        meanwhile gets the same view: the LoRS and RepBlend Flickr30k loaders' lru_cache on the
        transformed image (`distill.init_view_cache`). The views drawn are those of the ids not
        found, in order, so without a repeat the result does not depend on `cache`."""
        recent: OrderedDict[int, int] = OrderedDict()           # image id -> its view's row
        drawn: list[int] = []
        rows = []
        for i in image_ids.tolist():
            if i in recent:
                recent.move_to_end(i)
            else:
                recent[i] = len(drawn)
                drawn.append(i)
                if len(recent) > cache:
                    recent.popitem(last=False)
            rows.append(recent.get(i, len(drawn) - 1))
        fresh = self.dataset.train.images.get_batch(torch.tensor(drawn, dtype=torch.long), train=True).float()
        return fresh[torch.tensor(rows, dtype=torch.long)]


def prepare_data(cfg: "Config", device: str = "cpu", dataset: CaptionDataset | None = None) -> PreparedData:
    """Build the configured dataset (or take the one `vldistill.preflight` built and checked) and
    embed its captions (once; later runs read the cache)."""
    from ..models.text_towers import create_text_tower
    cache_dir = Path(cfg.cache_dir) if cfg.cache_dir else default_cache_dir()
    dataset = dataset if dataset is not None else build_dataset(cfg.data, cache_dir)
    tower = create_text_tower(cfg.model.text_tower, device,
                              **cfg.model.text_tower_args.get(tower_family(cfg.model.text_tower), {}))
    text = {name: embed_captions(tower, getattr(dataset, name).captions, cache_dir,
                                 cfg.model.text_batch_size)
            for name in ("train", "val", "test")}
    return PreparedData(dataset, text, cfg.model.text_tower, tower)
