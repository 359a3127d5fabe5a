"""Scenes of coloured shapes: drawing them, rendering them, and what a caption claims about them.

A scene is 1-3 objects (shape, colour, size, cell of a 3x3 grid) on a tinted gradient
background. `render` draws the pixels and reports each background's mean colour, named by
`background_name` ("dark teal"). A caption's meaning is a `Claim`: object patterns that must
fit distinct objects of the scene (an attribute left out is a wildcard), whether the scene may
hold other objects, and the background. `truth_matrix` evaluates every claim against every
scene, which is how the embedded datasets know their truth (`vldistill.evaluation.ceilings`).
"""
from __future__ import annotations

import functools
import itertools
from dataclasses import dataclass
from typing import NamedTuple, Sequence

import numpy as np
import torch

SHAPES = ("circle", "square", "triangle", "star", "cross", "ring")
COLOURS = {
    "red": (220, 40, 40), "green": (40, 180, 60), "blue": (50, 90, 230), "yellow": (240, 220, 40),
    "purple": (150, 60, 200), "orange": (250, 140, 30), "white": (245, 245, 245),
    "cyan": (40, 210, 220),
}
SIZES = {"small": 0.15, "large": 0.24}            # radius as a fraction of the image side
POSITIONS = ("in the top left", "at the top", "in the top right",
             "on the left", "in the center", "on the right",
             "in the bottom left", "at the bottom", "in the bottom right")
MAX_OBJECTS = 3
ATTRIBUTES = ("shape", "colour", "size", "position")
_VALUES = {"shape": SHAPES, "colour": tuple(COLOURS), "size": tuple(SIZES), "position": tuple(range(9))}
# backgrounds are all dim (each channel 20-110 before the tilt): named relative to each other
_BRIGHTNESS = ("dark", "medium")
_HUES = {"R": "red", "G": "green", "B": "blue", "GR": "olive", "BR": "purple", "BG": "teal", "": "grey"}
BACKGROUNDS = tuple(f"{b} {h}" for b in _BRIGHTNESS for h in _HUES.values())
_SUPERSAMPLE = 2


def sample_objects(rng: np.random.Generator) -> list[dict]:
    """One scene's objects, each in its own grid cell."""
    n = int(rng.integers(1, MAX_OBJECTS + 1))
    cells = rng.permutation(9)[:n]
    return [{"shape": SHAPES[rng.integers(len(SHAPES))],
             "colour": list(COLOURS)[rng.integers(len(COLOURS))],
             "size": list(SIZES)[rng.integers(len(SIZES))],
             "position": int(c)} for c in cells]


def _shape_mask(shape: str, dx: np.ndarray, dy: np.ndarray) -> np.ndarray:
    """Boolean mask of a unit-radius shape; dx, dy are offsets from its centre in radii."""
    r = np.hypot(dx, dy)
    if shape == "circle":
        return r <= 1.0
    if shape == "square":
        return np.maximum(np.abs(dx), np.abs(dy)) <= 0.8
    if shape == "triangle":
        return (dy <= 0.75) & (dy >= -1.0 + 1.9 * np.abs(dx))
    if shape == "star":
        theta = np.arctan2(dy, dx) + np.pi / 2
        return r <= 0.45 + 0.55 * np.abs(np.cos(2.5 * theta)) ** 3
    if shape == "cross":
        return ((np.abs(dx) <= 0.3) & (np.abs(dy) <= 1.0)) | ((np.abs(dy) <= 0.3) & (np.abs(dx) <= 1.0))
    if shape == "ring":
        return (r <= 1.0) & (r >= 0.55)
    raise ValueError(shape)


