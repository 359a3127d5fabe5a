"""Where encoded images live: files on disk, members of tar shards, rows of a saved dataset.

`images.load_images` checks, decodes and caches images through this one interface
(`EncodedImages`), so every format gets the same one-line errors, `data.skip_bad_images` and
the decoded-pixel cache. A store hands PIL a path or a file-like object; it never decodes.
"""
from __future__ import annotations

import contextlib
import io
import os
from dataclasses import dataclass
from typing import BinaryIO, Protocol, Sequence

from ..errors import UserError


class BadImageError(UserError):
    """An image that cannot be decoded; the message names it.

    A DataLoader re-raises a worker's exception as `type(exc)(text with the worker's traceback)`;
    this keeps only our own message, so the CLI still prints one line.
    """

    def __init__(self, message: str):
        if "Original Traceback" in message:
            last = [line for line in message.splitlines() if line.strip()][-1]
            message = last.split("BadImageError: ", 1)[-1]
        super().__init__(message)


def bad_image_message(name: str, reason: str) -> str:
    return (f"image {name!r} {reason}: replace or remove it, or set data.skip_bad_images=true "
            "to skip such images")


class EncodedImages(Protocol):
    """Encoded images by position. `open` gives PIL a path or a named binary file object."""

    def __len__(self) -> int: ...

    def name(self, i: int) -> str: ...                 # how messages name image i

    def open(self, i: int) -> str | BinaryIO: ...      # raises BadImageError when unreadable

    def stamp(self, i: int) -> str | None: ...         # identifies its bytes (cache key); None: missing

    def check(self, i: int) -> str | None: ...         # why it cannot serve as an image, cheaply

    def select(self, positions: Sequence[int]) -> "EncodedImages": ...


def named_bytes(data: bytes, name: str) -> BinaryIO:
    """Bytes as a file object that carries its name, so decoding errors can say which image."""
    handle = io.BytesIO(data)
    handle.name = name            # type: ignore[attr-defined]
    return handle


def source_name(source: str | BinaryIO) -> str:
    return source if isinstance(source, str) else getattr(source, "name", "<bytes>")


def check_image(source: str | BinaryIO) -> str | None:
    """Why `source` cannot serve as an image (None if it looks fine), without decoding it.

    Reads the header (PIL recognizes the format) and, for JPEG and PNG, the tail (the end
    marker is there, so the image was not cut short).
    """
    from PIL import Image, UnidentifiedImageError
    opened = open(source, "rb") if isinstance(source, str) else contextlib.nullcontext(source)
    try:
        with opened as handle:
            size = handle.seek(0, os.SEEK_END)
            if size == 0:
                return "is empty"
            handle.seek(0)
            with Image.open(handle) as image:
                fmt = image.format
            handle.seek(max(0, size - 1024))
            tail = handle.read()
    except FileNotFoundError:
        return "is missing"
    except UnidentifiedImageError:
        return "is not an image PIL can read"
    except OSError as err:
        return f"cannot be read ({err})"
    if fmt == "JPEG" and b"\xff\xd9" not in tail:
        return "is truncated (no JPEG end marker)"
    if fmt == "PNG" and b"IEND" not in tail[-16:]:
        return "is truncated (no PNG end chunk)"
    return None


@dataclass
class ImageFiles:
    """Image files on disk, by path."""

    paths: list[str]

    def __len__(self) -> int:
        return len(self.paths)

    def name(self, i: int) -> str:
        return self.paths[i]

    def open(self, i: int) -> str:
        return self.paths[i]

    def stamp(self, i: int) -> str | None:
        try:
            stat = os.stat(self.paths[i])
        except OSError:
            return None
        return f"{stat.st_size}:{stat.st_mtime_ns}"

    def check(self, i: int) -> str | None:
        return check_image(self.paths[i])

    def select(self, positions: Sequence[int]) -> "ImageFiles":
        return ImageFiles([self.paths[i] for i in positions])


__all__ = ["BadImageError", "EncodedImages", "ImageFiles", "bad_image_message", "check_image",
           "named_bytes", "source_name"]
