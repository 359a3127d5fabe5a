"""webdataset shards as img2dataset writes them: `00000.tar`, ... each holding `KEY.jpg` with
`KEY.txt` and/or `KEY.json` (its `caption` field).

How they are read:
- One pass over every shard, in order, by the `webdataset` library (DataLoader workers take
  whole shards): each sample's captions are kept, its image is checked as it is read (header,
  end marker) and Python's `tarfile` notes where the image's bytes sit in the shard. The pass is
  cached per shard (`cache_dir/shards/`), so a later run reads no shard it has seen unchanged.
- From then on images are read by that index: `ShardImages.open` reads one member's bytes
  (`os.pread` at its offset) and nothing else, so the experts' shuffled mini-batches draw a
  full permutation as they do from a folder, and the in-order passes (feature caches, coresets,
  evaluation) read the shards sequentially in `data.num_workers` workers. Memory holds the
  index (a few dozen bytes per image) and the captions, never the images -- unless the split
  fits `data.cache_max_gb` with `data.cache_images`, where its pixels are decoded once into the
  usual cache, as for a folder.

Shards must be uncompressed `.tar` files on a local or mounted file system (random access).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import BinaryIO, Sequence, TYPE_CHECKING

import numpy as np
from torch.utils.data import DataLoader, Dataset
from tqdm.auto import tqdm

from ..errors import MissingFileError, UserError
from ..runtime.io import read_json, write_text
from .examples import example_captions, write_images
from .records import ImageCaptions, build_caption_dataset, image_root, three_splits
from .registry import DATASETS
from .splits import CaptionDataset
from .stores import BadImageError, bad_image_message, check_image, named_bytes

if TYPE_CHECKING:
    from ..config import DataConfig

log = logging.getLogger(__name__)

SCAN_FORMAT = 1                       # bump when what the pass records changes
IMAGE_MEMBERS = "jpg;png;jpeg;webp"
CAPTION_MEMBER = "txt"


# ---------------------------------------------------------------- the pass over the shards
def _captions(sample: dict, key: str) -> list[str]:
    """The `KEY.<key>` member, else the .json member's field `key`, else its `caption`."""
    if key in sample:
        return [sample[key].decode("utf-8", errors="replace")]
    if "json" not in sample:
        return []
    try:
        meta = json.loads(sample["json"])
    except (json.JSONDecodeError, UnicodeDecodeError):
        return []
    value = meta.get(key, meta.get("caption")) if isinstance(meta, dict) else None
    if isinstance(value, str):
        return [value]
    return [c for c in value if isinstance(c, str)] if isinstance(value, list) else []


def scan_shard(shard: str, image_members: Sequence[str], caption_key: str) -> list[list]:
    """Every sample of one shard, in order: [key, image member, offset, size, captions, problem].

    webdataset reads the samples (its key grouping: `KEY.ext`); tarfile's headers say where each
    member's bytes start, for the random access later.
    """
    import tarfile

    import webdataset as wds
    from webdataset.tariterators import base_plus_ext
    where = {}
    try:
        with tarfile.open(shard, "r:") as tar:                  # headers only; data is skipped
            for member in tar:
                prefix, ext = base_plus_ext(member.name) if member.isreg() else (None, None)
                if prefix is not None:
                    where[(prefix, ext.lower())] = (member.offset_data, member.size)
        samples = []
        for sample in wds.DataPipeline(wds.SimpleShardList([shard]), wds.tarfile_to_samples()):
            key = sample["__key__"]
            ext = next((e for e in image_members if e in sample), None)
            if ext is None:
                samples.append([key, key, 0, 0, _captions(sample, caption_key),
                                f"has no {' or '.join(image_members)} member"])
                continue
            member = f"{key}.{ext}"
            problem = check_image(named_bytes(sample[ext], member))
            samples.append([key, member, *where[(key, ext)], _captions(sample, caption_key), problem])
    except (tarfile.TarError, OSError, ValueError, KeyError) as err:
        raise UserError(f"shard {shard!r} cannot be read as an uncompressed tar ({type(err).__name__}: "
                        f"{err}): replace it, or leave it out of data.train_json / val_json / test_json") from None
    return samples


