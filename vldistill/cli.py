"""Command line: `vldistill run|buffer|distill|eval|report|compare CONFIG_OR_RUN_DIR [key=value ...]`.

A thin layer over `vldistill.pipeline`. User errors (bad config, missing files, a store made
with another setup) print one line and exit with status 2; anything else is a bug and keeps
its traceback.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

from .config import Config, load_config
from .errors import UserError
from .io import read_json

USAGE = """vldistill COMMAND TARGET [key=value ...]

commands:
  run      CONFIG|RUN_DIR   buffer -> distill -> evaluate -> report (a RUN_DIR resumes that run)
  buffer   CONFIG           train the experts and store their trajectories
  distill  CONFIG           distill the sets the config's eval.methods need
  eval     CONFIG           evaluate the run's sets (or set=PATH) and write results.json
  report   RUN_DIR          images, decoded captions, similarity heat map, results table
  compare  RUN_DIR ...      one markdown table over several runs

options:
  --force-unlock            take over a run directory whose lock was left by a process that is
                            gone (a run killed with SIGKILL or by a crash)
"""

SINGLE_PROCESS = ("run", "distill", "report")     # commands that torchrun may not launch


def _config_for(target: str, overrides: list[str]) -> Config:
    """A YAML file, or a run directory (its recorded config, resumed in place)."""
    path = Path(target)
    if path.is_dir():
        if not (path / "config.yaml").is_file():
            raise UserError(f"{target!r} is a folder without config.yaml: give a config file or a run directory")
        return load_config(path / "config.yaml", [f"run_dir={path}", "distill.resume=true", *overrides])
    return load_config(path, overrides)


def _split_extra(overrides: list[str], names: tuple[str, ...]) -> tuple[dict[str, str], list[str]]:
    """Pull command options (e.g. set=PATH) out of the config overrides."""
    extra, rest = {}, []
    for item in overrides:
        key = item.split("=", 1)[0]
        (extra.__setitem__(key, item.split("=", 1)[1]) if key in names else rest.append(item))
    return extra, rest


def cmd_run(target: str, overrides: list[str]) -> None:
    from .pipeline import open_run, run_all
    print(run_all(open_run(_config_for(target, overrides))))


def cmd_buffer(target: str, overrides: list[str]) -> None:
    from . import distributed
    from .data import prepare_data
    from .pipeline import open_run, stage_buffer
    run = open_run(_config_for(target, overrides))
    with distributed.main_first():          # torchrun: rank 0 fills the data caches first
        data = prepare_data(run.cfg, str(run.device))
    stage_buffer(run, data)


def cmd_distill(target: str, overrides: list[str]) -> None:
    from .data import prepare_data
    from .pipeline import open_run, stage_distill
    run = open_run(_config_for(target, overrides))
    stage_distill(run, prepare_data(run.cfg, str(run.device)))


def cmd_eval(target: str, overrides: list[str]) -> None:
    from . import distributed
    from .data import prepare_data
    from .pipeline import DISTILLED_METHODS, open_run, stage_eval
    from .report import results_table
    from .synset import DistilledSet
    extra, overrides = _split_extra(overrides, ("set",))
    run = open_run(_config_for(target, overrides))
    set_paths = None
    if "set" in extra:      # that set alone, plus the baselines only if eval.methods is given
        synthetic = DistilledSet.load(extra["set"])
        method = "baseline" if synthetic.similarity.kind == "identity" else "lors"
        asked = any(item.startswith("eval.methods=") for item in overrides)
        run.cfg.eval.methods = [method] + [m for m in run.cfg.eval.methods
                                           if asked and m not in DISTILLED_METHODS]
        sets, set_paths = {method: synthetic}, {method: Path(extra["set"]).resolve()}
    else:
        sets = {m: DistilledSet.load(run.set_path(m)) for m in run.cfg.eval.methods
                if m in DISTILLED_METHODS}
    with distributed.main_first():
        data = prepare_data(run.cfg, str(run.device))
    table = results_table(stage_eval(run, data, sets, set_paths))
    if distributed.context().is_main:
        print(table)


def cmd_report(target: str, overrides: list[str]) -> None:
    from .data import prepare_data
    from .pipeline import DISTILLED_METHODS, open_run, stage_report
    from .synset import DistilledSet
    run = open_run(_config_for(target, overrides))
    sets = {m: DistilledSet.load(run.set_path(m)) for m in DISTILLED_METHODS
            if run.set_path(m).with_suffix(".safetensors").is_file()}
    print(stage_report(run, prepare_data(run.cfg, str(run.device)), sets))


def cmd_compare(targets: list[str]) -> None:
    """One markdown table over the runs' results.json (run x eval tower x method rows)."""
    from .report import compare_table
    runs = []
    for target in targets:
        path = Path(target) / "results.json"
        if not path.is_file():
            raise UserError(f"{target!r} has no results.json: run `vldistill run` or `vldistill eval` there first")
        runs.append((target.rstrip("/"), read_json(path)))
    print(compare_table(runs))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="vldistill", usage=USAGE)
    parser.add_argument("command", choices=["run", "buffer", "distill", "eval", "report", "compare"])
    parser.add_argument("target")
    parser.add_argument("rest", nargs="*", help="key=value overrides (compare: more run dirs)")
    parser.add_argument("--force-unlock", action="store_true",
                        help="take over a run directory whose lock was left by a process that is gone")
    args = parser.parse_intermixed_args(argv)
    from . import runlock
    from .interrupts import terminate_as_interrupt
    from . import distributed           # (imports torch; kept out of `--help`)
    try:
        if args.command in SINGLE_PROCESS and distributed.context().world_size > 1:
            raise UserError(f"`vldistill {args.command}` runs as one process (distill needs one GPU); "
                            "launch only `buffer` and `eval` with torchrun")
        if args.command == "compare":
            cmd_compare([args.target, *args.rest])
        else:
            with terminate_as_interrupt(), runlock.takeover_allowed(args.force_unlock):
                {"run": cmd_run, "buffer": cmd_buffer, "distill": cmd_distill, "eval": cmd_eval,
                 "report": cmd_report}[args.command](args.target, args.rest)
    except UserError as err:
        print(f"vldistill: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:        # Ctrl-C, or SIGTERM (interrupts.Interrupted)
        print("vldistill: interrupted; the last checkpoint is kept (rerun with the run directory "
              "to resume)", file=sys.stderr)
        return getattr(err, "exit_code", 130)
    finally:
        runlock.release_all()
    return 0


if __name__ == "__main__":
    sys.exit(main())
