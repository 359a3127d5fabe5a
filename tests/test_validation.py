"""Inputs that get clear errors: every user mistake below ends the CLI with exit code 2 and one
line that names the key, file or field at fault (no traceback); nothing is ever unpickled."""
from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import pytest
import torch

from fixtures_real import image_names, karpathy_overrides, truncate, write_image, write_karpathy
from reliability_helpers import FAST, REPO, TINY, copy_store, run_cli, tiny_store
from vldistill.config import ConfigError
from vldistill.configio import load_config
from vldistill.errors import UserError

# ---------------------------------------------------------------- config values


@pytest.mark.parametrize("override, expected", [
    ("distill.rnak=3", "unknown config key 'distill.rnak'; did you mean 'distill.rank'?"),
    ("sed=1", "unknown config key 'sed'; did you mean 'seed'?"),
    ("distill.rank=abc", "'distill.rank': Value 'abc' of type 'str' could not be converted to Integer"),
    ("distill.resume=maybe", "'distill.resume': Value 'maybe' is not a valid bool"),
    ("distill.iterations=1.5", "'distill.iterations': Value '1.5' of type 'float' could not be converted"),
    ("data=3", "override 'data=3': Merge error: int is not a subclass of DataConfig"),
    ("distill.rank=30", "distill.rank (30) must be <= distill.n_pairs (20)"),
    ("distill.mini_batch=50", "distill.mini_batch (50) must be <= distill.n_pairs (20)"),
    ("distill.syn_steps=0", "distill.syn_steps must be > 0, got 0"),
    ("distill.max_start_epoch=3", "distill.max_start_epoch - 1 + distill.expert_epochs = 3 exceeds buffer.epochs = 2"),
    ("distill.lr_img=-1", "distill.lr_img must be >= 0, got -1.0"),
    ("distill.lr_lr=-1e-5", "distill.lr_lr must be >= 0"),
    ("distill.lr_teacher=-0.1", "distill.lr_teacher must be > 0, got -0.1"),
    ("buffer.lr_teacher=-1", "buffer.lr_teacher must be >= 0"),
    ("eval.lr=-1", "eval.lr must be > 0"),
    ("distill.max_lr=0.05", "distill.max_lr (0.05) must be > distill.lr_teacher (0.1)"),
    ("distill.lr_teacher=1e-5", "distill.lr_teacher (1e-05) is below distill.min_lr"),
    ("distill.lr_param=exp", "distill.lr_param must be one of linear, log; got 'exp'"),
    ("threads=-1", "threads must be >= 0"),
    ("device=tpu", "device must be auto, cpu, cuda or cuda:N"),
])
def test_config_mistake_is_one_line_naming_the_key(override, expected):
    with pytest.raises(ConfigError) as caught:
        load_config(TINY, [override])
    message = str(caught.value)
    assert expected in message and "\n" not in message


