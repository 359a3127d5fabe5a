"""The stages wired together over a run directory (`vldistill.rundir`):
buffer -> distill -> evaluate -> report, each reading what the one before wrote."""
from __future__ import annotations

import logging
from dataclasses import asdict
from pathlib import Path

from .runtime import distributed
from .evaluation.ceilings import split_ceilings
from .config import Config
from .data import CaptionDataset, PreparedData, prepare_data
from .distill.stage import run_distill
from .reporting.figures import read_metrics
from .reporting.html_report import ReportInputs, write_report
from .runtime.io import append_jsonl, read_json, write_json
from .evaluation.methods import EvalContext, distilled_methods, evaluate_all, method_config
from .reporting.report import card_captions, results_table
from .evaluation.results import card_metrics, merge_results, results_record
from .evaluation.seedlog import SeedLog
from .rundir import Run
from .algorithms.synset import DistilledSet, update_card
from .buffer.experts import run_buffer
from .buffer.store import TrajectoryStore

log = logging.getLogger(__name__)


def stage_buffer(run: Run, data: PreparedData) -> TrajectoryStore:
    """This process's share of the experts (all of them when it runs alone), in every store the
    run needs: its own and those of the distilled methods it evaluates whose experts differ
    (e.g. `repblend`'s head-only experts). Returns the run's own store."""
    ctx = distributed.context()
    stores: dict[Path, Config] = {}
    for cfg in [run.cfg] + [method_config(run.cfg, m) for m in distilled_methods(run.cfg.eval.methods)]:
        stores.setdefault(run.store(cfg).dir.resolve(), cfg)
    for cfg in stores.values():
        run_buffer(cfg, data, run.device, run.store(cfg), ctx.rank, ctx.world_size)
    distributed.barrier()                   # every expert is on disk before any rank goes on
    return run.store()


def stage_distill(run: Run, data: PreparedData, methods: list[str] | None = None) -> dict[str, DistilledSet]:
    """Distill every distilled method the config asks for (resuming finished ones from disk),
    each under its own settings (`vldistill.evaluation.methods.method_config`)."""
    sets = {}
    for method in methods or distilled_methods(run.cfg.eval.methods):
        path = run.set_path(method)
        if path.with_suffix(".safetensors").is_file() and run.cfg.distill.resume:
            sets[method] = DistilledSet.load(path)
            log.info("%s set already distilled: %s", method, path)
            continue
        cfg = method_config(run.cfg, method)
        path.parent.mkdir(parents=True, exist_ok=True)
        sets[method] = run_distill(cfg, data, run.store(cfg), path, run.checkpoint_path(method),
                                   run.metrics_path, run.device, method)
        update_card(path, {"method": method, "config": asdict(cfg)})
    return sets


def stage_eval(run: Run, data: PreparedData, sets: dict[str, DistilledSet],
               set_paths: dict[str, Path] | None = None) -> dict:
    """Every method on every evaluation tower -> RUN_DIR/results.json.

    The run's own sets get their metrics in their cards. Sets from elsewhere (`set_paths`,
    `vldistill eval CONFIG set=PATH`) are left untouched, and their results are merged into
    the run_dir's results.json (refused if it holds results of another set under that name).
    """
    for synthetic in sets.values():
        synthetic.check_fits(data)
    seed_log = SeedLog(run.dir, distributed.context().rank)     # seeds an interrupted eval finished
    ctx = EvalContext(run.cfg, data, run.device, sets, run.store(), seed_log=seed_log)
    body = evaluate_all(ctx)
    distilled_on = {s.card.get("image_tower") for s in sets.values()} - {None}
    results = results_record(run.cfg, data.dataset.name, ctx.n_pairs, body, distilled_on,
                             split_ceilings(data.dataset.test))
    external = set_paths is not None
    results["sets"] = {m: str(p) for m, p in (set_paths or {m: run.set_path(m) for m in sets}).items()}
    if data.dataset.checks:             # data checks passed on purpose (data.accept)
        results["data_accepted"] = data.dataset.checks
    path = run.dir / "results.json"
    if external and path.is_file():
        results = merge_results(read_json(path), results)
    if distributed.context().is_main:     # every rank holds the gathered summaries; one writes
        write_json(path, results)
        append_jsonl(run.metrics_path, {"stage": "eval", **{m: s["r_mean"] for m, s in body["methods"].items()}})
        for method in [] if external else sets:
            if run.set_path(method).with_suffix(".json").is_file():
                update_card(run.set_path(method), {"metrics": card_metrics(method, results)})
        seed_log.clear()
    return results


def stage_report(run: Run, data: PreparedData, sets: dict[str, DistilledSet]) -> str:
    """report/report.html and its PNGs; the decoded captions go into each set's card.
    Returns the results table."""
    results_path = run.dir / "results.json"
    results = read_json(results_path) if results_path.is_file() else None
    inputs = ReportInputs(title=f"vldistill report: {run.dir}", sets=sets, text_bank=data.text["train"],
                          captions=data.dataset.train.captions, mean=data.dataset.mean,
                          std=data.dataset.std, results=results, records=read_metrics(run.metrics_path))
    page, inspections = write_report(inputs, run.dir / "report")
    for method, inspection in inspections.items():
        if run.set_path(method).with_suffix(".json").is_file():
            update_card(run.set_path(method), {"decoded_captions": card_captions(inspection)})
    log.info("report: %s", page)
    return results_table(results) if results else ""


def existing_sets(run: Run) -> dict[str, DistilledSet]:
    """The distilled sets the run directory holds, by method."""
    return {m: DistilledSet.load(run.set_path(m)) for m in distilled_methods()
            if run.set_path(m).with_suffix(".safetensors").is_file()}


def run_all(run: Run, dataset: CaptionDataset | None = None) -> str:
    """buffer -> distill -> evaluate -> report (over `dataset` when the pre-flight built it);
    returns the results table."""
    data = prepare_data(run.cfg, str(run.device), dataset)
    stage_buffer(run, data)
    sets = stage_distill(run, data)
    stage_eval(run, data, sets)
    return stage_report(run, data, sets)