def _render_chunk(scenes: list[list[dict]], size: int,
                  rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Images (n, H, W, 3) uint8: tinted gradient backgrounds with noise, then the objects; and
    each background's mean colour (n, 3) before noise.

    Drawn at twice the size and averaged down (anti-aliasing); the background and noise are
    vectorized over the chunk, only the objects are drawn one by one.
    """
    n, big = len(scenes), size * _SUPERSAMPLE
    ys, xs = _grid(big)
    base = rng.uniform(20, 110, size=(n, 1, 1, 3)).astype(np.float32)
    tilt = rng.uniform(-30, 30, size=(2, n, 1, 1, 3)).astype(np.float32)
    img = base + xs[None, ..., None] * tilt[0] + ys[None, ..., None] * tilt[1]
    for k, objects in enumerate(scenes):
        for obj in objects:
            row, col = divmod(obj["position"], 3)
            cx = (col + 0.5) / 3 + rng.uniform(-0.04, 0.04)
            cy = (row + 0.5) / 3 + rng.uniform(-0.04, 0.04)
            radius = SIZES[obj["size"]] * rng.uniform(0.9, 1.1)
            rows = slice(max(0, int((cy - radius) * big)), int((cy + radius) * big) + 2)
            cols = slice(max(0, int((cx - radius) * big)), int((cx + radius) * big) + 2)
            mask = _shape_mask(obj["shape"], (xs[rows, cols] - cx) / radius,
                               (ys[rows, cols] - cy) / radius)
            colour = np.asarray(COLOURS[obj["colour"]], dtype=np.float32) * rng.uniform(0.85, 1.0)
            img[k, rows, cols][mask] = colour
    img = img.reshape(n, size, _SUPERSAMPLE, size, _SUPERSAMPLE, 3).mean(axis=(2, 4))
    img += rng.normal(0, 6, size=img.shape).astype(np.float32)
    mean_colour = (base + 0.5 * tilt[0] + 0.5 * tilt[1])[:, 0, 0]      # the gradient's mean (x, y: 0.5)
    return np.clip(img, 0, 255).astype(np.uint8), mean_colour


def render(scenes: list[list[dict]], size: int, rng: np.random.Generator,
           chunk: int = 1000) -> tuple[np.ndarray, np.ndarray]:
    """Pixels (N, H, W, 3) uint8 of every scene, and the index in BACKGROUNDS of each background."""
    parts = [_render_chunk(scenes[i:i + chunk], size, rng) for i in range(0, len(scenes), chunk)]
    if not parts:
        return np.empty((0, size, size, 3), np.uint8), np.empty((0,), np.int64)
    pixels = np.concatenate([p for p, _ in parts])
    return pixels, np.array([background_index(c) for _, colours in parts for c in colours], np.int64)


def background_index(colour: np.ndarray) -> int:
    """BACKGROUNDS index of a mean colour: dark or medium, then its dominant channel(s) (a
    channel 15 above the next), two dominant ones (a mix), or none (grey)."""
    order = np.argsort(colour, kind="stable")
    low, mid, high = (float(colour[i]) for i in order)
    channels = ("RGB"[order[2]] if high - mid > 15 else
                "".join(sorted("RGB"[order[1]] + "RGB"[order[2]])) if mid - low > 15 else "")
    return int(float(np.mean(colour)) >= 65) * len(_HUES) + list(_HUES).index(channels)


@functools.lru_cache(maxsize=4)
def _grid(side: int) -> tuple[np.ndarray, np.ndarray]:
    ys, xs = (np.mgrid[0:side, 0:side].astype(np.float32) + 0.5) / side
    return ys, xs


@dataclass
class Scenes:
    """Every scene of a split as arrays (what the cache stores)."""

    objects: np.ndarray         # (n, MAX_OBJECTS, 4) attribute indices in ATTRIBUTES order; -1 pads
    backgrounds: np.ndarray     # (n,) index into BACKGROUNDS

    @classmethod
    def of(cls, scenes: list[list[dict]], backgrounds: np.ndarray) -> "Scenes":
        objects = np.full((len(scenes), MAX_OBJECTS, len(ATTRIBUTES)), -1, np.int64)
        for i, scene in enumerate(scenes):
            for j, obj in enumerate(scene):
                objects[i, j] = [_VALUES[a].index(obj[a]) for a in ATTRIBUTES]
        return cls(objects, np.asarray(backgrounds, np.int64))

    def __len__(self) -> int:
        return len(self.backgrounds)

    def scene(self, i: int) -> list[dict]:
        """The objects of scene i as the generator drew them."""
        return [{a: _VALUES[a][v] for a, v in zip(ATTRIBUTES, row)} for row in self.objects[i].tolist()
                if row[0] >= 0]


class Claim(NamedTuple):
    """What a caption says: each pattern (attribute indices, -1 = not said) fits a distinct object;
    `exact`: the scene holds no other object; `background`: its index, -1 = not said."""

    patterns: tuple[tuple[int, ...], ...]
    exact: bool
    background: int


@dataclass(frozen=True)
class ClaimKind:
    """The shape of a caption template's meaning."""

    attributes: tuple[str, ...]     # the attributes named of each object it mentions
    every_object: bool = False      # mentions every object (else the one it was drawn for)
    exact: bool = False             # ... and says there are no others
    background: bool = False        # names the background too

    def claim(self, scenes: Scenes, i: int, chosen: int) -> Claim:
        """The claim of this template written for object `chosen` of scene i."""
        rows = [r for r in scenes.objects[i].tolist() if r[0] >= 0]
        mentioned = rows if self.every_object else [rows[chosen]]
        keep = [a in self.attributes for a in ATTRIBUTES]
        patterns = tuple(sorted(tuple(v if k else -1 for v, k in zip(row, keep)) for row in mentioned))
        return Claim(patterns, self.exact, int(scenes.backgrounds[i]) if self.background else -1)


def truth_matrix(scenes: Scenes, claims: Sequence[Claim]) -> torch.Tensor:
    """(n_scenes, n_claims) bool: T[i, c] = claim c is true of scene i (each distinct claim once)."""
    unique: dict[Claim, int] = {}
    columns = [unique.setdefault(c, len(unique)) for c in claims]
    valid = scenes.objects[..., 0] >= 0                                   # (n, 3)
    counts = valid.sum(axis=1)
    table = np.zeros((len(scenes), len(unique)), bool)
    for u, claim in enumerate(unique):
        p = np.asarray(claim.patterns)                                    # (k, 4)
        fits = (((p[None, :, None] < 0) | (scenes.objects[:, None] == p[None, :, None])).all(-1)
                & valid[:, None])                                         # (n, k, 3): pattern fits object
        found = np.zeros(len(scenes), bool)
        for slots in itertools.permutations(range(MAX_OBJECTS), len(p)):  # distinct objects
            found |= fits[:, np.arange(len(p)), list(slots)].all(axis=1)
        if claim.exact:
            found &= counts == len(p)
        if claim.background >= 0:
            found &= scenes.backgrounds == claim.background
        table[:, u] = found
    return torch.from_numpy(table[:, columns])
