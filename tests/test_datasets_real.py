"""File-backed datasets (Karpathy JSON, COCO via pycocotools, a user's folder), the image
transforms, bad files, the decoded-image cache, and paper configs run on tiny fixtures."""
from __future__ import annotations

import collections
import json
import math
import logging
import os

import pytest
import torch
from fixtures_real import (KARPATHY, caption_pool, image_names, karpathy_overrides, make_tiny_bert,
                           truncate, write_image, write_karpathy)

from vldistill.configio import load_config
from vldistill.data import DATASETS, build_dataset
from vldistill.data import images as images_module
from vldistill.data.images import CLIP_MEAN, CLIP_STD, BadImageError, DecodedImages, FileImages, ImageTransform
from vldistill.data.karpathy import read_karpathy_json
from vldistill.data.records import build_split
from vldistill.data.splits import normalize_caption
from vldistill.errors import UserError


def data_cfg(*overrides: str, size: int = 16):
    return load_config(None, [f"data.image_size={size}", *overrides]).data


# ---------------------------------------------------------------- Karpathy JSON
def test_karpathy_maps_with_variable_captions(tmp_path):
    counts = {"train": [2, 3, 1, 2], "val": [3, 1, 5], "test": [2, 7, 1]}
    written = write_karpathy(tmp_path, counts)
    ds = build_dataset(data_cfg(*karpathy_overrides(tmp_path)), tmp_path / "cache")
    assert ds.name == "karpathy" and ds.mean == CLIP_MEAN and ds.std == CLIP_STD
    # hand count: val images own captions [0,1,2], [3], [4..8]; test [0,1], [2..8], [9]
    assert ds.val.img2txt == [[0, 1, 2], [3], [4, 5, 6, 7, 8]]
    assert ds.test.img2txt == [[0, 1], [2, 3, 4, 5, 6, 7, 8], [9]]
    assert ds.test.txt2img.tolist() == [0, 0, 1, 1, 1, 1, 1, 1, 1, 2]
    # interleaved train entries are grouped by image, in first-seen order, captions normalized
    assert ds.train.image_names == image_names("train", 4)
    assert ds.train.img2txt == [[0, 1], [2, 3, 4], [5], [6, 7]]
    assert ds.train.captions[2:5] == [normalize_caption(c) for c in written["train"][1]]
    batch = ds.test.images.get_batch(torch.tensor([2, 0]))
    assert batch.shape == (2, 3, 16, 16) and batch.dtype == torch.float32


@pytest.mark.skipif(not (KARPATHY / "coco_karpathy_test.json").is_file(), reason="real Karpathy files absent")
def test_real_coco_test_file_counts(tmp_path):
    """5,000 images and 25,010 captions, ten images with six: the maps keep every caption."""
    path = KARPATHY / "coco_karpathy_test.json"
    raw = json.loads(path.read_text())
    one = write_image(tmp_path / "one.jpg", seed=0, size=(4, 4))
    for entry in raw:                                   # every image path -> the same tiny JPEG
        target = tmp_path / "images" / entry["image"]
        target.parent.mkdir(parents=True, exist_ok=True)
        os.symlink(one, target)
    split = build_split(read_karpathy_json(path), tmp_path / "images",
                        data_cfg("data.cache_images=false", size=8), tmp_path / "cache", "test")
    assert split.n_images == 5000 and len(split.captions) == 25010
    assert [len(c) for c in split.img2txt] == [len(e["caption"]) for e in raw]
    assert collections.Counter(len(c) for c in split.img2txt) == {5: 4990, 6: 10}
    assert torch.equal(torch.bincount(split.txt2img), torch.tensor([len(e["caption"]) for e in raw]))


# ---------------------------------------------------------------- transforms and the cache
def test_test_transform_is_resize_and_clip_normalization():
    img = torch.full((3, 30, 50), 0, dtype=torch.uint8)
    img[0], img[1], img[2] = 255, 128, 0
    out = ImageTransform(12)(img, train=False)
    assert out.shape == (3, 12, 12)
    expected = (torch.tensor([255, 128, 0]) / 255.0 - torch.tensor(CLIP_MEAN)) / torch.tensor(CLIP_STD)
    torch.testing.assert_close(out.mean(dim=(1, 2)), expected.float(), atol=1e-5, rtol=0)


