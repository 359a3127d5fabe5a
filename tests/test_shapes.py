"""The embedded datasets: deterministic, the promised attributes, captions that share meaning
(shapes) or hardly any (shapes-specific), and the truth of every caption about every scene."""
import hashlib

import numpy as np
import pytest
import torch

from vldistill.config import DataConfig
from vldistill.data.scenes import BACKGROUNDS, POSITIONS, ClaimKind, Scenes, background_index, truth_matrix
from vldistill.data.shapes import COLOURS, SCHEMES, SHAPES, build_shapes, cached_shapes, make_shapes_split
from vldistill.data.splits import normalize_caption


def test_deterministic_and_sized():
    a = make_shapes_split(40, 32, seed=3)
    b = make_shapes_split(40, 32, seed=3)
    assert torch.equal(a[0], b[0]) and a[1] == b[1]
    assert a[0].shape == (40, 3, 32, 32) and a[0].dtype == torch.uint8
    assert len(a[1]) == 200 and torch.equal(a[2], torch.arange(40).repeat_interleave(5))
    assert not torch.equal(a[0], make_shapes_split(40, 32, seed=4)[0])


def test_captions_mention_attributes_and_are_shared_across_images():
    dataset = build_shapes(300, 10, 10, image_size=16, seed=0)
    captions = dataset.train.captions
    assert all(caption == normalize_caption(caption) for caption in captions)
    assert any(any(shape in c for c in captions) for shape in SHAPES)
    assert all(any(colour in c for c in captions) for colour in COLOURS)
    owners: dict[str, set] = {}
    for caption, image in zip(captions, dataset.train.caption_image.tolist()):
        owners.setdefault(caption, set()).add(image)
    shared = [c for c, imgs in owners.items() if len(imgs) > 1]
    assert len(shared) > 20           # e.g. "there is a red circle" describes many images
    assert len(owners) > 300          # but captions are not a handful of labels either


def test_normalize_caption():
    assert normalize_caption("A Man, wearing  a hat!") == "a man wearing a hat"
    assert normalize_caption(" ".join(["w"] * 40), max_words=30) == " ".join(["w"] * 30)


def _digest(split) -> str:
    h = hashlib.sha256(split.pixels.numpy().tobytes())
    h.update("\n".join(split.captions).encode())
    return h.hexdigest()[:16]


def test_shapes_images_and_captions_are_those_of_the_first_generator():
    """Pinned: the digests of the generator before scenes and truth were split out of it."""
    assert [_digest(make_shapes_split(n, 32, seed)) for n, seed in ((50, 0), (10, 1), (10, 2))] == \
        ["b0a79018ac9df6be", "1fdd9b8f31f36bb2", "fd75139486e9c964"]


def test_specific_captions_share_the_images_and_name_everything():
    generic = make_shapes_split(30, 32, seed=5)
    specific = make_shapes_split(30, 32, seed=5, scheme="shapes-specific")
    assert torch.equal(generic.pixels, specific.pixels) and generic.captions != specific.captions
    assert np.array_equal(generic.scenes.objects, specific.scenes.objects)
    for i in range(30):
        objects, background = specific.scenes.scene(i), BACKGROUNDS[specific.scenes.backgrounds[i]]
        for caption in specific.captions[5 * i:5 * i + 5]:
            assert background in caption
            assert all(o["colour"] in caption and o["shape"] in caption and o["size"] in caption
                       and normalize_caption(POSITIONS[o["position"]]) in caption for o in objects)
        assert len(set(specific.captions[5 * i:5 * i + 5])) == 5             # five paraphrases


@pytest.mark.parametrize("scheme", SCHEMES)
def test_no_caption_is_cut_at_30_words(scheme):
    """The longest scene: three objects, each with a four-word position, a two-word background."""
    objects = [{"shape": "triangle", "colour": "purple", "size": "small", "position": p} for p in (0, 2, 8)]
    background = max(BACKGROUNDS, key=len)
    assert max(len(normalize_caption(t.text(objects, objects[0], background), 99).split())
               for t in SCHEMES[scheme]) <= 30
    assert make_shapes_split(20, 16, seed=1, scheme=scheme).complete
    assert not make_shapes_split(20, 16, seed=1, max_words=4, scheme=scheme).complete


