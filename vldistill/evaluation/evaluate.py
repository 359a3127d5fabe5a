"""Training fresh students on a set (or on all the data) and scoring them: one seed of an
evaluation. Which sets are evaluated, and how seeds are summarized, is `vldistill.evaluation.methods`.

For a distilled set this is the paper's Algorithm 2: a fresh student trains on (X, Y, S) with
the set's lrs (or `eval.lr`), SGD momentum 0.9, weight decay 5e-4, lr x0.1 at half the epochs.
Beyond the reference, the reported epoch is chosen on the validation split (every
`eval.val_every` epochs), and the final epoch is reported too. `eval.selection: test`
reproduces LoRS's best-on-test choice and is labelled so in every output.

Towers: every method is evaluated on the tower the set was distilled with (`model.*`, with
the `eval.*` recipe) and on each of `eval.towers` with its own recipe (cross-architecture).
A tower with a frozen backbone (RepBlend) trains only the two heads, on the backbone's
features: the set's computed once per student, the scored splits' read from the feature
cache (`vldistill.algorithms.repblend`); `eval.towers.*.frozen_backbone: false` evaluates a RepBlend set
under LoRS's protocol instead (the whole tower fine-tuned, no image head).
"""
from __future__ import annotations

import copy
import logging
from dataclasses import dataclass, field, replace
from pathlib import Path

import torch

from ..models.accel import prepare_student
from .augment import augment
from ..config import Config
from ..data import PreparedData
from ..errors import MissingFileError, UserError
from ..models.pretrained import IMAGENET
from ..models.student import DualEncoder, build_student
from ..registry import tower_family
from ..algorithms.repblend import real_data_for, set_inputs
from ..runtime.seeds import derive_seed, seeded
from ..algorithms.synset import DistilledSet
from ..algorithms.similarity import IdentitySimilarity
from ..algorithms.training import contrastive_step, retrieval_metrics, sgd_for_student, train_epoch_on_pairs

log = logging.getLogger(__name__)

SELECTION_LABELS = {"val": "epoch chosen on val", "test": "best epoch on TEST (reference protocol)",
                    "final": "final epoch (no selection)"}


@dataclass
class SeedResult:
    selected: dict[str, float]      # test metrics at the chosen epoch
    final: dict[str, float]         # test metrics after the last epoch
    epoch: int                      # the chosen epoch
    selection_score: float = float("nan")   # r_mean on the selection split at that epoch


@dataclass(frozen=True, kw_only=True)
class EvalTower:
    """One evaluation tower and its recipe, every field resolved (see `eval_towers`)."""

    label: str                      # key in results.json (the registry name unless renamed)
    image_tower: str
    image_tower_args: dict = field(default_factory=dict)    # its family's options
    pretrained_path: str | None
    lr: float | None                # None: the set's own lrs (lr_policy authors, or tuned before its pick)
    full_lr: float
    epochs: int
    lr_drop_epoch: int              # lr x0.1 after this many epochs
    full_epochs: int
    batch_size: int
    augment: str
    methods: tuple[str, ...]
    distilled_on: bool = False      # the tower the sets were distilled with
    frozen_backbone: bool = False   # students train only the heads over the frozen tower
    lr_policy: str = "authors"      # fixed | authors | tuned (`lr_policy_of`)

    def settings(self) -> dict:
        """The recipe as results.json records it."""
        return {"image_tower": self.image_tower, "lr_policy": self.lr_policy, "lr": self.lr,
                "full_lr": self.full_lr,
                "epochs": self.epochs, "full_epochs": self.full_epochs,
                "batch_size": self.batch_size, "augment": self.augment,
                "frozen_backbone": self.frozen_backbone}

    def build(self, cfg: Config, data: PreparedData, seed: int) -> DualEncoder:
        model_cfg = replace(cfg.model, image_tower=self.image_tower, pretrained_path=self.pretrained_path,
                            frozen_backbone=self.frozen_backbone,
                            image_tower_args={tower_family(self.image_tower): self.image_tower_args})
        return build_student(model_cfg, data.dataset.image_size, data.text_dim, seed=seed)


def lr_policy_of(cfg: Config, tower_lr: float | None = None) -> tuple[str, float | None]:
    """How sets are given their student lr (`eval.lr_policy`), and the fixed lr if any.

    `fixed`: one lr for every set (eval.lr, else buffer.lr_teacher); `authors`: each set's own
    lrs (learned for distilled sets, buffer.lr_teacher for real pairs: the published protocol);
    `tuned`: picked per set on val from eval.lr_grid (`vldistill.evaluation.methods`). Null: fixed when
    eval.lr is given, else authors. A tower with its own lr is fixed at it.
    """
    e = cfg.eval
    policy = e.lr_policy or ("fixed" if e.lr is not None else "authors")
    if tower_lr is not None:
        return "fixed", tower_lr
    if policy == "fixed":
        return policy, e.lr if e.lr is not None else cfg.buffer.lr_teacher
    return policy, None