def test_broken_yaml_file_is_one_line(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("distill:\n  rank: 4\n   n_pairs: 20\n")
    with pytest.raises(ConfigError, match=r"bad.yaml' is not valid YAML: mapping values are not allowed") as caught:
        load_config(bad)
    assert "\n" not in str(caught.value)


def test_config_error_through_the_cli_exits_2_without_traceback(tmp_path, capsys):
    code = __import__("vldistill.cli", fromlist=["main"]).main(
        ["distill", str(TINY), f"run_dir={tmp_path}", "distill.mini_batch=50"])
    err = capsys.readouterr().err
    assert code == 2 and "Traceback" not in err
    assert err.strip() == "vldistill: error: distill.mini_batch (50) must be <= distill.n_pairs (20)"


# ---------------------------------------------------------------- paths and data files
def _karpathy(tmp_path: Path) -> Path:
    write_karpathy(tmp_path, {"train": [2] * 4, "val": [1, 1], "test": [1, 1]})
    return tmp_path


def _malformed_json(root: Path) -> str:
    (root / "ann" / "train.json").write_text('[{"image": "train/train_000.jpg", "caption": ')
    return "train.json: not valid JSON"


def _caption_not_string(root: Path) -> str:
    val = json.loads((root / "ann" / "val.json").read_text())
    val[1]["caption"] = ["a dog", 7]
    (root / "ann" / "val.json").write_text(json.dumps(val))
    return "val.json: record 1 (val/val_001.png): caption must be a string or a list of strings"


def _missing_image(root: Path) -> str:
    (root / "images" / image_names("train", 4)[1]).unlink()
    return "train_001.png' is missing"


def _truncated_image(root: Path) -> str:
    truncate(write_image(root / "images" / image_names("train", 4)[2], seed=1, size=(256, 256)))
    return "train_002.jpg' is truncated"


def _not_an_image(root: Path) -> str:
    (root / "images" / image_names("test", 2)[0]).write_text("<html>not found</html>")
    return "test_000.jpg' is not an image"


@pytest.mark.parametrize("spoil", [_malformed_json, _caption_not_string, _missing_image,
                                   _truncated_image, _not_an_image])
def test_bad_annotation_or_image_file_is_named(spoil, tmp_path, capsys):
    root = _karpathy(tmp_path / "data")
    expected = spoil(root)
    code, err = run_cli(capsys, "buffer", TINY, f"run_dir={tmp_path / 'run'}",
                        f"cache_dir={tmp_path / 'cache'}", *karpathy_overrides(root))
    assert code == 2 and expected in err, err


@pytest.mark.parametrize("override, expected", [
    ("data.image_root={root}/nope", "data.image_root '{root}/nope' is not a folder"),
    ("data.ann_root={root}/nope", "data.train_json: annotation file '{root}/nope/train.json' not found"),
    ("model.pretrained_path={root}/weights.safetensors", "model.pretrained_path '{root}/weights.safetensors' not found"),
])
def test_missing_folder_or_file_is_named(override, expected, tmp_path, capsys):
    root = _karpathy(tmp_path / "data")
    code, err = run_cli(capsys, "buffer", TINY, f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}",
                        *karpathy_overrides(root), override.format(root=root))
    assert code == 2 and expected.format(root=root) in err, err


def test_weights_file_that_is_not_safetensors_is_refused_unread(tmp_path, capsys):
    weights = tmp_path / "convnet.safetensors"
    marker = _booby_trapped_pickle(weights, tmp_path)
    code, err = run_cli(capsys, "buffer", TINY, f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}",
                        f"model.pretrained_path={weights}")
    assert code == 2 and "model.pretrained_path" in err and "not a readable safetensors file" in err, err
    assert not marker.exists()
    from safetensors.torch import save_file
    from vldistill.models.image_towers import ConvNet
    save_file(ConvNet(16, width=4, depth=2).state_dict(), weights)       # tiny.yaml has width 8
    code, err = run_cli(capsys, "buffer", TINY, f"run_dir={tmp_path / 'run'}", f"cache_dir={tmp_path / 'cache'}",
                        f"model.pretrained_path={weights}")
    assert code == 2 and "does not hold convnet weights of this width/depth: size mismatch" in err, err


def test_missing_trajectory_store_is_named(tmp_path, cache_dir, capsys):
    code, err = run_cli(capsys, "distill", TINY, f"run_dir={tmp_path / 'run'}", f"cache_dir={cache_dir}",
                        f"buffer.dir={tmp_path / 'nowhere'}", "eval.methods=[lors]")
    assert code == 2 and "no trajectory store at" in err and "run `vldistill buffer CONFIG` first" in err


# ---------------------------------------------------------------- the trajectory store's manifest
def test_store_of_another_setup_names_the_field(tmp_path, cache_dir, capsys):
    store = copy_store(cache_dir, tmp_path / "store")
    common = ["distill", TINY, f"run_dir={tmp_path / 'run'}", f"cache_dir={cache_dir}",
              f"buffer.dir={store}", "eval.methods=[lors]", *FAST]
    code, err = run_cli(capsys, *common, "model.image_tower_args.convnet.width=16")    # another image tower
    assert code == 2 and re.search(r'was made with image_tower_args=\{"width": 8, "depth": 2\}, this run has '
                                   r'image_tower_args=\{"width": 16, "depth": 2\}', err), err
    code, err = run_cli(capsys, *common, "buffer.epochs=2", "distill.max_start_epoch=2")
    assert code == 2 and "distill needs expert epoch 2" in err and "the store keeps [0, 1]" in err, err
    manifest = json.loads((store / "manifest.json").read_text())
    for field, value in (("dataset_fingerprint", "0123456789abcdef"), ("text_tower", "hf:/models/bert"),
                         ("format", 0)):
        (store / "manifest.json").write_text(json.dumps(manifest | {field: value}))
        code, err = run_cli(capsys, *common)
        assert code == 2 and f"was made with {field}={json.dumps(value)}" in err, err


