"""The captioned data people already hold: one tiny dataset written as Karpathy JSON, JSON Lines,
a two-column CSV, a Hugging Face imagefolder, a `datasets` save_to_disk folder and load_dataset
cache, open_clip's CSV and webdataset shards must give the same (image pixels, captions) pairs in the same order;
shards are checked as they are read, read back by their index (in workers too), and a run on
shards makes the same set as a run on the folder."""
from __future__ import annotations

import io
import json
import logging
import pickle

import pytest
import torch
from fixtures_formats import FORMATS, SPLITS, encode, make_tiny, write_format, write_shard

from vldistill.configio import load_config
from vldistill.data import build_dataset, shards as shards_module
from vldistill.data.images import ImageTransform, decode_image
from vldistill.data.splits import normalize_caption, ordered_batches
from vldistill.errors import UserError

SIZE = 16


def data_cfg(*overrides: str):
    return load_config(None, [f"data.image_size={SIZE}", *overrides]).data


def pairs(split) -> tuple[torch.Tensor, list[list[str]]]:
    """A split's images (test transform, index order) and each image's captions."""
    return split.images.get_batch(torch.arange(split.n_images)), [[split.captions[j] for j in caps]
                                                                  for caps in split.img2txt]


def expected(items) -> tuple[torch.Tensor, list[list[str]]]:
    """What any reader must make of (name, bytes, captions) items: decoded by PIL, resized, CLIP-normalized."""
    transform = ImageTransform(SIZE, augment=False)
    images = torch.stack([transform(decode_image(io.BytesIO(data), SIZE)) for _, data, _ in items])
    return images, [[normalize_caption(c) for c in caps] for _, _, caps in items]


@pytest.fixture(scope="module")
def tiny():
    return make_tiny()


@pytest.mark.parametrize("cache_images", [True, False], ids=["cached", "from-store"])
@pytest.mark.parametrize("fmt", sorted(FORMATS))
def test_every_format_yields_the_same_pairs_in_order(fmt, cache_images, tiny, tmp_path):
    ds = build_dataset(data_cfg(*write_format(fmt, tiny, tmp_path / fmt), f"data.cache_images={cache_images}"),
                       tmp_path / "cache")
    for split in SPLITS:
        images, captions = pairs(getattr(ds, split))
        want_images, want_captions = expected(tiny.splits[split])
        assert captions == want_captions, (fmt, split)
        assert torch.equal(images, want_images), (fmt, split)


@pytest.mark.parametrize("fmt", sorted(set(FORMATS) - {"csv", "hf-cache"}))
def test_held_out_splits_are_the_same_draw_in_every_format(fmt, tiny, tmp_path):
    """Only a train file / split / shard set: val and test are the same seeded draw of images.
    (hf-cache is left out: an imagefolder with one metadata file becomes a row per caption.)"""
    def held_out(name: str):
        overrides = write_format(name, tiny, tmp_path / name, splits=("train",))
        return build_dataset(data_cfg(*overrides, "data.val_fraction=0.25", "data.test_fraction=0.25",
                                      "data.split_seed=3"), tmp_path / "cache")
    reference, other = held_out("csv"), held_out(fmt)
    for split in SPLITS:
        ref_images, ref_captions = pairs(getattr(reference, split))
        images, captions = pairs(getattr(other, split))
        assert captions == ref_captions and torch.equal(images, ref_images), split
    assert [reference.train.n_images, reference.val.n_images, reference.test.n_images] == [8, 4, 4]


def test_column_names_are_options_and_a_wrong_one_is_one_line(tiny, tmp_path):
    overrides = write_format("openclip", tiny, tmp_path)
    for path in tmp_path.glob("*.csv"):                       # open_clip --csv-img-key img --csv-caption-key cap
        path.write_text(path.read_text().replace("filepath\ttitle", "img\tcap", 1))
    with pytest.raises(UserError) as err:
        build_dataset(data_cfg(*overrides), tmp_path / "cache")
    assert "no column 'filepath' and 'title'" in str(err.value) and "'img', 'cap'" in str(err.value)
    assert "\n" not in str(err.value)
    ds = build_dataset(data_cfg(*overrides, "data.image_key=img", "data.caption_key=cap"), tmp_path / "cache")
    assert pairs(ds.test)[1] == expected(tiny.splits["test"])[1]


