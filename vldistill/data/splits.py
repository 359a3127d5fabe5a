"""Caption splits: images, their captions, and the maps between them.

Every dataset (shapes, Karpathy JSON, COCO, a user's folder) is turned into the same
three `CaptionSplit`s, so the stages never care where the data came from.
"""
from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field
from typing import Callable, Iterator, Optional, Protocol, Sequence

import torch
from torch.utils.data import DataLoader, Dataset

# the reference's pre_caption replaces these by spaces; `strict` also drops , and ?
_PUNCTUATION = {"reference": re.compile(r"[.!\"()*#:;~]"), "strict": re.compile(r"[.!\"()*#:;~,?]")}
_SPACES = re.compile(r"\s{2,}")


def normalize_caption(caption: str, max_words: int = 30, cleaner: str = "strict") -> str:
    """Lower-case, drop punctuation (`cleaner`: reference keeps , and ?), squeeze spaces, keep at
    most `max_words` words, as the reference's pre_caption does."""
    text = _PUNCTUATION[cleaner].sub(" ", caption.lower())
    text = _SPACES.sub(" ", text).strip()
    return " ".join(text.split(" ")[:max_words])


class ImageSource(Protocol):
    """Indexable images: `source[i]` is a normalized float tensor (3, H, W)."""

    def __len__(self) -> int: ...

    def get_batch(self, indices: torch.Tensor, train: bool = False) -> torch.Tensor: ...


class _Chunks(Dataset):
    """Chunk k -> images [k * size, (k + 1) * size) of a source, test transform."""

    def __init__(self, images: ImageSource, size: int):
        self.images, self.size = images, size

    def __len__(self) -> int:
        return -(-len(self.images) // self.size)

    def __getitem__(self, k: int) -> torch.Tensor:
        return self.images.get_batch(torch.arange(k * self.size, min((k + 1) * self.size, len(self.images))))


def ordered_batches(images: ImageSource, batch_size: int) -> Iterator[torch.Tensor]:
    """Every image of a source in index order, `batch_size` at a time (test transform). A source
    that decodes from files, shards or a dataset says how many DataLoader workers read it
    (`num_workers`): they decode chunks ahead, and the chunks arrive in order."""
    chunks = _Chunks(images, batch_size)
    workers = getattr(images, "num_workers", 0)
    if not workers:
        return (chunks[k] for k in range(len(chunks)))
    return iter(DataLoader(chunks, batch_size=None, num_workers=min(workers, len(chunks))))


@dataclass
class TensorImages:
    """Images held in memory as uint8 (N, 3, H, W), normalized on the way out."""

    pixels: torch.Tensor                # (N, 3, H, W) uint8
    mean: Sequence[float]
    std: Sequence[float]

    def __post_init__(self) -> None:
        self._mean = torch.tensor(self.mean, dtype=torch.float32).view(1, 3, 1, 1)
        self._std = torch.tensor(self.std, dtype=torch.float32).view(1, 3, 1, 1)

    def __len__(self) -> int:
        return self.pixels.shape[0]

    def get_batch(self, indices: torch.Tensor, train: bool = False) -> torch.Tensor:
        return (self.pixels[indices].float() / 255.0 - self._mean) / self._std


@dataclass
class CaptionSplit:
    """One split. Captions are normalized; `caption_image[j]` is the image of caption j.

    A dataset that knows which captions are true of which images (the embedded ones, from
    their scene descriptions) gives `truth_fn`; the others leave it None. Images read from
    files name them in `files` (resolved paths), which the data checks compare and hash
    (`vldistill.data.checks`).
    """

    images: ImageSource
    captions: list[str]
    caption_image: torch.Tensor         # (n_captions,) long: txt2img
    image_names: list[str] = field(default_factory=list)
    truth_fn: Optional[Callable[[], torch.Tensor]] = field(default=None, repr=False, compare=False)
    files: list[str] = field(default_factory=list, repr=False)

    def __post_init__(self) -> None:
        if len(self.captions) != len(self.caption_image):
            raise ValueError("captions and caption_image differ in length")

    @property
    def n_images(self) -> int:
        return len(self.images)

    @property
    def txt2img(self) -> torch.Tensor:
        return self.caption_image

    @property
    def img2txt(self) -> list[list[int]]:
        """Caption indices of each image (any number per image, possibly none)."""
        out: list[list[int]] = [[] for _ in range(self.n_images)]
        for j, i in enumerate(self.caption_image.tolist()):
            out[i].append(j)
        return out

    def truth(self) -> torch.Tensor | None:
        """(n_images, n_captions) bool: T[i, c] = caption c is true of image i (of its scene, not
        only of the image it was written for); None where the dataset does not know. Checked:
        every caption is true of its own image."""
        if self.truth_fn is None:
            return None
        table = self.truth_fn()
        if table.shape != (self.n_images, len(self.captions)) or table.dtype != torch.bool:
            raise ValueError(f"truth is {tuple(table.shape)} {table.dtype}, not "
                             f"({self.n_images}, {len(self.captions)}) bool")
        own = table[self.caption_image, torch.arange(len(self.captions))]
        if not bool(own.all()):
            raise ValueError(f"{int((~own).sum())} captions are not true of their own image "
                             f"(first: {self.captions[int((~own).nonzero()[0])]!r})")
        return table


@dataclass
class CaptionDataset:
    """The three splits of a dataset plus what describes it."""

    name: str
    train: CaptionSplit
    val: CaptionSplit
    test: CaptionSplit
    mean: tuple[float, float, float]    # normalization the images were given
    std: tuple[float, float, float]
    image_size: int
    checks: dict = field(default_factory=dict)      # data checks passed on purpose (data.accept)

    @property
    def fingerprint(self) -> str:
        """Stable id of the training data: trajectories and sets made on other data are refused."""
        h = hashlib.sha256()
        h.update(self.name.encode())
        h.update(str(self.image_size).encode())
        h.update(str(self.train.n_images).encode())
        for caption in self.train.captions:
            h.update(caption.encode())
            h.update(b"\0")
        h.update(self.train.caption_image.numpy().tobytes())
        return h.hexdigest()[:16]
