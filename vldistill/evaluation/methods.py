"""Evaluation methods by name: what a student trains on, and, for distilled sets, the settings
the set is made with. Every registered name is an `eval.methods` entry at once.

Two kinds, each one registered function:

- a *baseline* registers one seed of its evaluation, `fn(ctx, tower, seed) -> SeedResult`
  (`@register_method`): `random` real pairs, the `herding` and `kcenter` coresets, `full`;
- a *distilled* method registers the settings its set is distilled and evaluated with,
  `fn(cfg) -> Config` (`@register_distilled`): `lors` (the config as given), `lors-identity`
  (LoRS's pipeline with S = I), `vl-distill` (VL-distill's own algorithm and evaluation),
  `repblend` and `repblend-noblend` (`vldistill.algorithms.repblend`: frozen backbone, heads only). The
  distill stage makes one set per distilled method under its settings; its evaluation trains
  students on that set (Algorithm 2, `train_on_set`).

Either kind may register an options dataclass (`options=`): its block `eval.method_args.NAME`
is checked by it and arrives as keyword arguments, `fn(cfg, **options)` or
`fn(ctx, tower, seed, **options)`.

Every method trains `eval.num_eval` students (one per seed) on each evaluation tower, and
`summarize` turns them into the mean ± std that results.json holds.
"""
from __future__ import annotations

import logging
import math
import statistics
from dataclasses import dataclass, field, replace
from functools import partial
from typing import Callable

import torch

from ..runtime import distributed
from ..config import Config
from ..config_merge import derive
from ..data import PreparedData
from ..errors import UserError
from .evaluate import (SELECTION_LABELS, EvalTower, SeedResult, eval_towers, random_pairs,
                       train_on_full, train_on_set)
from ..registry import Registry
from ..algorithms.retrieval import METRICS
from .seedlog import SeedLog, settings_key
from ..runtime.seeds import derive_seed
from ..algorithms.synset import DistilledSet
from ..buffer.store import TrajectoryStore

log = logging.getLogger(__name__)


@dataclass
class EvalContext:
    """What methods draw on: the data, the distilled sets, the trajectory store (coresets)."""

    cfg: Config
    data: PreparedData
    device: torch.device
    sets: dict[str, DistilledSet]
    store: TrajectoryStore | None = None
    cache: dict = field(default_factory=dict)   # per-evaluation work shared by seeds and towers
    seed_log: SeedLog | None = None             # finished seeds, kept across an interruption

    @property
    def n_pairs(self) -> int:
        """The pair count every method is held to: the sets' own, else distill.n_pairs."""
        counts = {s.n_pairs for s in self.sets.values()}
        if len(counts) > 1:
            raise UserError(f"the sets to compare have different pair counts {sorted(counts)}")
        return counts.pop() if counts else self.cfg.distill.n_pairs


SeedFn = Callable[..., SeedResult]      # (context, tower, seed, **options)
ConfigFn = Callable[..., Config]        # (run config, **options) -> the method's


@dataclass(frozen=True)
class Method:
    """A registered evaluation method."""

    name: str
    evaluate_seed: SeedFn
    configure: ConfigFn | None = None     # distilled methods: the settings of their set
    trains_on_set: bool = True            # False: its students do not train on a set (`full`), so
                                          # eval.lr_policy does not apply to it

    @property
    def distilled(self) -> bool:
        return self.configure is not None


METHODS: Registry[Method] = Registry("method")


def register_method(name: str, trains_on_set: bool = True, *,
                    options: type | None = None) -> Callable[[SeedFn], SeedFn]:
    """Decorator: `fn(ctx, tower, seed, **options) -> SeedResult` becomes the baseline
    `eval.methods: [NAME]` (`trains_on_set=False` for one whose students train on something
    else, like `full`; `options`: the dataclass of its eval.method_args.NAME block)."""
    def wrap(fn: SeedFn) -> SeedFn:
        METHODS.add(name, Method(name, fn, trains_on_set=trains_on_set), options=options)
        return fn
    return wrap