def test_moved_keys_are_read_under_their_new_names(caplog):
    """model.convnet_width / depth became convnet's own options; configs, run directories and
    set cards that still use them load as before, with a warning."""
    from vldistill.configio import config_from_dict
    assert load_config(None, ["model.convnet_width=8"]).model.image_tower_args == {"convnet": {"width": 8, "depth": 3}}
    assert "model.convnet_width is now model.image_tower_args.convnet.width" in caplog.text
    card = {"model": {"image_tower": "timm:resnet10t", "convnet_width": 64, "convnet_depth": 3}}
    assert config_from_dict(card, "a card").model.image_tower_args["convnet"] == {"width": 64, "depth": 3}
    with pytest.raises(ConfigError, match=r"^a card: model.convnet_width is the old name of "
                                          r"model.image_tower_args.convnet.width; give only the latter$"):
        config_from_dict({"model": {"convnet_width": 8, "image_tower_args": {"convnet": {"width": 4}}}}, "a card")


def test_a_store_from_before_tower_options_were_recorded_is_still_used(tmp_path, cache_dir, capsys):
    """Stores made before hold `convnet: [w, d]` and no image_tower_args: their image_params pin
    the tower's shapes, so they are used, and one of another width is still refused."""
    store = copy_store(cache_dir, tmp_path / "store")
    manifest = json.loads((store / "manifest.json").read_text())
    old = {k: v for k, v in manifest.items() if k != "image_tower_args"} | {"convnet": [8, 2]}
    (store / "manifest.json").write_text(json.dumps(old))
    common = ["distill", TINY, f"run_dir={tmp_path / 'run'}", f"cache_dir={cache_dir}", f"buffer.dir={store}",
              "eval.methods=[lors]", "distill.iterations=1", *FAST]
    assert run_cli(capsys, *common)[0] == 0
    code, err = run_cli(capsys, *common, "model.convnet_width=16", "distill.resume=false")
    assert code == 2 and "was made with image_params=" in err, err


# ---------------------------------------------------------------- nothing is unpickled
class _Trap:
    """Unpickling this creates a file: proof that a loader ran pickle on it."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def _booby_trapped_pickle(path: Path, folder: Path) -> Path:
    marker = folder / "unpickled"
    torch.save({"value": _Trap(marker)}, path)
    return marker


def test_sets_checkpoints_and_experts_are_never_unpickled(tmp_path):
    from vldistill.distill.checkpoint import read_checkpoint
    from vldistill.buffer.store import TrajectoryStore
    from vldistill.algorithms.synset import DistilledSet
    path = tmp_path / "set.safetensors"
    marker = _booby_trapped_pickle(path, tmp_path)
    loaders = [lambda: DistilledSet.load(path), lambda: read_checkpoint(path, {}),
               lambda: TrajectoryStore(tmp_path)._check_expert(0, [0])]
    shutil.copy(path, tmp_path / "expert_000.safetensors")
    for load in loaders:
        with pytest.raises(UserError, match="safetensors|damaged"):
            load()
    assert not marker.exists()


def test_no_pickle_loading_in_the_package():
    """Every torch.load must say weights_only=True; pickle itself is never imported."""
    sources = {p: p.read_text() for p in (REPO / "vldistill").rglob("*.py")}
    for path, text in sources.items():
        assert not re.search(r"^\s*(import pickle|from pickle|import dill|import joblib)", text, re.M), path
        for call in re.finditer(r"torch\.load\(([^)]*)\)", text):
            assert "weights_only=True" in call.group(1), f"{path}: {call.group(0)}"


def test_registered_names_are_checked_when_a_config_is_loaded():
    """The schema alone takes any name; the loaders look each one up in its registry."""
    import re
    from vldistill.config import Config, DataConfig
    from vldistill.configio import check_names
    unchecked = Config(data=DataConfig(name="nosuch"))
    with pytest.raises(ConfigError, match="data.name: unknown dataset 'nosuch'; known: .*shapes"):
        check_names(unchecked)
    # an eval tower named only by its key: the key is the tower, checked before anything trains
    with pytest.raises(ConfigError, match=re.escape("eval.towers.*.image_tower: unknown image tower 'nosuch'")):
        load_config(TINY, ["eval.towers.nosuch.lr=0.1"])
    with pytest.raises(ConfigError, match="is now called 'lors-identity'"):
        load_config(TINY, ["eval.methods=[baseline]"])
