"""The distill stage: learn synthetic pairs, their similarity and the student lrs by matching
expert trajectories (LoRS on bi-trajectory matching, TESLA gradients).

Each iteration picks an expert and a start epoch s, takes T student steps on the synthetic
set from snapshot s and compares the result with snapshot s + M (`vldistill.algorithms.matching`);
SGD with momentum then updates the images, text embeddings, similarity parameters and lrs.
All randomness of the stage comes from one generator whose state is checkpointed, so a
resumed run continues exactly where the interrupted one was (`vldistill.distill.checkpoint`).

Faults: an iteration whose matching loss or any gradient (images, texts, similarity, lrs) is
not finite is skipped before the update and counted; `max_bad_steps` in a row stop the run
with `NonFiniteError`, the last good checkpoint kept. A run that grows past `max_growth`
while staying finite stops with `DivergedError` (`vldistill.distill.divergence`), its last good set
saved as SET_last_good. An lr update that would make a learned
lr non-finite, zero (log underflow) or above `max_lr` is undone and reported; a linear lr is
clamped at `min_lr`. No periodic checkpoint is written while the latest iteration was skipped,
so the one on disk comes from a state that last gave a finite iteration. SIGINT/SIGTERM finish
the current iteration, write a checkpoint, then stop.
"""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path

import torch
from tqdm.auto import tqdm

from ..runtime import seeds
from .checkpoint import BestSoFar, read_checkpoint, write_checkpoint
from ..config import Config
from ..evaluation.coresets import coreset_pairs
from ..data import PreparedData
from .divergence import DivergedError, GrowthGuard, rms, save_last_good
from ..errors import NonFiniteError, UserError
from ..evaluation.evaluate import probe_set
from ..buffer.store import TrajectoryStore, store_manifest, warn_if_other_recipe
from ..runtime.interrupts import deferred_interrupts
from ..runtime.io import append_jsonl, remove_leftover_temps
from ..algorithms.matching import MATCHERS, MatchOptions, sample_batches
from .memory import check_distill_fits
from ..models.batchnorm import check_batchnorm
from ..models.student import FunctionalStudent, build_student
from ..algorithms.similarity import configured_similarity
from ..algorithms.synset import DistilledSet

log = logging.getLogger(__name__)


__all__ = ["Distiller", "NonFiniteError", "init_synthetic", "run_distill"]


def init_synthetic(cfg: Config, data: PreparedData, generator: torch.Generator,
                   store: TrajectoryStore | None = None,
                   device: torch.device | None = None) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """N real pairs (`init: real`: distinct images with one of their captions, or distinct caption
    entries -- `distill.init_draw` -- as their plain or augmented image), noise, or the herding /
    k-center coreset that the `herding` / `kcenter` methods evaluate (from the store's expert)."""
    d = cfg.distill
    if d.init in ("herding", "kcenter"):
        if store is None:
            raise UserError(f"distill.init={d.init} selects pairs with a trained expert: it needs the "
                            "trajectory store")
        coreset = coreset_pairs(cfg, data, store, device or torch.device("cpu"), d.init, d.n_pairs,
                                torch.Generator().manual_seed(seeds.derive_seed(cfg.seed, f"init-{d.init}")))
        return coreset.images, coreset.text_embeddings, coreset.card["captions"]
    draw = data.real_pairs if d.init_draw == "images" else data.real_entries
    if d.init_augment:      # the augmentations draw from torch's generator: seed it from ours
        with seeds.seeded(int(torch.randint(2 ** 62, (1,), generator=generator))):
            images, texts, captions = draw(d.n_pairs, generator, augment=True, view_cache=d.init_view_cache)
    else:
        images, texts, captions = draw(d.n_pairs, generator)
    if d.init == "noise":
        images = torch.randn(images.shape, generator=generator)
        mean, std = data.text["train"].mean(0), data.text["train"].std(0)
        texts = mean + std * torch.randn(texts.shape, generator=generator)
    return images, texts, captions


