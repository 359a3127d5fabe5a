"""Data that would corrupt a benchmark is refused when a dataset is built, whatever its format:
blank or non-text captions, empty splits, a caption repeated within an image, an image in two
splits (same path or same bytes). data.accept passes a check on purpose and results.json says so."""
from __future__ import annotations

import json
import shutil

import pytest
import torch
from fixtures_real import KARPATHY, karpathy_overrides, write_karpathy
from reliability_helpers import REPO, TINY, run_cli

from vldistill.configio import load_config
from vldistill.data import DATASETS, CaptionDataset, CaptionSplit, TensorImages, build_dataset
from vldistill.data import checks as checks_module
from vldistill.data.checks import DataCheckError, file_digests, find_problems
from vldistill.data.karpathy import read_karpathy_json
from vldistill.data.splits import normalize_caption
from vldistill.data.shapes import build_shapes


def _data(root, *overrides: str):
    return load_config(None, ["data.image_size=16", *karpathy_overrides(root), *overrides]).data


def _edit(root, split: str, change) -> None:
    path = root / "ann" / f"{split}.json"
    entries = json.loads(path.read_text())
    change(entries)
    path.write_text(json.dumps(entries))


def test_blank_captions_are_refused_naming_the_entries_and_the_count(tmp_path, capsys):
    write_karpathy(tmp_path, {"train": [2] * 4, "val": [1, 1], "test": [1, 1]})

    def blank(entries):             # train entries: caption k of every image, then k + 1
        entries[1]["caption"] = "   "
        entries[6]["caption"] = "..."
    _edit(tmp_path, "train", blank)
    code, err = run_cli(capsys, "buffer", TINY, f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}",
                        *karpathy_overrides(tmp_path), "distill.n_pairs=4", "distill.mini_batch=2",
                        "distill.rank=2")
    assert code == 2, err
    assert ("vldistill: error: data: train: 2 blank captions, first: train/train_001.png caption ''; "
            "train/train_002.jpg caption '' (fix the data, or data.accept=[blank_captions] to drop "
            "them on purpose)") in err, err
    assert not (tmp_path / "run").exists()              # refused before the run directory is made


def test_train_test_overlap_by_path_and_by_content_is_refused_then_accepted_and_recorded(tmp_path, capsys):
    write_karpathy(tmp_path, {"train": [1] * 4, "val": [1, 1], "test": [1, 1, 1]})
    images = tmp_path / "images"
    shutil.copy(images / "train/train_002.jpg", images / "test/test_002.jpg")    # same bytes, new name

    def reuse(entries):
        entries[0]["image"] = "train/train_001.png"                            # the same file
    _edit(tmp_path, "test", reuse)
    with pytest.raises(DataCheckError) as caught:
        build_dataset(_data(tmp_path), tmp_path / "cache")
    assert caught.value.lines == [
        "data: test vs train: 2 images also in an earlier split, first: train/train_001.png is "
        "train/train_001.png (same path); test/test_002.jpg = train/train_002.jpg (same content) "
        "(fix the data, or data.accept=[split_overlap] to keep them on purpose)"]

    # accepted on purpose: the run goes on and results.json records what was accepted
    common = [f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}", *karpathy_overrides(tmp_path),
              "distill.n_pairs=4", "distill.mini_batch=2", "distill.rank=2", "eval.methods=[random]",
              "eval.num_eval=1", "eval.epochs=2", "eval.val_every=1", "data.accept=[split_overlap]"]
    code, err = run_cli(capsys, "eval", TINY, *common)
    assert code == 0, err
    results = json.loads((tmp_path / "run" / "results.json").read_text())
    assert results["data_accepted"] == {"split_overlap": [{"split": "test vs train", "count": 2, "examples": [
        "train/train_001.png is train/train_001.png (same path)",
        "test/test_002.jpg = train/train_002.jpg (same content)"]}]}


def test_a_caption_repeated_within_an_image_is_refused(tmp_path):
    write_karpathy(tmp_path, {"train": [1] * 3, "val": [2, 1], "test": [3, 1]})
    _edit(tmp_path, "test", lambda entries: entries[0]["caption"].__setitem__(2, entries[0]["caption"][0].upper()))
    with pytest.raises(DataCheckError, match=r"^data: test: 1 images with a caption repeated, first: "
                                             r"test/test_000.jpg '.+' x2 \(fix the data, or "
                                             r"data.accept=\[duplicate_captions\]"):
        build_dataset(_data(tmp_path), tmp_path / "cache")
    kept = build_dataset(_data(tmp_path, "data.accept=[duplicate_captions]"), tmp_path / "cache")
    assert kept.test.img2txt[0] == [0, 1, 2] and kept.checks["duplicate_captions"][0]["count"] == 1