def test_train_transform_augments_and_no_aug_turns_it_off():
    torch.manual_seed(0)
    img = torch.randint(0, 256, (3, 40, 40), dtype=torch.uint8)
    train = ImageTransform(16, augment=True)
    outs = [train(img, train=True) for _ in range(4)]
    assert all(o.shape == (3, 16, 16) for o in outs)
    assert any(not torch.equal(outs[0], o) for o in outs[1:])          # random crops / flips / ops
    plain = ImageTransform(16, augment=False)
    torch.testing.assert_close(plain(img, train=True), plain(img, train=False))
    torch.testing.assert_close(train(img, train=False), plain(img, train=False))


def test_cached_pixels_equal_decoded_files_and_are_reused(tmp_path, monkeypatch):
    write_karpathy(tmp_path, {"train": [1] * 5, "val": [2, 2], "test": [1, 1]})
    cfg = data_cfg(*karpathy_overrides(tmp_path))
    cached = build_dataset(cfg, tmp_path / "cache")
    assert isinstance(cached.train.images, DecodedImages)
    files = build_dataset(data_cfg(*karpathy_overrides(tmp_path), "data.cache_images=false"),
                          tmp_path / "nocache")
    assert isinstance(files.train.images, FileImages)
    idx = torch.arange(5)
    torch.testing.assert_close(cached.train.images.get_batch(idx), files.train.images.get_batch(idx))

    def no_decoding(path, size=None):
        raise AssertionError(f"decoded {path} although the cache holds it")
    monkeypatch.setattr(images_module, "decode_image", no_decoding)
    again = build_dataset(cfg, tmp_path / "cache")
    assert torch.equal(again.train.images.pixels, cached.train.images.pixels)
    # a changed file changes the key: that split is decoded again
    path = tmp_path / "images" / again.train.image_names[0]
    os.utime(path, ns=(1, 1))
    with pytest.raises(AssertionError, match="decoded"):
        build_dataset(cfg, tmp_path / "cache")


# ---------------------------------------------------------------- bad and caption-less images
@pytest.fixture
def bad_folder(tmp_path):
    """Six train images, three of them bad: #2 a truncated JPEG, #3 missing, #4 text named .jpg."""
    write_karpathy(tmp_path, {"train": [2] * 6, "val": [1, 1], "test": [1, 1]})
    names = image_names("train", 6)
    root = tmp_path / "images"
    truncate(write_image(root / names[2], seed=7, size=(256, 256)))              # a JPEG cut short
    (root / names[3]).unlink()                                                # missing (PNG)
    (root / names[4]).write_text("not an image")                              # .jpg that is text
    return tmp_path, [root / names[2], root / names[3], root / names[4]]


def test_bad_image_is_one_error_naming_the_file(bad_folder):
    tmp_path, (truncated, missing, text) = bad_folder
    with pytest.raises(UserError) as err:
        build_dataset(data_cfg(*karpathy_overrides(tmp_path)), tmp_path / "cache")
    message = str(err.value)
    assert "\n" not in message and str(missing) in message and "is missing" in message
    write_image(missing, seed=3)                            # now only the truncated + text files
    with pytest.raises(UserError, match=r"truncated.*1 more bad image"):
        build_dataset(data_cfg(*karpathy_overrides(tmp_path)), tmp_path / "cache")


def test_skip_bad_images_drops_and_counts_them(bad_folder, caplog):
    tmp_path, bad = bad_folder
    caplog.set_level(logging.WARNING)
    ds = build_dataset(data_cfg(*karpathy_overrides(tmp_path), "data.skip_bad_images=true"),
                       tmp_path / "cache")
    assert ds.train.n_images == 3 and len(ds.train.captions) == 6
    assert ds.train.image_names == [n for i, n in enumerate(image_names("train", 6)) if i not in (2, 3, 4)]
    assert ds.train.img2txt == [[0, 1], [2, 3], [4, 5]]
    assert "train split: skipped 3 unreadable images" in caplog.text
    # the cache remembers what was skipped: a later run without skipping is refused, not
    # silently given the smaller split
    truncated, missing, text = bad
    write_image(missing, seed=3)
    cfg = data_cfg(*karpathy_overrides(tmp_path), "data.skip_bad_images=true")
    assert build_dataset(cfg, tmp_path / "cache").train.n_images == 4
    with pytest.raises(UserError, match=r"train_002.jpg' is truncated.*\(1 more bad image"):
        build_dataset(data_cfg(*karpathy_overrides(tmp_path)), tmp_path / "cache")


