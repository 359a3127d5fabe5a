"""Command line: `vldistill COMMAND TARGET [key=value ...]`, each command a thin layer over the
library (`vldistill.pipeline`, `vldistill.reporting.report`). `vldistill COMMAND --help` says what the
command reads and writes and which config sections it uses.

User errors (bad config, missing files, a store made with another setup) print one line and
exit with status 2; anything else is a bug and keeps its traceback.
"""
from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

from .config import Config
from .errors import UserError, os_error_message
from .runtime.io import read_json


@dataclass(frozen=True)
class Command:
    summary: str                    # one line for `vldistill --help`
    details: str                    # what it reads, writes and uses, for `vldistill CMD --help`
    target: str                     # what TARGET is
    run: Callable[[argparse.Namespace], None]
    writes_run: bool = True         # takes the run directory's lock (--force-unlock applies)
    single_process: bool = False    # refused under torchrun


def _config_for(target: str, overrides: list[str]) -> Config:
    """A YAML file, or a run directory (its recorded config, resumed in place)."""
    from .configio import load_config       # (fills the registries: imports torch)
    path = Path(target)
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise UserError(f"{target!r} is a folder without config.yaml: give a config file or a run directory")
        if any(item.startswith("fidelity=") for item in overrides):    # its settings are resolved
            raise UserError(f"{target!r} ran with the fidelity in its config.yaml, whose settings "
                            "are resolved there: to change the mode, start a new run_dir")
        return load_config(path / "config.yaml", [f"run_dir={path}", "distill.resume=true", *overrides])
    return load_config(path, overrides)


