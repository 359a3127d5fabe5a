"""The evaluate stage: train fresh students on a set and measure retrieval on the test split.

For a distilled set this is the paper's Algorithm 2: a fresh student trains on (X, Y, S) with
the set's lrs (or `eval.lr`), SGD momentum 0.9, weight decay 5e-4, lr x0.1 at half the epochs.
Beyond the reference, the reported epoch is chosen on the validation split (every
`eval.val_every` epochs), the final epoch is reported too, and every number is a mean and std
over `eval.num_eval` seeds. `eval.selection: test` reproduces the reference's best-on-test
choice and is labelled so in every output.

Methods: `lors` and `baseline` (distilled sets), `random` (random real pairs of the same
count), `full` (all training pairs, the upper bound); coresets register more.
"""
from __future__ import annotations

import copy
import logging
import statistics
from dataclasses import dataclass
from typing import Callable

import torch
from tqdm.auto import tqdm

from .models.student import DualEncoder, build_student
from .retrieval import METRICS
from .synset import DistilledSet
from .similarity import IdentitySimilarity
from .training import contrastive_step, retrieval_metrics, sgd_for_student, train_epoch_on_pairs

log = logging.getLogger(__name__)

SELECTION_LABELS = {"val": "epoch chosen on val", "test": "best epoch on TEST (reference protocol)"}


@dataclass
class SeedResult:
    selected: dict[str, float]      # test metrics at the chosen epoch
    final: dict[str, float]         # test metrics after the last epoch
    epoch: int                      # the chosen epoch


class _EpochSelector:
    """Keeps the student state of the best epoch on the selection split."""

    def __init__(self, model: DualEncoder, data, selection: str, device: torch.device):
        self.model, self.data, self.device = model, data, device
        self.split = "val" if selection == "val" else "test"
        self.best_score, self.best_epoch, self.best_state = float("-inf"), 0, None

    def observe(self, epoch: int) -> float:
        score = retrieval_metrics(self.model, self.data.split(self.split), self.data.text[self.split],
                                  self.device)["r_mean"]
        if score > self.best_score:
            self.best_score, self.best_epoch = score, epoch
            self.best_state = copy.deepcopy(self.model.state_dict())
        return score

    def result(self) -> SeedResult:
        test = self.data.split("test"), self.data.text["test"]
        final = retrieval_metrics(self.model, *test, self.device)
        self.model.load_state_dict(self.best_state)
        selected = retrieval_metrics(self.model, *test, self.device)
        return SeedResult(selected, final, self.best_epoch)


