"""results.json: the evaluation's numbers with what they were measured on, merged with what
the run directory already holds, and each set's share of them for its card."""
from __future__ import annotations

from ..config import Config
from ..errors import UserError


def results_record(cfg: Config, dataset: str, n_pairs: int, body: dict, image_towers: set[str],
                   ceilings: dict | None = None) -> dict:
    """results.json of one evaluation: the contract's keys, the methods and towers (`body`), and
    the evaluation settings; `image_towers` are the towers the evaluated sets were distilled on;
    `ceilings` the test split's exact `oracle` (datasets that know their truth) and `chance`
    (`vldistill.evaluation.ceilings.split_ceilings`)."""
    return {"dataset": dataset, "n_pairs": n_pairs, **body, **({"ceilings": ceilings} if ceilings else {}),
            "eval": {"selection": cfg.eval.selection, "num_eval": cfg.eval.num_eval,
                     "epochs": cfg.eval.epochs, "lr": cfg.eval.lr, "augment": cfg.eval.augment,
                     "image_tower": cfg.model.image_tower, "frozen_backbone": cfg.model.frozen_backbone,
                     "distilled_on": sorted(image_towers)[0] if len(image_towers) == 1 else None}}


def card_metrics(method: str, results: dict) -> dict:
    """A set's results on every evaluation tower, for its card."""
    towers = {results["eval"]["image_tower"]: results["methods"]} | {
        label: entry["methods"] for label, entry in results.get("towers", {}).items()}
    keep = ("img_r1", "img_r5", "img_r10", "txt_r1", "txt_r5", "txt_r10", "r_mean", "r_mean_std",
            "n_seeds", "selection")
    return {label: {k: methods[method][k] for k in keep} | {"final_r_mean": methods[method]["final"]["r_mean"]}
            for label, methods in towers.items() if method in methods}


def merge_results(old: dict, new: dict) -> dict:
    """New methods (and towers) replace same-named old ones; the rest of the old run stays."""
    for method, source in new.get("sets", {}).items():
        before = old.get("sets", {}).get(method)
        if method in old.get("methods", {}) and before not in (None, source):
            raise UserError(f"results.json in this run_dir holds {method} results of the set "
                            f"{before!r}, not of {source!r}: give another run_dir")
    for key in ("dataset", "n_pairs"):
        if old.get(key) != new.get(key):
            raise UserError(f"results.json in this run_dir is for {key}={old.get(key)!r}, this "
                            f"evaluation has {new.get(key)!r}: give another run_dir")
    if old.get("eval", {}).get("image_tower") != new["eval"]["image_tower"]:
        raise UserError(f"results.json in this run_dir was evaluated on "
                        f"{old.get('eval', {}).get('image_tower')!r}, this config on "
                        f"{new['eval']['image_tower']!r}: give another run_dir")
    towers = dict(old.get("towers", {}))
    for label, entry in new.get("towers", {}).items():
        towers[label] = entry | {"methods": towers.get(label, {}).get("methods", {}) | entry["methods"]}
    return new | {"methods": old.get("methods", {}) | new["methods"], "towers": towers,
                  "sets": old.get("sets", {}) | new.get("sets", {})}