def test_hugging_face_data_without_the_named_parts_is_one_line(tiny, tmp_path):
    overrides = write_format("hf", tiny, tmp_path / "saved")
    with pytest.raises(UserError, match=r"no column 'text' \(its columns: image, caption, sentids\): set "
                                        r"data.image_key and data.caption_key$"):
        build_dataset(data_cfg(*overrides, "data.caption_key=text"), tmp_path / "cache")
    (tmp_path / "empty").mkdir()
    with pytest.raises(UserError, match="no metadata.jsonl or metadata.csv in data.image_root"):
        build_dataset(data_cfg("data.name=imagefolder", f"data.image_root={tmp_path / 'empty'}"), tmp_path / "cache")
    with pytest.raises(UserError, match="is neither a save_to_disk folder"):
        build_dataset(data_cfg("data.name=hf", f"data.image_root={tmp_path / 'empty'}"), tmp_path / "cache")


def test_shard_patterns_must_be_quoted_and_the_error_says_how():
    from vldistill.config import ConfigError
    with pytest.raises(ConfigError, match=r"""quote it, e.g. 'data.train_json="\{00000..00099\}.tar"'$"""):
        load_config(None, ["data.name=webdataset", "data.train_json={00000..00099}.tar"])
    assert load_config(None, ['data.train_json="{00000..00099}.tar"']).data.train_json == "{00000..00099}.tar"
    with pytest.raises(ConfigError, match="data.csv_separator must be one character"):
        load_config(None, ["data.csv_separator=ab"])