class Distiller:
    """The state of one distillation run and one iteration of it (`step`)."""

    def __init__(self, cfg: Config, data: PreparedData, store: TrajectoryStore, device: torch.device,
                 method: str = "lors"):
        d = cfg.distill
        self.cfg, self.d, self.store, self.device, self.method = cfg, d, store, device, method
        self.sim_kind = d.sim_kind
        # seeded from a forked generator: built once, it describes the store and is the student
        student = build_student(cfg.model, data.dataset.image_size, data.text_dim, seed=0)
        check_batchnorm(student, data.dataset.image_size, data.text_dim, {"distill.mini_batch": d.mini_batch})
        self.manifest = store.check(store_manifest(cfg, data, student))
        warn_if_other_recipe(self.manifest, cfg, store.dir)
        stored = self.manifest.get("epochs", [])
        if d.last_epoch_used not in stored:
            raise UserError(f"distill needs expert epoch {d.last_epoch_used} "
                            f"(max_start_epoch - 1 + expert_epochs) but the store keeps {stored}: "
                            "lower distill.max_start_epoch/expert_epochs or rebuild the buffer "
                            "(a new buffer.dir) with these settings")
        self.experts = store.experts()
        self.expert_queue: list[int] = []           # expert_order cycle: this pass's experts left
        self.generator = seeds.generator(cfg.seed, "distill")
        images, texts, self.init_captions = init_synthetic(cfg, data, self.generator, store, device)
        self.images = images.to(device).requires_grad_(True)
        self.texts = texts.to(device).requires_grad_(True)
        self.guard = GrowthGuard(d.max_growth, {f"distill.{k}": getattr(d, k) for k in ("lr_img", "lr_txt", "lr_lr")})
        self.guard.start.update(images=rms(self.images), texts=rms(self.texts))     # the set's: its initial RMS
        with seeds.seeded(seeds.derive_seed(cfg.seed, "similarity")):
            self.similarity = configured_similarity(d).to(device)
        init_lr = math.log(d.lr_teacher) if d.lr_param == "log" else d.lr_teacher
        self.lr_raw = torch.full((2,), init_lr, device=device, requires_grad=d.learn_lr)
        groups = [{"params": [self.images], "lr": d.lr_img, "momentum": d.momentum_syn},
                  {"params": [self.texts], "lr": d.lr_txt, "momentum": d.momentum_syn}]
        if list(self.similarity.parameters()):
            groups.append({"params": list(self.similarity.parameters()), "lr": d.lr_sim,
                           "momentum": d.momentum_sim})
        if d.learn_lr:
            groups.append({"params": [self.lr_raw], "lr": d.lr_lr, "momentum": d.momentum_lr})
        self.optimizer = torch.optim.SGD(groups, lr=d.lr_img)
        self.student = FunctionalStudent(student.to(device), d.logit_scale, d.blend_alpha)
        self.options = MatchOptions(d.loss, d.loss_eps, d.merge_branches, d.lr_grad)
        self.matcher_options = MATCHERS.options(d.matching, d.matching_args.get(d.matching),
                                                f"distill.matching_args.{d.matching}")
        self.ema = [t.detach().clone() for t in self._exported()] if d.ema_decay > 0 else None
        self.iteration, self.bad_in_a_row, self.skipped = 0, 0, 0
        self.best = BestSoFar()

    # ---------------------------------------------------------------- the lrs
    def lrs(self) -> tuple[float, float]:
        raw = self.lr_raw.detach()
        values = raw.exp() if self.d.lr_param == "log" else raw
        return float(values[0]), float(values[1])

    def _set_lr_grad(self, grad_img: float, grad_txt: float) -> None:
        if not self.d.learn_lr:
            return
        grad = torch.tensor([grad_img, grad_txt], device=self.device)
        if self.d.lr_param == "log":
            grad = grad * torch.tensor(self.lrs(), device=self.device)      # chain rule through exp
        self.lr_raw.grad = grad

    # ---------------------------------------------------------------- one iteration
    def _next_expert(self) -> int:
        """random: any expert; cycle: each once per pass, in a fresh shuffled order per pass."""
        if self.d.expert_order == "random":
            return self.experts[int(torch.randint(len(self.experts), (1,), generator=self.generator))]
        if not self.expert_queue:
            self.expert_queue = [self.experts[i] for i in torch.randperm(len(self.experts),
                                                                         generator=self.generator)]
        return self.expert_queue.pop(0)

    def step(self) -> dict:
        """One matching iteration and update; returns the metrics record it logged."""
        d, start_time = self.d, time.time()
        expert = self._next_expert()
        start_epoch = int(torch.randint(d.min_start_epoch, d.max_start_epoch, (1,), generator=self.generator))
        batches = sample_batches(d.n_pairs, d.mini_batch, d.syn_steps, self.generator, d.batch_draw)
        step_seeds = torch.randint(2 ** 62, (d.syn_steps,), generator=self.generator).tolist()
        begin = self.store.load(expert, start_epoch)
        end = self.store.load(expert, start_epoch + d.expert_epochs)
        lr_img, lr_txt = self.lrs()
        self.optimizer.zero_grad(set_to_none=True)
        result = MATCHERS.get(d.matching)(self.student, self.images, self.texts, self.similarity, lr_img, lr_txt,
                                          (begin.image.to(self.device), begin.text.to(self.device)),
                                          (end.image.to(self.device), end.text.to(self.device)),
                                          [b.to(self.device) for b in batches], self.options, step_seeds,
                                          **self.matcher_options)
        self._set_lr_grad(result.grad_lr_img, result.grad_lr_txt)
        finite = math.isfinite(result.loss) and all(
            bool(torch.isfinite(p.grad).all()) for g in self.optimizer.param_groups
            for p in g["params"] if p.grad is not None)
        lr_event, growth = None, {}
        stopped = {"stage": "distill", "method": self.method, "it": self.iteration + 1, "loss": result.loss,
                   "expert": expert, "start_epoch": start_epoch}
        if finite:
            growth = self.guard.check({"loss": result.loss}, self.iteration + 1, self.current_values(),
                                      stopped)                                  # before the update
            lr_before = self._lr_state()
            before = [t.detach().clone() for t in self._exported()] if self.ema is None and d.max_growth else self.ema
            self.optimizer.step()
            lr_event = self._keep_lrs_valid(lr_before)
            growth |= self.guard.check({"images": rms(self.images), "texts": rms(self.texts)},
                                       self.iteration + 1, before, stopped)
            self._update_ema()
            self.bad_in_a_row = 0
            self.best.observe(result.loss)
        else:
            self.skipped += 1
            self.bad_in_a_row += 1
        self.iteration += 1
        lr_img, lr_txt = self.lrs()
        record = {"stage": "distill", "method": self.method, "kind": self.sim_kind, "it": self.iteration,
                  "loss": result.loss, "loss_img": result.loss_img, "loss_txt": result.loss_txt,
                  "lr_img": lr_img, "lr_txt": lr_txt, "grad_lr_img": result.grad_lr_img,
                  "grad_lr_txt": result.grad_lr_txt, "expert": expert, "start_epoch": start_epoch,
                  "skipped": not finite, "lr_event": lr_event, "seconds": time.time() - start_time,
                  "growth": {k: round(v, 4) for k, v in growth.items()}}
        if d.merge_branches:        # `loss` is the merged ratio; the reference logs this sum instead
            record["loss_branch_sum"] = result.branch_sum
        if self.bad_in_a_row >= d.max_bad_steps:
            raise NonFiniteError(
                f"{self.bad_in_a_row} iterations in a row gave a non-finite matching loss or "
                f"gradient (last loss {result.loss}, student lrs now {self.lrs()}); likely cause: "
                f"distill.lr_img ({d.lr_img}), lr_txt ({d.lr_txt}), lr_sim ({d.lr_sim}) or lr_lr "
                f"({d.lr_lr}) too high. The last good checkpoint is kept: resume from it with "
                "distill.resume=true and lower lrs.", record)
        return record

    def _lr_state(self) -> tuple[torch.Tensor, torch.Tensor | None]:
        buffer = self.optimizer.state.get(self.lr_raw, {}).get("momentum_buffer")
        return self.lr_raw.detach().clone(), None if buffer is None else buffer.clone()

    @torch.no_grad()
    def _keep_lrs_valid(self, before: tuple[torch.Tensor, torch.Tensor | None]) -> str | None:
        """Undo an lr update that is non-finite or above max_lr; clamp a linear lr at min_lr
        (unless distill.clamp_lr is off, as in the reference).

        Returns "rejected", "clamped" or None, for the metrics record.
        """
        if not self.d.learn_lr:
            return None
        lrs = torch.tensor(self.lrs())
        refused = ~torch.isfinite(lrs)
        if self.d.max_lr is not None:
            refused |= lrs > self.d.max_lr
        if self.d.lr_param == "log":
            refused |= lrs <= 0                                 # exp() underflowed
        if bool(refused.any()):
            log.warning("iteration %d: the lr update to %s was refused (not finite and positive, "
                        "or above distill.max_lr=%s); lrs stay %s. Lower distill.lr_lr if this repeats",
                        self.iteration + 1, lrs.tolist(), self.d.max_lr, before[0].tolist())
            self.lr_raw.copy_(before[0])
            state = self.optimizer.state[self.lr_raw]
            if before[1] is None:
                state.pop("momentum_buffer", None)
            else:
                state["momentum_buffer"].copy_(before[1])
            return "rejected"
        if self.d.lr_param == "linear" and self.d.clamp_lr and bool((self.lr_raw < self.d.min_lr).any()):
            log.warning("iteration %d: a learned lr fell to %s, clamped at distill.min_lr=%g "
                        "(distill.lr_param=log keeps lrs positive without a clamp)",
                        self.iteration + 1, self.lr_raw.tolist(), self.d.min_lr)
            self.lr_raw.clamp_(min=self.d.min_lr)
            return "clamped"
        return None

    def _exported(self) -> list[torch.Tensor]:
        return [self.images, self.texts, *self.similarity.parameters(), self.lr_raw]

    @torch.no_grad()
    def _update_ema(self) -> None:
        if self.ema is not None:
            for avg, value in zip(self.ema, self._exported()):
                avg.lerp_(value.detach(), 1.0 - self.d.ema_decay)

    # ---------------------------------------------------------------- export and checkpoints
    def current_values(self) -> list[torch.Tensor]:
        """The set as exported: the EMA when distill.ema_decay > 0, else the values themselves."""
        return self.ema if self.ema is not None else [t.detach() for t in self._exported()]

    def setup(self) -> dict:
        """What a checkpoint must agree with for this run to resume from it."""
        d = self.d
        return {"kind": self.sim_kind, "n_pairs": d.n_pairs, "images": list(self.images.shape),
                "text_dim": int(self.texts.shape[1]),
                "rank": d.rank if self.sim_kind == "lowrank" else None, "learn_lr": d.learn_lr,
                "lr_param": d.lr_param, "ema": d.ema_decay > 0,
                "sim_options": self.similarity.options or None,
                "dataset_fingerprint": self.manifest.get("dataset_fingerprint")}

    @torch.no_grad()
    def export(self, card: dict, values: list[torch.Tensor] | None = None) -> DistilledSet:
        """The set as it stands (`current_values`), or as given by `values`."""
        values = values if values is not None else self.current_values()
        images, texts, *sim_values, lr_raw = [v.clone().cpu() for v in values]
        with seeds.seeded(0):           # (its random initialization is overwritten just below)
            sim = configured_similarity(self.d)
        for param, value in zip(sim.parameters(), sim_values):
            param.copy_(value)
        lrs = lr_raw.exp() if self.d.lr_param == "log" else lr_raw
        return DistilledSet(images, texts, sim, float(lrs[0]), float(lrs[1]), card)

    def state_tensors(self) -> dict[str, torch.Tensor]:
        state = {f"value.{i}": t.detach() for i, t in enumerate(self._exported())}
        for i, group in enumerate(self.optimizer.param_groups):
            for j, p in enumerate(group["params"]):
                buffer = self.optimizer.state.get(p, {}).get("momentum_buffer")
                if buffer is not None:
                    state[f"momentum.{i}.{j}"] = buffer
        if self.ema is not None:
            state.update({f"ema.{i}": t for i, t in enumerate(self.ema)})
        state["generator"] = self.generator.get_state()
        state["expert_queue"] = torch.tensor(self.expert_queue, dtype=torch.long)
        state["counters"] = torch.tensor([self.iteration, self.bad_in_a_row, self.skipped])
        state["guard.start"] = self.guard.state_tensor()
        return state | self.best.state_tensors()

    @torch.no_grad()
    def load_state(self, state: dict[str, torch.Tensor]) -> None:
        for i, t in enumerate(self._exported()):
            t.copy_(state[f"value.{i}"])
        for i, group in enumerate(self.optimizer.param_groups):
            for j, p in enumerate(group["params"]):
                if f"momentum.{i}.{j}" in state:
                    self.optimizer.state[p]["momentum_buffer"] = state[f"momentum.{i}.{j}"].to(self.device).clone()
        if self.ema is not None:
            for i, t in enumerate(self.ema):
                t.copy_(state[f"ema.{i}"])
        self.generator.set_state(state["generator"])
        self.expert_queue = state["expert_queue"].tolist()
        self.iteration, self.bad_in_a_row, self.skipped = (int(v) for v in state["counters"])
        self.guard.load(state.get("guard.start"))
        self.best.load(state)


