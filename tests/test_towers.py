"""Real tower families with random weights: widths read from the model, local weight files
loaded (or refused with a clear error), and one TESLA distillation iteration through each."""
from __future__ import annotations

import pytest
import torch
from fixtures_real import caption_pool, make_tiny_bert

from vldistill.errors import MissingFileError, UnknownNameError, UserError
from vldistill.algorithms.matching import MatchOptions, tesla_match
from vldistill.models.image_towers import create_image_tower, example_image_towers
from vldistill.models.student import DualEncoder, FunctionalStudent
from vldistill.models.text_towers import TEXT_TOWERS, create_text_tower
from vldistill.models.examples import tiny_open_clip as tiny_open_clip_folder
from vldistill.algorithms.similarity import build_similarity


def one_iteration(tower: torch.nn.Module, texts: torch.Tensor, image_size: int, n: int = 2):
    """One TESLA matching iteration (one student step on all n pairs); returns
    (result, images, texts, similarity) with the gradients accumulated in them."""
    torch.manual_seed(0)
    student = FunctionalStudent(DualEncoder(tower, texts.shape[1]))
    images = torch.randn(n, 3, image_size, image_size, requires_grad=True)
    texts = texts[:n].clone().requires_grad_(True)
    sim = build_similarity("lowrank", n, rank=1, alpha=1.0)
    with torch.no_grad():
        sim.params()[-1].normal_(0, 0.1)               # R = 0 at init would leave L without gradient
    start = student.flat_params()
    target = tuple(p + 1e-3 * torch.randn_like(p) for p in start)
    result = tesla_match(student, images, texts, sim, 0.01, 0.01, start, target, [torch.arange(n)],
                         MatchOptions("wbce"))
    return result, images, texts, sim


def assert_learns(result, *tensors) -> None:
    assert torch.isfinite(torch.tensor(result.loss)) and result.loss > 0
    for t in tensors:
        assert t.grad is not None and torch.isfinite(t.grad).all() and t.grad.abs().sum() > 0


@pytest.mark.parametrize("name,size", [(n, 64) for n in example_image_towers()])
def test_every_tower_family_reports_its_real_width(name, size):
    tower = create_image_tower(name, size)
    with torch.no_grad():
        out = tower.eval()(torch.randn(2, 3, size, size))
    assert out.shape == (2, tower.num_features)


# Second-order gradients through NFNet's weight standardization and RN50's BatchNorm cost
# 15-30 s on a 2-core CPU whatever the input size: those two run in `make test`, not in -m "not slow".
@pytest.mark.parametrize("name,size,width", [
    ("timm:resnet10t", 32, 512),
    pytest.param("timm:nfnet_l0", 32, 2304, marks=pytest.mark.slow),
    pytest.param("open_clip:RN50", 32, 1024, marks=pytest.mark.slow),
])
def test_image_tower_through_one_distill_iteration(name, size, width):
    tower = create_image_tower(name, size)
    assert tower.num_features == width                       # read from the model, not a table
    result, images, texts, sim = one_iteration(tower, torch.randn(2, 16), size)
    assert_learns(result, images, texts, *sim.params())


def test_timm_loads_a_local_weights_file_and_refuses_a_wrong_one(tmp_path):
    import timm
    reference = timm.create_model("resnet10t")                 # with its classifier, as published
    with torch.no_grad():
        for p in reference.parameters():
            p.add_(1.0)
    torch.save(reference.state_dict(), tmp_path / "resnet10t.pth")
    tower = create_image_tower("timm:resnet10t", 32, pretrained_path=str(tmp_path / "resnet10t.pth"))
    loaded = tower.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in reference.state_dict().items() if k in loaded)
    torch.save(timm.create_model("nfnet_l0").state_dict(), tmp_path / "nfnet.pth")
    with pytest.raises(UserError, match=r"nfnet.pth' does not hold timm:resnet10t weights"):
        create_image_tower("timm:resnet10t", 32, pretrained_path=str(tmp_path / "nfnet.pth"))
    with pytest.raises(MissingFileError, match=r"put the timm:resnet10t weights file there"):
        create_image_tower("timm:resnet10t", 32, pretrained_path=str(tmp_path / "absent.pth"))
    with pytest.raises(UnknownNameError, match="timm has no model"):
        create_image_tower("timm:no_such_net", 32)