def test_caption_less_image_is_left_out_and_a_blank_caption_refused(tmp_path, caplog):
    write_karpathy(tmp_path, {"train": [1] * 3, "val": [2, 1, 1], "test": [1, 1]})
    val = json.loads((tmp_path / "ann" / "val.json").read_text())
    val[1]["caption"] = []
    val[2]["caption"] = ["?!"]                         # normalizes to nothing
    (tmp_path / "ann" / "val.json").write_text(json.dumps(val))
    caplog.set_level(logging.WARNING)
    with pytest.raises(UserError, match=r"val: 1 blank captions, first: val/val_002.jpg caption ''"):
        build_dataset(data_cfg(*karpathy_overrides(tmp_path)), tmp_path / "cache")
    assert "1 images have no caption" in caplog.text
    ds = build_dataset(data_cfg(*karpathy_overrides(tmp_path), "data.accept=[blank_captions]"),
                       tmp_path / "cache")
    assert ds.val.image_names == [val[0]["image"]] and ds.val.img2txt == [[0, 1]]
    assert ds.checks["blank_captions"] == [{"split": "val", "count": 1,
                                            "examples": ["val/val_002.jpg caption ''"]}]


def test_file_vanishing_during_training_is_one_line_from_a_worker(tmp_path):
    """A DataLoader worker's decoding error reaches the caller as one line naming the file."""
    from vldistill.algorithms.training import pair_batches
    write_karpathy(tmp_path, {"train": [1] * 4, "val": [1, 1], "test": [1, 1]})
    ds = build_dataset(data_cfg(*karpathy_overrides(tmp_path), "data.cache_images=false"),
                       tmp_path / "cache")
    gone = tmp_path / "images" / ds.train.image_names[1]
    gone.unlink()
    with pytest.raises(BadImageError) as err:
        for _ in pair_batches(ds.train, torch.zeros(4, 3), batch_size=4, seed=0, num_workers=1):
            pass
    assert str(err.value).startswith(f"image '{gone}' cannot be decoded") and "\n" not in str(err.value)


# ---------------------------------------------------------------- COCO captions (pycocotools)
def write_coco(tmp_path, caption_counts: list[int]) -> list[int]:
    """captions_train2014.json with image ids 101.. and their files under train2014/."""
    ids = [101 + i for i in range(len(caption_counts))]
    pool = iter(caption_pool(sum(caption_counts)))
    images, annotations = [], []
    for image_id, count in zip(ids, caption_counts):
        name = f"COCO_train2014_{image_id:012d}.jpg"
        write_image(tmp_path / "coco" / "train2014" / name, seed=image_id)
        images.append({"id": image_id, "file_name": name, "height": 32, "width": 40})
        annotations += [{"id": 1000 * image_id + k, "image_id": image_id, "caption": next(pool)}
                        for k in range(count)]
    (tmp_path / "ann").mkdir(exist_ok=True)
    (tmp_path / "ann" / "captions_train2014.json").write_text(
        json.dumps({"images": images, "annotations": annotations, "info": {}, "licenses": []}))
    return ids


