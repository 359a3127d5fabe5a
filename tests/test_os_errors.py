"""Filesystem and OS errors are one line that says what to do, and a write that fails loses
nothing: a run_dir below a file, a full disk, a checkpoint write cut off by the OS."""
from __future__ import annotations

import json
import resource
import signal

import pytest
import torch
from reliability_helpers import FAST, TINY, run_cli, tiny_store
from safetensors import SafetensorError

import vldistill.distill.checkpoint as checkpoint_module
import vldistill.distill.stage as distill_module
import vldistill.runtime.io as io_module
from vldistill.errors import WriteError
from vldistill.runtime.io import write_tensors


def test_a_run_dir_below_a_file_is_one_line_for_every_command(tmp_path, cache_dir, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("")
    code, err = run_cli(capsys, "buffer", TINY, f"run_dir={blocker / 'run'}", f"cache_dir={cache_dir}")
    assert code == 2 and err == (f"vldistill: error: run_dir: {str(blocker)!r} is a file, not a folder, "
                                 f"so {str(blocker / 'run')!r} cannot be created"), err
    code, err = run_cli(capsys, "report", TINY, f"run_dir={blocker / 'run'}", f"cache_dir={cache_dir}")
    assert code == 2 and err == (f"vldistill: error: Not a directory: {str(blocker / 'run')!r} (a part of "
                                 "that path is a file, not a folder: choose another path)"), err


def test_a_full_disk_leaves_the_previous_file_and_no_temporary(tmp_path, monkeypatch):
    path = tmp_path / "set.safetensors"
    write_tensors(path, {"x": torch.ones(3)})
    before = path.read_bytes()

    def full_disk(tensors, tmp, metadata=None):
        with open(tmp, "wb") as handle:
            handle.write(b"half a file")
        raise SafetensorError("Error while serializing: I/O error: No space left on device (os error 28)")
    monkeypatch.setattr(io_module, "save_file", full_disk)
    with pytest.raises(WriteError) as caught:
        write_tensors(path, {"x": torch.zeros(3)})
    assert str(caught.value) == (f"could not write {str(path)!r}: No space left on device (free some space "
                                 "there, or point run_dir / cache_dir / buffer.dir elsewhere); its previous "
                                 "version is intact")
    assert path.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["set.safetensors"]


def test_a_checkpoint_write_the_os_refuses_stops_with_one_line_and_keeps_the_last_one(
        tmp_path, cache_dir, capsys, monkeypatch):
    """A real OS error: the second checkpoint is written under a file-size limit (RLIMIT_FSIZE)
    below its size, so the kernel refuses the write (EFBIG) in safetensors' own writer."""
    real_write, calls = checkpoint_module.write_checkpoint, []

    def second_one_too_big(path, state, info):
        calls.append(info["iteration"])
        if len(calls) < 2:
            return real_write(path, state, info)
        handler = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        limits = resource.getrlimit(resource.RLIMIT_FSIZE)
        resource.setrlimit(resource.RLIMIT_FSIZE, (4096, limits[1]))
        try:
            return real_write(path, state, info)
        finally:
            resource.setrlimit(resource.RLIMIT_FSIZE, limits)
            signal.signal(signal.SIGXFSZ, handler)
    monkeypatch.setattr(distill_module, "write_checkpoint", second_one_too_big)
    run_dir = tmp_path / "run"
    code, err = run_cli(capsys, "distill", TINY, f"run_dir={run_dir}", f"cache_dir={cache_dir}",
                        f"buffer.dir={tiny_store(cache_dir)}", "eval.methods=[lors]", *FAST,
                        "distill.iterations=4", "distill.checkpoint_every=2")
    checkpoint = run_dir / "checkpoints" / "lors.safetensors"
    assert code == 2 and calls == [2, 4]
    assert err == (f"vldistill: error: could not write {str(checkpoint)!r}: File too large (the file is larger "
                   "than this system or process allows); its previous version is intact"), err
    info = json.loads(checkpoint.with_suffix(".json").read_text())
    assert info["iteration"] == 2                                   # the first one, whole
    state, _ = checkpoint_module.read_checkpoint(checkpoint, info["setup"])
    assert int(state["counters"][0]) == 2
    assert not [p for p in checkpoint.parent.iterdir() if p.name.endswith(".tmp")]
    # and, room made, the run resumes from it
    monkeypatch.setattr(distill_module, "write_checkpoint", real_write)
    code, err = run_cli(capsys, "distill", run_dir, f"cache_dir={cache_dir}")
    assert code == 0, err
