"""open_clip towers: a CLIP model's visual tower as a trainable image tower, its text tower as a
frozen text tower.

Names:
- image: `open_clip:MODEL` (an open_clip config name such as RN50 or ViT-B-32; weights from
  `model.pretrained_path`, a local checkpoint, or random) or `open_clip:local-dir:DIR` (a folder
  with open_clip_config.json and the weights, as open_clip and the HF hub lay them out).
- text: `open_clip:MODEL@CHECKPOINT` or `open_clip:local-dir:DIR`; a frozen text tower needs
  trained weights, so a bare name is refused.

Weights are only read from local files (open_clip is never given a pretrained tag, which it
would download). Widths are read from the built model.
"""
from __future__ import annotations

import logging
from pathlib import Path

import torch
from torch import nn

from ..errors import MissingFileError, UnknownNameError, UserError
from .examples import open_clip_example
from .image_towers import IMAGE_TOWERS
from .text_towers import TEXT_TOWERS, TextTower, _folder_fingerprint, train_mode

log = logging.getLogger(__name__)

LOCAL_DIR = "local-dir:"
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")


def _check_local_dir(name: str) -> Path:
    folder = Path(name[len(LOCAL_DIR):]).expanduser()
    if not (folder / "open_clip_config.json").is_file():
        raise MissingFileError(f"open_clip folder {str(folder)!r} needs open_clip_config.json and "
                               "the weights (open_clip_model.safetensors or open_clip_pytorch_model.bin)")
    if not any(f.suffix in _WEIGHT_SUFFIXES for f in folder.iterdir()):
        raise MissingFileError(f"open_clip folder {str(folder)!r} has no weights file: put "
                               "open_clip_model.safetensors (or open_clip_pytorch_model.bin) there")
    return folder


def create_clip(name: str, image_size: int | None = None, checkpoint: str | None = None) -> nn.Module:
    """An open_clip CLIP model from a config name (+ local checkpoint) or a local-dir folder.

    Args:
        name: open_clip model name (`RN50`, `ViT-B-32`, ...) or `local-dir:DIR`.
        image_size: input side to build the visual tower for (None: the config's).
        checkpoint: local weights for a named model; None keeps the random initialization.

    Returns:
        The CLIP module (visual tower in `.visual`, text tower behind `.encode_text`).
    """
    import open_clip
    if name.startswith(LOCAL_DIR):
        name = LOCAL_DIR + str(_check_local_dir(name))
    elif name.replace("/", "-") not in open_clip.list_models():
        raise UnknownNameError(f"open_clip has no model {name!r} (see open_clip.list_models())")
    source = checkpoint if checkpoint else "random initialization"
    try:
        return open_clip.create_model(name, pretrained=checkpoint, force_image_size=image_size,
                                      pretrained_image=False, pretrained_text=False)
    except (RuntimeError, AssertionError, KeyError, ValueError) as err:
        # strict state-dict loading (missing / unexpected / mis-shaped keys) and open_clip's
        # own checks while adapting a checkpoint (position embeddings)
        lines = [line.strip() for line in str(err).splitlines() if line.strip()] or [type(err).__name__]
        raise UserError(f"{source!r} does not fit open_clip model {name}: "
                        f"{' '.join(lines[:2])[:300]}") from None


class OpenClipVisual(nn.Module):
    """An open_clip visual tower whose attention runs on the plain (math) SDPA kernel.

    Distillation differentiates the student's gradient (TESLA's second pass); the fused
    attention kernels have no double backward, the math kernel does.
    """

    def __init__(self, visual: nn.Module, image_size: int):
        super().__init__()
        self.visual = visual
        with torch.no_grad():
            probe = self.eval()(torch.zeros(1, 3, image_size, image_size))
        self.train()
        self.num_features = int(probe.shape[-1])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        from torch.nn.attention import SDPBackend, sdpa_kernel
        with sdpa_kernel(SDPBackend.MATH):
            return self.visual(x)


@IMAGE_TOWERS.register("open_clip", example="open_clip:RN50")
def _open_clip_visual(arg: str, image_size: int, pretrained_path: str | None,
                      **_: object) -> nn.Module:
    """The visual tower of an open_clip model; num_features is its output (embedding) width."""
    if not arg:
        raise UserError("open_clip tower needs a model name, e.g. open_clip:RN50")
    checkpoint = str(Path(pretrained_path).expanduser()) if pretrained_path else None
    return OpenClipVisual(create_clip(arg, image_size, checkpoint).visual, image_size)


class OpenClipTextTower:
    """The frozen text tower of an open_clip model; loads on first `encode`."""

    def __init__(self, name: str, checkpoint: Path | None, device: str):
        self.name, self.checkpoint, self.device = name, checkpoint, device
        if checkpoint is not None:
            weights = f"{checkpoint.name}:{checkpoint.stat().st_size}"
        else:
            weights = _folder_fingerprint(_check_local_dir(name))
        self.identity = f"open_clip:{Path(name).name}:{weights}"
        self._model = None

    @property
    def model(self) -> nn.Module:
        if self._model is None:
            import open_clip
            model = create_clip(self.name, checkpoint=str(self.checkpoint) if self.checkpoint else None)
            model.visual = nn.Identity()          # only the text tower is used
            self._model = model.to(self.device).eval()
            try:
                self.tokenizer = open_clip.get_tokenizer(self.name)
            except OSError as err:
                raise MissingFileError(f"open_clip model {self.name}: its tokenizer is not available "
                                       f"offline ({str(err).splitlines()[0]})") from None
        return self._model

    @property
    def dim(self) -> int:
        return int(self.encode(["a"]).shape[1])

    @torch.no_grad()
    def encode(self, captions: list[str], batch_size: int = 256, train: bool = False) -> torch.Tensor:
        model = self.model
        with train_mode(model, train):
            chunks = [model.encode_text(self.tokenizer(captions[i:i + batch_size]).to(self.device))
                      .float().cpu() for i in range(0, len(captions), batch_size)]
        return torch.cat(chunks) if chunks else torch.empty(0, 0)


@TEXT_TOWERS.register("open_clip", example=open_clip_example)
def _open_clip_text(arg: str, device: str) -> TextTower:
    """`open_clip:MODEL@CHECKPOINT` or `open_clip:local-dir:DIR`."""
    if arg.startswith(LOCAL_DIR):
        _check_local_dir(arg)
        return OpenClipTextTower(arg, None, device)
    name, _, checkpoint = arg.partition("@")
    if not checkpoint:
        raise MissingFileError(f"text tower open_clip:{arg} needs trained weights: write "
                               f"open_clip:{name}@/path/to/open_clip_pytorch_model.bin, or "
                               "open_clip:local-dir:DIR for a folder with open_clip_config.json")
    path = Path(checkpoint).expanduser()
    if not path.is_file():
        raise MissingFileError(f"open_clip checkpoint {str(path)!r} not found: put the {name} "
                               "weights file there or fix the path")
    return OpenClipTextTower(name, path.resolve(), device)
