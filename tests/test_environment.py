"""vldistill used as a library leaves the embedding program's logging as it was."""
from __future__ import annotations

import logging

from vldistill.runtime.environment import RUN_LOG, log_to


def test_log_to_replaces_only_its_own_log_file(tmp_path):
    root = logging.getLogger()
    theirs = logging.FileHandler(tmp_path / "theirs.log")
    root.addHandler(theirs)
    before = list(root.handlers)
    try:
        log_to(tmp_path / "first.txt")
        log_to(tmp_path / "second.txt")
        ours = [h for h in root.handlers if h.get_name() == RUN_LOG]
        assert theirs in root.handlers and len(ours) == 1
        assert ours[0].baseFilename == str(tmp_path / "second.txt")
        logging.getLogger("vldistill.test").warning("hello")
        for handler in (theirs, *ours):
            handler.flush()
        assert "hello" in (tmp_path / "theirs.log").read_text()
        assert "hello" in (tmp_path / "second.txt").read_text()
        assert "hello" not in (tmp_path / "first.txt").read_text()
    finally:
        for handler in [h for h in root.handlers if h not in before or h is theirs]:
            root.removeHandler(handler)
            handler.close()