def _split_extra(overrides: list[str], names: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """Pull command options (e.g. set=PATH) out of the config overrides."""
    extra, rest = {}, []
    for item in overrides:
        key = item.split("=", 1)[0]
        (extra.__setitem__(key, item.split("=", 1)[1]) if key in names else rest.append(item))
    return extra, rest


def _open(args: argparse.Namespace, overrides: list[str] | None = None, sets_given: bool = False):
    """The run, opened once the pre-flight found nothing wrong, and the dataset it built (None on
    a torchrun rank other than 0)."""
    from .preflight import preflight
    from .rundir import open_run
    cfg = _config_for(args.target, args.overrides if overrides is None else overrides)
    dataset = preflight(cfg, args.command, sets_given=sets_given)
    return open_run(cfg, args.force_unlock), dataset


def cmd_run(args: argparse.Namespace) -> None:
    from .pipeline import run_all
    print(run_all(*_open(args)))


def cmd_sweep(args: argparse.Namespace) -> None:
    from .preflight import preflight
    from .sweep import run_sweep, unit_configs
    cfg = _config_for(args.target, args.overrides)
    dataset = preflight(cfg, "sweep", units=list(unit_configs(cfg).values()))
    print(run_sweep(cfg, args.force_unlock, dataset), end="")


def cmd_buffer(args: argparse.Namespace) -> None:
    from .runtime import distributed
    from .data import prepare_data
    from .pipeline import stage_buffer
    run, dataset = _open(args)
    with distributed.main_first():          # torchrun: rank 0 fills the data caches first
        data = prepare_data(run.cfg, str(run.device), dataset)
    stage_buffer(run, data)


def cmd_distill(args: argparse.Namespace) -> None:
    from .data import prepare_data
    from .pipeline import stage_distill
    run, dataset = _open(args)
    stage_distill(run, prepare_data(run.cfg, str(run.device), dataset))


def _method_of(synthetic) -> str:
    """The distilled method a saved set belongs to: its card's, else by its similarity."""
    from .evaluation.methods import METHODS, distilled_methods
    named = synthetic.card.get("method")
    if named in METHODS and named in distilled_methods():
        return named
    return "lors-identity" if synthetic.similarity.kind == "identity" else "lors"


def cmd_eval(args: argparse.Namespace) -> None:
    from .runtime import distributed
    from .data import prepare_data
    from .evaluation.methods import distilled_methods
    from .pipeline import stage_eval
    from .reporting.report import results_table
    from .algorithms.synset import DistilledSet
    extra, overrides = _split_extra(args.overrides, ("set",))
    set_paths = None
    if "set" in extra:      # that set alone, plus the baselines only if eval.methods is given
        synthetic = DistilledSet.load(extra["set"])
        method = _method_of(synthetic)
        asked = any(item.startswith("eval.methods=") for item in overrides)
        baselines = [m for m in _config_for(args.target, overrides).eval.methods
                     if asked and m not in distilled_methods()]
        overrides = [*overrides, f"eval.methods=[{','.join([method, *baselines])}]"]
        sets, set_paths = {method: synthetic}, {method: Path(extra["set"]).resolve()}
    run, dataset = _open(args, overrides, sets_given=set_paths is not None)    # its config.yaml runs
    if set_paths is None:
        sets = {m: DistilledSet.load(run.set_path(m)) for m in distilled_methods(run.cfg.eval.methods)}
    with distributed.main_first():
        data = prepare_data(run.cfg, str(run.device), dataset)
    table = results_table(stage_eval(run, data, sets, set_paths))
    if distributed.context().is_main:
        print(table)


def cmd_report(args: argparse.Namespace) -> None:
    from .data import prepare_data
    from .pipeline import existing_sets, stage_report
    from .rundir import open_run
    run = open_run(_config_for(args.target, args.overrides), args.force_unlock)
    print(stage_report(run, prepare_data(run.cfg, str(run.device)), existing_sets(run)))


def cmd_compare(args: argparse.Namespace) -> None:
    """One markdown table over the runs' results.json (run x eval tower x method rows)."""
    from .reporting.report import compare_table
    runs = []
    for target in [args.target, *args.overrides]:
        path = Path(target) / "results.json"
        if not path.is_file():
            raise UserError(f"{target!r} has no results.json: run `vldistill run` or `vldistill eval` there first")
        runs.append((target.rstrip("/"), read_json(path)))
    print(compare_table(runs))


def cmd_config(args: argparse.Namespace) -> None:
    from .config_help import annotated_yaml
    from .configio import option_notes
    cfg = _config_for(args.target, args.overrides)
    print(annotated_yaml(cfg, option_notes(cfg)), end="")


def cmd_decode(args: argparse.Namespace) -> None:
    from .data import prepare_data
    from .reporting.report import decoded_text
    from .algorithms.synset import DistilledSet
    synthetic = DistilledSet.load(args.target)
    cfg = _set_config(Path(args.target), synthetic, args.overrides)
    data = prepare_data(cfg)
    print(decoded_text(synthetic, data.text["train"], data.dataset.train.captions, args.top_k,
                       args.pairs), end="")


def _set_config(target: Path, synthetic, overrides: list[str]) -> Config:
    """The config a set was made with: its run directory's config.yaml, else its card's."""
    from .configio import config_from_dict, load_config
    folder = target if target.is_dir() else target.parent
    for candidate in (folder / "config.yaml", folder.parent / "config.yaml"):
        if candidate.is_file():
            return load_config(candidate, overrides)
    if "config" in synthetic.card:
        return config_from_dict(synthetic.card["config"], f"the card of {str(target)!r}", overrides)
    raise UserError(f"{str(target)!r}: no config.yaml beside the set and none in its card: "
                    "decode it inside its run directory")


_OVERRIDES = "config overrides, key=value (`vldistill config CONFIG` lists every key)"
COMMANDS = {
    "run": Command(
        "buffer -> distill -> evaluate -> report (a RUN_DIR resumes that run)",
        "Runs every stage into run_dir: the experts (buffer.*; skipped when buffer.dir already\n"
        "holds them), a set per distilled method of eval.methods (distill.*), the evaluation of\n"
        "every method (eval.*), then report/. Given a RUN_DIR instead of a config, resumes it\n"
        "from its config.yaml and checkpoints. Writes RUN_DIR/{config.yaml, environment.json,\n"
        "metrics.jsonl, set.*, METHOD/set.*, checkpoints/, results.json, report/}.",
        "CONFIG.yaml or RUN_DIR", cmd_run, single_process=True),
    "sweep": Command(
        "every method of eval.methods at every budget of sweep.n_pairs, over one set of experts",
        "Trains the experts once (RUN_DIR/buffer), then runs each budget N of sweep.n_pairs as a\n"
        "run in RUN_DIR/pairs_N (the similarity's rank and the mini-batch follow the budget, by\n"
        "the rule recorded in sweep.json) and `full` once in RUN_DIR/full; finished budgets are\n"
        "read back, interrupted ones resume. sweep.only=[N] runs a share (a job array's task).\n"
        "Writes RUN_DIR/{sweep.json, sweep.md, sweep.png} and prints the table and the answer.",
        "CONFIG.yaml", cmd_sweep, single_process=True),
    "buffer": Command(
        "train the experts and store their trajectories",
        "Trains buffer.num_experts experts on the real data (data.*, model.*, buffer.*) and\n"
        "writes their snapshots to buffer.dir (default RUN_DIR/buffer); experts already stored\n"
        "are skipped. Runs under torchrun, each rank training its share.",
        "CONFIG.yaml or RUN_DIR", cmd_buffer),
    "distill": Command(
        "distill the sets the config's eval.methods need",
        "Reads the trajectory store and distills one set per distilled method in eval.methods\n"
        "(distill.*, model.*, data.*). Writes RUN_DIR/set.* (lors), RUN_DIR/METHOD/set.*,\n"
        "RUN_DIR/checkpoints/ and metrics.jsonl; distill.resume=true continues from a checkpoint.",
        "CONFIG.yaml or RUN_DIR", cmd_distill, single_process=True),
    "eval": Command(
        "evaluate the run's sets (or set=PATH) and write results.json",
        "Trains eval.num_eval fresh students per method of eval.methods on each evaluation\n"
        "tower (eval.*, eval.towers) and scores them on the test split. Reads the run's sets\n"
        "(or the one at set=PATH) and the trajectory store (herding, kcenter). Writes\n"
        "RUN_DIR/results.json and each set's metrics into its card. Runs under torchrun.",
        "CONFIG.yaml or RUN_DIR", cmd_eval),
    "report": Command(
        "images, decoded captions, similarity heat map, results table",
        "Reads the run's sets, results.json and metrics.jsonl, and the training captions;\n"
        "writes RUN_DIR/report/report.html and its PNGs, and the decoded captions into each\n"
        "set's card.", "RUN_DIR", cmd_report, single_process=True),
    "compare": Command(
        "one markdown table over several runs",
        "Reads RUN_DIR/results.json of each run and prints one table (a row per run x\n"
        "evaluation tower x method). Writes nothing.",
        "RUN_DIR [RUN_DIR ...]", cmd_compare, writes_run=False),
    "config": Command(
        "print the resolved config with each key's meaning",
        "Merges the defaults, CONFIG (or RUN_DIR/config.yaml) and the overrides, validates them,\n"
        "and prints the result as YAML with each key's comment. Writes nothing.",
        "CONFIG.yaml or RUN_DIR", cmd_config, writes_run=False),
    "decode": Command(
        "print each synthetic pair's nearest real captions and the mined similar pairs",
        "Reads a distilled set (RUN_DIR, RUN_DIR/METHOD, or PATH.safetensors), the config it was\n"
        "made with and the training captions' embeddings (cached), and prints, per pair, the\n"
        "caption it started from, its nearest real captions now (cosine) and how far its\n"
        "embedding moved, then the strongest off-diagonal similarities. Writes nothing.",
        "RUN_DIR or SET", cmd_decode, writes_run=False),
}


def _usage() -> str:
    width = max(map(len, COMMANDS))
    lines = [f"  {name:<{width}}  {c.target:<24} {c.summary}" for name, c in COMMANDS.items()]
    return ("usage: vldistill COMMAND TARGET [key=value ...] [--force-unlock]\n\ncommands:\n"
            + "\n".join(lines) + "\n\n`vldistill COMMAND --help` for what each reads and writes.\n")


def _parser(name: str, command: Command) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=f"vldistill {name}", description=command.details,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("target", metavar="TARGET", help=command.target)
    parser.add_argument("overrides", nargs="*", metavar="key=value",
                        help="more run directories" if name == "compare" else _OVERRIDES)
    if command.writes_run:
        parser.add_argument("--force-unlock", action="store_true",
                            help="take over a run directory whose lock cannot be proved stale "
                                 "(another host, an unreadable lock)")
    if name == "decode":
        parser.add_argument("--top-k", type=int, default=3, help="nearest captions per pair")
        parser.add_argument("--pairs", type=int, default=10, help="mined similar pairs to list")
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] in ("-h", "--help"):
        print(_usage(), end="")
        return 0 if argv else 2
    name, command = argv[0], COMMANDS.get(argv[0])
    if command is None:
        print(_usage() + f"\nvldistill: error: unknown command {name!r}", file=sys.stderr)
        return 2
    args = _parser(name, command).parse_intermixed_args(argv[1:])
    args.command = name
    # nothing is downloaded: Hugging Face libraries read local folders only
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from .runtime import distributed, runlock     # (import torch; kept out of `--help`)
    from .runtime.interrupts import REQUEUE_EXIT, terminate_as_interrupt
    try:
        if command.single_process and distributed.context().world_size > 1:
            raise UserError(f"`vldistill {name}` runs as one process (distill needs one GPU); "
                            "launch only `buffer` and `eval` with torchrun")
        with terminate_as_interrupt():
            command.run(args)
    except UserError as err:               # (several problems: one line each)
        print("\n".join(f"vldistill: error: {line}" for line in str(err).splitlines()), file=sys.stderr)
        return 2
    except OSError as err:                  # the filesystem's (a folder that is a file, no room)
        print(f"vldistill: error: {os_error_message(err)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:        # Ctrl-C, or SIGTERM / SIGUSR1 (interrupts.Interrupted)
        code = getattr(err, "exit_code", 130)
        why = f"stopped by {err.args[0]}" if err.args else "interrupted"
        requeue = f" (exit status {code}: requeue)" if code == REQUEUE_EXIT else ""
        print(f"vldistill: {why}; what was finished is kept (distill checkpoints, stored experts, "
              f"evaluated seeds): resume with `vldistill run RUN_DIR`{requeue}", file=sys.stderr)
        return code
    finally:
        runlock.release_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