def test_coco_captions_through_pycocotools(tmp_path, caplog):
    ids = write_coco(tmp_path, [5, 2, 6, 0, 3, 1, 4])
    (tmp_path / "ann" / "val_ids.txt").write_text(f"{ids[4]}\n{ids[3]}\n")
    (tmp_path / "ann" / "test_ids.json").write_text(json.dumps([ids[5], ids[6]]))
    base = ["data.name=coco", f"data.image_root={tmp_path / 'coco'}", f"data.ann_root={tmp_path / 'ann'}",
            "data.train_json=captions_train2014.json", f"data.train_ids=[{ids[2]},{ids[0]},{ids[1]}]",
            "data.val_ids=val_ids.txt"]
    caplog.set_level(logging.WARNING)
    ds = build_dataset(data_cfg(*base, "data.test_ids=test_ids.json"), tmp_path / "cache")
    assert ds.train.image_names == [f"train2014/COCO_train2014_{i:012d}.jpg" for i in (ids[2], ids[0], ids[1])]
    assert [len(c) for c in ds.train.img2txt] == [6, 5, 2]
    assert ds.val.n_images == 1 and [len(c) for c in ds.val.img2txt] == [3]     # id 104 has none
    assert "1 images have no caption" in caplog.text
    assert ds.test.txt2img.tolist() == [0, 1, 1, 1, 1]
    with pytest.raises(UserError, match=r"1 image ids are not in this file \(first: \[999\]\)"):
        build_dataset(data_cfg(*base, "data.test_ids=[999]"), tmp_path / "cache")
    with pytest.raises(UserError, match="data.test_ids must say which"):
        build_dataset(data_cfg(*base), tmp_path / "cache")


def check_dataset_builds(name: str, folder) -> None:
    """The registered dataset's own tiny example (`example=`, files written to `folder`; without
    one, `data.name=NAME`) builds three splits whose maps, captions and images agree."""
    example = DATASETS.example(name, folder)
    ds = build_dataset(data_cfg(*(example or [f"data.name={name}"])), folder / "cache")
    for split in (ds.train, ds.val, ds.test):
        assert split.n_images > 0 and len(split.captions) >= split.n_images
        owners = split.txt2img.tolist()
        assert sorted(j for caps in split.img2txt for j in caps) == list(range(len(split.captions)))
        assert all(owners[j] == i for i, caps in enumerate(split.img2txt) for j in caps)
        assert all(normalize_caption(c) == c for c in split.captions)
        images = split.images.get_batch(torch.arange(split.n_images))
        assert images.shape == (split.n_images, 3, 16, 16) and torch.isfinite(images).all()
        split.truth()       # where the dataset knows it: checked there (shape, each caption true of its image)


@pytest.mark.parametrize("name", DATASETS.names())
def test_every_registered_dataset_builds_three_consistent_splits(name, tmp_path):
    check_dataset_builds(name, tmp_path)


# ---------------------------------------------------------------- bring your own folder
def test_folder_csv_jsonl_grouping_and_hold_out(tmp_path):
    root = tmp_path / "photos"
    names = [f"p{i}.jpg" for i in range(10)]
    for i, name in enumerate(names):
        write_image(root / name, seed=i)
    rows = ["image,caption"] + [f'{name},"a photo, number {i}"' for i, name in enumerate(names)]
    rows += [f"{names[0]},the first photo again"]
    (root / "captions.csv").write_text("\n".join(rows) + "\n")
    cfg = data_cfg("data.name=folder", f"data.image_root={root}", "data.train_json=captions.csv",
                   "data.val_fraction=0.2", "data.test_fraction=0.2")
    ds = build_dataset(cfg, tmp_path / "cache")
    splits = [ds.train.image_names, ds.val.image_names, ds.test.image_names]
    assert [len(s) for s in splits] == [6, 2, 2]
    assert sorted(sum(splits, [])) == sorted(names)                       # disjoint, complete
    assert ds.name == "folder:photos"
    both = ds.train if names[0] in ds.train.image_names else ds.val if names[0] in ds.val.image_names else ds.test
    i = both.image_names.index(names[0])
    assert [both.captions[j] for j in both.img2txt[i]] == ["a photo number 0", "the first photo again"]
    assert build_dataset(cfg, tmp_path / "cache").test.image_names == ds.test.image_names   # seeded
    # the same captions as JSON Lines, with explicit val/test files
    lines = [json.dumps({"image": n, "caption": f"photo {i}"}) for i, n in enumerate(names)]
    (root / "train.jsonl").write_text("\n".join(lines[:6]))
    (root / "val.jsonl").write_text("\n".join(lines[6:8]))
    (root / "test.jsonl").write_text("\n".join(lines[8:]))
    ds = build_dataset(data_cfg("data.name=folder", f"data.image_root={root}", "data.train_json=train.jsonl",
                                "data.val_json=val.jsonl", "data.test_json=test.jsonl"), tmp_path / "cache")
    assert ds.test.image_names == names[8:] and ds.test.captions == ["photo 8", "photo 9"]