class _Scan(Dataset):
    """Shard i -> its samples (a DataLoader worker reads whole shards)."""

    def __init__(self, shards: list[str], image_members: Sequence[str], caption_key: str):
        self.shards, self.image_members, self.caption_key = shards, image_members, caption_key

    def __len__(self) -> int:
        return len(self.shards)

    def __getitem__(self, i: int) -> list[list]:
        return scan_shard(self.shards[i], self.image_members, self.caption_key)


def _stamp(path: Path) -> str:
    stat = path.stat()
    return f"{stat.st_size}:{stat.st_mtime_ns}"


def scan_shards(shards: list[Path], image_members: Sequence[str], caption_key: str, cache_dir: Path,
                num_workers: int) -> list[list[list]]:
    """Every shard's samples, from the per-shard cache or read now (in order, in workers)."""
    setting = json.dumps([SCAN_FORMAT, list(image_members), caption_key])
    files = [cache_dir / "shards" / (hashlib.sha256(f"{setting}\0{p.resolve()}\0{_stamp(p)}".encode())
                                     .hexdigest()[:24] + ".json") for p in shards]
    found = {i: read_json(f) for i, f in enumerate(files) if f.is_file()}
    todo = [i for i in range(len(shards)) if i not in found]
    loader = DataLoader(_Scan([str(shards[i]) for i in todo], image_members, caption_key), batch_size=None,
                        num_workers=min(num_workers, len(todo)))
    for i, samples in zip(todo, tqdm(loader, desc="reading shards", unit="shard", disable=len(todo) < 20)):
        write_text(files[i], json.dumps(samples))
        found[i] = samples
    return [found[i] for i in range(len(shards))]


# ---------------------------------------------------------------- random access by the index
@dataclass
class ShardImages:
    """Images inside tar shards, read by (shard, offset, size): one `pread` per image."""

    shards: list[str]
    shard_stamps: list[str]
    where: np.ndarray                   # (n, 3) int64: shard, offset, size
    members: list[str]                  # KEY.ext, for messages
    problems: list[str | None]          # what the pass found wrong with each
    _fds: dict = field(default_factory=dict, repr=False, compare=False)

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_fds": {}}        # file descriptors stay in their process

    def __len__(self) -> int:
        return len(self.members)

    def name(self, i: int) -> str:
        return f"{self.shards[int(self.where[i, 0])]}:{self.members[i]}"

    def open(self, i: int) -> BinaryIO:
        shard, offset, size = (int(v) for v in self.where[i])
        try:
            if shard not in self._fds:
                if len(self._fds) >= 64:                             # bound the open files
                    os.close(self._fds.pop(next(iter(self._fds))))
                self._fds[shard] = os.open(self.shards[shard], os.O_RDONLY)
            data = os.pread(self._fds[shard], size, offset)
        except OSError as err:
            raise BadImageError(bad_image_message(self.name(i), f"cannot be read ({err})")) from None
        if len(data) != size:
            raise BadImageError(bad_image_message(self.name(i), "is cut short (the shard changed)"))
        return named_bytes(data, self.name(i))

    def stamp(self, i: int) -> str | None:
        return f"{self.shard_stamps[int(self.where[i, 0])]}:{int(self.where[i, 1])}"

    def check(self, i: int) -> str | None:
        return self.problems[i]

    def select(self, positions: Sequence[int]) -> "ShardImages":
        idx = list(positions)
        return ShardImages(self.shards, self.shard_stamps, self.where[np.asarray(idx, dtype=np.int64)],
                           [self.members[i] for i in idx], [self.problems[i] for i in idx])


# ---------------------------------------------------------------- the dataset
def shard_list(root: Path, spec: str, key: str) -> list[Path]:
    """A shard name or brace pattern (`{00000..00009}.tar`) under `root`, or absolute."""
    import braceexpand
    paths = [p if p.is_absolute() else root / p for p in map(Path, braceexpand.braceexpand(spec))]
    missing = [p for p in paths if not p.is_file()]
    if missing:
        raise MissingFileError(f"data.{key}: shard {str(missing[0])!r} not found"
                               + (f" ({len(missing) - 1} more)" if len(missing) > 1 else ""))
    return paths