def run_distill(cfg: Config, data: PreparedData, store: TrajectoryStore, set_path: Path,
                checkpoint_path: Path, metrics_path: Path, device: torch.device,
                method: str = "lors") -> DistilledSet:
    """Distill (resuming from `checkpoint_path` when it exists and distill.resume is set).

    Also writes the best-so-far set (`vldistill.distill.checkpoint.BestSoFar`) next to the final one,
    as SET_best.{safetensors,json}. Call it only while holding the run lock (`vldistill.runtime.runlock`).
    """
    check_distill_fits(cfg, data.dataset.image_size, data.text_dim, device)   # logs; refuses
    distiller = Distiller(cfg, data, store, device, method)
    remove_leftover_temps(checkpoint_path)
    remove_leftover_temps(checkpoint_path.with_suffix(".json"))
    if checkpoint_path.is_file() and cfg.distill.resume:
        state, _ = read_checkpoint(checkpoint_path, distiller.setup())
        distiller.load_state(state)
        append_jsonl(metrics_path, {"stage": "resume", "method": method, "it": distiller.iteration})
        log.info("resumed %s distillation at iteration %d (records after it in metrics.jsonl "
                 "are from the interrupted run and are redone)", method, distiller.iteration)
    elif checkpoint_path.is_file():
        log.warning("distill.resume=false: %s starts over; the checkpoint in %s will be overwritten",
                    method, checkpoint_path)
    if cfg.distill.merge_branches:
        log.info("%s: `loss` (logged, and the best window's) is the merged ratio minimised; `loss_branch_sum` "
                 "is the per-branch ratios' sum, what the LoRS and RepBlend code log", method)
    card = {"dataset": data.dataset.name, "dataset_fingerprint": data.dataset.fingerprint,
            "image_tower": cfg.model.image_tower, "text_tower": cfg.model.text_tower,
            "image_size": data.dataset.image_size, "mean": list(data.dataset.mean),
            "std": list(data.dataset.std), "loss": cfg.distill.loss,
            "init_captions": distiller.init_captions}
    total = cfg.distill.iterations
    with tqdm(total=total, initial=distiller.iteration, desc=f"distill {method}", unit="it") as bar, \
            deferred_interrupts() as interrupt:
        if distiller.iteration == 0:
            _evaluate_during(distiller, card, data, metrics_path)
        while distiller.iteration < total:
            try:
                record = distiller.step()
            except (NonFiniteError, DivergedError) as err:      # the iteration that ends the run is logged too
                append_jsonl(metrics_path, err.record)
                if isinstance(err, DivergedError):
                    last_good = distiller.export(card | {"stopped": str(err)}, values=err.values)
                    raise save_last_good(err, last_good, set_path, checkpoint_path) from None
                raise
            append_jsonl(metrics_path, record)
            bar.set_postfix(loss=f"{record['loss']:.3f}", lr_img=f"{record['lr_img']:.3g}")
            bar.update(1)
            _evaluate_during(distiller, card, data, metrics_path)
            window_end = distiller.iteration % cfg.distill.checkpoint_every == 0 or distiller.iteration == total
            if window_end:
                distiller.best.close_window(distiller.current_values(), distiller.iteration)
            if interrupt.requested or (window_end and not distiller.bad_in_a_row):
                _checkpoint(distiller, checkpoint_path)
            elif window_end:
                log.warning("iteration %d: no checkpoint while iterations come out non-finite; "
                            "the previous one stays", distiller.iteration)
            interrupt.raise_if_requested()
    info = {"iterations": distiller.iteration, "skipped_iterations": distiller.skipped}
    synthetic = distiller.export(card | info)
    synthetic.save(set_path)
    if distiller.best.values is not None:
        best = distiller.export(card | info | {
            "selection": f"lowest mean matching loss over a window of {cfg.distill.checkpoint_every} "
                         "iterations", "best_iteration": distiller.best.iteration,
            "best_window_loss": distiller.best.loss}, values=distiller.best.values)
        best.save(set_path.with_name(set_path.name + "_best"))
    return synthetic