def register_distilled(name: str, *, options: type | None = None) -> Callable[[ConfigFn], ConfigFn]:
    """Decorator: `fn(cfg, **options) -> Config` makes NAME a distilled method whose set is
    distilled and evaluated under `fn(cfg)` (e.g. `configio.with_overrides(cfg,
    ["distill.loss=kl"])`; the built-in methods use `config_merge.derive`, which does not look
    names up); `options`: the dataclass of its eval.method_args.NAME block."""
    def wrap(fn: ConfigFn) -> ConfigFn:
        METHODS.add(name, Method(name, partial(_train_on_own_set, name), fn), options=options)
        return fn
    return wrap


def method_options(cfg: Config, name: str) -> dict:
    """`name`'s own options (eval.method_args.NAME), checked, with their defaults."""
    return METHODS.options(name, cfg.eval.method_args.get(name), f"eval.method_args.{name}")


def distilled_methods(names: list[str] | None = None) -> list[str]:
    """The distilled methods among `names` (default: every registered one), in order."""
    return [n for n in (METHODS.names() if names is None else names) if METHODS.get(n).distilled]


def method_config(cfg: Config, name: str) -> Config:
    """The settings `name`'s set is distilled and evaluated with (the run's own for baselines)."""
    method = METHODS.get(name)
    return method.configure(cfg, **method_options(cfg, name)) if method.distilled else cfg


def _train_on_own_set(name: str, ctx: EvalContext, tower: EvalTower, seed: int) -> SeedResult:
    if name not in ctx.sets:
        raise UserError(f"eval.methods asks for {name!r} but there is no {name} set to evaluate")
    return train_on_set(ctx.cfg, ctx.data, ctx.sets[name], seed, ctx.device, tower)


# ------------------------------------------------------------------ the built-in methods
@register_distilled("lors")
def _lors(cfg: Config) -> Config:
    """LoRS: the run's distill settings as given (distill.sim_kind, lowrank by default)."""
    return cfg


@register_distilled("lors-identity")
def _lors_identity(cfg: Config) -> Config:
    """LoRS's pipeline with the similarity fixed to S = I (no similarity mining)."""
    return derive(cfg, ["distill.sim_kind=identity"])


@register_distilled("vl-distill")
def _vl_distill(cfg: Config) -> Config:
    """VL-distill (Wu et al., TMLR 2024) as its code runs: MTT's full unroll (no stop-gradient),
    identity targets and InfoNCE, inner logits scaled by log(1/tau) = 2.66 (its log-scale
    parameter used without exp), per-branch ratios, a fresh mini-batch each step; evaluated with
    the learned image lr for both towers, 51 epochs at a constant lr, batch 64, and (reference
    fidelity) the final epoch reported."""
    overrides = ["distill.matching=unroll", "distill.sim_kind=identity", "distill.loss=infonce",
                 f"distill.logit_scale={math.log(1.0 / cfg.model.temperature)}",
                 "distill.merge_branches=false", "distill.lr_grad=exact", "distill.batch_draw=fresh",
                 "eval.epochs=51", "eval.lr_drop_epoch=51", "eval.batch_size=64", "eval.shared_lr=true",
                 "eval.batch_sampler=partition"]
    if cfg.fidelity == "reference":
        overrides += ["eval.selection=final", "eval.first_scored_epoch=51"]
    return derive(cfg, overrides)


@register_method("random")
def _random(ctx: EvalContext, tower: EvalTower, seed: int) -> SeedResult:
    """Random real pairs of the same count, one caption per image, a new draw per seed."""
    return train_on_set(ctx.cfg, ctx.data, random_pairs(ctx.cfg, ctx.data, seed, ctx.n_pairs),
                        seed, ctx.device, tower)