def eval_towers(cfg: Config) -> list[EvalTower]:
    """The distilled-on tower (model.* with eval.*), then each of eval.towers (unset: eval.*)."""
    e = cfg.eval
    full_lr = e.full_lr if e.full_lr is not None else cfg.buffer.lr_teacher
    policy, lr = lr_policy_of(cfg)
    options = cfg.model.image_tower_args
    towers = [EvalTower(label=cfg.model.image_tower, image_tower=cfg.model.image_tower,
                        image_tower_args=options.get(tower_family(cfg.model.image_tower), {}),
                        pretrained_path=cfg.model.pretrained_path, lr=lr, full_lr=full_lr,
                        epochs=e.epochs, lr_drop_epoch=e.lr_drop_epoch, full_epochs=e.full_epochs,
                        batch_size=e.batch_size, augment=e.augment, methods=tuple(e.methods),
                        distilled_on=True, frozen_backbone=cfg.model.frozen_backbone, lr_policy=policy)]
    for key, t in e.towers.items():
        if key == cfg.model.image_tower:
            raise UserError(f"eval.towers.{key}: that key is the distilled-on tower's results key; "
                            "give this entry another name and set its image_tower")

        if t.pretrained_path not in (None, IMAGENET) and not Path(t.pretrained_path).expanduser().is_file():
            raise MissingFileError(f"eval.towers.{key}.pretrained_path {t.pretrained_path!r} not "
                                   "found (checked before any student trains)")

        def pick(value, default):
            return default if value is None else value
        epochs = pick(t.epochs, e.epochs)           # the lr drop keeps its place in the schedule
        tower_policy, tower_lr = lr_policy_of(cfg, t.lr)
        name = t.image_tower or key
        towers.append(EvalTower(
            label=key, image_tower=name, image_tower_args=options.get(tower_family(name), {}) | t.image_tower_args,
            pretrained_path=t.pretrained_path,
            lr=tower_lr, full_lr=pick(t.full_lr, full_lr), epochs=epochs,
            lr_drop_epoch=round(epochs * e.lr_drop_epoch / e.epochs),
            full_epochs=pick(t.full_epochs, e.full_epochs), batch_size=pick(t.batch_size, e.batch_size),
            augment=pick(t.augment, e.augment), methods=tuple(pick(t.methods, e.methods)),
            frozen_backbone=pick(t.frozen_backbone, cfg.model.frozen_backbone), lr_policy=tower_policy))
    return towers


def scored_epochs(epochs: int, first: int, every: int) -> list[int]:
    """The epochs after which a student is scored: first, first + every, ..., and the last."""
    return sorted(set(range(first, epochs + 1, every)) | {epochs})


class _EpochSelector:
    """Keeps the student state of the best epoch on the selection split (selection `final`:
    the last epoch, scored once)."""

    def __init__(self, model: DualEncoder, data: PreparedData, selection: str, device: torch.device,
                 report_split: str = "test"):
        self.model, self.data, self.device, self.selection = model, data, device, selection
        self.split = "val" if selection == "val" else "test"
        self.report_split = report_split
        self.best_score, self.best_epoch, self.best_state = float("-inf"), 0, None

    def observe(self, epoch: int) -> float:
        if self.selection == "final":       # nothing is chosen: remember only which epoch was last
            self.best_epoch, self.best_state = epoch, {}
            return float("nan")
        score = retrieval_metrics(self.model, self.data.split(self.split), self.data.text[self.split],
                                  self.device)["r_mean"]
        if score > self.best_score:         # ties keep the earlier epoch
            self.best_score, self.best_epoch = score, epoch
            self.best_state = copy.deepcopy(self.model.state_dict())
        return score

    def result(self) -> SeedResult:
        if self.best_state is None:
            raise RuntimeError("no epoch was observed: the student was never scored")
        test = self.data.split(self.report_split), self.data.text[self.report_split]
        final = retrieval_metrics(self.model, *test, self.device)
        if self.selection == "final":
            return SeedResult(final, final, self.best_epoch, self.best_score)
        self.model.load_state_dict(self.best_state)
        selected = retrieval_metrics(self.model, *test, self.device)
        return SeedResult(selected, final, self.best_epoch, self.best_score)