def _evaluate_during(distiller: Distiller, card: dict, data: PreparedData, metrics_path: Path) -> None:
    """distill.eval_every > 0: the distillation curve, from the set's start (iteration 0) on. Each
    point is `vldistill.evaluation.evaluate.probe_set`'s fixed protocol (one student, the same seed at every
    point, distill.eval_epochs epochs, val split): logged with its protocol, never selected on."""
    every = distiller.d.eval_every
    if not every or distiller.iteration % every:
        return
    seed = seeds.derive_seed(distiller.cfg.seed, "probe")
    scores = probe_set(distiller.cfg, data, distiller.export(card), seed, distiller.device)
    append_jsonl(metrics_path, {"stage": "distill_eval", "method": distiller.method,
                                "it": distiller.iteration, **scores, "split": "val", "students": 1,
                                "epochs": distiller.d.eval_epochs, "seed": seed})


def _checkpoint(distiller: Distiller, path: Path) -> None:
    write_checkpoint(path, distiller.state_tensors(), {
        "iteration": distiller.iteration, "kind": distiller.sim_kind, "skipped": distiller.skipped,
        "best_iteration": distiller.best.iteration,
        "best_window_loss": distiller.best.loss if math.isfinite(distiller.best.loss) else None,
        "setup": distiller.setup()})
