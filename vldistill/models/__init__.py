"""Towers and the student model. Importing the package registers every tower family."""
from . import image_towers, open_clip_towers, text_towers  # noqa: F401
from .image_towers import IMAGE_TOWERS, create_image_tower
from .text_towers import TEXT_TOWERS, create_text_tower

__all__ = ["IMAGE_TOWERS", "TEXT_TOWERS", "create_image_tower", "create_text_tower"]
