"""Errors a user can fix. The CLI prints their message as one line and exits non-zero;
anything else is a bug and keeps its traceback."""


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