def test_folder_csv_with_wrong_column_count_names_the_row(tmp_path):
    write_image(tmp_path / "a.jpg", seed=0)
    (tmp_path / "c.csv").write_text("a.jpg,one caption\na.jpg,two,unquoted commas\n")
    with pytest.raises(UserError, match=r"c.csv: row 2 has 3 columns"):
        build_dataset(data_cfg("data.name=folder", f"data.image_root={tmp_path}", "data.train_json=c.csv"),
                      tmp_path / "cache")


# ---------------------------------------------------------------- the "Done means" runs
TINY_RUN = ["data.image_size=32", "model.image_tower=convnet", "model.convnet_width=8",
            "model.convnet_depth=2", "model.pretrained_path=null", "model.text_tower=minilm",
            "buffer.num_experts=1", "buffer.epochs=2", "buffer.batch_size=8", "buffer.dir=null",
            "distill.n_pairs=6", "distill.mini_batch=3", "distill.rank=2", "distill.syn_steps=2",
            "distill.iterations=2", "distill.max_start_epoch=1", "distill.checkpoint_every=1",
            "eval.num_eval=1", "eval.epochs=2", "eval.val_every=1", "eval.batch_size=4",
            "eval.methods=[lors,lors-identity,random]", "data.num_workers=0", "distill.eval_every=0",
            # the paper's lrs are for NFNet at 224 px; a tiny random ConvNet needs tiny.yaml's
            "distill.lr_img=1000", "distill.lr_txt=1", "distill.lr_lr=1e-5", "distill.lr_sim=0.1"]


# (n_pairs, mini_batch, max_start_epoch, lr_img, lr_sim, rank, alpha, merge_branches,
#  inner-loop logit scale, iterations, eval_it) as in the reference's sh/distill_{flickr,coco}_lors_*.sh
# (silicx/LoRS_Distill); --temperature 0.1 of coco 500 scales the matching steps only
REFERENCE = {
    "flickr30k_lors_100": (99, 20, 2, 100, 10, 10, 3, False, None, 3000, 50),
    "flickr30k_lors_200": (199, 20, 2, 1000, 10, 5, 1, False, None, 3000, 50),
    "flickr30k_lors_500": (499, 40, 3, 1000, 100, 20, 0.01, False, None, 3000, 300),
    "coco_lors_100": (99, 20, 2, 1000, 5, 10, 1, True, None, 3000, 50),
    "coco_lors_200": (199, 20, 2, 1000, 50, 20, 1, True, None, 2000, 50),
    "coco_lors_500": (499, 30, 2, 5000, 500, 40, 1, True, 10.0, 3000, 50),
}
VLDISTILL = [f"{dataset}_vldistill_{size}" for dataset in ("flickr30k", "coco") for size in (100, 200, 500)]
REPBLEND = [f"{dataset}_repblend_{size}" for dataset in ("flickr30k", "coco") for size in (100, 200, 500)]


@pytest.mark.parametrize("config", sorted(REFERENCE))
def test_lors_paper_configs_carry_the_reference_hyperparameters(config):
    cfg = load_config(f"configs/{config}.yaml")
    d = cfg.distill
    got = (d.n_pairs, d.mini_batch, d.max_start_epoch, d.lr_img, d.lr_sim, d.rank, d.alpha,
           d.merge_branches, d.logit_scale, d.iterations, d.eval_every)
    assert got == REFERENCE[config]
    assert (d.lr_txt, d.lr_lr, d.lr_teacher, d.syn_steps, d.expert_epochs) == (d.lr_img, 0.01, 0.1, 8, 1)
    assert (d.loss, d.sim_kind, cfg.model.image_tower, cfg.data.image_size) == ("wbce", "lowrank", "timm:nfnet_l0", 224)
    assert cfg.fidelity == "reference" and cfg.model.temperature == 0.07 and not cfg.data.no_aug
    assert d.init_augment is (config != "coco_lors_500")            # --no_aug: the init only
    buffer = load_config(f"configs/buffer_{config.split('_')[0]}.yaml")
    assert (buffer.buffer.num_experts, buffer.buffer.epochs, buffer.model.text_tower) == (
        20, 10, "hf:checkpoints/bert-base-uncased")
    assert cfg.buffer.dir == buffer.buffer.dir and cfg.model == buffer.model      # one store per dataset
    assert buffer.fidelity == "reference" and buffer.buffer.text_dropout and buffer.buffer.drop_last


