"""`vldistill sweep`: where does a distilled set beat picking real pairs? Every method of
`eval.methods` at every budget of `sweep.n_pairs`, over one set of experts.

Each budget is an ordinary run in `RUN_DIR/pairs_N/` (its own config.yaml, sets, checkpoints,
results.json and report), all reading the experts of `RUN_DIR/buffer` (trained once, by the
first budget that needs them); `full` does not depend on the budget and runs once, in
`RUN_DIR/full/`. A budget whose results.json was written under the same config is read back,
not run again, and an interrupted one resumes like any run (distill checkpoints, finished
evaluation seeds), so a killed sweep resumed gives the same table. The units are
independent: a scheduler's job array can give each task `sweep.only=[N]` (after one
`vldistill buffer CONFIG run_dir=RUN_DIR`), and a last `vldistill sweep` gathers them.

Settings that must follow the budget follow one rule, `RANK_RULE`, recorded in sweep.json.
Writes RUN_DIR/sweep.json, sweep.md (the table and the answer) and sweep.png.
"""
from __future__ import annotations

import logging
from pathlib import Path

from .config import RANK_RULE, Config
from .config_merge import to_yaml
from .configio import with_overrides
from .data import CaptionDataset
from .errors import UserError
from .reporting.figures import save_sweep_plot
from .runtime.io import read_json, write_json, write_text
from .reporting.answer import sweep_answer, sweep_table

log = logging.getLogger(__name__)

SWEEP_FORMAT = 1


def budget_overrides(cfg: Config, n: int) -> list[str]:
    """The settings of budget n (`RANK_RULE`): the similarity's rank and the mini-batch shrink
    with the set, everything else stays as the config gives it."""
    d = cfg.distill
    return [f"distill.n_pairs={n}", f"distill.rank={max(1, min(d.rank, n // 2))}",
            f"distill.mini_batch={min(d.mini_batch, n)}"]


def unit_configs(cfg: Config) -> dict[str, Config]:
    """{unit label: its run's config}: one per budget (every method but `full`), and `full`."""
    if not cfg.sweep.n_pairs:
        raise UserError('sweep.n_pairs is empty: give the budgets, e.g. "sweep.n_pairs=[10,20,50,100,200]"')
    root = Path(cfg.run_dir)
    store = cfg.buffer.dir or str(root / "buffer")
    per_budget = [m for m in cfg.eval.methods if m != "full"]
    common = [f"buffer.dir={store}", "distill.resume=true", "sweep.n_pairs=[]", "sweep.only=[]"]
    units = {}
    for n in cfg.sweep.only or cfg.sweep.n_pairs:
        if per_budget:
            units[str(n)] = with_overrides(cfg, [f"run_dir={root / f'pairs_{n}'}", *common,
                                                 *budget_overrides(cfg, n),
                                                 f"eval.methods=[{','.join(per_budget)}]"])
    if "full" in cfg.eval.methods and not cfg.sweep.only:
        units["full"] = with_overrides(cfg, [f"run_dir={root / 'full'}", *common, "eval.methods=[full]"])
    return units


def run_unit(cfg: Config, force_unlock: bool = False, dataset: CaptionDataset | None = None) -> dict:
    """One budget's (or full's) results.json: read back when it was written under this very
    config, else run (resuming whatever the unit's folder holds)."""
    from .pipeline import run_all
    from .rundir import open_run
    folder = Path(cfg.run_dir)
    done = folder / "results.json"
    if done.is_file() and (folder / "config.yaml").is_file() and \
            (folder / "config.yaml").read_text() == to_yaml(cfg):
        log.info("sweep: %s already evaluated", folder)
        return read_json(done)
    run = open_run(cfg, force_unlock)
    try:
        run_all(run, dataset)
    finally:
        if run.lock is not None:
            run.lock.release()
    return read_json(done)


def _row(summary: dict) -> dict:
    """A method's entry at one budget in sweep.json."""
    return {"r_mean": summary["r_mean"], "std": summary["r_mean_std"], "n": summary["n_seeds"],
            "final_r_mean": summary["final"]["r_mean"], "lr_policy": summary.get("lr_policy"),
            "lr": summary.get("lr"), "selection": summary["selection"], "kind": summary.get("kind")}


def gather(cfg: Config, results: dict[str, dict]) -> dict:
    """sweep.json from the units' results.json (`full` repeated at every budget: it does not
    depend on it)."""
    full = results.get("full", {}).get("methods", {}).get("full")
    budgets = {}
    for n in cfg.sweep.n_pairs:
        rows = {m: _row(s) for m, s in results[str(n)]["methods"].items()} if str(n) in results else {}
        if full is not None:
            rows["full"] = _row(full)
        budgets[str(n)] = rows
    any_run = next(iter(results.values()))
    return {"format": SWEEP_FORMAT, "dataset": any_run["dataset"], "budgets": budgets,
            "ceilings": next((r["ceilings"] for r in results.values() if r.get("ceilings")), {}),
            "rule": RANK_RULE,
            "methods": list(cfg.eval.methods), "eval": any_run.get("eval", {}),
            "units": {label: str(Path(cfg.run_dir) / (f"pairs_{label}" if label != "full" else "full"))
                      for label in results}}


def run_sweep(cfg: Config, force_unlock: bool = False, dataset: CaptionDataset | None = None) -> str:
    """Every unit in turn (over `dataset` when the pre-flight built it), then sweep.json, sweep.md
    and sweep.png; returns the table and the answer (or, with sweep.only, what ran)."""
    units = unit_configs(cfg)
    results = {label: run_unit(unit, force_unlock, dataset) for label, unit in units.items()}
    if cfg.sweep.only:
        return (f"sweep: budgets {cfg.sweep.only} done in {cfg.run_dir}; run `vldistill sweep` without "
                "sweep.only to gather sweep.json")
    root = Path(cfg.run_dir)
    sweep = gather(cfg, results)
    write_json(root / "sweep.json", sweep)
    text = sweep_table(sweep) + "\n\n" + sweep_answer(sweep) + "\n"
    write_text(root / "sweep.md", text)
    save_sweep_plot(sweep, root / "sweep.png")
    return text


__all__ = ["budget_overrides", "gather", "run_sweep", "run_unit", "unit_configs"]
