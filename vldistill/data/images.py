"""Encoded images as an `ImageSource`: decoding, the reference's transforms, one check of
every image, and a cache of decoded pixels.

Images come from a store (`stores.EncodedImages`: files, tar shards, rows of a saved dataset).
`FileImages.get_batch` decodes a batch (inside DataLoader workers when data.num_workers > 0)
and applies the train or the test transform. `load_images` is what datasets call: it checks
every image once in the main process -- present, an image PIL recognizes, not cut short -- so a
bad one is one clear error naming it (or, with data.skip_bad_images, is skipped and counted),
never a stack trace from a worker. A split whose decoded pixels fit `data.cache_max_gb` is
decoded once into a uint8 tensor file under cache_dir (keyed by the images' names and stamps,
e.g. paths, sizes and mtimes, and the image size), so later epochs and later runs never touch
the encoded images again.

Transforms follow the reference: train = RandomResizedCrop(scale 0.5-1, bicubic), horizontal
flip, two RandAugment-style ops at magnitude 5/10 (from LoRS's ten, or RepBlend's nine:
data.randaugment); test = resize to a square, bicubic; both
normalize with CLIP's mean/std. With the cache, train crops are taken from the cached square
image rather than from the full-resolution file.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Sequence, TYPE_CHECKING

import torch
from safetensors import safe_open
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..runtime.io import write_tensors
from .stores import BadImageError, EncodedImages, bad_image_message, source_name

if TYPE_CHECKING:
    from ..config import DataConfig

log = logging.getLogger(__name__)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
CACHE_FORMAT = 2          # bump when decoding or resizing changes, so stale caches are not read
_FILL = [128, 128, 128]


class _LazyTorchvision:
    """torchvision's tensor transforms, imported on first use (the import costs seconds)."""

    def __getattr__(self, name: str):
        from torchvision.transforms.v2 import functional
        return getattr(functional, name)


TF = _LazyTorchvision()


def _mode(name: str):
    from torchvision.transforms import InterpolationMode
    return InterpolationMode[name]


def decode_image(source: str | BinaryIO, size: int | None = None) -> torch.Tensor:
    """The image (a path, or a named file object from a store) as uint8 RGB (3, h, w), or
    resized (bicubic) to size x size when `size` is given.

    Decoding and the test-time resize stay in PIL, so neither needs torchvision.
    Raises BadImageError naming the image if it cannot be decoded.
    """
    import numpy as np
    from PIL import Image
    try:
        with Image.open(source) as image:
            rgb = image.convert("RGB")
            if size is not None and rgb.size != (size, size):
                rgb = rgb.resize((size, size), Image.Resampling.BICUBIC)
    except (OSError, ValueError, SyntaxError) as err:
        raise BadImageError(bad_image_message(source_name(source), f"cannot be decoded ({err})")) from None
    return torch.from_numpy(np.array(rgb, dtype=np.uint8)).permute(2, 0, 1).contiguous()


# ---------------------------------------------------------------- transforms
def _sign() -> float:
    return 1.0 if float(torch.rand(())) < 0.5 else -1.0


def _affine(img: torch.Tensor, angle: float = 0.0, dx: float = 0.0, dy: float = 0.0,
            shear_x: float = 0.0, shear_y: float = 0.0) -> torch.Tensor:
    """Bilinear, grey fill; rotation about the centre, shear about the top-left corner (cv2's)."""
    center = None if angle else [0.0, 0.0]
    return TF.affine(img, angle=angle, translate=[dx, dy], scale=1.0, shear=[shear_x, shear_y],
                     interpolation=_mode("BILINEAR"), fill=_FILL, center=center)


def _shear_degrees(m: float) -> float:
    """The reference shears by a matrix coefficient of 0.3 m; torchvision takes the angle."""
    return math.degrees(math.atan(0.3 * m))


# The reference's RandomAugment (BLIP's randaugment.py): m in [0, 1] is its level / 10 (5 / 10
# for LoRS). Enhancements use the factor 1.8 m + 0.1 (1.0, i.e. none, at level 5); shear 0.3 m,
# translation 10 m pixels and rotation 30 m degrees each take a random sign.
_OPS = {
    "identity": lambda img, m: img,
    "autocontrast": lambda img, m: TF.autocontrast(img),
    "equalize": lambda img, m: TF.equalize(img),
    "brightness": lambda img, m: TF.adjust_brightness(img, 1.8 * m + 0.1),
    "sharpness": lambda img, m: TF.adjust_sharpness(img, 1.8 * m + 0.1),
    "shear_x": lambda img, m: _affine(img, shear_x=_shear_degrees(m) * _sign()),
    "shear_y": lambda img, m: _affine(img, shear_y=_shear_degrees(m) * _sign()),
    "translate_x": lambda img, m: _affine(img, dx=10.0 * m * _sign()),
    "translate_y": lambda img, m: _affine(img, dy=10.0 * m * _sign()),
    "rotate": lambda img, m: _affine(img, angle=30.0 * m * _sign()),
}
# data.randaugment: the operations drawn from. LoRS passes BLIP's ten; RepBlend's list leaves
# AutoContrast out (its data/__init__.py), so each other operation is drawn 1/9 of the time.
RANDAUGMENT = {"lors": tuple(_OPS), "repblend": tuple(name for name in _OPS if name != "autocontrast")}


