"""Coreset baselines: real pairs chosen by herding or k-center on a trained expert's embeddings.

These are the selection baselines of the VL-distill paper, at the distilled set's pair count,
so a distilled set is compared with the best a selection of real pairs can do, not only with
random pairs. Embeddings come from the last stored snapshot of one expert of the run's
trajectory store (`eval.coreset_expert`), in the space `eval.coreset_space`:

- `image`: the expert's normalized image features;
- `text`: the normalized mean of the expert's features of the image's captions;
- `joint`: both, concatenated (each half normalized, the whole scaled to unit norm).

Each selected image is paired with the one of its captions that the expert scores highest
(selection picks pairs, so it also picks the caption); the set has the identity similarity and
trains with the expert's lr, like `random`. Both selections run greedy 1-NN searches through
`vldistill.algorithms.neighbours` (faiss by default).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable

import torch
import torch.nn.functional as F
from torch import nn

from ..config import Config
from ..data import PreparedData
from ..data.splits import ordered_batches
from ..errors import UnknownNameError, UserError
from ..buffer.store import TrajectoryStore, store_manifest
from ..models.student import DualEncoder, FunctionalStudent, build_student
from ..algorithms.neighbours import NeighbourIndex, knn
from ..algorithms.similarity import IdentitySimilarity
from ..algorithms.synset import DistilledSet
from ..algorithms.training import embed_split

log = logging.getLogger(__name__)

SPACES = ("image", "text", "joint")


# ------------------------------------------------------------------ the two greedy selections
def herding(features: torch.Tensor, n: int, backend: str = "faiss") -> list[int]:
    """Herding (Welling 2009, as in iCaRL): each step adds the point that brings the mean of
    the chosen points closest to the mean of all points.

    At step t the best point x minimizes ||mu - (sum_chosen + x) / t||, i.e. it is the nearest
    unchosen neighbour of t * mu - sum_chosen: one exact 1-NN query per step, all against
    one index of the points.
    """
    _check_count(features, n)
    features = features.float()
    index = NeighbourIndex(features, "l2", backend)
    mean = features.mean(0)
    total = torch.zeros_like(mean)
    chosen: list[int] = []
    for t in range(1, n + 1):
        target = t * mean - total
        i = int(index.search(target[None], 1, exclude=chosen).indices[0, 0])
        chosen.append(i)
        total += features[i]
    return chosen


def kcenter(features: torch.Tensor, n: int, first: int = 0, backend: str = "faiss") -> list[int]:
    """Greedy k-center (Gonzalez 1985; the core-set of Sener & Savarese 2018): start from
    `first`, then repeatedly add the point farthest from every chosen one.

    Each pick lowers (or keeps) the covering radius max_x min_c ||x - c||, and the greedy
    radius is within 2x of the optimal one. Ties go to the lowest index.
    """
    _check_count(features, n)
    features = features.float()
    chosen = [first]
    nearest = _sq_distance_to(features, first, backend)              # (N,) to the nearest chosen
    for _ in range(n - 1):
        nearest[chosen] = float("-inf")   # a chosen point never wins again (rounding, duplicates)
        i = int(nearest.argmax())
        chosen.append(i)
        nearest = torch.minimum(nearest, _sq_distance_to(features, i, backend))
    return chosen


def _sq_distance_to(features: torch.Tensor, center: int, backend: str) -> torch.Tensor:
    return knn(features, features[center][None], 1, "l2", backend=backend).scores[:, 0]


def _check_count(features: torch.Tensor, n: int) -> None:
    if not 0 < n <= len(features):
        raise UserError(f"a coreset of {n} pairs asked of {len(features)} candidate images")


Selector = Callable[[torch.Tensor, int, torch.Generator], list[int]]
SELECTORS: dict[str, Selector] = {
    "herding": lambda features, n, generator: herding(features, n),
    "kcenter": lambda features, n, generator: kcenter(
        features, n, first=int(torch.randint(len(features), (1,), generator=generator))),
}


# ------------------------------------------------------------------ the expert's embeddings
@dataclass
class ExpertEmbeddings:
    """Normalized features of the training split under one stored expert snapshot."""

    images: torch.Tensor        # (n_images, d)
    texts: torch.Tensor         # (n_captions, d)
    expert: int
    epoch: int


def load_expert(cfg: Config, data: PreparedData, store: TrajectoryStore,
                expert: int | None = None) -> tuple[DualEncoder, int, int]:
    """A student holding the last stored snapshot of `expert` (default: the first stored one)."""
    reference = build_student(cfg.model, data.dataset.image_size, data.text_dim, seed=0)
    manifest = store.check(store_manifest(cfg, data, reference))
    stored = store.experts()
    k = stored[0] if expert is None else expert
    if k not in stored:
        raise UserError(f"eval.coreset_expert={k} but the trajectory store {str(store.dir)!r} holds "
                        f"experts {stored}")
    epoch = max(manifest["epochs"])
    snapshot = store.load(k, epoch)
    fs = FunctionalStudent(reference)
    params = {**fs.image_layout.unflatten(snapshot.image), **fs.text_layout.unflatten(snapshot.text)}
    with torch.no_grad():
        for name, param in reference.named_parameters():
            param.copy_(params[name])
    return reference, k, epoch


@torch.no_grad()
def _recalibrate_batchnorm(model: DualEncoder, split, device: torch.device, batch_size: int = 256) -> None:
    """Snapshots hold parameters only; a BatchNorm tower gets its running statistics back from
    one pass over the training images (cumulative averages), so eval mode is meaningful. With
    model.batchnorm frozen the expert never changed them: the pretrained ones stay."""
    if model.batchnorm == "frozen":
        return
    norms = [m for m in model.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm)
             and m.track_running_stats]
    if not norms:
        return
    for m in norms:
        m.reset_running_stats()
        m.momentum = None
    model.train()
    for batch in ordered_batches(split.images, batch_size):
        model.image_tower(batch.to(device))


def expert_embeddings(cfg: Config, data: PreparedData, store: TrajectoryStore, device: torch.device,
                      expert: int | None = None) -> ExpertEmbeddings:
    model, k, epoch = load_expert(cfg, data, store, expert)
    model = model.to(device)
    _recalibrate_batchnorm(model, data.dataset.train, device)
    images, texts = embed_split(model, data.dataset.train, data.text["train"], device)
    log.info("coresets: embedded %d training images with expert %d, epoch %d", len(images), k, epoch)
    return ExpertEmbeddings(images, texts, k, epoch)


def selection_features(emb: ExpertEmbeddings, img2txt: list[list[int]], space: str) -> torch.Tensor:
    """(n_images, d') features of each training image in the chosen space."""
    if space not in SPACES:
        raise UnknownNameError(f"unknown coreset space {space!r}; known: {', '.join(SPACES)}")
    if space == "image":
        return emb.images
    owner = torch.tensor([i for i, caps in enumerate(img2txt) for _ in caps], dtype=torch.long)
    captions = torch.tensor([j for caps in img2txt for j in caps], dtype=torch.long)
    text = torch.zeros_like(emb.images).index_add_(0, owner, emb.texts[captions])
    text = F.normalize(text, dim=-1)
    return text if space == "text" else torch.cat([emb.images, text], dim=1) / 2 ** 0.5


def best_captions(emb: ExpertEmbeddings, img2txt: list[list[int]], images: list[int]) -> list[int]:
    """For each image, its caption with the highest expert cosine (ties: the first)."""
    out = []
    for i in images:
        caps = torch.tensor(img2txt[i], dtype=torch.long)
        out.append(int(caps[(emb.texts[caps] @ emb.images[i]).argmax()]))
    return out


def select_coreset(method: str, emb: ExpertEmbeddings, data: PreparedData, n: int, space: str, lr: float,
                   generator: torch.Generator) -> DistilledSet:
    """n real pairs chosen by `method` (herding | kcenter) as a set with identity similarity."""
    if method not in SELECTORS:
        raise UnknownNameError(f"unknown coreset method {method!r}; known: {', '.join(sorted(SELECTORS))}")
    train = data.dataset.train
    img2txt = train.img2txt
    candidates = torch.tensor([i for i, caps in enumerate(img2txt) if caps], dtype=torch.long)
    features = selection_features(emb, img2txt, space)[candidates]
    picked = [int(candidates[i]) for i in SELECTORS[method](features, n, generator)]
    captions = best_captions(emb, img2txt, picked)
    images = train.images.get_batch(torch.tensor(picked)).float()
    card = {"method": method, "loss": "infonce", "coreset_space": space, "expert": emb.expert,
            "expert_epoch": emb.epoch, "image_indices": picked, "captions": captions,
            "init_captions": captions}
    return DistilledSet(images, data.text["train"][torch.tensor(captions)].clone(),
                        IdentitySimilarity(n), lr, lr, card)


def coreset_pairs(cfg: Config, data: PreparedData, store: TrajectoryStore, device: torch.device,
                  method: str, n: int, generator: torch.Generator,
                  emb: ExpertEmbeddings | None = None) -> DistilledSet:
    """The `method` coreset of n pairs under the run's settings (eval.coreset_expert and
    eval.coreset_space, the expert's lr): what the herding / kcenter baselines evaluate and what
    distill.init=herding | kcenter starts from. `emb`: the expert's embeddings, if at hand."""
    emb = emb or expert_embeddings(cfg, data, store, device, cfg.eval.coreset_expert)
    return select_coreset(method, emb, data, n, cfg.eval.coreset_space, cfg.buffer.lr_teacher, generator)


__all__ = ["ExpertEmbeddings", "coreset_pairs", "SELECTORS", "SPACES", "best_captions", "expert_embeddings",
           "herding", "kcenter", "load_expert", "select_coreset", "selection_features"]