def split_shards(data_cfg: "DataConfig", root: Path) -> dict[str, list[Path] | None]:
    """Each split's shards: val and test as given (both or neither), train the rest by default."""
    given = {split: shard_list(root, spec, f"{split}_json")
             for split in ("val", "test") if (spec := getattr(data_cfg, f"{split}_json"))}
    if len(given) == 1:
        raise UserError("webdataset: give both data.val_json and data.test_json shards, or neither "
                        "(then data.val_fraction / data.test_fraction of the samples are held out)")
    if data_cfg.train_json:
        train = shard_list(root, data_cfg.train_json, "train_json")
    else:
        taken = {p.resolve() for paths in given.values() for p in paths}
        train = [p for p in sorted(root.glob("*.tar")) if p.resolve() not in taken]
    if not train:
        raise MissingFileError(f"no .tar shards in data.image_root {str(root)!r} for the train split")
    return {"train": train, "val": given.get("val"), "test": given.get("test")}


def tiny_webdataset(folder: Path) -> list[str]:
    """Six images in two shards as img2dataset writes them (KEY.png + KEY.txt); val and test held
    out of them."""
    import webdataset as wds
    names = write_images(folder / "images", [f"p{i}.png" for i in range(6)])
    captions = example_captions(6)
    (folder / "shards").mkdir(parents=True, exist_ok=True)
    for s in range(2):
        with wds.TarWriter(str(folder / "shards" / f"{s:05d}.tar"), encoder=False) as writer:
            for k in range(3 * s, 3 * s + 3):
                writer.write({"__key__": f"{k:09d}", "png": (folder / "images" / names[k]).read_bytes(),
                              "txt": captions[k].encode()})
    return ["data.name=webdataset", f"data.image_root={folder / 'shards'}"]


@DATASETS.register("webdataset", example=tiny_webdataset)
def build_webdataset(data_cfg: "DataConfig", cache_dir: Path) -> CaptionDataset:
    """Samples of tar shards: captions from the pass, images by the index."""
    root = image_root(data_cfg)
    image_members = [e.strip().lower() for e in (data_cfg.image_key or IMAGE_MEMBERS).split(";") if e.strip()]
    caption_key = data_cfg.caption_key or CAPTION_MEMBER
    per_split = split_shards(data_cfg, root)
    shards = list(dict.fromkeys(p for paths in per_split.values() if paths for p in paths))
    scanned = scan_shards(shards, image_members, caption_key, cache_dir, data_cfg.num_workers)
    where, names, members, problems, captions = [], [], [], [], []
    for s, (path, samples) in enumerate(zip(shards, scanned)):
        label = path.name if path.parent == root else str(path)
        for key, member, offset, size, caps, problem in samples:
            where.append((s, offset, size))
            names.append(f"{label}:{key}")
            members.append(member)
            problems.append(problem)
            captions.append(caps)
    index = ShardImages([str(p) for p in shards], [_stamp(p) for p in shards],
                        np.asarray(where, dtype=np.int64).reshape(-1, 3), members, problems)
    position = {name: i for i, name in enumerate(names)}
    if len(position) < len(names):
        raise UserError(f"webdataset: a sample key occurs twice in one shard under {root}")
    groups: dict[str, list[ImageCaptions] | None] = {}
    for split, paths in per_split.items():
        ids = {shards.index(p) for p in paths} if paths is not None else None
        groups[split] = None if ids is None else [
            ImageCaptions(names[i], captions[i]) for i, (s, _, _) in enumerate(where) if s in ids]
    splits = three_splits(groups["train"], groups["val"], groups["test"], data_cfg)
    log.info("webdataset: %d samples in %d shards under %s", len(names), len(shards), root)
    return build_caption_dataset(f"webdataset:{root.name}", splits,
                                 lambda chosen: index.select([position[n] for n in chosen]), data_cfg, cache_dir)