@dataclass
class ImageTransform:
    """uint8 (3, h, w) -> normalized float (3, size, size); `train` adds the augmentations."""

    size: int
    mean: Sequence[float] = CLIP_MEAN
    std: Sequence[float] = CLIP_STD
    augment: bool = True                  # False: train images get the test transform (no_aug)
    n_ops: int = 2
    magnitude: float = 0.5
    op_probability: float = 0.5
    ops: tuple[str, ...] = RANDAUGMENT["lors"]        # drawn from, with replacement

    def __post_init__(self) -> None:
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(3, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(3, 1, 1)

    def resize(self, img: torch.Tensor) -> torch.Tensor:
        """The test-time geometry: a bicubic resize to size x size (aspect ratio not kept)."""
        if tuple(img.shape[-2:]) == (self.size, self.size):
            return img
        return TF.resize(img, [self.size, self.size], interpolation=_mode("BICUBIC"), antialias=True)

    def augmented(self, img: torch.Tensor) -> torch.Tensor:
        from torchvision.transforms import RandomResizedCrop
        top, left, h, w = RandomResizedCrop.get_params(img, scale=(0.5, 1.0), ratio=(3 / 4, 4 / 3))
        img = TF.resized_crop(img, top, left, h, w, [self.size, self.size], interpolation=_mode("BICUBIC"),
                              antialias=True)
        if float(torch.rand(())) < 0.5:
            img = TF.horizontal_flip(img)
        for k in torch.randint(len(self.ops), (self.n_ops,)).tolist():
            if float(torch.rand(())) < self.op_probability:
                img = _OPS[self.ops[k]](img, self.magnitude)
        return img

    def normalize(self, pixels: torch.Tensor) -> torch.Tensor:
        """uint8 (..., 3, S, S) -> float, CLIP-normalized."""
        return (pixels.float() / 255.0 - self._mean) / self._std

    def __call__(self, img: torch.Tensor, train: bool = False) -> torch.Tensor:
        img = self.augmented(img) if train and self.augment else self.resize(img)
        return self.normalize(img)


# ---------------------------------------------------------------- image sources
@dataclass
class FileImages:
    """Images decoded from their store at every request (picklable: DataLoader workers use it;
    `num_workers` is how many read it in order, see `splits.ordered_batches`)."""

    store: EncodedImages
    transform: ImageTransform
    num_workers: int = 0

    def __len__(self) -> int:
        return len(self.store)

    def get_batch(self, indices: torch.Tensor, train: bool = False) -> torch.Tensor:
        augment = train and self.transform.augment
        size = None if augment else self.transform.size          # crops need the full image
        return torch.stack([self.transform(decode_image(self.store.open(i), size), train)
                            for i in indices.tolist()])


@dataclass
class DecodedImages:
    """Decoded, resized images held as uint8 (N, 3, S, S); augmented per image when training."""

    pixels: torch.Tensor
    transform: ImageTransform

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def get_batch(self, indices: torch.Tensor, train: bool = False) -> torch.Tensor:
        batch = self.pixels[indices]
        if train and self.transform.augment:
            return torch.stack([self.transform(img, train=True) for img in batch])
        return self.transform.normalize(batch)


# ---------------------------------------------------------------- checking and caching
@dataclass
class LoadedImages:
    """What `load_images` made of a store's images."""

    source: FileImages | DecodedImages
    kept: list[int]                                   # positions (in the given store) kept
    bad: list[tuple[str, str]] = field(default_factory=list)   # (name, reason) of skipped images


class _DecodeForCache(Dataset):
    """Image i -> (i, uint8 (3, S, S) or None, reason): workers report failures, never raise."""

    def __init__(self, store: EncodedImages, transform: ImageTransform):
        self.store, self.transform = store, transform

    def __len__(self) -> int:
        return len(self.store)

    def __getitem__(self, i: int):
        try:
            return i, decode_image(self.store.open(i), self.transform.size), None
        except BadImageError:
            return i, None, "cannot be decoded"


def _collate_items(items):
    return items


def _refuse_bad(bad: list[tuple[str, str]], skip: bool) -> None:
    """One error naming the first bad image, unless the user asked to skip them."""
    if bad and not skip:
        name, reason = bad[0]
        more = f" ({len(bad) - 1} more bad images in this split)" if len(bad) > 1 else ""
        raise BadImageError(bad_image_message(name, reason) + more)


def _loaded(source, kept: list[int], bad: list[tuple[str, str]], split: str) -> LoadedImages:
    if bad:
        log.warning("%s split: skipped %d unreadable images (first: %s %s)", split, len(bad),
                    bad[0][0], bad[0][1])
    return LoadedImages(source, kept, bad)


def _cache_path(cache_dir: Path, store: EncodedImages, stamps: list[str | None], size: int) -> Path:
    h = hashlib.sha256(json.dumps({"format": CACHE_FORMAT, "size": size}).encode())
    for i, stamp in enumerate(stamps):
        h.update(f"\0{store.name(i)}\0{stamp}".encode())
    return cache_dir / "images" / f"{h.hexdigest()[:24]}.safetensors"


def _decode_all(store: EncodedImages, transform: ImageTransform, num_workers: int, split: str):
    """Decode and resize every image (in workers); returns pixels of the good ones and the bad."""
    loader = DataLoader(_DecodeForCache(store, transform), batch_size=64, num_workers=num_workers,
                        collate_fn=_collate_items)
    good, bad = [], []
    for batch in tqdm(loader, desc=f"decoding {split} images", unit="batch",
                      disable=len(store) < 2000):
        for i, pixels, reason in batch:
            (good.append((i, pixels)) if pixels is not None else bad.append((i, reason)))
    kept = [i for i, _ in good]
    pixels = (torch.stack([p for _, p in good]) if good
              else torch.empty(0, 3, transform.size, transform.size, dtype=torch.uint8))
    return pixels, kept, bad


def load_images(store: EncodedImages, data_cfg: "DataConfig", cache_dir: Path, split: str,
                train: bool = False) -> LoadedImages:
    """Check every image once, drop or refuse bad ones, and decode into the cache when it fits.

    Args:
        store: the split's encoded images, in split order (files, shard members, dataset rows).
        data_cfg: `DataConfig` (image_size, no_aug, skip_bad_images, cache_images,
            cache_max_gb, num_workers).
        cache_dir: where the decoded-pixel cache lives (`cache_dir/images/`).
        split: split name, for messages.
        train: whether this split is trained on (augmentation applies unless data.no_aug).

    Returns:
        The image source over the kept images, their positions in `store`, and the skipped ones.
    """
    transform = ImageTransform(data_cfg.image_size, augment=train and not data_cfg.no_aug,
                               ops=RANDAUGMENT[data_cfg.randaugment])
    stamps = [store.stamp(i) for i in range(len(store))]
    bad = [(store.name(i), "is missing") for i, s in enumerate(stamps) if s is None]
    _refuse_bad(bad, data_cfg.skip_bad_images)

    n_bytes = len(store) * 3 * data_cfg.image_size ** 2
    cached = data_cfg.cache_images and n_bytes <= data_cfg.cache_max_gb * 2 ** 30
    cache_file = _cache_path(cache_dir, store, stamps, data_cfg.image_size)
    if cached and cache_file.is_file():
        with safe_open(str(cache_file), framework="pt") as handle:
            pixels, kept = handle.get_tensor("pixels"), handle.get_tensor("kept").tolist()
            recorded = [(store.name(i), reason) for i, reason in json.loads(handle.metadata()["bad"])]
        _refuse_bad(bad + recorded, data_cfg.skip_bad_images)   # bad then, refused now if asked
        return _loaded(DecodedImages(pixels, transform), kept, bad + recorded, split)

    present = [i for i, s in enumerate(stamps) if s is not None]
    checked = [(i, store.check(i)) for i in present]
    bad_checked = [(i, reason) for i, reason in checked if reason]
    _refuse_bad(bad + [(store.name(i), reason) for i, reason in bad_checked], data_cfg.skip_bad_images)
    good = [i for i, reason in checked if reason is None]
    if not cached:
        if data_cfg.cache_images:
            log.info("%s split: %.1f GB decoded exceeds data.cache_max_gb=%g, images are decoded "
                     "from their store every epoch", split, n_bytes / 2 ** 30, data_cfg.cache_max_gb)
        bad += [(store.name(i), reason) for i, reason in bad_checked]
        return _loaded(FileImages(store.select(good), transform, data_cfg.num_workers), good, bad, split)

    pixels, positions, failed = _decode_all(store.select(good), transform, data_cfg.num_workers, split)
    unusable = bad_checked + [(good[j], reason) for j, reason in failed]   # present but bad
    bad += [(store.name(i), reason) for i, reason in unusable]
    _refuse_bad(bad, data_cfg.skip_bad_images)
    kept = [good[j] for j in positions]
    write_tensors(cache_file, {"pixels": pixels, "kept": torch.tensor(kept, dtype=torch.long)},
                  metadata={"split": split, "size": str(data_cfg.image_size),
                            "bad": json.dumps(unusable)})
    log.info("%s split: %d images decoded and cached at %s (%.1f MB)", split, len(kept),
             cache_file, pixels.numel() / 2 ** 20)
    return _loaded(DecodedImages(pixels, transform), kept, bad, split)