def coreset_for(ctx: EvalContext, method: str, seed: int) -> DistilledSet:
    """The herding / kcenter set of this evaluation (expert embeddings computed once)."""
    from .coresets import coreset_pairs, expert_embeddings
    if ctx.store is None:
        raise UserError(f"{method} needs a trajectory store (the expert embeds the data): "
                        "run the buffer stage or set buffer.dir")
    if "expert_embeddings" not in ctx.cache:
        ctx.cache["expert_embeddings"] = expert_embeddings(ctx.cfg, ctx.data, ctx.store, ctx.device,
                                                           ctx.cfg.eval.coreset_expert)
    return coreset_pairs(ctx.cfg, ctx.data, ctx.store, ctx.device, method, ctx.n_pairs,
                         torch.Generator().manual_seed(seed), ctx.cache["expert_embeddings"])


@register_method("herding")
def _herding(ctx: EvalContext, tower: EvalTower, seed: int) -> SeedResult:
    """Real pairs chosen by herding on a trained expert's embeddings."""
    return train_on_set(ctx.cfg, ctx.data, coreset_for(ctx, "herding", seed), seed, ctx.device, tower)


@register_method("kcenter")
def _kcenter(ctx: EvalContext, tower: EvalTower, seed: int) -> SeedResult:
    """Real pairs chosen by greedy k-center on the same embeddings."""
    return train_on_set(ctx.cfg, ctx.data, coreset_for(ctx, "kcenter", seed), seed, ctx.device, tower)


@register_method("full", trains_on_set=False)
def _full(ctx: EvalContext, tower: EvalTower, seed: int) -> SeedResult:
    """Every training pair with the expert recipe: the upper bound."""
    return train_on_full(ctx.cfg, ctx.data, seed, ctx.device, tower)


# ------------------------------------------------------------------ seeds, summaries, towers
def _mean_std(values: list[float], std: str = "sample") -> tuple[float, float]:
    """Mean and std: sample (n - 1; 0 for one seed) or population (n, as the LoRS code)."""
    if std == "population":
        return statistics.fmean(values), statistics.pstdev(values)
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def summarize(results: list[SeedResult], selection: str, seeds: list[int] | None = None,
              std: str = "sample", lr: dict | None = None) -> dict:
    """Mean and std over seeds of the selected epoch's test metrics, the final epoch's beside
    them, the per-seed numbers, and the selection rule's label."""
    out: dict = {"std": std}
    final: dict = {}
    for key in METRICS:
        out[key], out[f"{key}_std"] = _mean_std([r.selected[key] for r in results], std)
        final[key], final[f"{key}_std"] = _mean_std([r.final[key] for r in results], std)
    out["final"] = final
    out["n_seeds"] = len(results)
    out["selected_epochs"] = [r.epoch for r in results]
    out["selection"] = SELECTION_LABELS[selection]
    out.update(lr or {})
    out["per_seed"] = [{"seed": s, "epoch": r.epoch, "selection_r_mean": r.selection_score,
                        "r_mean": r.selected["r_mean"], "final_r_mean": r.final["r_mean"]}
                       for s, r in zip(seeds or [None] * len(results), results)]
    return out


