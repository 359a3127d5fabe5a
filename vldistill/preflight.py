"""Pre-flight: every mistake the resolved config and the dataset's sizes can show, found before
the first expensive step (an expert, a distillation, a student) and reported all at once.

Each command (`run`, `buffer`, `distill`, `eval`, `sweep`) calls `preflight` before it opens the
run directory. It builds the dataset (its index and checks, `vldistill.data.checks`; nothing
trains) and checks:

- the method lists of every evaluation tower against the sets the run produces, and the
  settings each distilled method derives (`vldistill.evaluation.methods.method_config`);
- budgets against split sizes (`distill.n_pairs`, each `sweep.n_pairs`), expert batches
  against an epoch, every training batch against batch norm (`vldistill.models.batchnorm`);
- the distillation's memory estimate (`vldistill.distill.memory`) on the device;
- that run_dir, cache_dir and the trajectory stores can be written, and that every file a
  later stage reads is there (weights, text tower, the stores `distill` reads, the sets
  `eval` reads).

A problem is one line that starts with the key to change; any problem stops the command with
`PreflightError` (exit status 2) before anything is written.
"""
from __future__ import annotations

import dataclasses
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import torch

from .runtime import distributed, runlock
from .config import Config
from .data import CaptionDataset, build_dataset
from .data.checks import DataCheckError
from .data.text_cache import cached_dim, default_cache_dir
from .runtime.environment import resolve_device
from .errors import ProblemsError, UserError
from .evaluation.evaluate import eval_towers
from .distill.memory import check_distill_fits
from .evaluation.methods import METHODS, distilled_methods, method_config
from .models.batchnorm import batch_problems, batchnorm_positions
from .models.pretrained import IMAGENET
from .models.student import build_student
from .models.text_towers import create_text_tower
from .rundir import Run

log = logging.getLogger(__name__)

WRITES_STORES = ("run", "buffer", "sweep")
DISTILLS = ("run", "distill", "sweep")
TEXT_DIM_BOUND = 1024       # memory estimate's text width when no cached embedding says it


@dataclass(frozen=True)
class Problem:
    key: str            # the config key to change
    message: str

    def __str__(self) -> str:
        return self.message if self.message.startswith(self.key) else f"{self.key}: {self.message}"


class PreflightError(ProblemsError):
    """Problems found before any stage ran: one line each, starting with the key to change."""

    def __init__(self, problems: list[Problem]):
        self.problems = problems
        super().__init__([str(p) for p in problems], "found before anything ran")


# ------------------------------------------------------------------ files and folders
def unwritable(path: Path) -> str | None:
    """Why `path` cannot be (or become) a writable folder; None if it can."""
    existing = path
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        inside = "" if existing == path else f", so {str(path)!r} cannot be created"
        return f"{str(existing)!r} is a file, not a folder{inside}"
    if not os.access(existing, os.W_OK | os.X_OK):
        return f"{str(existing)!r} is not writable by this user"
    return None


def _folders(cfg: Config, command: str) -> list[Problem]:
    folders = {"run_dir": Path(cfg.run_dir), "cache_dir": Path(cfg.cache_dir) if cfg.cache_dir
               else default_cache_dir()}
    if command in WRITES_STORES and cfg.buffer.dir:        # (by default the stores are in run_dir)
        for m, mc in {"": cfg, **_method_configs(cfg)}.items():
            store = _run(cfg).store(mc).dir
            folders.setdefault(f"buffer.dir ({store})" if m else "buffer.dir", store)
    problems = [Problem(key.split(" ")[0], why) for key, path in folders.items()
                if (why := unwritable(path.expanduser()))]
    # only rank 0 takes the run lock, so only it asks: the other ranks of a torchrun job would
    # otherwise find rank 0's lock from the same job and refuse
    if distributed.context().is_main and Path(cfg.run_dir).is_dir() and (busy := runlock.in_use(cfg.run_dir)):
        problems.append(Problem("run_dir", busy))
    return problems


def _inputs(cfg: Config) -> list[Problem]:
    """The weights files and the text tower's folder the towers load."""
    weights = {"model.pretrained_path": cfg.model.pretrained_path}
    weights |= {f"eval.towers.{k}.pretrained_path": t.pretrained_path for k, t in cfg.eval.towers.items()}
    problems = [Problem(key, f"{key} {path!r} not found: put the weights file there, or give "
                             f"{IMAGENET} (packaged weights) or null")
                for key, path in weights.items()
                if path not in (None, IMAGENET) and not Path(path).expanduser().is_file()]
    try:
        create_text_tower(cfg.model.text_tower)         # checks its folder; loads nothing
    except UserError as err:
        problems.append(Problem("model.text_tower", str(err)))
    return problems