def _split(pixels: torch.Tensor, captions: list, per_image: int = 1) -> CaptionSplit:
    owners = torch.arange(len(pixels)).repeat_interleave(per_image)
    return CaptionSplit(TensorImages(pixels, (0.5,) * 3, (0.25,) * 3), captions, owners,
                        [f"img{i}" for i in range(len(pixels))])


def test_a_format_registered_anywhere_is_checked_without_doing_anything(monkeypatch, tmp_path):
    """A builder that never heard of the checks (in-memory images, its own captions): build_dataset
    still refuses a non-text caption, an empty split and a test image equal to a train image."""
    pixels = torch.randint(0, 255, (4, 3, 8, 8), dtype=torch.uint8)

    def builder(data_cfg, cache_dir):
        train = _split(pixels[:3], ["a red car", None, "a dog"])
        test = _split(torch.cat([pixels[3:], pixels[1:2]]), ["a cat", "a bird"])
        empty = CaptionSplit(TensorImages(pixels[:0], (0.5,) * 3, (0.25,) * 3), [], torch.zeros(0, dtype=torch.long))
        return CaptionDataset("mine", train, empty, test, (0.5,) * 3, (0.25,) * 3, 8)
    monkeypatch.setitem(DATASETS._entries, "mine", builder)
    cfg = load_config(None, []).data
    monkeypatch.setattr(cfg, "name", "mine")
    with pytest.raises(DataCheckError) as caught:
        build_dataset(cfg, tmp_path)
    assert caught.value.lines == [
        "data: train: 1 captions that are not text, first: img1 caption None",
        "data: val: 1 empty split, first: 0 images, 0 captions",
        "data: test vs train: 1 images also in an earlier split, first: img1 = img1 (same content) "
        "(fix the data, or data.accept=[split_overlap] to keep them on purpose)"]
    assert str(caught.value).startswith("3 problems in the mine data:\n")


@pytest.mark.parametrize("scheme", ["shapes", "shapes-specific"])
def test_the_embedded_datasets_pass_every_check(scheme):
    """No repeated caption within an image, no image in two splits (by pixels), no blank caption
    (at the demo's sizes too: README, data checks)."""
    assert find_problems(build_shapes(300, 60, 60, image_size=16, scheme=scheme)) == []


def test_file_digests_are_the_bytes_hash_computed_once_per_file_version(tmp_path, monkeypatch):
    files = [tmp_path / f"{i}.bin" for i in range(3)]
    for i, f in enumerate(files):
        f.write_bytes(bytes([i]) * 1000)
    files[2].write_bytes(files[0].read_bytes())
    first = file_digests([str(f) for f in files], tmp_path / "cache")
    assert first[0] == first[2] != first[1] and len(first[0]) == 32
    opened = []
    monkeypatch.setattr(checks_module, "open", lambda *a, **k: opened.append(a) or open(*a, **k), raising=False)
    assert file_digests([str(f) for f in files], tmp_path / "cache") == first and opened == []
    files[1].write_bytes(b"changed")
    assert file_digests([str(f) for f in files], tmp_path / "cache")[1] != first[1] and len(opened) == 3


@pytest.mark.skipif(not KARPATHY.is_dir(), reason="needs ../shared/data/karpathy")
@pytest.mark.parametrize("name, images", [("coco_karpathy_test", 11), ("coco_karpathy_val", 7),
                                          ("flickr30k_test", 1), ("flickr30k_val", 0)])
def test_the_published_splits_repeat_captions_and_the_paper_configs_accept_it(name, images):
    """The Karpathy files themselves repeat a caption within a few images: the check finds exactly
    those, and every paper config says it keeps them (data.accept), as the benchmark has them."""
    groups = read_karpathy_json(KARPATHY / f"{name}.json")
    captions = [normalize_caption(c, 30, "reference") for g in groups for c in g.captions]
    owners = torch.arange(len(groups)).repeat_interleave(torch.tensor([len(g.captions) for g in groups]))
    split = CaptionSplit(TensorImages(torch.zeros(len(groups), 3, 1, 1, dtype=torch.uint8), (0.5,) * 3, (0.5,) * 3),
                         captions, owners, [g.image for g in groups])
    found = [f.count for f in checks_module._caption_findings("test", split) if f.check == "duplicate_captions"]
    assert found == ([images] if images else [])
    for config in REPO.glob(f"configs/*{name.split('_')[0]}*.yaml"):
        assert "duplicate_captions" in load_config(config).data.accept, config