def train_on_set(cfg, data, synthetic: DistilledSet, seed: int, device: torch.device,
                 image_tower: str | None = None, lr: float | None = None,
                 loss_kind: str | None = None) -> SeedResult:
    """Algorithm 2: a fresh student trained on a (distilled or coreset) set; val-selected result."""
    e = cfg.eval
    model = build_student(cfg.model, data.dataset.image_size, data.text_dim, seed=seed,
                          image_tower=image_tower).to(device)
    lr_img = lr if lr is not None else synthetic.lr_img
    lr_txt = lr if lr is not None else synthetic.lr_txt
    optimizer = sgd_for_student(model, lr_img, lr_txt, e.momentum, e.weight_decay)
    scheduler = torch.optim.lr_scheduler.MultiStepLR(optimizer, [e.epochs // 2], gamma=0.1)
    images, texts = synthetic.images.to(device), synthetic.text_embeddings.to(device)
    similarity = synthetic.similarity.to(device)
    kind = loss_kind or synthetic.card.get("loss", "infonce")
    generator = torch.Generator().manual_seed(seed)
    selector = _EpochSelector(model, data, e.selection, device)
    for epoch in range(1, e.epochs + 1):
        model.train()
        for idx in torch.randperm(len(images), generator=generator).split(e.batch_size):
            idx = idx.to(device)
            with torch.no_grad():
                target = similarity.matrix(idx).to(device)
            contrastive_step(model, optimizer, images[idx], texts[idx], target, kind)
        scheduler.step()
        if epoch % e.val_every == 0 or epoch == e.epochs:
            selector.observe(epoch)
    return selector.result()


def train_on_full(cfg, data, seed: int, device: torch.device,
                  image_tower: str | None = None) -> SeedResult:
    """The upper bound: a student trained on every real pair with the expert recipe."""
    model = build_student(cfg.model, data.dataset.image_size, data.text_dim, seed=seed,
                          image_tower=image_tower).to(device)
    lr = cfg.buffer.lr_teacher
    optimizer = sgd_for_student(model, lr, lr, cfg.buffer.momentum, cfg.buffer.weight_decay)
    selector = _EpochSelector(model, data, cfg.eval.selection, device)
    for epoch in range(1, cfg.eval.full_epochs + 1):
        train_epoch_on_pairs(model, optimizer, data.dataset.train, data.text["train"],
                             cfg.buffer.batch_size, seed * 100 + epoch, device, cfg.data.num_workers,
                             mode=cfg.buffer.pairs_per_epoch)
        selector.observe(epoch)
    return selector.result()


def random_pairs(cfg, data, seed: int) -> DistilledSet:
    """N random real pairs (one caption per image), identity similarity, the expert's lr."""
    images, texts, captions = data.real_pairs(cfg.distill.n_pairs, torch.Generator().manual_seed(seed))
    lr = cfg.buffer.lr_teacher
    return DistilledSet(images, texts, IdentitySimilarity(len(images)), lr, lr,
                        {"loss": "infonce", "captions": captions})


MethodFn = Callable[..., SeedResult]


def _evaluate_set(synthetic: DistilledSet | None) -> MethodFn:
    def run(cfg, data, seed, device, image_tower=None, lr=None):
        return train_on_set(cfg, data, synthetic, seed, device, image_tower, lr)
    return run


def method_runner(name: str, sets: dict[str, DistilledSet]) -> MethodFn:
    """How one seed of a method is trained and scored."""
    if name in sets:
        return _evaluate_set(sets[name])
    if name == "random":
        def run(cfg, data, seed, device, image_tower=None, lr=None):
            return train_on_set(cfg, data, random_pairs(cfg, data, seed), seed, device, image_tower, lr)
        return run
    if name == "full":
        def run(cfg, data, seed, device, image_tower=None, lr=None):
            return train_on_full(cfg, data, seed, device, image_tower)
        return run
    raise KeyError(name)


def summarize(results: list[SeedResult], selection: str) -> dict:
    """Mean and std over seeds of the selected epoch's metrics (+ the final epoch's)."""
    out: dict = {}
    for key in METRICS:
        values = [r.selected[key] for r in results]
        out[key] = statistics.fmean(values)
        out[f"{key}_std"] = statistics.stdev(values) if len(values) > 1 else 0.0
    final = [r.final["r_mean"] for r in results]
    out["final"] = {key: statistics.fmean(r.final[key] for r in results) for key in METRICS}
    out["final"]["r_mean_std"] = statistics.stdev(final) if len(final) > 1 else 0.0
    out["n_seeds"] = len(results)
    out["selected_epochs"] = [r.epoch for r in results]
    out["selection"] = SELECTION_LABELS[selection]
    return out


def evaluate_methods(cfg, data, sets: dict[str, DistilledSet], device: torch.device,
                     methods: list[str] | None = None, image_tower: str | None = None) -> dict:
    """Every requested method x `eval.num_eval` seeds; returns {method: summary}."""
    methods = methods or cfg.eval.methods
    summaries = {}
    for name in methods:
        try:
            runner = method_runner(name, sets)
        except KeyError:
            log.warning("method %s skipped: no set for it in this run", name)
            continue
        seeds = [cfg.seed * 1000 + 17 + s for s in range(cfg.eval.num_eval)]
        results = [runner(cfg, data, seed, device, image_tower, cfg.eval.lr)
                   for seed in tqdm(seeds, desc=f"eval {name}", unit="seed")]
        summaries[name] = summarize(results, cfg.eval.selection)
        log.info("%s: r_mean %.2f +- %.2f (final epoch %.2f)", name, summaries[name]["r_mean"],
                 summaries[name]["r_mean_std"], summaries[name]["final"]["r_mean"])
    return summaries


__all__ = ["SeedResult", "evaluate_methods", "random_pairs", "summarize", "train_on_full",
           "train_on_set"]