@pytest.mark.parametrize("kind", ["bert", "distilbert"])
def test_hf_text_tower_from_a_local_folder_through_one_distill_iteration(kind, tmp_path):
    captions = caption_pool(12)
    folder = make_tiny_bert(tmp_path / kind, captions, kind)
    tower = create_text_tower(f"hf:{folder}")
    embeddings = tower.encode(captions, batch_size=5)
    assert embeddings.shape == (12, 32) and tower.dim == 32             # hidden size from the config
    again = create_text_tower(f"hf:{folder}")
    assert again.identity == tower.identity                             # the cache key is stable
    torch.testing.assert_close(again.encode(captions[:3]), embeddings[:3], atol=1e-5, rtol=1e-5)
    result, images, texts, sim = one_iteration(create_image_tower("convnet", 16, width=8, depth=2),
                                               embeddings, 16)
    assert_learns(result, images, texts, *sim.params())


def test_hf_folder_without_weights_says_what_to_put_there(tmp_path):
    (tmp_path / "bert").mkdir()
    (tmp_path / "bert" / "config.json").write_text("{}")
    with pytest.raises(MissingFileError, match=r"needs config.json and the weights"):
        create_text_tower(f"hf:{tmp_path / 'bert'}")
    with pytest.raises(MissingFileError, match=r"not found: put the model's files"):
        create_text_tower(f"hf:{tmp_path / 'absent'}")


@pytest.mark.parametrize("prefix", TEXT_TOWERS.names())
def test_every_registered_text_tower_gives_one_vector_per_caption(prefix, tmp_path):
    """Each family's own example (`example=`, files written to tmp_path; without one, its name)."""
    tower = create_text_tower(TEXT_TOWERS.example(prefix, tmp_path) or prefix)
    captions = caption_pool(4)
    embeddings = tower.encode(captions + captions[:1], batch_size=2)    # batches of 2 and 1
    assert embeddings.shape == (5, tower.dim) and embeddings.dtype == torch.float32
    torch.testing.assert_close(embeddings[4], embeddings[0], atol=1e-5, rtol=1e-5)
    assert not torch.allclose(embeddings[0], embeddings[1])


def test_open_clip_local_dir_towers_load_its_weights(tmp_path):
    folder, reference = tiny_open_clip_folder(tmp_path / "tiny_clip")
    visual = create_image_tower(f"open_clip:local-dir:{folder}", 32)
    assert visual.num_features == 16
    assert all(torch.equal(visual.visual.state_dict()[k], v) for k, v in reference.visual.state_dict().items())
    result, images, texts, sim = one_iteration(visual, torch.randn(2, 8), 32)   # attention, 2nd order
    assert_learns(result, images, texts, *sim.params())
    text = create_text_tower(f"open_clip:local-dir:{folder}")
    captions = caption_pool(3)
    import open_clip
    with torch.no_grad():
        expected = reference.encode_text(open_clip.get_tokenizer("RN50")(captions))
    torch.testing.assert_close(text.encode(captions), expected)
    assert text.dim == 16 and text.identity.startswith("open_clip:tiny_clip:")
    (folder / "open_clip_pytorch_model.bin").unlink()
    with pytest.raises(MissingFileError, match="has no weights file"):
        create_text_tower(f"open_clip:local-dir:{folder}")


def test_open_clip_text_tower_needs_weights_and_a_checkpoint_must_fit(tmp_path):
    with pytest.raises(MissingFileError, match=r"open_clip:RN50@/path/to/open_clip_pytorch_model.bin"):
        create_text_tower("open_clip:RN50")
    with pytest.raises(MissingFileError, match="not found"):
        create_text_tower(f"open_clip:RN50@{tmp_path / 'absent.bin'}")
    folder, _ = tiny_open_clip_folder(tmp_path / "tiny_clip")
    with pytest.raises(UserError, match="does not fit open_clip model RN50"):
        create_image_tower("open_clip:RN50", 32, pretrained_path=str(folder / "open_clip_pytorch_model.bin"))
    with pytest.raises(UnknownNameError, match="open_clip has no model"):
        create_image_tower("open_clip:NoSuchNet", 32)
