"""Training and scoring a student on real pairs: the pieces experts, coresets, the full-data
bound and evaluation share.

A training pair is one caption entry and its image (as the reference: an epoch visits every
caption once). Images come through `ImageSource.get_batch`, so in-memory tensors and image
files on disk (read by DataLoader workers) go through the same loop.
"""
from __future__ import annotations

from typing import Callable, Iterator

import torch
from torch.utils.data import DataLoader, Dataset

from ..data.splits import CaptionSplit, ordered_batches
from ..errors import NonFiniteError
from .losses import soft_contrastive_loss
from ..models.student import DualEncoder
from .retrieval import recall_at_k
from ..runtime.seeds import seeded


class _PairBatches(Dataset):
    """Caption entries -> (caption indices, images, text embeddings), fetched a batch at a time."""

    def __init__(self, split: CaptionSplit, text: torch.Tensor, entries: torch.Tensor, train: bool):
        self.split, self.text, self.entries, self.train = split, text, entries, train

    def __len__(self) -> int:
        return len(self.entries)

    def __getitems__(self, positions: list[int]):
        idx = self.entries[torch.as_tensor(positions, dtype=torch.long)]
        images = self.split.images.get_batch(self.split.caption_image[idx], train=self.train)
        return idx, images, self.text[idx]


def _identity(batch):
    return batch


def epoch_entries(split: CaptionSplit, mode: str, generator: torch.Generator) -> torch.Tensor:
    """Caption entries an epoch visits: all of them, or one random caption per image."""
    if mode == "captions":
        return torch.arange(len(split.caption_image))
    counts = torch.bincount(split.caption_image, minlength=split.n_images)
    order = torch.argsort(split.caption_image, stable=True)            # entries grouped by image
    first = torch.cumsum(counts, 0) - counts
    has = counts > 0
    pick = (torch.rand(split.n_images, generator=generator) * counts).long().clamp(max=counts - 1)
    return order[(first + pick)[has]]


def pair_batches(split: CaptionSplit, text: torch.Tensor, batch_size: int, seed: int,
                 train: bool = True, num_workers: int = 0, mode: str = "captions",
                 drop_last: bool = False) -> Iterator:
    """One epoch of shuffled (caption indices, images, text embeddings) batches of real pairs."""
    generator = torch.Generator().manual_seed(seed)
    entries = epoch_entries(split, mode, generator)
    loader = DataLoader(_PairBatches(split, text, entries, train), batch_size=batch_size,
                        shuffle=True, generator=generator, num_workers=num_workers,
                        collate_fn=_identity, drop_last=drop_last)
    return iter(loader)


def sgd_for_student(model: DualEncoder, lr_image: float, lr_text: float, momentum: float,
                    weight_decay: float) -> torch.optim.SGD:
    """One SGD with two groups: the image tower (or the head over a frozen backbone) and the
    text head each get their own lr."""
    return torch.optim.SGD([
        {"params": model.image_parameters(), "lr": lr_image, "name": "image"},
        {"params": model.text_head.parameters(), "lr": lr_text, "name": "text"},
    ], lr=lr_image, momentum=momentum, weight_decay=weight_decay)


def contrastive_step(model: DualEncoder, optimizer: torch.optim.Optimizer, images: torch.Tensor,
                     texts: torch.Tensor, target: torch.Tensor | None = None,
                     loss_kind: str = "infonce", loss_eps: float = 0.0) -> float:
    """One SGD step on a batch of pairs; target None means the identity (plain InfoNCE)."""
    logits = model(images, texts)
    if target is None:
        target = torch.eye(len(logits), device=logits.device)
    loss = soft_contrastive_loss(logits, target, loss_kind, loss_eps)
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    return float(loss.detach())


def train_epoch_on_pairs(model: DualEncoder, optimizer: torch.optim.Optimizer, split: CaptionSplit,
                         text: torch.Tensor, batch_size: int, seed: int, device: torch.device,
                         num_workers: int = 0, progress=None, mode: str = "captions",
                         drop_last: bool = False,
                         text_features: Callable[[torch.Tensor], torch.Tensor] | None = None) -> float:
    """One epoch of InfoNCE over the real pairs of a split (see `epoch_entries`); mean loss.

    `seed` fixes the epoch's order and caption draws, and (through a forked global generator)
    the augmentations and dropout drawn in this process, so an epoch is the same whatever ran
    before it. `text_features(caption indices)` replaces the cached embeddings (the reference's
    experts: the text tower run per batch, in train mode).
    """
    model.train()
    total, count = 0.0, 0
    with seeded(seed, device):
        for idx, images, texts in pair_batches(split, text, batch_size, seed, True, num_workers, mode,
                                               drop_last):
            if text_features is not None:
                texts = text_features(idx)
            total += contrastive_step(model, optimizer, images.to(device, non_blocking=True),
                                      texts.to(device, non_blocking=True))
            count += 1
            if progress is not None:
                progress.update(1)
    return total / max(count, 1)


@torch.no_grad()
def embed_split(model: DualEncoder, split: CaptionSplit, text: torch.Tensor, device: torch.device,
                batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Normalized image features (n_images, d) and caption features (n_captions, d)."""
    model.eval()
    images = [model.encode_image(batch.to(device)).float().cpu()
              for batch in ordered_batches(split.images, batch_size)]
    texts = [model.encode_text(text[i:i + batch_size].to(device)).float().cpu()
             for i in range(0, len(text), batch_size)]
    return torch.cat(images), torch.cat(texts)


def retrieval_metrics(model: DualEncoder, split: CaptionSplit, text: torch.Tensor,
                      device: torch.device) -> dict[str, float]:
    """Recall@{1,5,10} both ways and r_mean of a model on a split.

    Raises:
        NonFiniteError: the model's features hold NaN/inf (its training diverged); ranks of NaN
            scores would be meaningless numbers, not a low score.
    """
    image_features, text_features = embed_split(model, split, text, device)
    if not (image_features.isfinite().all() and text_features.isfinite().all()):
        raise NonFiniteError(f"a model's features on a {split.n_images}-image split are NaN/inf: its training "
                             "diverged; lower its lr (buffer.lr_teacher for experts, eval.lr or the tower's "
                             "lr for evaluation students) or check the set it trained on")
    return recall_at_k(image_features @ text_features.t(), split.img2txt, split.txt2img)