def _method_configs(cfg: Config) -> dict[str, Config]:
    """The settings of each distilled method the run makes (invalid ones left to `_methods`)."""
    out = {}
    for m in distilled_methods(cfg.eval.methods):
        try:
            out[m] = method_config(cfg, m)
        except UserError:
            pass
    return out


def _run(cfg: Config) -> Run:
    return Run(cfg, Path(cfg.run_dir), torch.device("cpu"))


def _artefacts(cfg: Config, command: str, sets_given: bool) -> list[Problem]:
    """What `distill` and `eval` read without making it: stores, sets."""
    run, problems = _run(cfg), []
    if command == "distill":
        for m, mc in _method_configs(cfg).items():
            done = run.set_path(m).with_suffix(".safetensors").is_file() and cfg.distill.resume
            if not done and (why := _store_problem(run, mc, mc.distill.last_epoch_used)):
                problems.append(Problem("buffer.dir", f"{m}: {why}"))
    if command == "eval":
        if not sets_given:
            problems += [Problem("eval.methods", f"asks for {m}, whose set {str(path)!r} does not "
                                                 "exist: distill it first (`vldistill distill`) or drop it")
                         for m in distilled_methods(cfg.eval.methods)
                         if not (path := run.set_path(m).with_suffix(".safetensors")).is_file()]
        coresets = {m for t in _towers(cfg, []) for m in t.methods} & {"herding", "kcenter"}
        if coresets and (why := _store_problem(run, cfg, None)):
            problems.append(Problem("buffer.dir", f"{', '.join(sorted(coresets))}: {why}"))
    return problems


def _store_problem(run: Run, cfg: Config, epoch: int | None) -> str | None:
    store = run.store(cfg)
    try:
        manifest = store.manifest()
    except UserError as err:
        return str(err)
    if not store.experts():
        return f"the trajectory store {str(store.dir)!r} holds no expert yet"
    if epoch is not None and epoch not in manifest.get("epochs", []):
        return (f"distill needs expert epoch {epoch} (max_start_epoch - 1 + expert_epochs) but the "
                f"store keeps {manifest.get('epochs')} ({str(store.dir)!r}): lower "
                "distill.max_start_epoch/expert_epochs or rebuild the buffer with these settings")
    return None


# ------------------------------------------------------------------ methods and sizes
def _towers(cfg: Config, problems: list[Problem]) -> list:
    try:
        return eval_towers(cfg)
    except UserError as err:
        problems.append(Problem("eval.towers", str(err)))
        return []


def _methods(cfg: Config) -> list[Problem]:
    """Every tower's methods against the sets the run makes; each distilled method's settings."""
    problems: list[Problem] = []
    made = distilled_methods(cfg.eval.methods)
    for tower in _towers(cfg, problems):
        key = "eval.methods" if tower.distilled_on else f"eval.towers.{tower.label}.methods"
        for m in tower.methods:
            if METHODS.get(m).distilled and m not in made:
                problems.append(Problem(key, f"asks for {m!r}, which this run does not distill (the "
                                             f"distilled methods of eval.methods: {', '.join(made) or 'none'}): "
                                             f"add it to eval.methods or drop it here"))
    for m in made:
        try:
            method_config(cfg, m)
        except UserError as err:
            problems.append(Problem("eval.methods", f"{m}'s own settings are invalid: {err}"))
    return problems


def _sizes(cfg: Config, dataset: CaptionDataset, budget_key: str) -> list[Problem]:
    """Budgets against the train split; an expert epoch against its batch."""
    train, problems = dataset.train, []
    counts = {"images": train.n_images, "captions": len(train.captions)}
    needs = {}
    for m, mc in _method_configs(cfg).items():
        d = mc.distill
        needs.setdefault("captions" if d.init == "real" and d.init_draw == "captions" else "images", m)
    methods = {m for t in _towers(cfg, []) for m in t.methods}
    if methods & {"random", "herding", "kcenter"}:
        needs.setdefault("images", "random real pairs")
    for what, who in needs.items():
        if cfg.distill.n_pairs > counts[what]:
            problems.append(Problem(budget_key, f"{cfg.distill.n_pairs} pairs ({who}) but the {dataset.name} "
                                                f"train split has {counts[what]} {what}: lower it"))
    per_epoch = counts["captions" if cfg.buffer.pairs_per_epoch == "captions" else "images"]
    if cfg.buffer.drop_last and per_epoch < cfg.buffer.batch_size:
        problems.append(Problem("buffer.batch_size", f"{cfg.buffer.batch_size} is more than the {per_epoch} "
                                                     "pairs of an expert epoch, whose only (partial) batch "
                                                     "buffer.drop_last drops: the experts would not train"))
    return problems