def epoch_batches(n: int, batch_size: int, sampler: str, generator: torch.Generator) -> list[torch.Tensor]:
    """One epoch's mini-batches of a set of n: a partition of a shuffle (each pair once), or
    shuffle_head: ceil(n / b) batches, each the first b of a fresh shuffle (the LoRS code)."""
    if sampler == "shuffle_head":
        return [torch.randperm(n, generator=generator)[:batch_size] for _ in range(-(-n // batch_size))]
    return list(torch.randperm(n, generator=generator).split(batch_size))


def train_on_set(cfg: Config, data: PreparedData, synthetic: DistilledSet, seed: int, device: torch.device,
                 tower: EvalTower | None = None, loss_kind: str | None = None,
                 report_split: str = "test") -> SeedResult:
    """Algorithm 2: a fresh student trained on a (distilled or coreset) set; the result at the
    epoch `eval.selection` picks, and at the last epoch, on `report_split`.

    `tower` picks the student's image tower and recipe (default: the distilled-on tower).
    """
    e, tower = cfg.eval, tower or eval_towers(cfg)[0]
    model = prepare_student(tower.build(cfg, data, seed), device, cfg.amp)
    lr_img = tower.lr if tower.lr is not None else synthetic.lr_img
    lr_txt = lr_img if tower.lr is not None or e.shared_lr else synthetic.lr_txt
    optimizer = sgd_for_student(model, lr_img, lr_txt, e.momentum, e.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [tower.lr_drop_epoch], gamma=0.1)
    images = set_inputs(model, synthetic.images.to(device), tower.augment)
    texts = synthetic.text_embeddings.to(device)
    similarity = synthetic.similarity.to(device)
    kind = loss_kind or synthetic.card.get("loss", "infonce")
    generator = torch.Generator().manual_seed(seed)
    scoring = real_data_for(model, data, cfg, device, ("val", "test"))      # features when frozen
    selector = _EpochSelector(model, scoring, e.selection, device, report_split)
    scored = set(scored_epochs(tower.epochs, e.first_scored_epoch, e.val_every))
    for epoch in range(1, tower.epochs + 1):
        model.train()
        with seeded(derive_seed(seed, "epoch", epoch), device):        # dropout draws
            for idx in epoch_batches(len(images), tower.batch_size, e.batch_sampler, generator):
                idx = idx.to(device)
                with torch.no_grad():
                    target = similarity.matrix(idx).to(device)
                batch = augment(images[idx], tower.augment, generator)
                contrastive_step(model, optimizer, batch, texts[idx], target, kind, cfg.distill.loss_eps)
        scheduler.step()
        if epoch in scored:
            selector.observe(epoch)
    return selector.result()


def train_on_full(cfg: Config, data: PreparedData, seed: int, device: torch.device,
                  tower: EvalTower | None = None) -> SeedResult:
    """The upper bound: a student trained on every real pair with the expert recipe."""
    tower = tower or eval_towers(cfg)[0]
    model = prepare_student(tower.build(cfg, data, seed), device, cfg.amp)
    optimizer = sgd_for_student(model, tower.full_lr, tower.full_lr, cfg.buffer.momentum,
                                cfg.buffer.weight_decay)
    data = real_data_for(model, data, cfg, device, ("val", "test"), train=True)
    selector = _EpochSelector(model, data, cfg.eval.selection, device)
    for epoch in range(1, tower.full_epochs + 1):
        train_epoch_on_pairs(model, optimizer, data.dataset.train, data.text["train"],
                             batch_size=cfg.buffer.batch_size, seed=derive_seed(seed, "epoch", epoch),
                             device=device, num_workers=cfg.data.num_workers, mode=cfg.buffer.pairs_per_epoch)
        selector.observe(epoch)
    return selector.result()


def probe_set(cfg: Config, data: PreparedData, synthetic: DistilledSet, seed: int,
              device: torch.device) -> dict[str, float]:
    """The distillation curve's cheap, fixed protocol (`distill.eval_every`): one student trained
    `distill.eval_epochs` epochs (lr x0.1 at half) on the set with the distilled-on tower's
    recipe, scored once, after the last epoch, on the validation split (the test split is never
    looked at while distilling)."""
    epochs = cfg.distill.eval_epochs
    tower = replace(eval_towers(cfg)[0], epochs=epochs, lr_drop_epoch=max(1, epochs // 2))
    if tower.lr_policy == "tuned":        # no grid search per probe: the set's own lrs
        tower = replace(tower, lr_policy="authors")
    probe_cfg = replace(cfg, eval=replace(cfg.eval, selection="final"))
    return train_on_set(probe_cfg, data, synthetic, seed, device, tower, report_split="val").final


def random_pairs(cfg: Config, data: PreparedData, seed: int, n: int | None = None) -> DistilledSet:
    """n (default distill.n_pairs) random real pairs, one caption per image, identity
    similarity, the expert's lr."""
    images, texts, captions = data.real_pairs(n or cfg.distill.n_pairs, torch.Generator().manual_seed(seed))
    lr = cfg.buffer.lr_teacher
    return DistilledSet(images, texts, IdentitySimilarity(len(images)), lr, lr,
                        {"method": "random", "loss": "infonce", "captions": captions})


__all__ = ["EvalTower", "SeedResult", "eval_towers", "lr_policy_of", "probe_set", "random_pairs",
           "train_on_full", "train_on_set"]