def _scenes(*scenes, backgrounds=None) -> Scenes:
    return Scenes.of([[{"shape": s, "colour": c, "size": z, "position": p} for s, c, z, p in scene]
                      for scene in scenes], np.asarray(backgrounds or [0] * len(scenes)))


def test_truth_of_each_kind_of_claim():
    scenes = _scenes([("circle", "red", "small", 0)],
                     [("star", "blue", "large", 4), ("circle", "red", "large", 8)],
                     [("circle", "red", "small", 1), ("circle", "red", "large", 2), ("star", "blue", "small", 3)],
                     backgrounds=[0, 0, 3])
    there_is = ClaimKind(("colour", "shape")).claim(scenes, 1, 1)                     # there is a red circle
    placed = ClaimKind(("size", "colour", "shape", "position")).claim(scenes, 1, 1)   # ... large, bottom right
    exactly = ClaimKind(("colour", "shape"), every_object=True, exact=True).claim(scenes, 1, 0)
    listed = ClaimKind(("colour", "shape"), every_object=True).claim(scenes, 1, 0)    # red circle and blue star
    everything = ClaimKind(("size", "colour", "shape", "position"), every_object=True, exact=True,
                           background=True).claim(scenes, 1, 0)
    twice = ClaimKind(("colour", "shape"), every_object=True).claim(_scenes([("circle", "red", "small", 0),
                                                                              ("circle", "red", "large", 1)]), 0, 0)
    table = truth_matrix(scenes, [there_is, placed, exactly, listed, everything, twice]).T.tolist()
    assert table == [[True, True, True], [False, True, False], [False, True, False],
                     [False, True, True], [False, True, False], [False, False, True]]
    assert exactly == ClaimKind(("colour", "shape"), every_object=True, exact=True).claim(
        _scenes([("circle", "red", "small", 5), ("star", "blue", "small", 6)]), 0, 1)   # order: irrelevant


def test_backgrounds_are_named_by_brightness_and_dominant_channels():
    assert BACKGROUNDS[background_index(np.array([100.0, 30.0, 30.0]))] == "dark red"
    assert BACKGROUNDS[background_index(np.array([100.0, 90.0, 40.0]))] == "medium olive"
    assert BACKGROUNDS[background_index(np.array([50.0, 55.0, 60.0]))] == "dark grey"
    assert BACKGROUNDS[background_index(np.array([40.0, 100.0, 105.0]))] == "medium teal"


@pytest.mark.parametrize("scheme", SCHEMES)
def test_truth_is_known_and_read_back_from_the_cache(scheme, tmp_path):
    cfg = DataConfig(name=scheme, shapes_train=12, shapes_val=4, shapes_test=40, image_size=16)
    built = cached_shapes(cfg, tmp_path, scheme)
    cached = cached_shapes(cfg, tmp_path, scheme)
    assert len(list((tmp_path / "shapes").glob("*.safetensors"))) == 1
    truth = built.test.truth()                 # checks each caption is true of its own image
    assert torch.equal(truth, cached.test.truth()) and cached.test.captions == built.test.captions
    assert torch.equal(cached.test.images.pixels, built.test.images.pixels) and cached.name == scheme
    per_caption = truth.sum(dim=0).float().mean()
    assert (per_caption < 1.1) if scheme == "shapes-specific" else (per_caption > 3)
    for j, caption in enumerate(built.test.captions):   # the same words, the same images
        same = [k for k, c in enumerate(built.test.captions) if c == caption]
        assert all(torch.equal(truth[:, j], truth[:, k]) for k in same)
    cut = DataConfig(name=scheme, shapes_train=12, shapes_val=4, shapes_test=4, image_size=16, max_words=3)
    assert cached_shapes(cut, tmp_path, scheme).test.truth() is None            # cut captions: unknown
