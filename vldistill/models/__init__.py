"""Towers and the student model. Importing the package registers every tower family."""
from . import image_towers, open_clip_towers, text_towers  # noqa: F401
