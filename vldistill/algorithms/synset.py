"""A distilled set: synthetic images, text embeddings, learned similarity and student lrs.

Saved as `NAME.safetensors` (tensors `images`, `text_embeddings`, `lr_img`, `lr_txt`,
`similarity_matrix` and the similarity's parameters as `similarity.PARAM`) plus `NAME.json`,
the card: what made the set (dataset and fingerprint, towers, loss, similarity kind, config)
and what is known about it (metrics, decoded captions). `DistilledSet.load(path)` reads both
back, from safetensors only.
"""
from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import torch

from ..errors import MissingFileError, UserError
from ..runtime.io import read_tensors, write_json, write_tensors
from .similarity import Similarity, similarity_from_state

if TYPE_CHECKING:
    from ..data import PreparedData

SET_FORMAT = 1

log = logging.getLogger(__name__)


@dataclass
class DistilledSet:
    images: torch.Tensor                # (N, 3, H, W) in the dataset's normalized pixel space
    text_embeddings: torch.Tensor       # (N, d_text) in the frozen text tower's space
    similarity: Similarity
    lr_img: float
    lr_txt: float
    card: dict = field(default_factory=dict)

    @property
    def n_pairs(self) -> int:
        return len(self.images)

    @torch.no_grad()
    def similarity_matrix(self) -> torch.Tensor:
        return self.similarity.matrix().detach().float().cpu()

    def save(self, path: str | Path) -> Path:
        """Write PATH.safetensors and PATH.json (PATH without suffix, e.g. RUN_DIR/set)."""
        path = Path(path).with_suffix("")
        tensors = {"images": self.images, "text_embeddings": self.text_embeddings,
                   "lr_img": torch.tensor(float(self.lr_img)), "lr_txt": torch.tensor(float(self.lr_txt)),
                   "similarity_matrix": self.similarity_matrix()}
        tensors.update({f"similarity.{k}": v for k, v in self.similarity.state_dict().items()})
        card = {"format": SET_FORMAT, "n_pairs": self.n_pairs, "lr_img": float(self.lr_img),
                "lr_txt": float(self.lr_txt), "similarity": self._similarity_spec()} | self.card
        write_tensors(path.with_suffix(".safetensors"), tensors,
                      metadata={"card": json.dumps({k: card[k] for k in ("format", "similarity")})})
        write_json(path.with_suffix(".json"), card)
        return path.with_suffix(".safetensors")

    def _similarity_spec(self) -> dict:
        sim = self.similarity
        own = {"options": sim.options} if sim.options else {}
        return {"kind": sim.kind, "rank": getattr(sim, "rank", None), "alpha": getattr(sim, "alpha", None)} | own

    def check_fits(self, data: "PreparedData") -> None:
        """Refuse to train on data the set cannot mean anything for: its text embeddings live
        in one text tower's space and its images have one size; other data is only warned of."""
        card = self.card
        expected = {"text_tower": data.text_tower, "image_size": data.dataset.image_size}
        for key, value in expected.items():
            if key in card and card[key] != value:
                raise UserError(f"this set was distilled with {key}={card[key]!r}, the config has "
                                f"{value!r}: evaluate it with the same {key}")
        if self.text_embeddings.shape[1] != data.text_dim:
            raise UserError(f"this set's text embeddings have {self.text_embeddings.shape[1]} dims, "
                            f"the config's text tower gives {data.text_dim}")
        if card.get("dataset_fingerprint") not in (None, data.dataset.fingerprint):
            log.warning("this set was distilled on other training data (%s, fingerprint %s) than "
                        "it is evaluated with (%s, %s)", card.get("dataset"),
                        card.get("dataset_fingerprint"), data.dataset.name, data.dataset.fingerprint)

    @classmethod
    def load(cls, path: str | Path) -> "DistilledSet":
        """Load a set from PATH.safetensors (+ PATH.json); PATH may be a run directory."""
        path = Path(path)
        if path.is_dir():
            path = path / "set"
        path = path.with_suffix("")
        tensor_file, card_file = path.with_suffix(".safetensors"), path.with_suffix(".json")
        if not tensor_file.is_file():
            raise MissingFileError(f"no distilled set at {str(tensor_file)!r}")
        tensors = read_tensors(tensor_file)
        card = json.loads(card_file.read_text()) if card_file.is_file() else {}
        if card.get("format", SET_FORMAT) != SET_FORMAT:
            raise UserError(f"{card_file} has set format {card.get('format')}, this vldistill reads {SET_FORMAT}")
        spec = card.get("similarity", {"kind": "identity"})
        state = {k.split(".", 1)[1]: v for k, v in tensors.items() if k.startswith("similarity.")}
        similarity = similarity_from_state(spec["kind"], len(tensors["images"]), state,
                                           rank=spec.get("rank") or 1, alpha=spec.get("alpha") or 1.0,
                                           **spec.get("options", {}))
        return cls(tensors["images"], tensors["text_embeddings"], similarity,
                   float(tensors["lr_img"]), float(tensors["lr_txt"]), card)


def update_card(path: str | Path, fields: dict) -> Path:
    """Merge `fields` into a saved set's JSON card (atomically); the tensors are not touched."""
    card_file = Path(path).with_suffix("").with_suffix(".json")
    card = json.loads(card_file.read_text()) if card_file.is_file() else {}
    return write_json(card_file, card | fields)
