"""The embedded dataset: deterministic, the promised attributes, captions that share meaning."""
import torch

from vldistill.data.shapes import COLOURS, SHAPES, build_shapes, make_shapes_split
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
