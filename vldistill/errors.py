"""Errors a user can fix. The CLI prints their message as one line and exits non-zero;
anything else is a bug and keeps its traceback. Filesystem and OS errors (a folder that is a
file, no permission, a full disk) are the user's to fix too: `os_error_message` says how."""
import errno
import os
import re


class UserError(Exception):
    """Something in the user's config, paths or data is wrong; the message says what to fix."""


class ProblemsError(UserError):
    """Several independent problems, reported together: one line each (the CLI prints every line
    as an error line); a single problem is just its line."""

    def __init__(self, lines: list[str], what: str):
        self.lines = lines
        head = f"{len(lines)} problems {what}:\n" if len(lines) > 1 else ""
        super().__init__(head + "\n".join(lines))


class UnknownNameError(UserError, ValueError):
    """A registry name (tower, loss, similarity, dataset) that does not exist."""


class MissingFileError(UserError, FileNotFoundError):
    """A file or folder the run needs is not where the config says."""


class NonFiniteError(UserError):
    """Distillation produced NaN/inf for too many iterations in a row (or would write it), or a
    trained model's features are NaN/inf.

    `record` is the metrics record of the iteration that ended the run, if any.
    """

    def __init__(self, message: str, record: dict | None = None):
        super().__init__(message)
        self.record = record


class WriteError(UserError):
    """A file could not be written (disk full, no permission, ...); the previous version of it,
    if any, is intact (`vldistill.runtime.io` writes atomically)."""


_HINTS = {
    errno.ENOSPC: "free some space there, or point run_dir / cache_dir / buffer.dir elsewhere",
    errno.EDQUOT: "the disk quota is used up: free some space, or write elsewhere",
    errno.EFBIG: "the file is larger than this system or process allows",
    errno.EACCES: "this user may not write or read there: fix the permissions or choose another folder",
    errno.EPERM: "this user may not write or read there: fix the permissions or choose another folder",
    errno.EROFS: "the filesystem is read-only: choose another folder",
    errno.ENOTDIR: "a part of that path is a file, not a folder: choose another path",
    errno.EISDIR: "that path is a folder where a file is expected",
    errno.EEXIST: "a file is in the way where a folder is expected",
}


def os_error_message(err: BaseException, path: object = None) -> str:
    """One line for an OSError (or a library error wrapping an OS error code, as safetensors
    does): what failed, where (`path`, default the error's own file name; "" for none), and
    what to do."""
    code = getattr(err, "errno", None)
    if code is None and (found := re.search(r"os error (\d+)", str(err))):
        code = int(found.group(1))
    where = path if path is not None else getattr(err, "filename", None)
    what = os.strerror(code) if code else str(err)
    hint = _HINTS.get(code)
    return f"{what}" + (f": {str(where)!r}" if where else "") + (f" ({hint})" if hint else "")