def evaluate_method(ctx: EvalContext, name: str, tower_label: str | None = None,
                    configured: bool = False) -> dict:
    """`eval.num_eval` seeds of one method on one evaluation tower (default: the distilled-on
    one), under the method's own settings (`configured`: ctx.cfg already is), with the student
    lr its tower's `lr_policy` gives; returns its summary."""
    cfg = ctx.cfg if configured else method_config(ctx.cfg, name)
    towers = {t.label: t for t in eval_towers(cfg)}
    tower = towers[tower_label] if tower_label is not None else next(iter(towers.values()))
    seeds = [derive_seed(cfg.seed, "eval", s) for s in range(cfg.eval.num_eval)]
    method = METHODS.get(name)
    own = {} if method.distilled else method_options(cfg, name)     # a distilled one's made its set
    context = replace(ctx, cfg=cfg)
    done: dict[tuple[float | None, int], SeedResult] = {}

    def run_seed(tower: EvalTower, seed: int) -> SeedResult:
        if (tower.lr, seed) in done:
            return done[tower.lr, seed]
        key = (settings_key(cfg, name, f"{tower.label} lr={tower.lr}", ctx.sets.get(name))
               if ctx.seed_log else "")
        result = ctx.seed_log.get(key, seed) if ctx.seed_log else None
        if result is None:
            result = method.evaluate_seed(context, tower, seed, **own)
            if ctx.seed_log:
                ctx.seed_log.add(key, seed, result)
        done[tower.lr, seed] = result
        return result

    kind = "distilled" if method.distilled else "real pairs" if method.trains_on_set else "all data"
    if not method.trains_on_set:
        lr_record = {"lr_policy": "fixed", "lr": tower.full_lr}
    elif tower.lr_policy == "tuned":
        tower, lr_record = _tuned(cfg, tower, partial(run_seed, seed=seeds[0]))
    else:
        authors_lr = "own" if method.distilled else cfg.buffer.lr_teacher   # real pairs: lr_teacher
        lr_record = {"lr_policy": tower.lr_policy, "lr": tower.lr if tower.lr is not None else authors_lr}
    results = distributed.sharded_map(partial(run_seed, tower), seeds,      # torchrun: seeds shared out
                                      progress=f"eval {name} on {tower.label}")
    summary = summarize(results, cfg.eval.selection, seeds, cfg.eval.std, lr_record | {"kind": kind})
    log.info("%s on %s: r_mean %.2f +- %.2f (final epoch %.2f; lr %s, %s)", name, tower.label,
             summary["r_mean"], summary["r_mean_std"], summary["final"]["r_mean"], lr_record["lr"],
             lr_record["lr_policy"])
    return summary


def _tuned(cfg: Config, tower: EvalTower,
           first_seed: Callable[[EvalTower], SeedResult]) -> tuple[EvalTower, dict]:
    """lr_policy tuned: one student per lr of eval.lr_grid (the first seed's), each scored on val
    at its val-chosen epoch; the best lr (ties: the smaller) is then used by every seed."""
    if cfg.eval.selection != "val":
        raise UserError("eval.lr_policy=tuned picks each set's lr on the validation split: it needs "
                        f"eval.selection=val (not {cfg.eval.selection})")
    val = {lr: first_seed(replace(tower, lr=lr)).selection_score for lr in sorted(cfg.eval.lr_grid)}
    best = max(val, key=lambda lr: (val[lr], -lr))
    return replace(tower, lr=best), {"lr_policy": "tuned", "lr": best,
                                     "lr_grid_val": {str(lr): score for lr, score in val.items()}}


def evaluate_all(ctx: EvalContext) -> dict:
    """results.json's body: `methods` on the distilled-on tower, `towers` for the others."""
    for name in ctx.cfg.eval.methods:
        METHODS.get(name)
    home, *others = eval_towers(ctx.cfg)
    out = {"methods": {name: evaluate_method(ctx, name) for name in home.methods}, "towers": {}}
    for tower in others:
        out["towers"][tower.label] = {
            "settings": tower.settings(),
            "methods": {name: evaluate_method(ctx, name, tower.label) for name in tower.methods}}
    return out


# RepBlend's two methods live with the rest of RepBlend
from ..algorithms.repblend import repblend, repblend_noblend  # noqa: E402

register_distilled("repblend")(repblend)
register_distilled("repblend-noblend")(repblend_noblend)


__all__ = ["EvalContext", "METHODS", "Method", "distilled_methods", "evaluate_all",
           "evaluate_method", "method_config", "method_options", "register_distilled", "register_method",
           "summarize"]