@pytest.mark.parametrize("config", VLDISTILL)
def test_vl_distill_configs_are_its_readme_command_on_the_same_experts(config):
    from vldistill.evaluation.methods import method_config
    run = load_config(f"configs/{config}.yaml")
    cfg = method_config(run, "vl-distill")
    d, size = cfg.distill, int(config.rsplit("_", 1)[1])
    assert (d.n_pairs, d.syn_steps, d.expert_epochs, d.max_start_epoch, d.lr_img, d.lr_txt, d.lr_lr,
            d.mini_batch, d.iterations) == (size, 8, 1, 2, 1000, 1000, 0.01, 100, 50000)
    assert (d.matching, d.sim_kind, d.loss, d.batch_draw) == ("unroll", "identity", "infonce", "fresh")
    assert d.logit_scale == pytest.approx(math.log(1 / 0.07)) and not d.merge_branches
    e = cfg.eval
    assert (e.epochs, e.lr_drop_epoch, e.batch_size, e.shared_lr, e.selection) == (51, 51, 64, True, "final")
    assert run.eval.methods[0] == "vl-distill" and "lors" not in run.eval.methods
    buffer = load_config(f"configs/buffer_{config.split('_')[0]}.yaml")
    assert run.buffer.dir == buffer.buffer.dir and run.model == buffer.model       # the same experts


@pytest.mark.parametrize("config", sorted(REFERENCE) + VLDISTILL + REPBLEND)
def test_every_paper_config_runs_in_reference_mode_on_a_tiny_fixture(config, tmp_path, cache_dir):
    from vldistill.cli import main
    write_karpathy(tmp_path, {"train": [2] * 12, "val": [5, 5, 5], "test": [5, 6, 5]})
    run_dir = tmp_path / "run"
    bert = make_tiny_bert(tmp_path / "bert", caption_pool(200))        # stands in for bert-base-uncased
    method = {"vldistill": "vl-distill", "repblend": "repblend"}.get(config.split("_")[1], "lors")
    code = main(["run", f"configs/{config}.yaml", f"data.image_root={tmp_path / 'images'}",
                 f"data.ann_root={tmp_path / 'ann'}", "data.train_json=train.json",
                 "data.val_json=val.json", "data.test_json=test.json", f"run_dir={run_dir}",
                 f"cache_dir={cache_dir}", *TINY_RUN, f"model.text_tower=hf:{bert}",
                 f"eval.methods=[{method},random]"])
    assert code == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["dataset"] == "karpathy" and set(results["methods"]) == {method, "random"}
    resolved = load_config(run_dir / "config.yaml")
    assert resolved.fidelity == "reference" and resolved.data.name == "karpathy"
    assert (resolved.buffer.text_dropout, resolved.data.caption_cleaner, resolved.eval.selection) == (
        True, "reference", "test")                                  # the reference's settings ran
    assert resolved.model.text_tower == f"hf:{bert}" and resolved.distill.n_pairs == 6


def test_bring_your_own_folder_as_documented(tmp_path, cache_dir):
    """The README's worked example: a folder and a two-column CSV, nothing else."""
    from vldistill.cli import main
    photos = tmp_path / "my_photos"
    names = [f"img_{i:02d}.jpg" for i in range(16)]
    pool = caption_pool(32)
    for i, name in enumerate(names):
        write_image(photos / name, seed=i)
    (photos / "captions.csv").write_text("image,caption\n" + "".join(
        f'{name},"{pool[2 * i]}"\n{name},"{pool[2 * i + 1]}"\n' for i, name in enumerate(names)))
    run_dir = tmp_path / "run"
    code = main(["run", "configs/folder.yaml", f"data.image_root={photos}", f"run_dir={run_dir}",
                 f"cache_dir={cache_dir}", *TINY_RUN])
    assert code == 0
    results = json.loads((run_dir / "results.json").read_text())
    assert results["dataset"] == "folder:my_photos" and results["n_pairs"] == 6