def _last_batch(n: int, batch: int, partial: bool = True) -> int:
    """The smallest batch an epoch of n items in batches of `batch` makes."""
    return n % batch if partial and n % batch else min(n, batch)


def _batchnorm(cfg: Config, dataset: CaptionDataset, text_dim: int) -> list[Problem]:
    """Every training batch of every model (the experts', each distilled method's, each
    evaluation tower's) against its batch-norm layers."""
    smallest: dict[tuple, tuple[str, int] | None] = {}

    def check(model_cfg, batches: dict[str, int]) -> list[Problem]:
        spec = (model_cfg.image_tower, model_cfg.frozen_backbone, model_cfg.batchnorm)
        if spec not in smallest:
            try:
                with torch.device("meta"):
                    model = build_student(dataclasses.replace(model_cfg, pretrained_path=None),
                                          dataset.image_size, text_dim)
                smallest[spec] = batchnorm_positions(model, dataset.image_size, text_dim)
            except Exception as err:      # a tower that cannot be built on meta: its run will say
                log.warning("no batch-norm check for %s (%s)", model_cfg.image_tower, err)
                smallest[spec] = None
        return [Problem(k, why) for k, why in batch_problems(smallest[spec], batches).items()]

    train = dataset.train
    pairs = len(train.captions) if cfg.buffer.pairs_per_epoch == "captions" else train.n_images
    problems = check(cfg.model, {"buffer.batch_size": _last_batch(pairs, cfg.buffer.batch_size,
                                                                   not cfg.buffer.drop_last)})
    for m, mc in _method_configs(cfg).items():
        problems += check(mc.model, {"distill.mini_batch": mc.distill.mini_batch})
    for tower in _towers(cfg, problems):
        key = "eval.batch_size" if tower.distilled_on else f"eval.towers.{tower.label}.batch_size"
        batches = {key: _last_batch(cfg.distill.n_pairs, tower.batch_size,
                                    cfg.eval.batch_sampler != "shuffle_head")}
        if "full" in tower.methods:
            batches["buffer.batch_size"] = _last_batch(pairs, cfg.buffer.batch_size)
        problems += check(dataclasses.replace(cfg.model, image_tower=tower.image_tower,
                                              frozen_backbone=tower.frozen_backbone), batches)
    return problems


def _memory(cfg: Config, dataset: CaptionDataset, text_dim: int) -> list[Problem]:
    try:
        device = resolve_device(cfg.device)
    except UserError as err:
        return [Problem("device", str(err))]
    problems = []
    for m, mc in _method_configs(cfg).items():
        try:
            check_distill_fits(mc, dataset.image_size, text_dim, device)
        except UserError as err:
            problems.append(Problem("distill.mini_batch", f"{m}: {err}"))
    return problems


# ------------------------------------------------------------------ the check
def _dataset(cfg: Config, problems: list[Problem]) -> CaptionDataset | None:
    """The dataset, built and checked by the main process (others wait for its caches later)."""
    if not distributed.context().is_main:
        return None
    try:
        return build_dataset(cfg.data, cfg.cache_dir)
    except DataCheckError as err:
        problems += [Problem("data", line) for line in err.lines]
    except UserError as err:
        problems.append(Problem("data.", str(err)))
    return None


def _text_dim(cfg: Config, dataset: CaptionDataset) -> int:
    try:
        return cached_dim(create_text_tower(cfg.model.text_tower), dataset.train.captions,
                          cfg.cache_dir) or TEXT_DIM_BOUND
    except UserError:
        return TEXT_DIM_BOUND


def preflight(cfg: Config, command: str, units: list[Config] | None = None,
              sets_given: bool = False) -> CaptionDataset | None:
    """Check `cfg` for `command` (and, for a sweep, each of its `units`' configs, whose budget is
    sweep.n_pairs); raise `PreflightError` listing every problem, or return the dataset built
    (None on a torchrun rank other than 0). `sets_given`: `eval set=PATH` brings its own set."""
    problems = _folders(cfg, command) + _inputs(cfg)
    dataset = _dataset(cfg, problems)
    budget_key = "sweep.n_pairs" if units else "distill.n_pairs"
    text_dim = _text_dim(cfg, dataset) if dataset is not None else TEXT_DIM_BOUND
    for unit in units or [cfg]:
        problems += _methods(unit) + _artefacts(unit, command, sets_given)
        if dataset is not None:
            problems += _sizes(unit, dataset, budget_key) + _batchnorm(unit, dataset, text_dim)
            if command in DISTILLS:
                problems += _memory(unit, dataset, text_dim)
    problems = list(dict.fromkeys(problems))            # a sweep's units repeat the same ones
    if problems:
        raise PreflightError(problems)
    return dataset


__all__ = ["PreflightError", "Problem", "preflight", "unwritable"]
