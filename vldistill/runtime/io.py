"""Atomic file writes: a temporary file in the same folder, fsync, then rename.

A reader (or a resumed run) sees either the old file or the complete new one, never half.
Tensors go to safetensors only, so nothing is ever unpickled on load.
"""
from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from ..errors import MissingFileError, UserError, WriteError, os_error_message


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


_FILE_MODE = 0o666 & ~_umask()      # what open() would give; mkstemp alone gives 0600


def _atomic(path: str | Path, write: Callable[[str], None]) -> Path:
    """Write through a temporary file renamed over `path`. A failure (disk full, no permission,
    a folder that is a file) raises `WriteError` naming the file, and leaves its previous
    version as it was."""
    path = Path(path)
    tmp = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
        os.close(fd)
        write(tmp)
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.chmod(tmp, _FILE_MODE)
        os.replace(tmp, path)
    except BaseException as err:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)
        if isinstance(err, (OSError, SafetensorError)):
            kept = "its previous version is intact" if path.is_file() else "nothing was written"
            raise WriteError(f"could not write {str(path)!r}: {os_error_message(err, path='')}; "
                             f"{kept}") from None
        raise
    _fsync_dir(path.parent)
    return path


def _fsync_dir(folder: Path) -> None:
    """Make the rename itself durable (a power cut after it keeps the new file)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass                    # some filesystems refuse fsync on a folder; the rename still happened
    finally:
        os.close(fd)


def is_temporary(path: Path) -> bool:
    """A file `_atomic` writes before renaming; one left behind means a writer was killed."""
    return path.name.startswith(".") and path.name.endswith(".tmp")


def write_text(path: str | Path, text: str) -> Path:
    def write(tmp: str) -> None:
        Path(tmp).write_text(text)
    return _atomic(path, write)


def write_json(path: str | Path, obj: Any) -> Path:
    return write_text(path, json.dumps(obj, indent=2, sort_keys=False) + "\n")


def read_json(path: str | Path) -> Any:
    return json.loads(Path(path).read_text())


def write_tensors(path: str | Path, tensors: dict[str, torch.Tensor],
                  metadata: dict[str, str] | None = None) -> Path:
    """Save tensors (made contiguous, on CPU) as safetensors, atomically."""
    clean = {k: v.detach().to("cpu").contiguous() for k, v in tensors.items()}

    def write(tmp: str) -> None:
        save_file(clean, tmp, metadata=metadata)
    return _atomic(path, write)


def read_tensors(path: str | Path) -> dict[str, torch.Tensor]:
    """Load a safetensors file; a missing or damaged one is a UserError naming it."""
    return read_tensors_and_metadata(path)[0]


def read_tensors_and_metadata(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """Tensors and the string metadata of a safetensors file (nothing is unpickled)."""
    try:
        with safe_open(str(path), framework="pt") as handle:
            return {k: handle.get_tensor(k) for k in handle.keys()}, handle.metadata() or {}
    except FileNotFoundError:
        raise MissingFileError(f"{str(path)!r} not found") from None
    except (SafetensorError, OSError) as err:
        raise UserError(f"{str(path)!r} is not a readable safetensors file ({err}): it is damaged "
                        "or was written by another tool; delete it (or restore it) and rerun") from None


def remove_leftover_temps(path: str | Path) -> int:
    """Delete temporary files a killed writer of `path` left behind; only call this while no
    other process can be writing `path` (the run lock). Returns how many were removed."""
    path = Path(path)
    leftovers = [p for p in path.parent.glob(f".{path.name}.*.tmp") if is_temporary(p)]
    for leftover in leftovers:
        leftover.unlink(missing_ok=True)
    return len(leftovers)


def append_jsonl(path: str | Path, record: dict[str, Any]) -> None:
    """One JSON line per record; a crash loses at most the line being written (and the next
    record starts on a line of its own even then)."""
    with open(path, "a+b") as handle:
        if handle.tell() > 0:
            handle.seek(-1, os.SEEK_END)
            cut_short = handle.read(1) != b"\n"
        else:
            cut_short = False
        handle.write((("\n" if cut_short else "") + json.dumps(record) + "\n").encode())
        handle.flush()
