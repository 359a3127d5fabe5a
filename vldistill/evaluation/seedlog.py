"""Finished evaluation seeds, kept on disk until the evaluation they belong to is complete.

An evaluation trains `eval.num_eval` students per method and tower; on a cluster it can be
stopped between any two of them (a scheduler's signal, a kill). Each finished seed is appended
to `RUN_DIR/eval_seeds.rankR.jsonl` under a key of everything its result depends on (the
method's settings, the evaluated set's tensors, the tower, the seed), and a resumed evaluation
takes it from there instead of training that student again. Every seed is seeded on its own,
so the resumed results equal an uninterrupted evaluation's. The files are removed once
results.json is written.
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import asdict
from pathlib import Path

import torch

from ..config import Config
from .evaluate import SeedResult
from ..runtime.io import append_jsonl
from ..algorithms.synset import DistilledSet

_NOT_RESULTS = ("run_dir", "cache_dir")         # settings that never change a number


def settings_key(cfg: Config, method: str, tower: str, synthetic: DistilledSet | None) -> str:
    """What a seed's result depends on, as one digest: settings, the set's tensors, the tower."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in _NOT_RESULTS}
    settings["distill"] = {k: v for k, v in settings["distill"].items() if k != "resume"}
    digest = hashlib.sha256(json.dumps([method, tower, settings], sort_keys=True, default=str).encode())
    if synthetic is not None:
        for tensor in (synthetic.images, synthetic.text_embeddings, *synthetic.similarity.state_dict().values(),
                       torch.tensor([synthetic.lr_img, synthetic.lr_txt])):
            digest.update(tensor.detach().float().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()[:24]


class SeedLog:
    """The finished seeds of an evaluation in `folder`; this process appends to its own file."""

    def __init__(self, folder: Path, rank: int = 0):
        self.folder, self.path = Path(folder), Path(folder) / f"eval_seeds.rank{rank}.jsonl"
        self._done: dict[tuple[str, int], SeedResult] = {}
        for path in sorted(self.folder.glob("eval_seeds.rank*.jsonl")):
            for line in path.read_text().splitlines():
                try:
                    record = json.loads(line)
                except json.JSONDecodeError:        # a line cut short by a kill
                    continue
                self._done[(record["key"], record["seed"])] = SeedResult(**record["result"])

    def get(self, key: str, seed: int) -> SeedResult | None:
        return self._done.get((key, seed))

    def add(self, key: str, seed: int, result: SeedResult) -> None:
        self._done[(key, seed)] = result
        append_jsonl(self.path, {"key": key, "seed": seed, "result": asdict(result)})

    def clear(self) -> None:
        """The evaluation is complete (its results.json written): forget its seeds, every
        process's (call it from one process, after all have finished)."""
        self._done.clear()
        for path in self.folder.glob("eval_seeds.rank*.jsonl"):
            path.unlink(missing_ok=True)


__all__ = ["SeedLog", "settings_key"]
