"""Towers and the student model: the trainable image towers and the frozen text towers (both
registries; importing the package registers every tower family), the student and expert
(`student`), placing a student on its device (`accel`), ImageNet weights (`pretrained`) and the
batch-norm check (`batchnorm`). It may import the configuration layer and `vldistill.runtime`;
it shares a layer with `vldistill.data` (packaged weights are cached where the data's caches
are), and everything above may import it (tests/test_architecture.py's `LAYERS`).
"""
from . import image_towers, open_clip_towers, text_towers  # noqa: F401
from .image_towers import IMAGE_TOWERS, create_image_tower
from .text_towers import TEXT_TOWERS, create_text_tower

__all__ = ["IMAGE_TOWERS", "TEXT_TOWERS", "create_image_tower", "create_text_tower"]