# ---------------------------------------------------------------- shards
def test_bad_shard_sample_is_one_line_naming_shard_and_key_or_is_skipped(tmp_path, caplog):
    items = [(f"{k}.jpg", encode(k, "JPEG"), [f"photo number {k}"]) for k in range(8)]
    items[2] = ("2.jpg", items[2][1][:len(items[2][1]) // 2], items[2][2])          # cut short
    items[4] = ("4.jpg", b"not an image", items[4][2])
    write_shard(tmp_path / "00000.tar", items[:6], 0)
    write_shard(tmp_path / "00001.tar", items[6:7], 6)
    write_shard(tmp_path / "00002.tar", items[7:], 7)
    overrides = ["data.name=webdataset", f"data.image_root={tmp_path}", "data.val_json=00001.tar",
                 "data.test_json=00002.tar"]
    with pytest.raises(UserError) as err:
        build_dataset(data_cfg(*overrides), tmp_path / "cache")
    message = str(err.value)
    assert message.startswith(f"image '{tmp_path / '00000.tar'}:000000002.jpg' ")      # shard and member
    assert "truncated" in message.lower()
    assert message.endswith("(1 more bad images in this split)") and "\n" not in message
    caplog.set_level(logging.WARNING)
    ds = build_dataset(data_cfg(*overrides, "data.skip_bad_images=true"), tmp_path / "cache")
    assert ds.train.image_names == [f"00000.tar:{k:09d}" for k in (0, 1, 3, 5)]
    assert ds.train.captions == [f"photo number {k}" for k in (0, 1, 3, 5)]
    assert "train split: skipped 2 unreadable images" in caplog.text


def test_an_unreadable_shard_is_one_line(tmp_path):
    (tmp_path / "00000.tar").write_bytes(b"\x1f\x8b" + b"gzip, not a tar" * 40)
    with pytest.raises(UserError, match=r"shard '.*00000.tar' cannot be read as an uncompressed tar"):
        build_dataset(data_cfg("data.name=webdataset", f"data.image_root={tmp_path}"), tmp_path / "cache")


def test_shards_are_indexed_not_held_and_read_back_in_workers(tiny, tmp_path):
    ds = build_dataset(data_cfg(*write_format("webdataset", tiny, tmp_path / "shards"), "data.cache_images=false",
                                "data.num_workers=2"), tmp_path / "cache")
    source = ds.train.images
    shipped = pickle.dumps(source)                          # what each DataLoader worker gets
    assert not any(data[-64:] in shipped for _, data, _ in tiny.splits["train"])       # no image bytes
    want, _ = expected(tiny.splits["train"])
    order = torch.tensor([9, 0, 15, 3, 3])                  # any order: a shuffled mini-batch
    assert torch.equal(source.get_batch(order), want[order])
    assert torch.equal(torch.cat(list(ordered_batches(source, 5))), want)      # 2 workers, in order


def test_shard_pass_is_cached_per_shard(tiny, tmp_path, monkeypatch):
    overrides = data_cfg(*write_format("webdataset", tiny, tmp_path / "shards"))
    build_dataset(overrides, tmp_path / "cache")
    read = []
    real = shards_module.scan_shard
    monkeypatch.setattr(shards_module, "scan_shard", lambda shard, *a: read.append(shard) or real(shard, *a))
    build_dataset(overrides, tmp_path / "cache")
    assert read == []                                       # no shard read again
    write_shard(tmp_path / "shards" / "00001.tar", tiny.splits["train"][8:], 8)      # rewritten
    build_dataset(overrides, tmp_path / "cache")
    assert [p.rsplit("/", 1)[1] for p in read] == ["00001.tar"]


def test_webdataset_caption_rules(tmp_path):
    """txt member first; else the .json's field named by caption_key, else its caption field."""
    import webdataset as wds
    jpg = encode(0, "JPEG")
    with wds.TarWriter(str(tmp_path / "00000.tar"), encoder=False) as writer:
        writer.write({"__key__": "a", "jpg": jpg, "txt": b"from the txt", "json": b'{"caption": "from json"}'})
        writer.write({"__key__": "b", "png": encode(1, "PNG"), "json": json.dumps({"caption": "json caption"}).encode()})
        writer.write({"__key__": "c", "webp": jpg, "json": b'{"alt": "alt text", "caption": "other"}'})
    scanned = shards_module.scan_shard(str(tmp_path / "00000.tar"), ["jpg", "png", "webp"], "txt")
    assert [(s[0], s[1], s[4]) for s in scanned] == [("a", "a.jpg", ["from the txt"]), ("b", "b.png", ["json caption"]),
                                                     ("c", "c.webp", ["other"])]
    assert shards_module.scan_shard(str(tmp_path / "00000.tar"), ["jpg"], "alt")[2][4] == ["alt text"]
    assert shards_module.scan_shard(str(tmp_path / "00000.tar"), ["jpg"], "alt")[1][5] == "has no jpg member"


# ---------------------------------------------------------------- a whole run
RUN = ["data.image_size=16", "model.image_tower=convnet", "model.convnet_width=8", "model.convnet_depth=2",
       "model.text_tower=minilm", "buffer.num_experts=1", "buffer.epochs=2", "buffer.batch_size=5",
       "distill.n_pairs=6", "distill.mini_batch=3", "distill.rank=2", "distill.syn_steps=2",
       "distill.iterations=2", "distill.max_start_epoch=1", "distill.checkpoint_every=1", "distill.eval_every=0",
       "eval.num_eval=1", "eval.epochs=1", "eval.val_every=1", "eval.batch_size=4", "eval.methods=[lors]"]


def test_a_run_on_shards_makes_the_set_a_run_on_the_folder_makes(tiny, tmp_path, cache_dir):
    """The shard form holds the same images and captions in the same order, so the experts'
    shuffled mini-batches (read through the shard index, in a worker, no pixel cache), the real
    pairs the set starts from and every distillation step are the same draws as from the folder:
    the sets must be equal bit for bit, and so must the evaluation."""
    from safetensors.torch import load_file

    from vldistill.cli import main
    runs = {}
    for fmt, extra in (("csv", []), ("webdataset", ["data.cache_images=false", "data.num_workers=1"])):
        run_dir = tmp_path / f"run-{fmt}"
        assert main(["run", "configs/tiny.yaml", *write_format(fmt, tiny, tmp_path / fmt), *RUN, *extra,
                     f"run_dir={run_dir}", f"cache_dir={cache_dir}"]) == 0
        runs[fmt] = (load_file(run_dir / "set.safetensors"), json.loads((run_dir / "results.json").read_text()))
    (folder_set, folder_results), (shard_set, shard_results) = runs["csv"], runs["webdataset"]
    assert folder_set.keys() == shard_set.keys()
    assert all(torch.equal(folder_set[k], shard_set[k]) for k in folder_set)
    assert folder_results["methods"] == shard_results["methods"]
    assert (folder_results["dataset"], shard_results["dataset"]) == ("folder:csv", "webdataset:webdataset")
